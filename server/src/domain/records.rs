//! What the server writes of its commands and agents, as the storage port
//! ([`super::ports::CommandLog`]) takes and gives it back. The domain makes these; a storage
//! backend only encodes them (redb today: CBOR rows beside a write-ahead log).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::agents::AgentInfo;
use ferry_protocol::ResultStats;

use super::runs::{Origin, RenderedPayload, RunStatus, RunView};

/// The layout of the command records this server writes; as [`RUN_LAYOUT`] is for runs.
pub(crate) const COMMAND_LAYOUT: u32 = 1;

/// An operator command as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommandRecord {
    #[serde(default = "first_layout")]
    pub(crate) layout: u32,
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
    pub(crate) status: RunStatus,
    pub(crate) why: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) at: OffsetDateTime,
}

/// The layout of the run records this server writes. A record says which layout it has; one
/// that says none was written in layout 1, before records carried it (as for commands,
/// [`COMMAND_LAYOUT`]). A change to a record's
/// fields bumps this and keeps a reader for every older layout, so a data directory written by
/// any earlier version still loads; a record of a newer layout is refused by name.
pub(crate) const RUN_LAYOUT: u32 = 1;

/// One agent's run as stored: a record of its own, so that the operator API's view of a run
/// (`RunView`) can change without changing what is on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    #[serde(default = "first_layout")]
    pub(crate) layout: u32,
    pub(crate) origin: Origin,
    /// Under the key `view`: layout 1 was written when the record held the API's view, whose
    /// fields `StoredRun` keeps.
    #[serde(rename = "view")]
    pub(crate) run: StoredRun,
}

fn first_layout() -> u32 {
    1
}

/// A run's state as stored (layout 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredRun {
    pub(crate) id: String,
    pub(crate) agent: String,
    pub(crate) topic: String,
    pub(crate) status: RunStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) finished_at: Option<OffsetDateTime>,
    pub(crate) progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
    #[serde(flatten)]
    pub(crate) output: StoredOutput,
    pub(crate) stats: Option<ResultStats>,
}

/// The plugin's output as stored: as JSON when it parses, else as text, else base64.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct StoredOutput {
    /// Present (even as `null`, which a plugin may answer) when the output is JSON.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub(crate) payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) payload_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) payload_base64: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

impl RunRecord {
    /// The record of a run whose view is `view`, in the newest layout.
    pub(crate) fn new(origin: Origin, view: RunView) -> RunRecord {
        // Destructured, so that a field added to the view does not compile until it is either
        // stored (a new layout) or deliberately left out here.
        let RunView {
            id,
            agent,
            topic,
            status,
            created_at,
            finished_at,
            progress,
            detail,
            output:
                RenderedPayload {
                    payload,
                    payload_text,
                    payload_base64,
                },
            stats,
        } = view;
        RunRecord {
            layout: RUN_LAYOUT,
            origin,
            run: StoredRun {
                id,
                agent,
                topic,
                status,
                created_at,
                finished_at,
                progress,
                detail,
                output: StoredOutput {
                    payload,
                    payload_text,
                    payload_base64,
                },
                stats,
            },
        }
    }

    /// The run's id.
    pub(crate) fn id(&self) -> &str {
        &self.run.id
    }

    /// What the run's entry is restored from (the storage backend refuses layouts newer than
    /// [`RUN_LAYOUT`] as it loads them).
    pub(crate) fn into_parts(self) -> (Origin, RunView) {
        let StoredRun {
            id,
            agent,
            topic,
            status,
            created_at,
            finished_at,
            progress,
            detail,
            output:
                StoredOutput {
                    payload,
                    payload_text,
                    payload_base64,
                },
            stats,
        } = self.run;
        (
            self.origin,
            RunView {
                id,
                agent,
                topic,
                status,
                created_at,
                finished_at,
                progress,
                detail,
                output: RenderedPayload {
                    payload,
                    payload_text,
                    payload_base64,
                },
                stats,
            },
        )
    }
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
    pub(crate) commands: Vec<CommandRecord>,
    pub(crate) runs: Vec<RunRecord>,
    pub(crate) agents: Vec<AgentInfo>,
}
