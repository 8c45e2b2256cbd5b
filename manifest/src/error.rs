//! Manifest and policy errors.

/// A manifest (or a policy, which shares its capability shape) is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The TOML does not parse, or a value has the wrong type; the text names the line.
    #[error("{0}")]
    Syntax(String),
    /// A field has a value ferry does not accept.
    #[error("{field}: {reason}")]
    Field {
        /// The field's path, e.g. `capabilities.filesystem[0].path`.
        field: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
}

impl ManifestError {
    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ManifestError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
