//! The agent registry: which agents the server knows, which are online, and what they last said.
//!
//! Agents by id, with status (online, unresponsive, offline), labels, topics, last heartbeat and
//! metrics. The last heartbeat is also kept in the edge-orchestrator shape (`HeartbeatView`: cpu %,
//! memory and disk in GB, uptime, health, the agent's ISO-8601 send time, and its runtimes).
//!
//! The newest connection of an agent's installation wins, and an old connection's end never marks
//! the new one offline (sessions are compared). `Registry::connect` checks and inserts in one step
//! under the registry's lock, before Welcome: a connection from *another* installation of the
//! identity (a different Hello `instance`) is refused with `Reject { DuplicateAgent, retry_after }`
//! while the connected one is open and has sent a heartbeat within `heartbeat_grace`, and the
//! refusal is kept in the agent's view (`duplicate`: where from, which instance, how often) for
//! `ferry agents` and `ferry agent show`. Once the holder is closed or silent past the grace, the
//! newcomer takes over.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferry_protocol::{AgentId, Health, Heartbeat, Hello, HostMetrics};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::ports::{Directory, Link};
pub use ferry_api::{AgentStatus, DuplicateSeen, HeartbeatHealth, HeartbeatView};
use time::OffsetDateTime;

/// What the server knows of an agent, as the operator API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Those of them its plugins declare read-only: their commands run without the journals
    /// (on the agent, and on the server, which records them without waiting for its disk).
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
    /// Its last heartbeat, in the shape edge-orchestrator tools expect (sizes in GB); not
    /// kept across a restart of the server.
    #[serde(skip_deserializing)]
    pub heartbeat: Option<HeartbeatView>,
    /// Which installation of the agent holds the identity (its Hello's `instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The last time another installation presenting this identity was refused while this
    /// one was connected: a cloned host or a copied data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<DuplicateSeen>,
}

/// An agent's identity is in use by another installation that is connected and answering.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "agent '{id}' is already connected from {holder} as another installation (instance {holder_instance}); one identity on two hosts would run every command twice. Give each host its own identity (`ferry token create`, then `ferry agent --join` on the new host, or `ferry cert issue <new-id>`); if the other host is gone for good, this one is let in once its connection has been silent for {grace:?}"
)]
pub struct Duplicate {
    /// The agent id.
    pub id: String,
    /// Where the connected installation is.
    pub holder: String,
    /// Its instance id.
    pub holder_instance: String,
    /// How long it must be silent before another installation takes over.
    pub grace: Duration,
}

fn gb(bytes: u64) -> f64 {
    (bytes as f64 / 1e9 * 1000.0).round() / 1000.0
}

struct Entry<C> {
    info: AgentInfo,
    connection: Option<(u64, C)>,
    last_heartbeat_at: Instant,
}

/// The agents known to this server, each with its connection (a `C`: the transport's, which
/// the registry only tells apart, checks and closes).
pub struct Registry<C> {
    agents: Mutex<HashMap<AgentId, Entry<C>>>,
    /// Bumped whenever an agent connects, for commands waiting to reach one.
    connected: tokio::sync::watch::Sender<u64>,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Registry {
            agents: Mutex::default(),
            connected: tokio::sync::watch::Sender::default(),
        }
    }
}

/// The agent is not connected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("agent '{0}' is not connected; `ferry agents` lists the agents and their status")]
pub struct NotConnected(pub String);

impl<C: Link> Registry<C> {
    /// Records a newly accepted connection. A connection the same installation still had is
    /// returned so the caller can close it: the newest connection wins, because an agent that
    /// reconnects after a network change or a restart must not wait for its old connection's
    /// idle timeout. Another installation of the identity (a different `instance`) is refused
    /// while the connected one is open and has sent a heartbeat within `grace`; once it is
    /// closed or silent past that, the newcomer takes over at once. The check and the
    /// insertion are one step under the registry's lock.
    pub fn connect(
        &self,
        id: &AgentId,
        hello: &Hello,
        session: u64,
        connection: C,
        grace: Duration,
    ) -> Result<Option<C>, Duplicate> {
        let now = OffsetDateTime::now_utc();
        let mut agents = self.agents.lock();
        let mut duplicate = None;
        if let Some(entry) = agents.get_mut(id) {
            duplicate = entry.info.duplicate.clone();
            if let (Some((_, held)), Some(holder), Some(newcomer)) =
                (&entry.connection, &entry.info.instance, &hello.instance)
                && holder != newcomer
                && !held.is_closed()
                && entry.last_heartbeat_at.elapsed() <= grace
            {
                let refused = entry.info.duplicate.as_ref().map_or(0, |d| d.refused) + 1;
                entry.info.duplicate = Some(DuplicateSeen {
                    remote_address: connection.remote_address(),
                    instance: newcomer.clone(),
                    at: now,
                    refused,
                });
                return Err(Duplicate {
                    id: id.to_string(),
                    holder: held.remote_address(),
                    holder_instance: holder.clone(),
                    grace,
                });
            }
        }
        let info = AgentInfo {
            id: id.to_string(),
            status: AgentStatus::Online,
            labels: hello.labels.clone(),
            agent_version: hello.agent_version.clone(),
            topics: hello.topics.clone(),
            read_only_topics: hello.read_only.clone(),
            wit_versions: hello.wit_versions.clone(),
            remote_address: Some(connection.remote_address()),
            connected_since: Some(now),
            last_heartbeat: None,
            metrics: None,
            running_commands: 0,
            heartbeat: None,
            instance: hello.instance.clone(),
            duplicate,
        };
        let previous = agents.insert(
            id.clone(),
            Entry {
                info,
                connection: Some((session, connection)),
                last_heartbeat_at: Instant::now(),
            },
        );
        drop(agents);
        self.connected.send_modify(|n| *n = n.wrapping_add(1));
        Ok(previous.and_then(|e| e.connection).map(|(_, c)| c))
    }

