//! The agent's local policy: what the agent's owner allows plugins to touch. A plugin gets the
//! intersection of what its manifest asks for and what this policy allows; whatever it asks for
//! beyond that is refused, with a message that names the capability and where to grant it.
//!
//! ```toml
//! # Allowed to every plugin.
//! [all.capabilities]
//! env = ["TZ", "LANG"]
//! metrics = true
//!
//! # Allowed to the plugin named "disk-report" (its manifest's plugin.name).
//! [plugins.disk-report.capabilities]
//! filesystem = [{ path = "/var/log", access = "read-only" }]
//! programs = ["/usr/bin/df"]
//!
//! # The most a plugin may have, whatever its manifest asks.
//! [plugins.disk-report.limits]
//! memory_mib = 128
//! timeout = "2m"
//! ```
//!
//! The intersection is the capability table's (`Capabilities::grant` in `ferry-manifest`); each
//! refused capability becomes a `Refusal` whose message names the capability and the exact table
//! and file to grant it in. Filesystem grants compare paths by component (`/srv/data` does not
//! cover `/srv/database`) and need at least the access asked for; limits are the smaller of asked
//! and allowed. `Policy::allowance` is what a built-in plugin asks for: exactly what the policy
//! allows its name.

use ferry_manifest::{Capabilities, Limits, Manifest, ManifestError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// It could not be read.
    #[error("cannot read the agent policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("the agent policy {path} is not valid: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        source: ManifestError,
    },
}

/// Grants for one plugin, or for all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// What is allowed.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The most that may be granted.
    #[serde(default)]
    pub limits: Limits,
}

/// The agent's policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Allowed to every plugin.
    #[serde(default)]
    pub all: PolicyEntry,
    /// Allowed to the plugin of that name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PolicyEntry>,
    /// Where the policy came from, for messages.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// A capability a plugin asked for and did not get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What was asked for, e.g. `read-write access to /srv/data`.
    pub capability: String,
    /// The full explanation, with where to grant it.
    pub message: String,
}

/// What a plugin may do: its manifest intersected with the policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    /// The capabilities it has.
    pub capabilities: Capabilities,
    /// Its limits (each the smaller of what it asked for and what the policy allows).
    pub limits: Limits,
    /// What it asked for and did not get.
    pub refusals: Vec<Refusal>,
}

impl Policy {
    /// A policy that allows nothing: every plugin runs with no capabilities.
    pub fn deny_all() -> Policy {
        Policy::default()
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |source| PolicyError::Invalid {
            path: path.display().to_string(),
            source,
        };
        let mut policy: Policy =
            toml::from_str(&text).map_err(|e| invalid(ManifestError::Syntax(e.to_string())))?;
        policy
            .all
            .capabilities
            .validate("all.capabilities")
            .map_err(invalid)?;
        for (name, entry) in &policy.plugins {
            entry
                .capabilities
                .validate(&format!("plugins.{name}.capabilities"))
                .map_err(invalid)?;
        }
        policy.source = Some(path.to_path_buf());
        Ok(policy)
    }

    /// Everything the policy allows the plugin `name` (`[all]` and `[plugins.<name>]`
    /// together). Built-in plugins ask for exactly this: they are ferry's own code, and what
    /// they may touch is the owner's call alone.
    pub fn allowance(&self, name: &str) -> Capabilities {
        let mut all = self.all.capabilities.clone();
        if let Some(entry) = self.plugins.get(name) {
            all.extend(&entry.capabilities);
        }
        all
    }

    /// What the plugin described by `manifest` may do here.
    pub fn grant(&self, manifest: &Manifest) -> Grant {
        self.grant_to(
            &manifest.plugin.name,
            &manifest.capabilities,
            &manifest.limits,
        )
    }

    /// What plugin `name`, asking for `asked` and `limits`, may do here. A plugin without a
    /// manifest asks for nothing; the policy's limits still cap it.
    pub fn grant_to(&self, name: &str, asked: &Capabilities, limits: &Limits) -> Grant {
        let own = self.plugins.get(name);
        let entries: Vec<&PolicyEntry> = std::iter::once(&self.all).chain(own).collect();
        let mut grant = Grant::default();
        // The intersection, capability by capability, is the capability table's
        // (`ferry_manifest::CAPABILITIES`); where to grant what it refuses is the policy's.
        let allowed: Vec<&Capabilities> = entries.iter().map(|e| &e.capabilities).collect();
        let (capabilities, refused) = asked.grant(&allowed);
        grant.capabilities = capabilities;
        grant.refusals = refused
            .into_iter()
            .map(|refused| Refusal {
                message: format!(
                    "plugin '{name}' asks for {}, which this agent's policy does not allow; to grant it, {} under [plugins.{name}.capabilities] in {}",
                    refused.what,
                    refused.how,
                    self.where_()
                ),
                capability: refused.what,
            })
            .collect();

        grant.limits = Limits {
            memory_mib: smallest(
                limits.memory_mib,
                entries.iter().filter_map(|e| e.limits.memory_mib),
            ),
            timeout: smallest(
                limits.timeout,
                entries.iter().filter_map(|e| e.limits.timeout),
            ),
            fuel: smallest(limits.fuel, entries.iter().filter_map(|e| e.limits.fuel)),
        };
        grant
    }

