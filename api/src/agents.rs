//! `/v1/agents`: the agents, their labels and revocations.

use std::collections::BTreeMap;
use std::fmt;

use ferry_protocol::digest::Digest;
use ferry_protocol::{HostMetrics, RuntimeState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::plugins::LoadState;

/// Whether an agent can take commands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentStatus {
    /// Connected, heartbeats arriving.
    Online,
    /// Connected, but no heartbeat within the grace period.
    Unresponsive,
    /// Not connected.
    Offline,
}

impl AgentStatus {
    /// Its name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Unresponsive => "unresponsive",
            AgentStatus::Offline => "offline",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Another installation of an agent's identity, refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicateSeen {
    /// Where the refused connection came from.
    pub remote_address: String,
    /// The instance id it sent.
    pub instance: String,
    /// When it was last refused.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// How many times it has been refused.
    pub refused: u64,
}

/// `ok`, or `degraded` when a runtime that should run does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatHealth {
    /// Everything it should run runs.
    Ok,
    /// A runtime that should run does not.
    Degraded,
}

impl HeartbeatHealth {
    /// Its name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            HeartbeatHealth::Ok => "ok",
            HeartbeatHealth::Degraded => "degraded",
        }
    }
}

/// A heartbeat as edge-orchestrator tools read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatView {
    /// The agent's id (from its certificate, not from the heartbeat).
    pub agent_id: String,
    /// Host CPU use, 0–100.
    pub cpu_usage_percent: f32,
    /// Host memory in use, GB (10^9 bytes).
    pub memory_usage_gb: f64,
    /// Host memory, GB.
    pub memory_total_gb: f64,
    /// Used space on the agent's data volume, GB.
    pub disk_usage_gb: f64,
    /// Size of that volume, GB.
    pub disk_total_gb: f64,
    /// Seconds since the host booted.
    pub uptime_s: u64,
    /// Whether everything the agent supervises runs.
    pub status: HeartbeatHealth,
    /// When the agent sent it (ISO-8601, the agent's clock).
    pub timestamp: String,
    /// The runtimes it supervises.
    pub runtimes: Vec<RuntimeState>,
}

/// An operator's revocation of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who (the API token's name).
    pub by: String,
    /// Why, if they said.
    pub reason: Option<String>,
}

/// An agent, as `GET /v1/agents` lists it: what the server knows of it, with `labels` the
/// effective ones (its own, `agent_labels`, with the operator's, `server_labels`, merged over
/// them) and its revocation, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// The id from the agent's certificate.
    pub id: String,
    /// Online, unresponsive or offline.
    pub status: AgentStatus,
    /// Its own labels with the operator's merged over them: what selectors match.
    pub labels: BTreeMap<String, String>,
    /// The labels from its last Hello.
    pub agent_labels: BTreeMap<String, String>,
    /// The labels an operator set on the server.
    pub server_labels: BTreeMap<String, String>,
    /// Set while it is revoked.
    pub revoked: Option<Revocation>,
    /// Its software version.
    pub agent_version: String,
    /// The topics it handles.
    pub topics: Vec<String>,
    /// Those of them its plugins declare read-only: their commands run without the journals.
    #[serde(default)]
    pub read_only_topics: Vec<String>,
    /// The `ferry:plugin` WIT versions it serves.
    pub wit_versions: Vec<String>,
    /// The address its connection comes from.
    pub remote_address: Option<String>,
    /// When its current (or last) connection was accepted.
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
    /// When its last heartbeat arrived.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_heartbeat: Option<OffsetDateTime>,
    /// The metrics of its last heartbeat.
    pub metrics: Option<HostMetrics>,
    /// Commands it said it was running in its last heartbeat.
    pub running_commands: u32,
    /// Its last heartbeat, in the shape edge-orchestrator tools expect; not kept across a
    /// restart of the server.
    pub heartbeat: Option<HeartbeatView>,
    /// Which installation of the agent holds the identity (its Hello's `instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The last time another installation presenting this identity was refused while this
    /// one was connected: a cloned host or a copied data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<DuplicateSeen>,
}

/// `GET /v1/agents/{id}`: the agent with the plugins it has or should have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDetails {
    /// The agent, as listed.
    #[serde(flatten)]
    pub agent: Agent,
    /// Each pushed plugin whose assignment reaches it (by its own labels), and where it is.
    pub plugins: Vec<AgentPluginView>,
}

/// One plugin on one agent, as `GET /v1/agents/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPluginView {
    /// The plugin.
    pub name: String,
    /// The version the agent reported, if any.
    pub version: Option<String>,
    /// The package digest it reported, if any.
    pub digest: Option<Digest>,
    /// Where it is.
    pub state: LoadState,
    /// Why it failed.
    pub detail: Option<String>,
    /// When the agent last reported on it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated: Option<OffsetDateTime>,
}

/// The answer of `POST /v1/agents/{id}/revoke` and `…/unrevoke`: the agent, or only its id
/// and revocation when no agent of that id has connected since the server started (an id can
/// be revoked before it ever connects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RevokedAgent {
    /// An agent the server knows.
    Known(Box<Agent>),
    /// An id the server has not seen.
    Unseen(UnseenAgent),
}

impl RevokedAgent {
    /// The agent's id.
    pub fn id(&self) -> &str {
        match self {
            RevokedAgent::Known(agent) => &agent.id,
            RevokedAgent::Unseen(unseen) => &unseen.id,
        }
    }
}

/// An agent id the server has not seen, with its revocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnseenAgent {
    /// The id.
    pub id: String,
    /// Set while it is revoked.
    pub revoked: Option<Revocation>,
}

/// The query of `GET /v1/agents`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsQuery {
    /// `key=value[,key=value…]`: agents carrying every label (effective labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// online, unresponsive or offline; any other word matches none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The body of `POST /v1/agents/{id}/labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsRequest {
    /// Labels to set (over the agent's own).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Server labels to remove (the agent's own are its own).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The body of `POST /v1/agents/{id}/revoke` (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why, for the record.
    pub reason: Option<String>,
}
