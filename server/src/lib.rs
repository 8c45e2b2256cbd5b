//! The ferry server: accepts agents over QUIC with mutual TLS, keeps a registry of them, sends
//! them commands (one stream per command) and serves the operator HTTP API.
//!
//! Embed it with [`Server::start`]; the `ferry` CLI's `ferry server` and `ferry dev` do.
//!
//! The public API is the `pub use` list below; every module is private. What a caller gets is
//! read-only views, `submit`/`submit_fleet`, cancel requests and the plugin registry: nothing
//! outside this crate can record an acceptance, progress, a log line or an end for a run,
//! which only the run's machine decides (`ferry_lifecycle::Run`, driven by `dispatch`).

mod api;
mod config;
mod domain;
mod server;
mod storage;
mod transport;

pub use config::{ServerConfig, TlsPaths};
pub use domain::agents::{AgentInfo, AgentStatus, DuplicateSeen, HeartbeatView};
pub use domain::commands::{
    AgentResult, CommandEntry, CommandRequest, CommandStatus, CommandView, SubmitError, Summary,
    Target,
};
pub use domain::events::Since;
pub use domain::plugins::{
    AgentPlugin, AgentRollout, Assignment, PackageRecord, PluginDetails, PluginError,
    PluginRegistry, PluginSummary, PushOutcome, Selector,
};
pub use domain::runs::{RenderedPayload, RunEntry, RunEvent, RunStatus, RunView};
pub use server::{PLUGIN_KEY, PLUGIN_KEY_PUB, RunRequest, Server, StartError};
pub use storage::tokens::Scope;
