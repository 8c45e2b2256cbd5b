//! The ferry plugin manifest (`ferry.toml`): a plugin's name, version and topics, the
//! capabilities it asks for and the limits it wants.
//!
//! A manifest only *asks*. What a plugin gets is the intersection of its manifest and the
//! agent's local policy (see `ferry_agent::policy`), which uses the same [`Capabilities`] shape
//! ([`Capabilities::grant`]). Each capability is described once, in [`CAPABILITIES`].
//!
//! ```toml
//! [plugin]
//! name = "disk-report"
//! version = "1.2.0"
//! topics = ["disk.report"]
//! read_only = ["disk.report"]
//!
//! [capabilities]
//! filesystem = [{ path = "/var/log/app", access = "read-only" }]
//! env = ["TZ"]
//! network = ["metrics.example.com:443"]
//! programs = ["/usr/bin/df"]
//! metrics = true
//! kv = true
//!
//! [limits]
//! memory_mib = 64
//! timeout = "30s"
//! fuel = 500_000_000
//! ```

mod capabilities;
mod error;
mod table;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use capabilities::{Access, Capabilities, FsEntry, NetRule};
pub use error::ManifestError;
pub use table::{CAPABILITIES, Capability, CapabilityId, Gate, Kind, Refused};

/// A plugin's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Who the plugin is.
    pub plugin: PluginInfo,
    /// What it asks for; nothing by default.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Limits it wants per command; the agent's defaults and policy cap them.
    #[serde(default)]
    pub limits: Limits,
}

/// Name, version and topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInfo {
    /// Lower-case letters, digits, `-`, `_` and `.`; 1–64 characters.
    pub name: String,
    /// A semantic version (`1.2.0`).
    pub version: semver::Version,
    /// The topics it handles.
    pub topics: Vec<String>,
    /// What it does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Topics (of `topics`) whose commands change nothing on the host — they read state, or
    /// compute from their payload — so running one twice is harmless. They run without the
    /// journals on the agent and the server (no fsync: at transport speed); the price is that
    /// a command on one that is sent again after a lost connection may run again, and that a
    /// server crash may forget it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
}

/// Limits per command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory of one instance, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// How long one command may run.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Fuel (roughly, wasm instructions) one command may use; unmetered when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

impl Manifest {
    /// Parses and validates a manifest; the error names the field and what is wrong with it.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serializes")
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_name(&self.plugin.name)?;
        if self.plugin.topics.is_empty() {
            return Err(ManifestError::field(
                "plugin.topics",
                "lists no topic; name at least one topic the plugin handles",
            ));
        }
        for (i, topic) in self.plugin.topics.iter().enumerate() {
            validate_topic(topic)
                .map_err(|why| ManifestError::field(format!("plugin.topics[{i}]"), why))?;
        }
        for (i, topic) in self.plugin.read_only.iter().enumerate() {
            if !self.plugin.topics.contains(topic) {
                return Err(ManifestError::field(
                    format!("plugin.read_only[{i}]"),
                    format!(
                        "names `{topic}`, which is not in plugin.topics; list only topics the plugin handles"
                    ),
                ));
            }
        }
        self.capabilities.validate("capabilities")?;
        if self.limits.memory_mib == Some(0) {
            return Err(ManifestError::field(
                "limits.memory_mib",
                "must be at least 1",
            ));
        }
        if self.limits.timeout == Some(Duration::ZERO) {
            return Err(ManifestError::field(
                "limits.timeout",
                "must be longer than zero",
            ));
        }
        if self.limits.fuel == Some(0) {
            return Err(ManifestError::field("limits.fuel", "must be at least 1"));
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(ManifestError::field(
            "plugin.name",
            format!(
                "{name:?} is not a plugin name: use 1–64 lower-case letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        ))
    }
}

/// A topic: 1–128 characters of letters, digits, `-`, `_`, `.`, `/` and `:`.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 128
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{topic:?} is not a topic: use 1–128 letters, digits, '-', '_', '.', '/' or ':'"
        ))
    }
}

#[cfg(test)]
mod tests;
