//! The one table of capabilities ([`CAPABILITIES`]): each one's key, kind, what it gates, its
//! line of documentation and how it is granted. Everything else that lists capabilities
//! derives from it: the policy's intersection ([`Capabilities::grant`]), the host's refusals,
//! `ferry plugin test --grant`, the new-plugin template and the table in `docs/PLUGINS.md`
//! (tests check the last two, and that every field of [`Capabilities`] is here).

use std::fmt;

use crate::capabilities::{Capabilities, FsEntry};

/// Which capability: one per field of [`Capabilities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapabilityId {
    /// `filesystem`
    Filesystem,
    /// `env`
    Env,
    /// `network`
    Network,
    /// `programs`
    Programs,
    /// `metrics`
    Metrics,
    /// `kv`
    Kv,
    /// `request_data`
    RequestData,
    /// `runtimes`
    Runtimes,
    /// `decommission`
    Decommission,
}

/// The kind of value a capability takes under `[capabilities]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true` or `false`; off by default.
    Switch,
    /// A list whose entries are asked for and granted one by one; empty by default.
    List,
}

/// What a capability lets a plugin reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// A WASI 0.2 interface (`wasi:<name>`), which wasmtime-wasi serves from the grant.
    Wasi(&'static str),
    /// A `ferry:plugin` interface (`ferry:plugin/<name>`), or one function of one
    /// (`context.request-data`), which answers only granted plugins.
    Ferry(&'static str),
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Wasi(name) => write!(f, "wasi:{name}"),
            Gate::Ferry(name) => write!(f, "ferry:plugin/{name}"),
        }
    }
}

/// One capability, as everything outside the code that serves it sees it.
#[derive(Debug)]
pub struct Capability {
    /// Which one.
    pub id: CapabilityId,
    /// Its key under `[capabilities]` in a manifest and in a policy, and its name in messages.
    pub key: &'static str,
    /// The kind of value it takes.
    pub kind: Kind,
    /// The interface it gates.
    pub gate: Gate,
    /// One line for the documentation.
    pub doc: &'static str,
    /// A value as a manifest or policy writes it, for examples.
    pub example: &'static str,
    /// How `ferry plugin test --grant` grants it.
    pub flag: &'static str,
}

/// Every capability, in the order of [`Capabilities`]' fields (the order refusals come in).
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        id: CapabilityId::Filesystem,
        key: "filesystem",
        kind: Kind::List,
        gate: Gate::Wasi("filesystem"),
        doc: "Directories, each seen at its own path with what is below it, read-only or read-write.",
        example: r#"[{ path = "/var/log/app", access = "read-only" }]"#,
        flag: "fs=PATH[:rw]",
    },
    Capability {
        id: CapabilityId::Env,
        key: "env",
        kind: Kind::List,
        gate: Gate::Wasi("cli/environment"),
        doc: "Environment variables of the agent's process, read when the plugin loads.",
        example: r#"["TZ"]"#,
        flag: "env=NAME",
    },
    Capability {
        id: CapabilityId::Network,
        key: "network",
        kind: Kind::List,
        gate: Gate::Wasi("sockets"),
        doc: "Outbound TCP and UDP destinations, `host:port` (`*` for any port); never listening.",
        example: r#"["metrics.example.com:443"]"#,
        flag: "net=HOST:PORT",
    },
    Capability {
        id: CapabilityId::Programs,
        key: "programs",
        kind: Kind::List,
        gate: Gate::Ferry("process"),
        doc: "Programs the plugin may start, by absolute path (also what a runtime may run).",
        example: r#"["/usr/bin/df"]"#,
        flag: "program=PATH",
    },
    Capability {
        id: CapabilityId::Metrics,
        key: "metrics",
        kind: Kind::Switch,
        gate: Gate::Ferry("metrics"),
        doc: "CPU, memory and disk of the host and the agent: now, and the history the agent keeps.",
        example: "true",
        flag: "metrics",
    },
    Capability {
        id: CapabilityId::Kv,
        key: "kv",
        kind: Kind::Switch,
        gate: Gate::Ferry("kv"),
        doc: "A key-value store of the plugin's own on the agent, kept across commands and restarts.",
        example: "true",
        flag: "kv",
    },
    Capability {
        id: CapabilityId::RequestData,
        key: "request_data",
        kind: Kind::Switch,
        gate: Gate::Ferry("context.request-data"),
        doc: "Asking the server for data the command needs, by key.",
        example: "true",
        flag: "request_data",
    },
    Capability {
        id: CapabilityId::Runtimes,
        key: "runtimes",
        kind: Kind::Switch,
        gate: Gate::Ferry("runtimes"),
        doc: "Supervised workloads on the host: create, start, stop, delete (their programs granted in `programs`).",
        example: "true",
        flag: "runtimes",
    },
    Capability {
        id: CapabilityId::Decommission,
        key: "decommission",
        kind: Kind::Switch,
        gate: Gate::Ferry("agent"),
        doc: "Removing the agent itself for good, once the command's result has reached the server.",
        example: "true",
        flag: "decommission",
    },
];

impl CapabilityId {
    /// Its entry in [`CAPABILITIES`].
    pub fn capability(self) -> &'static Capability {
        CAPABILITIES
            .iter()
            .find(|c| c.id == self)
            .expect("every capability is in the table")
    }

    /// Its key under `[capabilities]`.
    pub fn key(self) -> &'static str {
        self.capability().key
    }
}

impl Capability {
    /// The capability whose key is `key`.
    pub fn by_key(key: &str) -> Option<&'static Capability> {
        CAPABILITIES.iter().find(|c| c.key == key)
    }
}

