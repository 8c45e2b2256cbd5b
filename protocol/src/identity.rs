//! Agent identities: an agent is who its certificate says it is.
//!
//! The agent id lives in the client certificate as a URI SAN `ferry://agent/<agent-id>`. The
//! server reads it from the verified certificate after the handshake and never from a message
//! field, so an agent cannot claim to be another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The URI SAN prefix that carries an agent id.
pub const AGENT_URI_PREFIX: &str = "ferry://agent/";

/// The longest agent id.
pub const MAX_AGENT_ID_LEN: usize = 64;

/// A validated agent id: 1–64 characters of `A–Z a–z 0–9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

/// An agent id or an agent certificate is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The id has characters or a length that ferry does not accept.
    #[error(
        "invalid agent id {0:?}: use 1–64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    InvalidId(String),
    /// The certificate could not be parsed.
    #[error("the peer certificate could not be parsed: {0}")]
    BadCertificate(String),
    /// The certificate has no `ferry://agent/<id>` URI SAN.
    #[error(
        "the certificate names no agent: it has no subject alternative name `{AGENT_URI_PREFIX}<agent-id>`; issue agent certificates with ferry"
    )]
    NoAgentId,
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
}

impl AgentId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, IdentityError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= MAX_AGENT_ID_LEN
            && id.as_bytes()[0].is_ascii_alphanumeric()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(AgentId(id))
        } else {
            Err(IdentityError::InvalidId(id))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI SAN that names this agent in its certificate.
    pub fn uri(&self) -> String {
        format!("{AGENT_URI_PREFIX}{}", self.0)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AgentId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentId::new(s)
    }
}

impl TryFrom<String> for AgentId {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AgentId::new(s)
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> String {
        id.0
    }
}

/// Reads the agent id from a DER-encoded certificate.
#[cfg(feature = "io")]
pub fn agent_id_from_cert(der: &[u8]) -> Result<AgentId, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?
        .ok_or(IdentityError::NoAgentId)?;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name
            && let Some(id) = uri.strip_prefix(AGENT_URI_PREFIX)
        {
            return AgentId::new(id);
        }
    }
    Err(IdentityError::NoAgentId)
}

/// Reads the agent id of the peer of an established QUIC connection (server side).
#[cfg(feature = "io")]
pub fn agent_id_of(connection: &quinn::Connection) -> Result<AgentId, IdentityError> {
    let identity = connection
        .peer_identity()
        .ok_or(IdentityError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    agent_id_from_cert(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in [
            "edge-1",
            "a",
            "host.example.com",
            "Node_42",
            &"x".repeat(64),
        ] {
            assert!(AgentId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn refuses_odd_ids() {
        for id in ["", "-x", ".x", "a/b", "a b", "ä", "../etc", &"x".repeat(65)] {
            assert!(
                matches!(AgentId::new(id), Err(IdentityError::InvalidId(_))),
                "{id:?}"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            agent_id_from_cert(b"not a certificate"),
            Err(IdentityError::BadCertificate(_))
        ));
    }
}
