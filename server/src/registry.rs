//! The agent registry: which agents the server knows, which are online, and what they last said.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferry_protocol::{AgentId, Heartbeat, Hello, HostMetrics};
use parking_lot::Mutex;
use serde::Serialize;
use time::OffsetDateTime;

/// Whether an agent can take commands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentStatus {
    /// Connected, heartbeats arriving.
    Online,
    /// Connected, but no heartbeat within the grace period.
    Unresponsive,
    /// Not connected.
    Offline,
}

/// What the server knows of an agent, as the operator API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    /// The id from the agent's certificate.
    pub id: String,
    /// Online, unresponsive or offline.
    pub status: AgentStatus,
    /// The labels from its last Hello.
    pub labels: BTreeMap<String, String>,
    /// Its software version.
    pub agent_version: String,
    /// The topics it handles.
    pub topics: Vec<String>,
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
}

struct Entry {
    info: AgentInfo,
    connection: Option<(u64, quinn::Connection)>,
    last_heartbeat_at: Instant,
}

/// The agents known to this server.
#[derive(Default)]
pub struct Registry {
    agents: Mutex<HashMap<AgentId, Entry>>,
}

/// The agent is not connected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("agent '{0}' is not connected; `ferry agents` lists the agents and their status")]
pub struct NotConnected(pub String);

impl Registry {
    /// Records a newly accepted connection. A connection the agent still had is returned so the
    /// caller can close it: the newest connection wins, because an agent that reconnects after a
    /// network change must not wait for its old connection's idle timeout.
    pub fn connect(
        &self,
        id: &AgentId,
        hello: &Hello,
        session: u64,
        connection: quinn::Connection,
    ) -> Option<quinn::Connection> {
        let now = OffsetDateTime::now_utc();
        let info = AgentInfo {
            id: id.to_string(),
            status: AgentStatus::Online,
            labels: hello.labels.clone(),
            agent_version: hello.agent_version.clone(),
            topics: hello.topics.clone(),
            wit_versions: hello.wit_versions.clone(),
            remote_address: Some(connection.remote_address().to_string()),
            connected_since: Some(now),
            last_heartbeat: None,
            metrics: None,
            running_commands: 0,
        };
        let mut agents = self.agents.lock();
        let previous = agents.insert(
            id.clone(),
            Entry {
                info,
                connection: Some((session, connection)),
                last_heartbeat_at: Instant::now(),
            },
        );
        previous.and_then(|e| e.connection).map(|(_, c)| c)
    }

    /// Records a heartbeat of `session`; ignored if that session was replaced.
    pub fn heartbeat(&self, id: &AgentId, session: u64, heartbeat: &Heartbeat) {
        let mut agents = self.agents.lock();
        if let Some(entry) = agents.get_mut(id)
            && entry
                .connection
                .as_ref()
                .is_some_and(|(s, _)| *s == session)
        {
            entry.last_heartbeat_at = Instant::now();
            entry.info.last_heartbeat = Some(OffsetDateTime::now_utc());
            entry.info.metrics = Some(heartbeat.metrics.clone());
            entry.info.running_commands = heartbeat.running_commands;
            entry.info.status = AgentStatus::Online;
        }
    }

    /// Records the topics an agent said it serves now; ignored if that session was replaced.
    pub fn set_topics(&self, id: &AgentId, session: u64, mut topics: Vec<String>) {
        let mut agents = self.agents.lock();
        if let Some(entry) = agents.get_mut(id)
            && entry
                .connection
                .as_ref()
                .is_some_and(|(s, _)| *s == session)
        {
            topics.sort();
            topics.dedup();
            entry.info.topics = topics;
        }
    }

    /// Records that `session` ended; ignored if the agent has a newer one.
    pub fn disconnect(&self, id: &AgentId, session: u64) {
        let mut agents = self.agents.lock();
        if let Some(entry) = agents.get_mut(id)
            && entry
                .connection
                .as_ref()
                .is_some_and(|(s, _)| *s == session)
        {
            entry.connection = None;
            entry.info.status = AgentStatus::Offline;
            entry.info.running_commands = 0;
        }
    }

    /// Marks connected agents whose last heartbeat is older than `grace` as unresponsive.
    pub fn sweep(&self, grace: Duration) {
        let mut agents = self.agents.lock();
        for entry in agents.values_mut() {
            if entry.info.status == AgentStatus::Online && entry.last_heartbeat_at.elapsed() > grace
            {
                tracing::warn!(agent = %entry.info.id, ?grace, "no heartbeat within the grace period; agent marked unresponsive");
                entry.info.status = AgentStatus::Unresponsive;
            }
        }
    }

    /// The connection to reach agent `id` over, with its session number.
    pub fn connection(&self, id: &AgentId) -> Result<(u64, quinn::Connection), NotConnected> {
        self.agents
            .lock()
            .get(id)
            .and_then(|e| e.connection.clone())
            .ok_or_else(|| NotConnected(id.to_string()))
    }

    /// Every known agent, sorted by id.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut list: Vec<AgentInfo> = self
            .agents
            .lock()
            .values()
            .map(|e| e.info.clone())
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// One agent.
    pub fn get(&self, id: &AgentId) -> Option<AgentInfo> {
        self.agents.lock().get(id).map(|e| e.info.clone())
    }

    /// Closes every agent connection (server shutdown).
    pub fn close_all(&self, reason: &str) {
        for entry in self.agents.lock().values_mut() {
            if let Some((_, connection)) = entry.connection.take() {
                connection.close(0u32.into(), reason.as_bytes());
            }
            entry.info.status = AgentStatus::Offline;
        }
    }
}
