//! What the server writes of its commands and agents, as the storage port
//! ([`super::ports::CommandLog`]) takes and gives it back. The domain makes these; a storage
//! backend only encodes them (redb today: CBOR rows beside a write-ahead log).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::agents::AgentInfo;
use super::runs::{CommandStatus, CommandView, Origin};

/// An operator command as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FleetRecord {
    pub(crate) id: String,
    pub(crate) topic: String,
    /// `Agents` ids or a selector's text.
    pub(crate) target: TargetRecord,
    #[serde(with = "serde_bytes")]
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) data: BTreeMap<String, serde_bytes::ByteBuf>,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) max_errors: Option<u32>,
    pub(crate) deliver_within_ms: Option<u64>,
    pub(crate) created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    /// Each agent in sending order, and why it was not sent, if it was not.
    pub(crate) slots: Vec<SlotRecord>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) finished_at: Option<OffsetDateTime>,
    pub(crate) cancelled: bool,
    pub(crate) peak: u32,
}

/// A command's target as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum TargetRecord {
    Agents(Vec<String>),
    Selector(String),
}

/// An agent's place in an operator command as stored; its run, once sent, is a [`RunRecord`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SlotRecord {
    pub(crate) agent: String,
    pub(crate) not_sent: Option<NotSent>,
}

/// Why an agent was never sent a command, and when that was decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NotSent {
    pub(crate) status: CommandStatus,
    pub(crate) why: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) at: OffsetDateTime,
}

/// One agent's run as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub(crate) origin: Origin,
    pub(crate) view: CommandView,
}

/// What [`CommandLog::create_command`](super::ports::CommandLog::create_command) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Created {
    /// The command is recorded.
    New,
    /// Its idempotency key belongs to this earlier command; nothing was written.
    Existing(String),
}

/// Everything read back at start.
#[derive(Default)]
pub(crate) struct Loaded {
    /// Oldest first.
    pub(crate) commands: Vec<FleetRecord>,
    pub(crate) runs: Vec<RunRecord>,
    pub(crate) agents: Vec<AgentInfo>,
}
