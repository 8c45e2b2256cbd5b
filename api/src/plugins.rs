//! `/v1/plugins`: pushed packages, assignments and their history, and where each agent is.

use ferry_protocol::digest::Digest;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::agents::AgentStatus;
pub use crate::selector::Selector;

/// One stored version of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The sha256 of the package.
    pub digest: Digest,
    /// The server's ed25519 signature over the digest, hex-encoded.
    pub signature: String,
    /// The package's size in bytes.
    pub size: u64,
    /// The topics it serves.
    pub topics: Vec<String>,
    /// The `ferry:plugin` world version it was built for.
    pub wit_version: String,
    /// What it does, from its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its manifest, as pushed.
    pub manifest: String,
    /// When it was pushed.
    #[serde(with = "time::serde::rfc3339")]
    pub pushed_at: OffsetDateTime,
}

/// A plugin version assigned to a set of agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The version.
    pub version: String,
    /// Which agents.
    pub to: Selector,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What a change of a plugin's assignment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// `ferry plugin assign` (or a push with `--to`).
    Assign,
    /// `ferry plugin unassign`.
    Unassign,
    /// `ferry plugin rollback`: back to what was assigned before the change it undid.
    Rollback,
}

impl ChangeKind {
    /// Its name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Assign => "assign",
            ChangeKind::Unassign => "unassign",
            ChangeKind::Rollback => "rollback",
        }
    }
}

/// One change of a plugin's assignment. The history keeps every one, oldest first, and is
/// never rewritten: a rollback is a change of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// What it did.
    pub change: ChangeKind,
    /// What agents serve from then on; `null` once unassigned.
    pub assigned: Option<Assignment>,
    /// Who made it: the operator API token's name.
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The change that was in force before this one (its place in the history): where a
    /// rollback of this one goes back to.
    pub previous: Option<usize>,
}

/// What a push did (`POST /v1/plugins`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushOutcome {
    /// The stored version.
    #[serde(flatten)]
    pub package: PackageRecord,
    /// False when exactly these bytes were pushed before (nothing new was stored).
    pub created: bool,
}

/// A plugin, as `GET /v1/plugins` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginSummary {
    /// Its name.
    pub name: String,
    /// The current assignment, if any.
    pub assigned: Option<Assignment>,
    /// Every stored version, oldest first.
    pub versions: Vec<PackageRecord>,
}

/// A plugin, as `GET /v1/plugins/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginDetails {
    /// Name, assignment and versions.
    #[serde(flatten)]
    pub summary: PluginSummary,
    /// Every change of its assignment, oldest first, with who made it and when.
    pub history: Vec<Change>,
    /// Which agents have (or should have) which version.
    pub agents: Vec<AgentPlugin>,
}

/// Where a plugin is on an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadState {
    /// Loaded and serving.
    Ready,
    /// Being fetched or compiled; or, at the end of a wait, not finished yet.
    Pending,
    /// It could not load it (`detail` says why).
    Failed,
    /// Assigned, but the agent has not said anything about it yet (e.g. it is offline).
    NotReported,
}

impl LoadState {
    /// Its name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            LoadState::Ready => "ready",
            LoadState::Pending => "pending",
            LoadState::Failed => "failed",
            LoadState::NotReported => "not-reported",
        }
    }
}

/// Compares by name, as code written against the API's JSON does (`state == "ready"`).
impl PartialEq<&str> for LoadState {
    fn eq(&self, name: &&str) -> bool {
        self.name() == *name
    }
}

/// One agent's copy of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPlugin {
    /// The agent.
    pub agent: String,
    /// Whether the agent is connected.
    pub agent_status: AgentStatus,
    /// The version it reported, if any.
    pub version: Option<String>,
    /// The package digest it reported, if any.
    pub digest: Option<Digest>,
    /// Ready, pending, failed, or not reported.
    pub state: LoadState,
    /// Why it failed.
    pub detail: Option<String>,
    /// When the agent last reported on it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated: Option<OffsetDateTime>,
}

/// Where one agent stands in a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRollout {
    /// The agent.
    pub agent: String,
    /// Ready, failed, or pending (not finished when the wait ended).
    pub state: LoadState,
    /// Why it failed.
    pub detail: Option<String>,
}

/// The body of `POST /v1/plugins/{name}/assign`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    /// The version; the newest pushed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `all`, or `key=value[,key=value…]`.
    pub to: String,
    /// Wait up to this long for the connected agents it selects to load it (or fail to), and
    /// answer with each one's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// The answer of `POST /v1/plugins/{name}/assign`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignOutcome {
    /// The assignment now in force.
    #[serde(flatten)]
    pub assignment: Assignment,
    /// Each selected agent's state when the wait ended; `null` without `wait_ms`.
    pub agents: Option<Vec<AgentRollout>>,
}

/// The body of `POST /v1/plugins/{name}/rollback` (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// As for assign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// The answer of `POST /v1/plugins/{name}/rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackOutcome {
    /// The assignment now in force; `null` when it went back to unassigned.
    pub assigned: Option<Assignment>,
    /// As for assign.
    pub agents: Option<Vec<AgentRollout>>,
}

/// The answer of `POST /v1/plugins/{name}/unassign`: `{"assigned": null}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnassignOutcome {
    /// Always `null`.
    pub assigned: Option<Assignment>,
}

/// The query of `DELETE /v1/plugins/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletePluginQuery {
    /// One version; without it, the whole plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The answer of `DELETE /v1/plugins/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// The versions deleted.
    pub deleted: Vec<String>,
}
