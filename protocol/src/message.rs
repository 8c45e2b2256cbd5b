//! The v1 message types.
//!
//! One enum, [`Message`], covers every frame on every stream. Decoding therefore never depends on
//! who sent a frame; *accepting* it does: [`Message::check_allowed`] is the explicit allowlist of
//! which peer may send which message on which kind of stream, so a message from the wrong role is
//! refused by name instead of being handled by accident.
//!
//! The enum and the allowlist come from one table, `message_table!`: each variant, its body, its
//! senders and its streams. The same table makes `MessageKind` and `MessageKind::ALL`, from which
//! the allowlist's error text, the fuzz target's list of kinds and the test suite's seed check
//! (`tests/e2e/fuzz.rs`) derive, so a new message cannot be added to one and forgotten in the
//! others.
//!
//! Results travel on their command stream and, when that broke, on a *report stream* the agent
//! opens (first frame `Result`); the server answers each with `ResultAck` once the result is on its
//! disk.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::version::VersionRange;

// The one table of message kinds: each variant with its body, and which peer may send it on
// which kind of stream. `Message`, `MessageKind` (with `MessageKind::ALL`, the list the fuzz
// target and the tests walk), `Message::kind`, and the allowlist `Message::check_allowed` with
// its error text all derive from it, so a new message is added in one place.
macro_rules! message_table {
    ($(
        $(#[$attr:meta])*
        $variant:ident($body:ty) { $($peer:ident: $($stream:ident)|+),+ }
    ),+ $(,)?) => {
        /// Every frame exchanged between a server and an agent.
        ///
        /// Externally tagged on purpose: ciborium decodes externally tagged enums about twice
        /// as fast as internally tagged ones, which serde has to buffer.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum Message {
            $($(#[$attr])* $variant($body),)+
        }

        /// A message's kind: its variant, without the body; on the wire, its name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MessageKind {
            $($variant,)+
        }

        impl MessageKind {
            /// Every kind, in the table's order.
            pub const ALL: &'static [MessageKind] = &[$(MessageKind::$variant),+];

            /// The variant's name, which is also its tag on the wire.
            pub const fn name(self) -> &'static str {
                match self {
                    $(MessageKind::$variant => stringify!($variant),)+
                }
            }

            /// May `from` send a message of this kind on a `stream` stream?
            pub fn allowed(self, from: Peer, stream: StreamKind) -> bool {
                match self {
                    $(MessageKind::$variant => {
                        false $(|| (from == Peer::$peer && matches!(stream, $(StreamKind::$stream)|+)))+
                    })+
                }
            }
        }

        impl Message {
            /// The message's kind.
            pub fn message_kind(&self) -> MessageKind {
                match self {
                    $(Message::$variant(_) => MessageKind::$variant,)+
                }
            }
        }
    };
}

message_table! {
    // The control stream (opened by the agent): handshake, liveness, plugins, renewal, leaving.
    Hello(Hello) { Agent: Control },
    Welcome(Welcome) { Server: Control },
    Reject(Reject) { Server: Control },
    Heartbeat(Heartbeat) { Agent: Control },
    Bye(Bye) { Agent: Control, Server: Control },
    PluginAssign(PluginAssign) { Server: Control },
    PluginReport(PluginReport) { Agent: Control },
    Leave(Leave) { Agent: Control },

    // Command streams (one bidirectional stream per command, opened by the server); a result
    // the agent delivers again later comes on a report stream (opened by the agent).
    Command(Command) { Server: Command },
    Cancel(Cancel) { Server: Command },
    Accepted(Accepted) { Agent: Command },
    Progress(Progress) { Agent: Command },
    Log(Log) { Agent: Command },
    Result(CommandResult) { Agent: Command | Report },
    DataRequest(DataRequest) { Agent: Command },
    DataResponse(DataResponse) { Server: Command },
    ResultAck(ResultAck) { Server: Command | Report },

    // Fetch streams (one bidirectional stream per package, opened by the agent).
    Fetch(Fetch) { Agent: Fetch },
    FetchReply(FetchReply) { Server: Fetch },
    PackageChunk(PackageChunk) { Server: Fetch },

    // Enrollment (one bidirectional stream on a `ferry-enroll/1` connection, opened by the
    // agent) and renewal (on the control stream).
    Enroll(Enroll) { Agent: Enroll },
    Enrolled(Enrolled) { Server: Enroll },
    EnrollRefused(EnrollRefused) { Server: Enroll | Control },
    Renew(Renew) { Agent: Control },
    Renewed(Renewed) { Server: Control },
}

/// Who sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The ferry server.
    Server,
    /// A ferry agent.
    Agent,
}

