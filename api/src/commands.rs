//! `/v1/commands`: an operator's command for one agent or many, each agent's part, and the
//! events a command's stream carries.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use ferry_lifecycle::{Bucket, Status};
use ferry_protocol::{LogLevel, ResultStats};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A result payload as JSON can carry it: as JSON when it is JSON, as text when it is UTF-8,
/// otherwise base64.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RenderedPayload {
    /// The payload, when it parses as JSON.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub payload: Option<serde_json::Value>,
    /// The payload, when it is UTF-8 but not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    /// The payload, base64, when it is neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

/// A `payload` that is there is `Some`, even when it is `null`: a plugin may answer `null`,
/// which is not the same as no payload.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

impl RenderedPayload {
    /// Renders `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return RenderedPayload::default();
        }
        if let Ok(value) = serde_json::from_slice(bytes) {
            return RenderedPayload {
                payload: Some(value),
                ..Default::default()
            };
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => RenderedPayload {
                payload_text: Some(text.to_string()),
                ..Default::default()
            },
            Err(_) => RenderedPayload {
                payload_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                ..Default::default()
            },
        }
    }
}

/// One thing that happened to one agent's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RunEvent {
    /// The agent accepted the command.
    Accepted {
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The plugin reported progress.
    Progress {
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// 0–100.
        percent: u8,
        /// What is happening.
        message: String,
    },
    /// The plugin logged a line.
    Log {
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// Severity.
        level: LogLevel,
        /// The text.
        message: String,
    },
    /// The command ended; always the last event.
    Finished {
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// How it ended.
        status: Status,
        /// Why, when it did not succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// The plugin's output.
        #[serde(flatten)]
        output: RenderedPayload,
        /// What it cost on the agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<ResultStats>,
    },
}

/// Where a command is, or how it ended as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandStatus {
    /// Agents are still being sent it or running it.
    Running,
    /// Every agent succeeded.
    Succeeded,
    /// At least one agent did not succeed (see the summary), and nobody cancelled it.
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl CommandStatus {
    /// Every command status.
    pub const ALL: &'static [CommandStatus] = &[
        CommandStatus::Running,
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::Cancelled,
    ];

    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            CommandStatus::Running => "running",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
            CommandStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the name the API uses.
    pub fn parse(s: &str) -> Option<CommandStatus> {
        Self::ALL.iter().copied().find(|f| f.name() == s)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many agents are where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Agents targeted.
    pub total: u32,
    /// Not sent yet, or sent and not accepted yet.
    pub pending: u32,
    /// Running.
    pub running: u32,
    /// Succeeded.
    pub succeeded: u32,
    /// Ended in any failure but a timeout: failed, invalid input, denied, crashed, unknown
    /// topic, rejected, lost.
    pub failed: u32,
    /// Ran past the timeout.
    pub timed_out: u32,
    /// Never ran: offline, not connected, or not sent because of `max_errors`.
    pub undelivered: u32,
    /// Cancelled, or not sent because the command was cancelled.
    pub cancelled: u32,
}

impl Summary {
    /// Counts one agent in `status`'s bucket.
    pub fn add(&mut self, status: Status) {
        self.total += 1;
        let count = match status.bucket() {
            Bucket::Pending => &mut self.pending,
            Bucket::Running => &mut self.running,
            Bucket::Succeeded => &mut self.succeeded,
            Bucket::Failed => &mut self.failed,
            Bucket::TimedOut => &mut self.timed_out,
            Bucket::Undelivered => &mut self.undelivered,
            Bucket::Cancelled => &mut self.cancelled,
        };
        *count += 1;
    }
}

/// One agent's part of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResult {
    /// The agent.
    pub agent: String,
    /// The id the agent knows its run by (in its logs and journal); none until it is sent.
    pub agent_command_id: Option<String>,
    /// Where it is, or how it ended.
    pub status: Status,
    /// The last progress the plugin reported.
    pub progress: Option<u8>,
    /// Why it did not succeed, or why it was not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The plugin's output.
    #[serde(flatten)]
    pub output: RenderedPayload,
    /// What it cost on the agent.
    pub stats: Option<ResultStats>,
    /// When it was sent.
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// How many of the run's log and progress events the server dropped: a run keeps the
    /// newest 1,000, with its acceptance and end.
    #[serde(default)]
    pub events_dropped: u64,
}

