//! The plugin registry: pushed packages (content-addressed, signed), which version of each
//! plugin is assigned to which agents, and what each agent reported about them.
//!
//! Assignments are declarative: each plugin name has at most one current assignment (a version
//! and a [`Selector`]), and every connected agent is sent the complete set that applies to it
//! (`PluginAssign`) after its Welcome and whenever the set changes; see
//! `transport/accept.rs`. Rolling back returns to the assignment in force before the current
//! one, as a change of its own (below).
//!
//! `push` checks a package (decodes it, validates the manifest, `inspect` validates the component
//! and reads its world version), re-encodes it canonically, signs it and stores it. `assign`,
//! `rollback` and `unassign` keep one current assignment per plugin (a version and a `Selector`):
//! the last of an append-only history of `Change`s (assign, unassign, rollback; who made it, the
//! API token's name, and when; and the change in force before it, which is where a rollback
//! returns). Rolling back twice goes two steps back, and nothing is ever erased; a history stored
//! in the older stack format loads as changes by "(not recorded)". `delete` removes a version, or
//! the whole plugin with its history, in one transaction, refused while what it would delete is
//! assigned, and its package file once no record refers to its digest; a rollback to a deleted
//! version is refused by name.
//!
//! `desired_for(labels, wit_versions)` is the set one agent must serve. Agents' `PluginReport`s are
//! kept in memory, for `show` and for `wait_settled`, which API calls use to answer only once the
//! selected agents have loaded a version or failed to.

mod inspect;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use ferry_manifest::Manifest;
use ferry_protocol::package::{Digest, Package, SigningKey};
use ferry_protocol::{AssignedPlugin, PluginState, PluginStatus, WIT_VERSIONS};
use parking_lot::Mutex;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::ports::PluginStorage;
use crate::domain::agents::AgentInfo;
pub use ferry_api::{
    AgentPlugin, AgentRollout, Assignment, Change, ChangeKind, LoadState, PackageRecord,
    PluginDetails, PluginSummary, PushOutcome, Selector,
};

/// A plugin registry operation failed; each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The upload or request is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// No such plugin or version (404).
    #[error("{0}")]
    NotFound(String),
    /// It contradicts what the registry holds: a version pushed with other bytes, a topic
    /// served by another plugin, nothing to roll back to (409).
    #[error("{0}")]
    Conflict(String),
    /// An agent it would reach cannot run it (409).
    #[error("{0}")]
    Incompatible(String),
    /// The registry's storage failed (500).
    #[error("{0}")]
    Storage(String),
}

/// Who made the changes recorded before the history kept it.
const UNKNOWN_AUTHOR: &str = "(not recorded)";

/// A history as the store holds it: today's, or the stack of assignments kept before
/// (each one replaced the one before it, and a rollback had popped what it undid).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum StoredHistory {
    Changes(Vec<Change>),
    Stack(Vec<Option<Assignment>>),
}

impl StoredHistory {
    pub(crate) fn into_changes(self) -> Vec<Change> {
        match self {
            StoredHistory::Changes(changes) => changes,
            StoredHistory::Stack(stack) => stack
                .into_iter()
                .enumerate()
                .map(|(i, assigned)| Change {
                    change: match assigned {
                        Some(_) => ChangeKind::Assign,
                        None => ChangeKind::Unassign,
                    },
                    at: assigned
                        .as_ref()
                        .map_or(OffsetDateTime::UNIX_EPOCH, |a| a.at),
                    assigned,
                    by: UNKNOWN_AUTHOR.into(),
                    previous: i.checked_sub(1),
                })
                .collect(),
        }
    }
}

struct Reported {
    version: String,
    digest: Digest,
    state: PluginState,
    at: OffsetDateTime,
}

#[derive(Default)]
struct Entry {
    versions: BTreeMap<semver::Version, PackageRecord>,
    history: Vec<Change>,
}

impl Entry {
    fn current(&self) -> Option<&Assignment> {
        self.history.last().and_then(|c| c.assigned.as_ref())
    }

