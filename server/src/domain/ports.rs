//! What the domain needs from the layers around it, as traits the composition root
//! (`server.rs`) fills in: storage (`storage/`, redb today; the cluster's PostgreSQL backend
//! is to implement the same traits), the agents' connections (`transport/`) and the
//! operators' overrides.
//!
//! The domain names only these traits, so it compiles without quinn, axum or redb, and a
//! test can drive it with in-memory parts.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use ferry_protocol::package::Digest;
use ferry_protocol::{AgentId, Command};
use tokio::time::Instant;

use super::agents::{AgentInfo, NotConnected};
use super::plugins::{Change, PackageRecord, StoredHistory};
use super::records::{CommandRecord, Created, NotSent, RunRecord};
use super::runs::RunEntry;

/// A write that did not reach the disk, with the backend's reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StorageError(pub(crate) String);

/// A write in flight: queued when the call that returned it returned, so that what is
/// written after it is on disk only with it, whether or not anyone awaits it.
pub(crate) type Written<T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send>>;

/// Where commands, their runs and the agents last seen are kept. `durable`: the write is on
/// disk (not just in the backend's cache) before its future completes.
pub(crate) trait CommandLog: Send + Sync + 'static {
    /// Records a new command, and claims its idempotency key in the same transaction (or
    /// finds the command that holds it, writing nothing); `run`: the command's one run,
    /// written with it, so that the two are on disk together or not at all.
    fn create_command(
        &self,
        record: &CommandRecord,
        run: Option<&RunRecord>,
        durable: bool,
    ) -> Written<Created>;
    /// Writes a command again (its progress, its end).
    fn save_command(&self, record: &CommandRecord, durable: bool) -> Written<()>;
    /// Writes, durably, that the agents at these slots of `command` are not sent it.
    fn save_not_sent(&self, command: &str, slots: Vec<(u32, NotSent)>) -> Written<()>;
    /// Writes one agent's run.
    fn save_run(&self, record: &RunRecord, durable: bool) -> Written<()>;
    /// Writes what the server knows of an agent, for listings after a restart.
    fn save_agent(&self, info: &AgentInfo) -> Written<()>;
    /// The command an idempotency key was first used for.
    fn command_for_key(&self, key: &str) -> Option<String>;
}

/// An agent's connection as the domain sees it: something to tell apart, check and close.
pub(crate) trait Link: Clone + Send + Sync + 'static {
    /// Where it comes from, for listings and refusals.
    fn remote_address(&self) -> String;
    /// Whether it has closed (either end, or its idle timeout).
    fn is_closed(&self) -> bool;
    /// Closes it with `code` (one of `ferry_protocol::close`) and a reason the agent logs.
    fn close(&self, code: u32, reason: &str);
}

/// The agents a command may go to, as the registry knows them.
pub(crate) trait Directory: Send + Sync + 'static {
    /// Every known agent, sorted by id.
    fn agents(&self) -> Vec<AgentInfo>;
    /// `Ok` if agent `id` is connected now.
    fn connected(&self, id: &AgentId) -> Result<(), NotConnected>;
    /// Whether `topic` is read-only on agent `id` now.
    fn is_read_only(&self, id: &AgentId, topic: &str) -> bool;
}

/// What operators set on agents that decides where commands go.
pub(crate) trait AgentOverrides: Send + Sync + 'static {
    /// Whether an operator revoked agent `agent`: it is sent nothing.
    fn is_revoked(&self, agent: &str) -> bool;
    /// The agent's labels with the operator's overrides merged in.
    fn effective_labels(
        &self,
        agent: &str,
        own: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String>;
}

/// One agent's run to carry out: the transport sends it, follows it to its end and records
/// each step through the run's machine.
pub(crate) struct Delivery {
    pub(crate) entry: Arc<RunEntry>,
    pub(crate) agent: AgentId,
    pub(crate) command: Command,
    /// Data the plugin may ask for by key, before the server's own.
    pub(crate) data: BTreeMap<String, Vec<u8>>,
    /// Until when it may wait for the agent to connect before it was ever sent.
    pub(crate) deliver_by: Instant,
    /// When it was first sent, if it was sent before the server restarted: the same id goes
    /// out again, and the agent's journal answers it without running it twice.
    pub(crate) sent_at: Option<Instant>,
    /// Its record is written already (or queued, before this delivery started).
    pub(crate) recorded: bool,
    /// Its end is written durably: false only for a read-only topic's command.
    pub(crate) durable: bool,
}

/// Starts runs: the transport's side of a command.
pub(crate) trait Deliver: Send + Sync + 'static {
    /// Starts carrying out `delivery` on a task of the server's; returns at once.
    fn deliver(&self, delivery: Delivery);
}

/// Everything the plugin store holds, as read at start.
pub(crate) struct StoredPlugins {
    pub(crate) packages: Vec<PackageRecord>,
    /// Plugin name → its assignment history.
    pub(crate) histories: Vec<(String, StoredHistory)>,
}

/// Where pushed plugins are kept: package files by digest, their records and assignment
/// histories. Each call is durable when it returns; errors are the backend's reason.
pub(crate) trait PluginStorage: Send + Sync + 'static {
    /// Reads every record back.
    fn load(&self) -> Result<StoredPlugins, String>;
    /// The file a package of `digest` is served from.
    fn blob_path(&self, digest: &Digest) -> PathBuf;
    /// Writes a package's bytes unless a file of that digest is already there.
    fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), String>;
    /// Writes a package's record.
    fn put_package(&self, record: &PackageRecord) -> Result<(), String>;
    /// Writes a plugin's whole assignment history.
    fn put_history(&self, name: &str, history: &[Change]) -> Result<(), String>;
    /// Removes versions' records, and the plugin's history with them when `whole`, at once.
    fn delete(&self, name: &str, versions: &[String], whole: bool) -> Result<(), String>;
    /// Removes a package file no record refers to any more (already gone is fine).
    fn delete_blob(&self, digest: &Digest) -> Result<(), String>;
}