/// Which kind of stream a frame arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The first bidirectional stream, opened by the agent.
    Control,
    /// A per-command bidirectional stream, opened by the server.
    Command,
    /// A bidirectional stream on which the agent fetches one plugin package.
    Fetch,
    /// A bidirectional stream, opened by the agent, on which it delivers again the results
    /// the server has not acknowledged (after a reconnection or a restart of either side).
    Report,
    /// The one bidirectional stream of an enrollment connection (ALPN `ferry-enroll/1`).
    Enroll,
}

impl StreamKind {
    /// Every kind of stream.
    pub const ALL: &'static [StreamKind] = &[
        StreamKind::Control,
        StreamKind::Command,
        StreamKind::Fetch,
        StreamKind::Report,
        StreamKind::Enroll,
    ];
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::Server => "server",
            Peer::Agent => "agent",
        })
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Control => "control",
            StreamKind::Command => "command",
            StreamKind::Fetch => "fetch",
            StreamKind::Report => "report",
            StreamKind::Enroll => "enroll",
        })
    }
}

/// A message arrived from a peer that may not send it, or on a stream where it does not belong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{from} sent `{kind}` on a {stream} stream, where only {allowed} is allowed")]
pub struct NotAllowed {
    /// The message's name.
    pub kind: &'static str,
    /// Who sent it.
    pub from: Peer,
    /// Where it arrived.
    pub stream: StreamKind,
    /// What that peer may send there.
    pub allowed: String,
}

impl Message {
    /// The message's name, as it is tagged on the wire.
    /// The message's kind by name, as on the wire.
    pub fn kind(&self) -> &'static str {
        self.message_kind().name()
    }

    /// Checks the allowlist: may `from` send this message on a `stream` stream?
    pub fn check_allowed(&self, from: Peer, stream: StreamKind) -> Result<(), NotAllowed> {
        let kind = self.message_kind();
        if kind.allowed(from, stream) {
            return Ok(());
        }
        let allowed: Vec<&str> = MessageKind::ALL
            .iter()
            .filter(|k| k.allowed(from, stream))
            .map(|k| k.name())
            .collect();
        let allowed = match allowed.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => "nothing".to_string(),
        };
        Err(NotAllowed {
            kind: kind.name(),
            from,
            stream,
            allowed,
        })
    }
}

/// The agent introduces itself. Its identity is *not* in here: the server reads it from the
/// agent's client certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol versions the agent speaks.
    pub protocol: VersionRange,
    /// The agent's software version (informational).
    pub agent_version: String,
    /// Labels the agent's owner gave it (`env=prod`, `region=eu`), used for targeting.
    pub labels: BTreeMap<String, String>,
    /// The `ferry:plugin` WIT versions the agent's plugin host serves.
    pub wit_versions: Vec<String>,
    /// The topics the agent can handle right now.
    pub topics: Vec<String>,
    /// Those of `topics` that are read-only on this agent (their plugin's manifest says so):
    /// the agent runs their commands without its journal, and the server may record them
    /// without waiting for its disk. Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
    /// Digests of plugin packages already in the agent's cache.
    pub cached_plugins: Vec<String>,
    /// Which installation of the agent this is: a random id the agent keeps in its data
    /// directory, made again when the directory is found on another host. Two hosts that
    /// present one certificate (a cloned machine, a copied data directory) send different
    /// ones, and the server refuses the second while the first is connected and answering
    /// (`RejectCode::DuplicateAgent`), so a command never runs on both. Absent: the server
    /// cannot tell instances apart, and the newest connection wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The server accepts the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// An id for this connection, for logs on both sides.
    pub session: String,
    /// The protocol version the server chose from both ranges.
    pub protocol: u32,
    /// How often the agent must send a Heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Optional features the server has (none defined in v1).
    pub features: Vec<String>,
    /// Limits the agent must respect.
    pub limits: Limits,
}

/// Limits the server sets for the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest frame either side may send, in bytes.
    pub max_frame_bytes: u32,
    /// How many commands the server runs on this agent at once.
    pub max_concurrent_commands: u32,
}

/// Why the server refused an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    /// No protocol version is in both ranges.
    UnsupportedVersion,
    /// The Hello was malformed or missing.
    BadHello,
    /// Another connection of the same agent is active.
    DuplicateAgent,
    /// The server is shutting down or overloaded; try again after `retry_after_ms`.
    Unavailable,
}

/// The server refuses the agent; the connection closes after this frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    /// A machine-readable reason.
    pub code: RejectCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
    /// When to try again, if at all.
    pub retry_after_ms: Option<u64>,
    /// Another server to use instead (a cluster's upstream).
    pub redirect: Option<String>,
    /// With [`RejectCode::UnsupportedVersion`]: the server's range.
    pub server_protocol: Option<VersionRange>,
    /// With [`RejectCode::UnsupportedVersion`]: the agent's range, as the server understood it.
    pub agent_protocol: Option<VersionRange>,
}