/// A command as the operator API shows it (the OpenAPI document's `Command`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandView {
    /// Its id.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// The target as given: agent ids, a selector, or `all`.
    pub target: String,
    /// Where it is, or how it ended.
    pub status: CommandStatus,
    /// Who sent it (a token's name).
    pub created_by: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the last agent ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The concurrency limit, if any.
    pub max_concurrency: Option<u32>,
    /// The error limit, if any.
    pub max_errors: Option<u32>,
    /// The most agents that ran it at once, by the server's own count.
    pub peak_concurrency: u32,
    /// How many agents are where.
    pub summary: Summary,
    /// How many log and progress events the command's event stream dropped: it keeps the
    /// newest 1,000 over all its agents, and every other event.
    #[serde(default)]
    pub events_dropped: u64,
    /// Each agent's part, in the order they are sent it; left out of listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<AgentResult>>,
}

/// One event of `GET /v1/commands/{id}/events`: the SSE event's name is its `type`, its data
/// this as JSON. Every agent's run adds `dispatched` (or, for an agent never sent it, a
/// `finished` saying why), then its own events with `agent` added; `done` comes last, once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum CommandEvent {
    /// The command was sent to an agent.
    Dispatched {
        /// The agent.
        agent: String,
        /// The id the agent knows its run by.
        agent_command_id: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The agent accepted it.
    Accepted {
        /// The agent.
        agent: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The plugin reported progress.
    Progress {
        /// The agent.
        agent: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// 0–100.
        percent: u8,
        /// What is happening.
        message: String,
    },
    /// The plugin logged a line.
    Log {
        /// The agent.
        agent: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// Severity.
        level: LogLevel,
        /// The text.
        message: String,
    },
    /// An agent's part ended, or was decided never to be sent (then `detail` says why).
    Finished {
        /// The agent.
        agent: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// How it ended.
        status: Status,
        /// Why, when it did not succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// The plugin's output.
        #[serde(flatten)]
        output: RenderedPayload,
        /// What it cost on the agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<ResultStats>,
    },
    /// Events that were here were dropped: the command keeps its newest 1,000 log and
    /// progress events (and every other event). Only in the stream, where a follower reaches
    /// the gap; the command's view counts them all (`events_dropped`).
    Dropped {
        /// How many.
        count: u64,
    },
    /// Every agent is done; always the last event.
    Done {
        /// How the command ended.
        status: CommandStatus,
        /// How many agents ended where.
        summary: Summary,
        /// The most agents that ran it at once.
        peak_concurrency: u32,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl CommandEvent {
    /// `agent`'s run's `event`, as the command's stream carries it.
    pub fn of(agent: String, event: RunEvent) -> CommandEvent {
        match event {
            RunEvent::Accepted { at } => CommandEvent::Accepted { agent, at },
            RunEvent::Progress {
                at,
                percent,
                message,
            } => CommandEvent::Progress {
                agent,
                at,
                percent,
                message,
            },
            RunEvent::Log { at, level, message } => CommandEvent::Log {
                agent,
                at,
                level,
                message,
            },
            RunEvent::Finished {
                at,
                status,
                detail,
                output,
                stats,
            } => CommandEvent::Finished {
                agent,
                at,
                status,
                detail,
                output,
                stats,
            },
        }
    }

    /// Its `type`: the SSE event's name.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandEvent::Dispatched { .. } => "dispatched",
            CommandEvent::Accepted { .. } => "accepted",
            CommandEvent::Progress { .. } => "progress",
            CommandEvent::Log { .. } => "log",
            CommandEvent::Finished { .. } => "finished",
            CommandEvent::Dropped { .. } => "dropped",
            CommandEvent::Done { .. } => "done",
        }
    }

    /// The agent it is about; none for `dropped` and `done`.
    pub fn agent(&self) -> Option<&str> {
        match self {
            CommandEvent::Dispatched { agent, .. }
            | CommandEvent::Accepted { agent, .. }
            | CommandEvent::Progress { agent, .. }
            | CommandEvent::Log { agent, .. }
            | CommandEvent::Finished { agent, .. } => Some(agent),
            CommandEvent::Dropped { .. } | CommandEvent::Done { .. } => None,
        }
    }
}

/// The body of `POST /v1/commands`. Exactly one of `agent`, `agents` and `selector` says where;
/// at most one of `payload` (any JSON), `payload_text` and `payload_base64` says what (none: an
/// empty payload).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCommand {
    /// The topic to run.
    pub topic: String,
    /// One agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Several agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// `all`, or `key=value[,key=value…]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The payload, as JSON (sent as `application/json` unless `content_type` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The payload, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    /// The payload, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// How the payload is encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// How long it may run on each agent; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A key that makes the command safe to send again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Data the plugin may ask for by key: a string is sent as its text, any other JSON value
    /// as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, serde_json::Value>>,
    /// How many agents run it at once; all at once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Stop sending once this many agents have failed; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<u32>,
    /// How long to wait for agents that are not connected, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_within_ms: Option<u64>,
}

