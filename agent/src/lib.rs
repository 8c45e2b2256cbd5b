//! The ferry agent: connects out to a ferry server over QUIC with mutual TLS, sends heartbeats
//! with host metrics, and runs each command it receives in a fresh, sandboxed instance of the
//! wasm component plugin that handles the command's topic.
//!
//! Start one with [`Agent::start`]; the `ferry` CLI's `ferry agent` and `ferry dev` do.

mod agent;
pub mod capabilities;
mod commands;
pub mod config;
mod instance;
mod plugins;
mod session;

/// The plugin host, a crate of its own (`ferry-host`): the agent runs it with its metrics,
/// key-value store and runtimes plugged in.
pub use ferry_host as host;

pub use agent::{Agent, AgentError, WIT_VERSIONS};
pub use capabilities::{kv, metrics, runtimes};
pub use config::{AgentConfig, DecommissionConfig, PluginConfig};
pub use plugins::policy;
pub use session::ConnectionStatus;
pub use session::enroll;