/// The agent is alive; carries its host's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The host's metrics when the heartbeat was sent.
    pub metrics: HostMetrics,
    /// How many commands the agent is running.
    pub running_commands: u32,
    /// When the agent sent it, ISO-8601 (RFC 3339) by the agent's clock.
    #[serde(default)]
    pub sent_at: String,
    /// How the agent sees itself.
    #[serde(default)]
    pub health: Health,
    /// The runtimes it supervises.
    #[serde(default)]
    pub runtimes: Vec<RuntimeState>,
}

/// How an agent sees itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// Everything it should run runs.
    #[default]
    Ok,
    /// A runtime that should run does not (it failed, ended, or is being restarted).
    Degraded,
}

/// A supervised runtime, as a heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// Its name.
    pub name: String,
    /// `running`, `stopped`, `exited`, `restarting` or `failed`.
    pub status: String,
    /// Its workload's pid while it runs.
    pub pid: Option<u32>,
    /// How many times it was started again.
    pub restarts: u32,
}

/// A snapshot of the agent host's resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    /// CPU use over the last interval, 0–100 (all cores together).
    pub cpu_percent: f32,
    /// Memory in use, in bytes.
    pub memory_used_bytes: u64,
    /// Total memory, in bytes.
    pub memory_total_bytes: u64,
    /// Disk space in use on the agent's data volume, in bytes.
    pub disk_used_bytes: u64,
    /// Size of the agent's data volume, in bytes.
    pub disk_total_bytes: u64,
    /// Seconds since the host booted.
    pub uptime_secs: u64,
}

/// Either side closes the connection on purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bye {
    /// Why, for a person.
    pub reason: String,
}

/// A command for the agent to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The command's id, assigned by the server; the correlation id of everything it produces.
    pub id: String,
    /// Which plugin handles it.
    pub topic: String,
    /// The plugin's input, opaque to ferry.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// How `payload` is encoded (`application/json`, `application/cbor`, …).
    pub content_type: String,
    /// How long the command may run on the agent, in milliseconds, counted from its arrival.
    /// A relative time, so that the two hosts' clocks need not agree.
    pub timeout_ms: Option<u64>,
    /// A key under which the agent may remember the result, so a resent command is not run twice.
    pub idempotency_key: Option<String>,
}

/// The server asks the agent to stop a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    /// Why, for the logs.
    pub reason: String,
}

/// The agent took the command and will run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// The command's id.
    pub id: String,
}

/// How far a command has come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0–100.
    pub percent: u8,
    /// What is happening, for a person.
    pub message: String,
}

/// Severity of a [`Log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// For debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        })
    }
}

/// A log line of a running command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The plugin returned a result.
    Succeeded,
    /// The plugin refused the payload; the text names what is wrong with it.
    InvalidInput(String),
    /// The plugin was not allowed to do what the command needs.
    Denied(String),
    /// The plugin reported a failure.
    Failed(String),
    /// The command was cancelled before it finished.
    Cancelled,
    /// The command ran past its timeout and was stopped.
    TimedOut,
    /// The plugin crashed (a trap, a panic, a limit); the agent kept serving.
    Crashed(String),
    /// No plugin on the agent handles the topic.
    UnknownTopic(String),
    /// The agent could not start the command (too many running, shutting down, …).
    Rejected(String),
}

impl Outcome {
    /// True for [`Outcome::Succeeded`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }

    /// A short name for tables and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::InvalidInput(_) => "invalid-input",
            Outcome::Denied(_) => "denied",
            Outcome::Failed(_) => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed-out",
            Outcome::Crashed(_) => "crashed",
            Outcome::UnknownTopic(_) => "unknown-topic",
            Outcome::Rejected(_) => "rejected",
        }
    }

    /// The explanation that comes with a failure, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Outcome::InvalidInput(m)
            | Outcome::Denied(m)
            | Outcome::Failed(m)
            | Outcome::Crashed(m)
            | Outcome::UnknownTopic(m)
            | Outcome::Rejected(m) => Some(m),
            Outcome::Succeeded | Outcome::Cancelled | Outcome::TimedOut => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail() {
            Some(detail) => write!(f, "{}: {detail}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// What running a command cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultStats {
    /// Time in the plugin, in microseconds.
    pub duration_us: u64,
    /// Fuel the plugin used, where fuel was metered.
    pub fuel: Option<u64>,
    /// The largest linear memory the plugin had, in bytes.
    pub peak_memory_bytes: u64,
}

/// The last frame of a command stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's id.
    pub id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The plugin's output when it succeeded; empty otherwise.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// What it cost.
    pub stats: ResultStats,
}

