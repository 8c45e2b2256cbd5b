//! The operator API's types: every route's request body, query and response, and the events of
//! `GET /v1/commands/{id}/events`, as one crate the server's handlers, the `ferry` CLI and the
//! tests share. A field the CLI reads that the server does not send is a compile error here,
//! not a `?` in a table.
//!
//! Each type serializes to exactly the JSON the API documents (`server/src/api/openapi.json`,
//! whose examples a test reads back through these types). Statuses are
//! [`ferry_lifecycle::Status`] (re-exported as [`Status`]); metrics, runtimes, log levels, run
//! costs and digests are `ferry-protocol`'s, as agents send them.

mod agents;
mod commands;
pub mod names;
mod plugins;
mod selector;
mod tokens;

use serde::{Deserialize, Serialize};

pub use agents::{
    Agent, AgentDetails, AgentPluginView, AgentStatus, AgentsQuery, DuplicateSeen, HeartbeatHealth,
    HeartbeatView, LabelsRequest, Revocation, RevokeRequest, RevokedAgent, UnseenAgent,
};
pub use commands::{
    AgentResult, CommandEvent, CommandStatus, CommandView, CommandsQuery, CreateCommand,
    RenderedPayload, RunEvent, Summary,
};
pub use ferry_lifecycle::Status;
pub use ferry_protocol::digest::Digest;
pub use ferry_protocol::{HostMetrics, LogLevel, ResultStats, RuntimeState};
pub use plugins::{
    AgentPlugin, AgentRollout, AssignOutcome, AssignRequest, Assignment, Change, ChangeKind,
    DeleteOutcome, DeletePluginQuery, LoadState, PackageRecord, PluginDetails, PluginSummary,
    PushOutcome, RollbackOutcome, RollbackRequest, Selector, UnassignOutcome,
};
pub use tokens::{
    ApiToken, AuditEntry, AuditQuery, CreateApiToken, CreateJoinToken, JoinToken, JoinTokenState,
    JoinTokenView, NewApiToken, NewJoinToken, Scope,
};

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`: an answer at all is the news.
    pub status: String,
    /// The server's version.
    pub version: String,
    /// Requests refused since the server started because their bearer token was unknown or
    /// revoked (each is also logged, rate-limited, with its source address).
    #[serde(default)]
    pub refused_tokens: u64,
}

/// Every error the API answers: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable code (`unknown-agent`, `invalid-request`, …), also the audit log's result.
    pub code: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

/// The body of a `POST` that takes none (`…/cancel`, `…/unrevoke`): `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoBody {}

/// One key of `GET /v1/data`, and the answer of `PUT /v1/data/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKey {
    /// The key plugins ask for.
    pub key: String,
    /// The size of its value.
    pub bytes: u64,
}