/// The query of `GET /v1/commands`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsQuery {
    /// At most this many (default 50, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// A command's status, or a status one of its runs ended in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only this topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Only commands that targeted this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `value` writes `expected` and reads it back: the type is exactly that JSON.
    fn same<T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug>(
        value: &T,
        expected: serde_json::Value,
    ) {
        assert_eq!(serde_json::to_value(value).unwrap(), expected);
        let back: T = serde_json::from_value(expected).unwrap();
        assert_eq!(&back, value);
    }

    #[test]
    fn command_events_are_the_json_the_stream_always_carried() {
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(500);
        let text = "1970-01-01T00:00:00.5Z";
        same(
            &CommandEvent::Dispatched {
                agent: "a".into(),
                agent_command_id: "c1".into(),
                at,
            },
            json!({"type": "dispatched", "agent": "a", "agent_command_id": "c1", "at": text}),
        );
        same(
            &CommandEvent::of("a".into(), RunEvent::Accepted { at }),
            json!({"type": "accepted", "agent": "a", "at": text}),
        );
        same(
            &CommandEvent::of(
                "a".into(),
                RunEvent::Progress {
                    at,
                    percent: 40,
                    message: "copying".into(),
                },
            ),
            json!({"type": "progress", "agent": "a", "at": text, "percent": 40, "message": "copying"}),
        );
        same(
            &CommandEvent::of(
                "a".into(),
                RunEvent::Log {
                    at,
                    level: LogLevel::Warn,
                    message: "disk".into(),
                },
            ),
            json!({"type": "log", "agent": "a", "at": text, "level": "Warn", "message": "disk"}),
        );
        same(
            &CommandEvent::of(
                "a".into(),
                RunEvent::Finished {
                    at,
                    status: Status::Succeeded,
                    detail: None,
                    output: RenderedPayload::new(b"null"),
                    stats: Some(ResultStats {
                        duration_us: 7,
                        fuel: None,
                        peak_memory_bytes: 65536,
                    }),
                },
            ),
            json!({"type": "finished", "agent": "a", "at": text, "status": "succeeded", "payload": null,
                   "stats": {"duration_us": 7, "fuel": null, "peak_memory_bytes": 65536}}),
        );
        // An agent never sent the command: why, and nothing else.
        same(
            &CommandEvent::Finished {
                agent: "b".into(),
                at,
                status: Status::Undelivered,
                detail: Some("offline".into()),
                output: RenderedPayload::default(),
                stats: None,
            },
            json!({"type": "finished", "agent": "b", "at": text, "status": "undelivered", "detail": "offline"}),
        );
        let mut summary = Summary::default();
        summary.add(Status::Succeeded);
        summary.add(Status::Lost);
        same(
            &CommandEvent::Done {
                status: CommandStatus::Failed,
                summary,
                peak_concurrency: 2,
                at,
            },
            json!({"type": "done", "status": "failed", "peak_concurrency": 2, "at": text,
                   "summary": {"total": 2, "pending": 0, "running": 0, "succeeded": 1, "failed": 1,
                               "timed_out": 0, "undelivered": 0, "cancelled": 0}}),
        );
    }

    #[test]
    fn payloads_render_as_json_text_or_base64_and_read_back() {
        assert_eq!(
            RenderedPayload::new(br#"{"a":1}"#).payload,
            Some(json!({"a": 1}))
        );
        assert_eq!(
            RenderedPayload::new(b"hello").payload_text.as_deref(),
            Some("hello")
        );
        assert_eq!(
            RenderedPayload::new(&[0xff, 0x00])
                .payload_base64
                .as_deref(),
            Some("/wA=")
        );
        assert_eq!(RenderedPayload::new(b""), RenderedPayload::default());
        same(&RenderedPayload::new(b"null"), json!({"payload": null}));
        same(&RenderedPayload::default(), json!({}));
    }

    #[test]
    fn status_names_are_the_lifecycles() {
        for status in Status::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                json!(status.name()),
                "{status:?}"
            );
        }
        for status in CommandStatus::ALL {
            assert_eq!(CommandStatus::parse(status.name()), Some(*status));
            assert_eq!(serde_json::to_value(status).unwrap(), json!(status.name()));
        }
    }
}