    fn where_(&self) -> String {
        match &self.source {
            Some(path) => path.display().to_string(),
            None => "the agent's policy file (none is configured: set `policy = \"/etc/ferry/policy.toml\"` in the agent's config)".into(),
        }
    }
}

/// The smallest of what was asked (if anything) and every cap; a cap alone applies too.
fn smallest<T: Ord + Copy>(asked: Option<T>, caps: impl Iterator<Item = T>) -> Option<T> {
    caps.fold(asked, |acc, cap| Some(acc.map_or(cap, |a| a.min(cap))))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn manifest(capabilities: &str) -> Manifest {
        Manifest::from_toml(&format!(
            "[plugin]\nname = \"disk-report\"\nversion = \"1.0.0\"\ntopics = [\"t\"]\n[capabilities]\n{capabilities}"
        ))
        .unwrap()
    }

    fn policy(text: &str) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        Policy::load(&path).unwrap()
    }

    #[test]
    fn deny_all_refuses_everything_and_says_where_to_grant_it() {
        let m = manifest(
            "filesystem = [{ path = \"/srv\", access = \"read-only\" }]\nenv = [\"TZ\"]\nnetwork = [\"a.example:443\"]\nprograms = [\"/bin/df\"]\nmetrics = true\nkv = true\nrequest_data = true\n",
        );
        let grant = Policy::deny_all().grant(&m);
        assert!(grant.capabilities.is_empty(), "{grant:?}");
        assert_eq!(grant.refusals.len(), 7);
        let first = &grant.refusals[0].message;
        assert!(
            first.contains("read-only access to /srv")
                && first.contains("[plugins.disk-report.capabilities]")
                && first.contains("policy = "),
            "{first}"
        );
    }

    #[test]
    fn the_grant_is_the_intersection() {
        let p = policy(
            r#"
            [all.capabilities]
            env = ["TZ"]
            metrics = true
            [plugins.disk-report.capabilities]
            filesystem = [{ path = "/srv/data", access = "read-only" }, { path = "/tmp/scratch", access = "read-write" }]
            network = ["api.example.com:*"]
            [plugins.other.capabilities]
            kv = true
            "#,
        );
        let m = manifest(
            r#"filesystem = [
                { path = "/srv/data/logs", access = "read-only" },
                { path = "/srv/data", access = "read-write" },
                { path = "/srv/database", access = "read-only" },
                { path = "/tmp/scratch", access = "read-only" },
            ]
            env = ["TZ", "HOME"]
            network = ["api.example.com:443", "evil.example.com:443"]
            metrics = true
            kv = true
            "#,
        );
        let grant = p.grant(&m);
        let granted: Vec<_> = grant
            .capabilities
            .filesystem
            .iter()
            .map(|e| e.path.display().to_string())
            .collect();
        assert_eq!(granted, ["/srv/data/logs", "/tmp/scratch"]);
        assert_eq!(grant.capabilities.env, ["TZ"]);
        assert_eq!(grant.capabilities.network.len(), 1);
        assert!(grant.capabilities.metrics);
        assert!(
            !grant.capabilities.kv,
            "another plugin's grant does not apply"
        );
        let refused: Vec<&str> = grant
            .refusals
            .iter()
            .map(|r| r.capability.as_str())
            .collect();
        assert_eq!(
            refused,
            [
                "read-write access to /srv/data",
                "read-only access to /srv/database",
                "the environment variable HOME",
                "network access to evil.example.com:443",
                "the `kv` interface"
            ]
        );
        assert!(
            grant.refusals[0].message.contains("policy.toml"),
            "names the policy file: {}",
            grant.refusals[0].message
        );
    }

    #[test]
    fn limits_are_the_smaller_of_asked_and_allowed() {
        let p = policy(
            "[all.limits]\nmemory_mib = 128\nfuel = 1000\n[plugins.disk-report.limits]\ntimeout = \"10s\"\n",
        );
        let mut m = manifest("");
        m.limits.memory_mib = Some(512);
        m.limits.timeout = Some(Duration::from_secs(5));
        let grant = p.grant(&m);
        assert_eq!(grant.limits.memory_mib, Some(128));
        assert_eq!(grant.limits.timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            grant.limits.fuel,
            Some(1000),
            "a policy's fuel cap applies even when the manifest sets none"
        );
    }

    #[test]
    fn an_invalid_policy_names_the_field() {
        let dir = std::env::temp_dir().join(format!("ferry-policy-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "[plugins.x.capabilities]\nprograms = [\"df\"]\n").unwrap();
        let err = Policy::load(&path).unwrap_err().to_string();
        assert!(err.contains("plugins.x.capabilities.programs[0]"), "{err}");
        std::fs::write(&path, "[plugins.x.capabilites]\n").unwrap();
        let err = Policy::load(&path).unwrap_err().to_string();
        assert!(err.contains("capabilites"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
