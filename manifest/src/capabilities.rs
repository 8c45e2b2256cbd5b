//! Capabilities: what a plugin may touch outside its sandbox. A manifest lists what it asks
//! for; an agent's policy lists what it allows, in the same shape.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ManifestError;

/// Access to a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read files and list directories.
    ReadOnly,
    /// Also create, write, rename and remove.
    ReadWrite,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        })
    }
}

/// A directory a plugin may see, with everything below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsEntry {
    /// An absolute path on the agent host; the plugin sees it under the same path.
    pub path: PathBuf,
    /// What it may do there.
    pub access: Access,
}

/// An outbound network destination: `host:port`, where the port may be `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetRule {
    /// A DNS name or an IP address (lower case; IPv6 without brackets).
    pub host: String,
    /// A port, or `None` for any.
    pub port: Option<u16>,
}

impl FromStr for NetRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?} is not host:port (e.g. \"api.example.com:443\", \"10.0.0.5:*\", \"[::1]:8080\")"
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty()
            || host.contains(['/', ' ', '[', ']'])
            || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err())
        {
            return Err(bad());
        }
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
        };
        Ok(NetRule {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(port) => write!(f, "{host}:{port}"),
            None => write!(f, "{host}:*"),
        }
    }
}

impl NetRule {
    /// Does this rule (from a policy) cover `other` (from a manifest, or a connection)?
    pub fn covers(&self, other: &NetRule) -> bool {
        self.host == other.host && (self.port.is_none() || self.port == other.port)
    }
}

impl Serialize for NetRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a plugin may touch beyond its own memory. Everything is off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Directories, each preopened at its own path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystem: Vec<FsEntry>,
    /// Environment variables of the agent's process the plugin may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Outbound TCP/UDP destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<NetRule>,
    /// Programs (absolute paths) the plugin may start through the `process` interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<PathBuf>,
    /// Host and agent metrics through the `metrics` interface.
    #[serde(default, skip_serializing_if = "is_false")]
    pub metrics: bool,
    /// A per-plugin key-value store on the agent through the `kv` interface.
    #[serde(default, skip_serializing_if = "is_false")]
    pub kv: bool,
    /// Asking the server for data through `request-data`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub request_data: bool,
    /// Creating, starting, stopping and deleting supervised runtimes on the host through the
    /// `runtimes` interface (a process runtime's command must also be in `programs`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub runtimes: bool,
    /// Removing the agent itself (its state, its certificate's welcome at the server) through
    /// the `agent` interface.
    #[serde(default, skip_serializing_if = "is_false")]
    pub decommission: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Capabilities {
    /// True when nothing is asked for (or allowed).
    pub fn is_empty(&self) -> bool {
        *self == Capabilities::default()
    }

    /// Checks every entry; `at` is the field path of this table, for error messages.
    pub fn validate(&self, at: &str) -> Result<(), ManifestError> {
        for (i, entry) in self.filesystem.iter().enumerate() {
            validate_abs_path(&entry.path)
                .map_err(|why| ManifestError::field(format!("{at}.filesystem[{i}].path"), why))?;
        }
        for (i, name) in self.env.iter().enumerate() {
            let ok = !name.is_empty() && !name.contains(['=', '\0']);
            if !ok {
                return Err(ManifestError::field(
                    format!("{at}.env[{i}]"),
                    format!("{name:?} is not an environment variable name"),
                ));
            }
        }
        for (i, program) in self.programs.iter().enumerate() {
            validate_abs_path(program)
                .map_err(|why| ManifestError::field(format!("{at}.programs[{i}]"), why))?;
        }
        Ok(())
    }
}

/// An absolute path with no `.` or `..` components, so that what is granted is what is seen.
fn validate_abs_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} must be an absolute path", path.display()));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!("{} must not contain '.' or '..'", path.display()));
    }
    Ok(())
}