/// The plugin of a running command asks the server for data it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRequest {
    /// Pairs the response with the request; unique within the command.
    pub request: u32,
    /// What the plugin asks for.
    pub key: String,
}

/// The server's answer to a [`DataRequest`]: the data, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataResponse {
    /// The request this answers.
    pub request: u32,
    /// The data, when the server has it.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Why there is no data, for the plugin to report.
    pub error: Option<String>,
}

/// The server has recorded a command's result where a restart cannot lose it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultAck {
    /// The command's id.
    pub id: String,
}

/// The agent leaves for good (it was deleted, e.g. by `delete_orchestrator`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leave {
    /// Why, for the operator.
    pub reason: String,
}

/// The pushed plugins an agent must serve: the complete set, replacing any set sent before.
/// A plugin missing from it is no longer served (commands already running finish).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginAssign {
    /// One entry per plugin name.
    pub plugins: Vec<AssignedPlugin>,
}

/// One plugin version assigned to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedPlugin {
    /// The plugin's name (from its manifest).
    pub name: String,
    /// Its version (from its manifest).
    pub version: String,
    /// The sha256 of its package, which the agent fetches by it.
    pub digest: Digest,
    /// The server's ed25519 signature over the digest.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The package's size in bytes.
    pub size: u64,
    /// The topics it serves (from its manifest, repeated so the agent can route them while the
    /// package is still on its way).
    pub topics: Vec<String>,
}

/// Where the agent's assigned plugins stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginReport {
    /// One entry per assigned plugin.
    pub plugins: Vec<PluginStatus>,
    /// Every topic the agent serves now, its own plugins' and pushed ones'.
    pub topics: Vec<String>,
    /// Those of `topics` that are read-only now (as in [`Hello::read_only`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
}

/// How an assigned plugin fares on the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its package digest.
    pub digest: Digest,
    /// Ready, or why not.
    pub state: PluginState,
}

/// Where an assigned plugin stands on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginState {
    /// Being fetched, verified or compiled.
    Pending,
    /// Verified, loaded and serving its topics.
    Ready,
    /// It could not be fetched, verified or loaded; the text says why and what to do.
    Failed(String),
}

/// The agent asks for a package by its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fetch {
    /// The package's sha256.
    pub digest: Digest,
}

/// The server's answer to [`Fetch`]: the size of the package that follows in
/// [`PackageChunk`]s, or why it cannot be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchReply {
    /// The package's size in bytes, when it follows.
    pub size: Option<u64>,
    /// Why it does not, for a person.
    pub error: Option<String>,
}

/// A piece of a package; the chunks, in order, are the package's bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageChunk {
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// A new agent asks for a certificate: the first and only frame it sends on an enroll stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enroll {
    /// The join token an operator made with `ferry token create`.
    pub token: String,
    /// A PKCS#10 certificate signing request for the key the agent made, DER. Only its public
    /// key counts: the server sets the certificate's names itself.
    #[serde(with = "serde_bytes")]
    pub csr: Vec<u8>,
    /// The agent id the agent proposes (its `--name`, by default its host name).
    pub requested_id: String,
}

/// The server issued the agent its certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The agent id the certificate names.
    pub agent_id: String,
    /// The agent's certificate, PEM.
    pub certificate_pem: String,
    /// The CA certificate: what the agent trusts the server by from now on, PEM.
    pub ca_pem: String,
    /// The server's plugin signing key (the contents of `plugin-signing.pub`), when it has one.
    pub plugin_key: Option<String>,
    /// When the certificate expires, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why enrollment or renewal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollCode {
    /// No such join token.
    UnknownToken,
    /// The token's time ran out.
    ExpiredToken,
    /// The token has no uses left.
    UsedToken,
    /// An operator revoked the token.
    RevokedToken,
    /// Another agent (another key) already has the requested id.
    IdTaken,
    /// The agent (or the id it asks for) is revoked.
    AgentRevoked,
    /// The request is malformed: a bad id or CSR, or a renewal for another key.
    BadRequest,
    /// The server cannot issue certificates (its CA key is not available to it).
    Unavailable,
}

/// Enrollment or renewal is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRefused {
    /// A machine-readable reason.
    pub code: EnrollCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

/// An enrolled agent asks for a fresh certificate for the key it already has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renew {
    /// A certificate signing request made with the agent's current key, DER.
    #[serde(with = "serde_bytes")]
    pub csr: Vec<u8>,
}

/// The renewed certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renewed {
    /// The agent's new certificate, PEM.
    pub certificate_pem: String,
    /// When it expires, in seconds since the Unix epoch.
    pub not_after: i64,
}