    fn current_package(&self) -> Option<(&Assignment, &PackageRecord)> {
        let assignment = self.current()?;
        let version = semver::Version::parse(&assignment.version).ok()?;
        Some((assignment, self.versions.get(&version)?))
    }
}

#[derive(Default)]
struct Inner {
    plugins: BTreeMap<String, Entry>,
    /// agent id → plugin name → what it last reported.
    reports: HashMap<String, BTreeMap<String, Reported>>,
}

/// The server's plugin registry.
pub struct PluginRegistry {
    store: Box<dyn PluginStorage>,
    key: SigningKey,
    inner: Mutex<Inner>,
    /// Bumped on every assignment change; each agent's control loop watches it.
    changed: watch::Sender<u64>,
    /// Bumped on every agent report; waiters for a rollout watch it.
    reported: watch::Sender<u64>,
    max_package_bytes: u64,
}

impl PluginRegistry {
    /// The registry over what `store` holds, signing pushes with the server's `key`.
    pub(crate) fn open(
        store: Box<dyn PluginStorage>,
        key: SigningKey,
        max_package_bytes: u64,
    ) -> Result<PluginRegistry, String> {
        let loaded = store.load()?;
        let mut inner = Inner::default();
        for record in loaded.packages {
            let version = semver::Version::parse(&record.version).map_err(|e| {
                format!(
                    "the stored plugin {}@{} has a bad version: {e}",
                    record.name, record.version
                )
            })?;
            inner
                .plugins
                .entry(record.name.clone())
                .or_default()
                .versions
                .insert(version, record);
        }
        for (name, history) in loaded.histories {
            inner.plugins.entry(name).or_default().history = history.into_changes();
        }
        Ok(PluginRegistry {
            store,
            key,
            inner: Mutex::new(inner),
            changed: watch::Sender::new(0),
            reported: watch::Sender::new(0),
            max_package_bytes,
        })
    }

    /// The largest package accepted, in bytes.
    pub fn max_package_bytes(&self) -> u64 {
        self.max_package_bytes
    }

    /// Checks and stores a pushed package (the encoding of a
    /// [`Package`](ferry_protocol::package::Package)). Nothing is stored unless every check
    /// passes. Blocking: it validates the whole component and writes files.
    pub fn push(&self, upload: &[u8]) -> Result<PushOutcome, PluginError> {
        if upload.len() as u64 > self.max_package_bytes {
            return Err(PluginError::Invalid(format!(
                "the package has {} bytes; this server accepts at most {} (max_plugin_bytes)",
                upload.len(),
                self.max_package_bytes
            )));
        }
        let package = Package::decode(upload).map_err(|e| PluginError::Invalid(e.to_string()))?;
        let manifest = Manifest::from_toml(&package.manifest)
            .map_err(|e| PluginError::Invalid(format!("the manifest is not valid: {e}")))?;
        let wit_version = inspect::world_version(&package.component)
            .map_err(|e| PluginError::Invalid(format!("the component is not usable: {e}")))?;
        if !WIT_VERSIONS.contains(&wit_version.as_str()) {
            return Err(PluginError::Invalid(format!(
                "the component targets ferry:plugin@{wit_version}, which this server does not know (it knows {}); build the plugin against one of those, or upgrade the server",
                WIT_VERSIONS.join(", ")
            )));
        }
        // Stored as the server encodes it, so the digest never depends on the client's CBOR
        // encoder.
        let manifest_text = package.manifest.clone();
        let bytes = Package::new(package.manifest, package.component).encode();
        let digest = Digest::of(&bytes);
        let name = manifest.plugin.name.clone();
        let version = manifest.plugin.version.clone();

        let mut inner = self.inner.lock();
        if let Some(existing) = inner
            .plugins
            .get(&name)
            .and_then(|e| e.versions.get(&version))
        {
            if existing.digest == digest {
                return Ok(PushOutcome {
                    package: existing.clone(),
                    created: false,
                });
            }
            return Err(PluginError::Conflict(format!(
                "{name} {version} was already pushed with other contents (sha256:{}); a version's contents never change: raise the version in the manifest and push again",
                existing.digest
            )));
        }
        let record = PackageRecord {
            name: name.clone(),
            version: version.to_string(),
            digest,
            signature: hex::encode(self.key.sign(&digest)),
            size: bytes.len() as u64,
            topics: manifest.plugin.topics.clone(),
            wit_version,
            description: manifest.plugin.description.clone(),
            manifest: manifest_text,
            pushed_at: OffsetDateTime::now_utc(),
        };
        self.store
            .put_blob(&digest, &bytes)
            .map_err(PluginError::Storage)?;
        self.store
            .put_package(&record)
            .map_err(PluginError::Storage)?;
        inner
            .plugins
            .entry(name)
            .or_default()
            .versions
            .insert(version, record.clone());
        Ok(PushOutcome {
            package: record,
            created: true,
        })
    }

