//! The ferry server: accepts agents over QUIC with mutual TLS, keeps a registry of them, sends
//! them commands (one stream per command) and serves the operator HTTP API.
//!
//! Embed it with [`Server::start`]; the `ferry` CLI's `ferry server` and `ferry dev` do.

mod api;
pub mod audit;
pub mod commands;
pub mod config;
mod db;
mod dispatch;
pub mod enroll;
mod fetch;
pub mod fleet;
mod listener;
pub mod overrides;
mod persist;
pub mod plugins;
pub mod registry;
mod report;
mod server;
pub mod tokens;

pub use commands::{CommandEntry, CommandEvent, CommandStatus, CommandView};
pub use config::{ServerConfig, TlsPaths};
pub use fleet::{FleetEntry, FleetRequest, FleetStatus, FleetView, Target};
pub use plugins::{PluginError, PluginRegistry, Selector};
pub use registry::{AgentInfo, AgentStatus};
pub use server::{CommandRequest, PLUGIN_KEY, PLUGIN_KEY_PUB, Server, StartError, SubmitError};
pub use tokens::Scope;
