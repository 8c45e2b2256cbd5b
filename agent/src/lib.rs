//! The ferry agent: connects out to a ferry server over QUIC with mutual TLS, sends heartbeats
//! with host metrics, and runs each command it receives in a fresh, sandboxed instance of the
//! wasm component plugin that handles the command's topic.
//!
//! Start one with [`Agent::start`]; the `ferry` CLI's `ferry agent` and `ferry dev` do.

mod agent;
mod backoff;
pub mod config;
mod connection;
mod deploy;
pub mod enroll;
mod executor;
mod instance;
mod journal;
pub mod kv;
pub mod metrics;
pub mod policy;
mod renew;
mod routes;
pub mod runtimes;

/// The plugin host, a crate of its own (`ferry-host`): the agent runs it with its metrics,
/// key-value store and runtimes plugged in.
pub use ferry_host as host;

pub use agent::{Agent, AgentError, ConnectionStatus, WIT_VERSIONS};
pub use config::{AgentConfig, DecommissionConfig, PluginConfig};