    /// Assigns `version` of plugin `name` (its newest when `None`) to the agents `to` selects.
    /// Refused when a known agent it selects does not serve the plugin's world version, or when
    /// another assigned plugin serves one of its topics.
    pub fn assign(
        &self,
        name: &str,
        version: Option<&str>,
        to: Selector,
        agents: &[AgentInfo],
        by: &str,
    ) -> Result<Assignment, PluginError> {
        let mut inner = self.inner.lock();
        let entry = inner.plugins.get(name).ok_or_else(|| not_found(name))?;
        let package = match version {
            Some(v) => {
                let parsed = semver::Version::parse(v).map_err(|e| {
                    PluginError::Invalid(format!("'{v}' is not a version (e.g. 1.2.0): {e}"))
                })?;
                entry.versions.get(&parsed).ok_or_else(|| {
                    PluginError::NotFound(format!(
                        "plugin {name} has no version {v}; it has {}",
                        versions_of(entry)
                    ))
                })?
            }
            None => entry
                .versions
                .values()
                .next_back()
                .ok_or_else(|| not_found(name))?,
        };
        for agent in agents.iter().filter(|a| to.matches(&a.labels)) {
            if !agent.wit_versions.contains(&package.wit_version) {
                return Err(PluginError::Incompatible(incompatible(package, agent)));
            }
        }
        for (other_name, other) in &inner.plugins {
            if other_name == name {
                continue;
            }
            if let Some((assignment, other_package)) = other.current_package()
                && let Some(topic) = package
                    .topics
                    .iter()
                    .find(|t| other_package.topics.contains(t))
            {
                return Err(PluginError::Conflict(format!(
                    "topic '{topic}' is served by plugin {other_name} {} (assigned to {}); unassign it first: ferry plugin unassign {other_name}",
                    assignment.version, assignment.to
                )));
            }
        }
        let assignment = Assignment {
            version: package.version.clone(),
            to,
            at: OffsetDateTime::now_utc(),
        };
        let entry = inner.plugins.get_mut(name).expect("checked above");
        if entry
            .current()
            .is_some_and(|c| c.version == assignment.version && c.to == assignment.to)
        {
            return Ok(entry.current().cloned().expect("checked"));
        }
        let at = assignment.at;
        self.append_change(
            entry,
            name,
            ChangeKind::Assign,
            Some(assignment.clone()),
            by,
            at,
        )?;
        Ok(assignment)
    }