    /// The connection to agent `id`, waiting for the agent to connect until `until`.
    pub async fn wait_connection(
        &self,
        id: &AgentId,
        until: tokio::time::Instant,
    ) -> Option<(u64, C)> {
        let mut changes = self.connected.subscribe();
        loop {
            changes.mark_unchanged();
            if let Ok(found) = self.connection(id) {
                return Some(found);
            }
            match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.connection(id).ok(),
            }
        }
    }

    /// Makes agents known from an earlier run of the server (offline until they connect).
    pub(crate) fn restore(&self, known: Vec<AgentInfo>) {
        let mut agents = self.agents.lock();
        for mut info in known {
            let Ok(id) = AgentId::new(info.id.clone()) else {
                continue;
            };
            info.status = AgentStatus::Offline;
            info.connected_since = None;
            info.remote_address = None;
            info.running_commands = 0;
            agents.entry(id).or_insert(Entry {
                info,
                connection: None,
                last_heartbeat_at: Instant::now(),
            });
        }
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
            let m = &heartbeat.metrics;
            entry.info.heartbeat = Some(HeartbeatView {
                agent_id: entry.info.id.clone(),
                cpu_usage_percent: m.cpu_percent,
                memory_usage_gb: gb(m.memory_used_bytes),
                memory_total_gb: gb(m.memory_total_bytes),
                disk_usage_gb: gb(m.disk_used_bytes),
                disk_total_gb: gb(m.disk_total_bytes),
                uptime_s: m.uptime_secs,
                status: match heartbeat.health {
                    Health::Ok => HeartbeatHealth::Ok,
                    Health::Degraded => HeartbeatHealth::Degraded,
                },
                timestamp: heartbeat.sent_at.clone(),
                runtimes: heartbeat.runtimes.clone(),
            });
            entry.info.status = AgentStatus::Online;
        }
    }

    /// Records the topics an agent said it serves now, and which of them are read-only;
    /// ignored if that session was replaced.
    pub fn set_topics(
        &self,
        id: &AgentId,
        session: u64,
        mut topics: Vec<String>,
        read_only: Vec<String>,
    ) {
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
            entry.info.read_only_topics = read_only;
        }
    }

    /// Whether `topic` is read-only on agent `id` now (as its last Hello or report said).
    pub fn is_read_only(&self, id: &AgentId, topic: &str) -> bool {
        self.agents
            .lock()
            .get(id)
            .is_some_and(|entry| entry.info.read_only_topics.iter().any(|t| t == topic))
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
    pub fn connection(&self, id: &AgentId) -> Result<(u64, C), NotConnected> {
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

    /// Closes agent `id`'s connection, if it has one, with `code` (one of
    /// `ferry_protocol::close`) and `reason`; true if it had one.
    pub fn close(&self, id: &AgentId, code: u32, reason: &str) -> bool {
        match self.connection(id) {
            Ok((_, connection)) => {
                connection.close(code, reason);
                true
            }
            Err(_) => false,
        }
    }

    /// Closes every agent connection (server shutdown).
    pub fn close_all(&self, reason: &str) {
        for entry in self.agents.lock().values_mut() {
            if let Some((_, connection)) = entry.connection.take() {
                connection.close(0, reason);
            }
            entry.info.status = AgentStatus::Offline;
        }
    }
}

impl<C: Link> Directory for Registry<C> {
    fn agents(&self) -> Vec<AgentInfo> {
        self.list()
    }

    fn connected(&self, id: &AgentId) -> Result<(), NotConnected> {
        self.connection(id).map(|_| ())
    }

    fn is_read_only(&self, id: &AgentId, topic: &str) -> bool {
        Registry::is_read_only(self, id, topic)
    }
}