/// A capability a plugin asked for and was not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Which capability.
    pub id: CapabilityId,
    /// What was asked for, e.g. `read-write access to /srv/data` or the `kv` interface.
    pub what: String,
    /// How a policy allows it, completing "to grant it, …": e.g. ``set `kv = true` ``.
    pub how: String,
}

impl Capabilities {
    /// Whether switch `id` is on; `None` for a list.
    pub fn switch(&self, id: CapabilityId) -> Option<bool> {
        let c = self;
        match id {
            CapabilityId::Metrics => Some(c.metrics),
            CapabilityId::Kv => Some(c.kv),
            CapabilityId::RequestData => Some(c.request_data),
            CapabilityId::Runtimes => Some(c.runtimes),
            CapabilityId::Decommission => Some(c.decommission),
            CapabilityId::Filesystem
            | CapabilityId::Env
            | CapabilityId::Network
            | CapabilityId::Programs => None,
        }
    }

    /// Switch `id`, to set; `None` for a list.
    pub fn switch_mut(&mut self, id: CapabilityId) -> Option<&mut bool> {
        let c = self;
        match id {
            CapabilityId::Metrics => Some(&mut c.metrics),
            CapabilityId::Kv => Some(&mut c.kv),
            CapabilityId::RequestData => Some(&mut c.request_data),
            CapabilityId::Runtimes => Some(&mut c.runtimes),
            CapabilityId::Decommission => Some(&mut c.decommission),
            CapabilityId::Filesystem
            | CapabilityId::Env
            | CapabilityId::Network
            | CapabilityId::Programs => None,
        }
    }

    /// Adds everything `other` has: its list entries, its switches that are on. How a policy's
    /// `[all]` and `[plugins.<name>]` combine, and several `--grant`s.
    pub fn extend(&mut self, other: &Capabilities) {
        // Destructured so that a new field does not compile until it is combined here.
        let Capabilities {
            filesystem,
            env,
            network,
            programs,
            metrics,
            kv,
            request_data,
            runtimes,
            decommission,
        } = other;
        self.filesystem.extend(filesystem.iter().cloned());
        self.env.extend(env.iter().cloned());
        self.network.extend(network.iter().cloned());
        self.programs.extend(programs.iter().cloned());
        self.metrics |= metrics;
        self.kv |= kv;
        self.request_data |= request_data;
        self.runtimes |= runtimes;
        self.decommission |= decommission;
    }

    /// What of `self` (a manifest's request) one of `allowed` (a policy's entries) covers, and
    /// what none does, capability by capability in [`CAPABILITIES`]' order: a directory is
    /// covered by itself or one above it with at least the access asked for (compared by
    /// component, so `/srv/data` does not cover `/srv/database`), a destination by a rule for
    /// its host and port (or any port), a variable or a program by itself, a switch by any entry
    /// that has it on.
    pub fn grant(&self, allowed: &[&Capabilities]) -> (Capabilities, Vec<Refused>) {
        let mut granted = Capabilities::default();
        let mut refused = Vec::new();
        let mut refuse = |id: CapabilityId, what: String, how: String| {
            refused.push(Refused { id, what, how });
        };
        for capability in CAPABILITIES {
            let id = capability.id;
            let key = capability.key;
            match id {
                CapabilityId::Filesystem => {
                    for entry in &self.filesystem {
                        if allowed
                            .iter()
                            .flat_map(|a| &a.filesystem)
                            .any(|a| covers(a, entry))
                        {
                            granted.filesystem.push(entry.clone());
                        } else {
                            refuse(
                                id,
                                format!("{} access to {}", entry.access, entry.path.display()),
                                format!(
                                    "add `{{ path = {:?}, access = \"{}\" }}` to `{key}`",
                                    entry.path.display().to_string(),
                                    entry.access
                                ),
                            );
                        }
                    }
                }
                CapabilityId::Env => {
                    for var in &self.env {
                        if allowed.iter().any(|a| a.env.contains(var)) {
                            granted.env.push(var.clone());
                        } else {
                            refuse(
                                id,
                                format!("the environment variable {var}"),
                                format!("add `{var:?}` to `{key}`"),
                            );
                        }
                    }
                }
                CapabilityId::Network => {
                    for rule in &self.network {
                        if allowed
                            .iter()
                            .flat_map(|a| &a.network)
                            .any(|a| a.covers(rule))
                        {
                            granted.network.push(rule.clone());
                        } else {
                            refuse(
                                id,
                                format!("network access to {rule}"),
                                format!("add `\"{rule}\"` to `{key}`"),
                            );
                        }
                    }
                }
                CapabilityId::Programs => {
                    for program in &self.programs {
                        if allowed.iter().any(|a| a.programs.contains(program)) {
                            granted.programs.push(program.clone());
                        } else {
                            refuse(
                                id,
                                format!("starting the program {}", program.display()),
                                format!("add `{:?}` to `{key}`", program.display().to_string()),
                            );
                        }
                    }
                }
                CapabilityId::Metrics
                | CapabilityId::Kv
                | CapabilityId::RequestData
                | CapabilityId::Runtimes
                | CapabilityId::Decommission => {
                    if self.switch(id) != Some(true) {
                        continue;
                    }
                    if allowed.iter().any(|a| a.switch(id) == Some(true)) {
                        *granted.switch_mut(id).expect("a switch") = true;
                    } else {
                        refuse(
                            id,
                            format!("the `{key}` interface"),
                            format!("set `{key} = true`"),
                        );
                    }
                }
            }
        }
        (granted, refused)
    }
}

/// Does policy entry `allowed` cover the request `asked`: the same directory or one above it,
/// with at least the access asked for? Paths are compared component by component, so
/// `/srv/data` does not cover `/srv/database`.
fn covers(allowed: &FsEntry, asked: &FsEntry) -> bool {
    asked.path.starts_with(&allowed.path) && allowed.access >= asked.access
}