    /// Goes back to what was assigned before the change in force (which may be "unassigned");
    /// again, to the one before that. The history keeps both the undone change and this one.
    pub fn rollback(&self, name: &str, by: &str) -> Result<Option<Assignment>, PluginError> {
        let mut inner = self.inner.lock();
        let entry = inner.plugins.get_mut(name).ok_or_else(|| not_found(name))?;
        let Some(target) = entry.history.last().and_then(|c| c.previous) else {
            return Err(PluginError::Conflict(format!(
                "plugin {name} has no earlier assignment to roll back to (`ferry plugin show {name}` lists its history)"
            )));
        };
        if let Some(gone) = entry.history[target].assigned.as_ref().filter(|a| {
            semver::Version::parse(&a.version).map_or(true, |v| !entry.versions.contains_key(&v))
        }) {
            return Err(PluginError::Conflict(format!(
                "plugin {name} would roll back to {}, which was deleted; assign a version it has: {}",
                gone.version,
                versions_of(entry)
            )));
        }
        let now = OffsetDateTime::now_utc();
        let back = entry.history[target]
            .assigned
            .clone()
            .map(|a| Assignment { at: now, ..a });
        let previous = entry.history[target].previous;
        let mut history = entry.history.clone();
        history.push(Change {
            change: ChangeKind::Rollback,
            assigned: back.clone(),
            by: by.to_string(),
            at: now,
            previous,
        });
        self.replace_history(entry, name, history)?;
        Ok(back)
    }

    /// Deletes `version` of plugin `name`, or the whole plugin (every version and its
    /// history) when `None`. Refused while what it would delete is assigned: agents would be
    /// left serving a version the server can no longer send. Returns the versions deleted.
    pub fn delete(&self, name: &str, version: Option<&str>) -> Result<Vec<String>, PluginError> {
        let mut inner = self.inner.lock();
        let entry = inner.plugins.get(name).ok_or_else(|| not_found(name))?;
        let doomed: Vec<semver::Version> = match version {
            Some(v) => {
                let parsed = semver::Version::parse(v).map_err(|e| {
                    PluginError::Invalid(format!("'{v}' is not a version (e.g. 1.2.0): {e}"))
                })?;
                if !entry.versions.contains_key(&parsed) {
                    return Err(PluginError::NotFound(format!(
                        "plugin {name} has no version {v}; it has {}",
                        versions_of(entry)
                    )));
                }
                vec![parsed]
            }
            None => entry.versions.keys().cloned().collect(),
        };
        if let Some(current) = entry.current()
            && (version.is_none() || version == Some(current.version.as_str()))
        {
            return Err(PluginError::Conflict(format!(
                "plugin {name} {} is assigned to {}; unassign it first (ferry plugin unassign {name}) or assign another version",
                current.version, current.to
            )));
        }
        let names: Vec<String> = doomed.iter().map(|v| v.to_string()).collect();
        let whole = version.is_none();
        self.store
            .delete(name, &names, whole)
            .map_err(PluginError::Storage)?;
        let entry = inner.plugins.get_mut(name).expect("checked above");
        let gone: Vec<PackageRecord> = doomed
            .iter()
            .filter_map(|v| entry.versions.remove(v))
            .collect();
        if whole {
            inner.plugins.remove(name);
        }
        // A package file is shared by identical bytes only; keep it while a record refers to it.
        for record in gone {
            let used = inner
                .plugins
                .values()
                .flat_map(|e| e.versions.values())
                .any(|r| r.digest == record.digest);
            if !used && let Err(e) = self.store.delete_blob(&record.digest) {
                tracing::warn!(plugin = %name, version = %record.version, error = %e, "cannot remove a deleted version's package file");
            }
        }
        Ok(names)
    }

    /// Stops serving plugin `name` anywhere (commands already running finish).
    pub fn unassign(&self, name: &str, by: &str) -> Result<(), PluginError> {
        let mut inner = self.inner.lock();
        let entry = inner.plugins.get_mut(name).ok_or_else(|| not_found(name))?;
        if entry.current().is_none() {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        self.append_change(entry, name, ChangeKind::Unassign, None, by, now)
    }

    /// Appends an assign or unassign to the history; the change in force before it is the
    /// one a rollback returns to.
    fn append_change(
        &self,
        entry: &mut Entry,
        name: &str,
        change: ChangeKind,
        assigned: Option<Assignment>,
        by: &str,
        at: OffsetDateTime,
    ) -> Result<(), PluginError> {
        let mut history = entry.history.clone();
        history.push(Change {
            change,
            assigned,
            by: by.to_string(),
            at,
            previous: entry.history.len().checked_sub(1),
        });
        self.replace_history(entry, name, history)
    }

    /// Stores a plugin's new assignment history, then makes it current and tells the agents'
    /// control loops (they recompute their sets once the registry's lock is released).
    fn replace_history(
        &self,
        entry: &mut Entry,
        name: &str,
        history: Vec<Change>,
    ) -> Result<(), PluginError> {
        self.store
            .put_history(name, &history)
            .map_err(PluginError::Storage)?;
        entry.history = history;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Every plugin, by name.
    pub fn list(&self) -> Vec<PluginSummary> {
        let inner = self.inner.lock();
        inner
            .plugins
            .iter()
            .map(|(name, entry)| summary(name, entry))
            .collect()
    }

    /// One plugin, with which agents have which version.
    pub fn show(&self, name: &str, agents: &[AgentInfo]) -> Option<PluginDetails> {
        let inner = self.inner.lock();
        let entry = inner.plugins.get(name)?;
        let current = entry.current_package();
        let mut views = Vec::new();
        for agent in agents {
            let reported = inner.reports.get(&agent.id).and_then(|r| r.get(name));
            let selected = current.is_some_and(|(a, _)| a.to.matches(&agent.labels));
            if !selected && reported.is_none() {
                continue;
            }
            let (state, detail) = match reported.map(|r| &r.state) {
                Some(PluginState::Ready) => (LoadState::Ready, None),
                Some(PluginState::Pending) => (LoadState::Pending, None),
                Some(PluginState::Failed(why)) => (LoadState::Failed, Some(why.clone())),
                None => (LoadState::NotReported, None),
            };
            views.push(AgentPlugin {
                agent: agent.id.clone(),
                agent_status: agent.status,
                version: reported.map(|r| r.version.clone()),
                digest: reported.map(|r| r.digest),
                state,
                detail,
                updated: reported.map(|r| r.at),
            });
        }
        Some(PluginDetails {
            summary: summary(name, entry),
            history: entry.history.clone(),
            agents: views,
        })
    }

    /// The plugins an agent with these labels and WIT versions must serve, and the ones
    /// selected for it that it cannot run (with the reason).
    pub(crate) fn desired_for(
        &self,
        labels: &BTreeMap<String, String>,
        wit_versions: &[String],
    ) -> (Vec<AssignedPlugin>, Vec<PluginStatus>) {
        let inner = self.inner.lock();
        let mut assigned = Vec::new();
        let mut refused = Vec::new();
        for entry in inner.plugins.values() {
            let Some((assignment, package)) = entry.current_package() else {
                continue;
            };
            if !assignment.to.matches(labels) {
                continue;
            }
            if !wit_versions.contains(&package.wit_version) {
                refused.push(PluginStatus {
                    name: package.name.clone(),
                    version: package.version.clone(),
                    digest: package.digest,
                    state: PluginState::Failed(format!(
                        "not sent: {} {} needs ferry:plugin@{}, but this agent serves only {}; upgrade the agent",
                        package.name,
                        package.version,
                        package.wit_version,
                        served(wit_versions)
                    )),
                });
                continue;
            }
            assigned.push(AssignedPlugin {
                name: package.name.clone(),
                version: package.version.clone(),
                digest: package.digest,
                signature: hex::decode(&package.signature).unwrap_or_default(),
                size: package.size,
                topics: package.topics.clone(),
            });
        }
        (assigned, refused)
    }

    /// Records what an agent reported about its plugins.
    pub(crate) fn record(&self, agent: &str, statuses: &[PluginStatus]) {
        let now = OffsetDateTime::now_utc();
        let mut inner = self.inner.lock();
        let reports = inner.reports.entry(agent.to_string()).or_default();
        for status in statuses {
            if let PluginState::Failed(why) = &status.state {
                tracing::warn!(%agent, plugin = %status.name, version = %status.version, "plugin failed on the agent: {why}");
            }
            reports.insert(
                status.name.clone(),
                Reported {
                    version: status.version.clone(),
                    digest: status.digest,
                    state: status.state.clone(),
                    at: now,
                },
            );
        }
        drop(inner);
        self.reported.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until each of `agents` has reported the current assignment of `name` as ready or
    /// failed, or `timeout` passes; returns each agent's state then (`pending` for those that
    /// have not finished).
    pub async fn wait_settled(
        &self,
        name: &str,
        agents: &[String],
        timeout: std::time::Duration,
    ) -> Vec<AgentRollout> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut reports = self.reported.subscribe();
        loop {
            reports.mark_unchanged();
            let states = self.rollout(name, agents);
            let settled = states.iter().all(|s| s.state != LoadState::Pending);
            if settled || tokio::time::Instant::now() >= deadline {
                return states;
            }
            let _ = tokio::time::timeout_at(deadline, reports.changed()).await;
        }
    }

    fn rollout(&self, name: &str, agents: &[String]) -> Vec<AgentRollout> {
        let inner = self.inner.lock();
        let digest = inner
            .plugins
            .get(name)
            .and_then(Entry::current_package)
            .map(|(_, p)| p.digest);
        agents
            .iter()
            .map(|agent| {
                let reported = inner
                    .reports
                    .get(agent)
                    .and_then(|r| r.get(name))
                    .filter(|r| Some(r.digest) == digest);
                let (state, detail) = match reported.map(|r| &r.state) {
                    Some(PluginState::Ready) => (LoadState::Ready, None),
                    Some(PluginState::Failed(why)) => (LoadState::Failed, Some(why.clone())),
                    Some(PluginState::Pending) | None => (LoadState::Pending, None),
                };
                AgentRollout {
                    agent: agent.clone(),
                    state,
                    detail,
                }
            })
            .collect()
    }

    /// Forgets reports about plugins the agent no longer has assigned.
    pub(crate) fn retain_reports(&self, agent: &str, names: &[&str]) {
        if let Some(reports) = self.inner.lock().reports.get_mut(agent) {
            reports.retain(|name, _| names.contains(&name.as_str()));
        }
    }

    /// The file of a package the registry holds.
    pub(crate) fn package_path(&self, digest: &Digest) -> Option<PathBuf> {
        let inner = self.inner.lock();
        let known = inner
            .plugins
            .values()
            .flat_map(|e| e.versions.values())
            .any(|r| &r.digest == digest);
        known.then(|| self.store.blob_path(digest))
    }

    /// A receiver that sees every assignment change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

fn summary(name: &str, entry: &Entry) -> PluginSummary {
    PluginSummary {
        name: name.to_string(),
        assigned: entry.current().cloned(),
        versions: entry.versions.values().cloned().collect(),
    }
}

fn not_found(name: &str) -> PluginError {
    PluginError::NotFound(format!(
        "no plugin named {name} was pushed to this server; `ferry plugin list` shows the plugins"
    ))
}

fn versions_of(entry: &Entry) -> String {
    let versions: Vec<String> = entry.versions.keys().map(|v| v.to_string()).collect();
    versions.join(", ")
}

fn served(wit_versions: &[String]) -> String {
    if wit_versions.is_empty() {
        return "no ferry:plugin version".to_string();
    }
    let versions: Vec<String> = wit_versions
        .iter()
        .map(|v| format!("ferry:plugin@{v}"))
        .collect();
    versions.join(", ")
}

fn incompatible(package: &PackageRecord, agent: &AgentInfo) -> String {
    format!(
        "{} {} is built for ferry:plugin@{}, but agent {} serves only {}; upgrade that agent, or choose agents that serve it with --to",
        package.name,
        package.version,
        package.wit_version,
        agent.id,
        served(&agent.wit_versions)
    )
}

#[cfg(test)]
mod tests;
