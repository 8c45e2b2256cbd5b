//! The plugin host: runs each command in a fresh, sandboxed instance of a wasm component
//! plugin for the world `ferry:plugin/plugin`, in any version of it this release serves
//! (`ferry_protocol::WIT_VERSIONS`, each frozen in `wit/<version>/` and served through bindings
//! of its own).
//!
//! - [`PluginHost::new`] sets up a wasmtime engine (pooling allocator, epoch interruption), and
//!   a second one with fuel metering once a plugin with a fuel budget is loaded.
//! - [`PluginHost::load`] (or [`load_with`](PluginHost::load_with), for a fuel budget) compiles
//!   a component, or takes it from the on-disk cache ([`HostConfig::cache_dir`]), checks that it
//!   is a ferry plugin and which version of the world it was built for, links it against WASI 0.2
//!   and that version's `ferry:plugin` imports (`context`, and `metrics`, `kv`, `process`,
//!   `runtimes` and `agent`, which answer only plugins granted them), and pre-instantiates it.
//!
//! The host is the sandbox and knows nothing of the fleet: no server, no transport, no agent.
//! What a granted plugin reaches beyond its sandbox comes from whoever runs the host, through
//! one small trait per capability, each optional in [`HostConfig`]:
//!
//! - [`MetricsSource`] answers `ferry:plugin/metrics` (the agent: its sampled history);
//! - [`KvStore`] keeps what `ferry:plugin/kv` stores, a namespace per plugin (the agent: a
//!   redb database under its data directory; the host checks key and value sizes first);
//! - [`RuntimeSupervisor`] answers `ferry:plugin/runtimes` (the agent: its supervisor);
//! - [`CommandEvents`], per command, takes its logs and progress and answers `cancelled`,
//!   `request-data` and `agent.decommission` (the agent: its executor, which asks the server
//!   and decommissions once the command's result is out).
//!
//! A capability whose source is absent answers granted plugins with an error saying so; one
//! not granted, with how to grant it. Inside the host each capability of
//! `ferry_manifest::CAPABILITIES` is a part of its own (its grant, its source, its check and
//! its link to the interface it gates), which the WIT versions' bindings adapt to.
//!
//! - [`LoadedPlugin::invoke`] runs one command in a fresh `Store`: no files, network,
//!   environment or arguments; stdout and stderr become log lines; memory is capped; a
//!   deadline ends it, and so does its fuel budget if it has one. A trap, a panic or a limit
//!   ends that command with [`InvokeError::Crashed`] or [`InvokeError::TimedOut`], never the
//!   agent, and the plugin keeps serving later commands.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ferry_host::{CommandEvents, HostConfig, Invocation, LogLevel, PluginHost};
//!
//! struct Print;
//! impl CommandEvents for Print {
//!     fn log(&self, level: LogLevel, message: String) { println!("{level:?}: {message}") }
//!     fn progress(&self, percent: u8, message: String) { println!("{percent}%: {message}") }
//!     fn cancelled(&self) -> bool { false }
//! }
//!
//! let host = PluginHost::new(HostConfig::default())?;
//! let echo = host.load("echo", ferry_builtins::ECHO.component)?;
//! let invoked = echo
//!     .invoke(
//!         Invocation {
//!             id: "1".into(),
//!             topic: "echo".into(),
//!             payload: b"hello".to_vec(),
//!             content_type: "text/plain".into(),
//!             deadline: None,
//!         },
//!         Arc::new(Print),
//!     )
//!     .await;
//! assert_eq!(invoked.result?, b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! `LoadOptions` are per plugin: capabilities, fuel, memory limit, timeout and read-only topics. An
//! agent derives them from the plugin's manifest and its policy; `ferry plugin test` from its
//! `--grant` flags. `HostConfig::grants` (a `GrantSource`) says which of the two the grants came
//! from, so that a refusal names the setting to change there.

mod bindings;
mod cache;
mod capabilities;
mod check;
mod engine;
mod error;
mod invoke;
mod output;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::Component;

use self::bindings::PluginPre;
use self::cache::ComponentCache;
use self::capabilities::Granted;
pub use self::capabilities::kv::{KvStore, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use self::capabilities::metrics::MetricsSource;
pub use self::capabilities::runtimes::RuntimeSupervisor;
pub use self::capabilities::{kv, metrics, runtimes};
use self::engine::Runtime;
pub use self::error::{HostError, InvokeError};
use self::state::Meter;

/// The newest WIT package version this host serves, the one new plugins are built against:
/// the newest of the one list, [`ferry_protocol::WIT_VERSIONS`], every version of which the
/// host serves through bindings of its own (a test checks that they are exactly that list).
pub const WIT_VERSION: &str = ferry_protocol::WIT_LATEST;

/// Limits and tuning of a [`PluginHost`], and the sources of its capability interfaces.
#[derive(Clone)]
pub struct HostConfig {
    /// The most linear memory one plugin instance may use, in bytes. A plugin that needs more
    /// crashes with a message naming this limit. Default: 256 MiB.
    pub max_memory_bytes: usize,
    /// How many plugin instances may run at once; the pooling allocator is sized for this
    /// many, and an invocation beyond it fails with [`InvokeError::Instantiate`]. Default: 64.
    ///
    /// The pool reserves address space (not memory) up front: two linear-memory slots per
    /// instance of `max_memory_bytes` plus guard regions each, about 38 GiB of virtual address
    /// space with the defaults (twice that once a plugin with a fuel budget is loaded, which
    /// needs an engine of its own), of which only what plugins touch becomes resident. On Linux
    /// 6.7 and later, an idle slot keeps up to 1 MiB of what its last instance touched resident
    /// (reset to its initial contents), which makes the next instance much cheaper to start.
    pub max_instances: u32,
    /// Use the pooling instance allocator (faster instantiation; reserves address space up
    /// front). If it cannot be created, the host falls back to on-demand allocation with a
    /// warning. Default: true.
    pub pooling: bool,
    /// How often the engine's epoch advances: the granularity of deadlines, and how often a
    /// computing plugin yields its thread. Default: 10 ms.
    pub epoch_tick: Duration,
    /// How long a plugin may go on after its command was cancelled before the host stops it
    /// (a plugin that checks `cancelled()` returns before that). Default: 5 s.
    pub cancel_grace: Duration,
    /// How many bytes of stdout, and as many of stderr, are forwarded as log lines per
    /// command; the rest is counted and dropped. Default: 64 KiB.
    pub max_output_bytes: usize,
    /// Longer log and progress messages from a plugin are truncated to this. Default: 16 KiB.
    pub max_message_bytes: usize,
    /// Where compiled plugins are cached, so that loading a plugin again (after a restart, say)
    /// does not compile it again. The directory is created when first written, readable by the
    /// agent's user alone; it must not be writable by anyone else, since its contents are run
    /// as native code. A cache that cannot be read or written only costs compile time, with a
    /// warning. Default: none (no cache); the agent uses `<data_dir>/cache/components`.
    pub cache_dir: Option<PathBuf>,
    /// What the `ferry:plugin/metrics` interface reads, for plugins granted `metrics`. Default:
    /// none, and granted plugins get an error saying no metrics source is configured; the agent
    /// passes the history its sampling task keeps.
    pub metrics: Option<Arc<dyn MetricsSource>>,
    /// Where the `ferry:plugin/kv` interface keeps its keys (a namespace per plugin name), for
    /// plugins granted `kv`. Default: none, and granted plugins get an error saying no store is
    /// configured; the agent passes a redb database in `<data_dir>/kv`.
    pub kv: Option<Arc<dyn KvStore>>,
    /// What the `ferry:plugin/runtimes` interface manages, for plugins granted `runtimes`.
    /// Default: none, and granted plugins get an error saying no runtimes are configured; the
    /// agent passes its supervisor (`<data_dir>/runtimes`).
    pub runtimes: Option<Arc<dyn RuntimeSupervisor>>,
    /// Where plugins' grants come from, which is what a refusal tells its reader to change.
    /// Default: a manifest and an agent's policy.
    pub grants: GrantSource,
}

/// Where a plugin's grants come from: a refusal names the setting to change there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GrantSource {
    /// An agent: the plugin's manifest asks, the agent's policy allows.
    #[default]
    ManifestAndPolicy,
    /// `ferry plugin test`: its `--grant` flags stand in for both.
    CommandLine,
}

impl GrantSource {
    /// How to grant `setting` (as a manifest and a policy write it) to `plugin`; `flag` is the
    /// `--grant` value that does it on the command line.
    pub(crate) fn how(self, plugin: &str, setting: &str, flag: &str) -> String {
        match self {
            GrantSource::ManifestAndPolicy => format!(
                "its manifest must set `{setting}` under [capabilities] and the agent's policy allow \
                 it (`{setting}` under [plugins.{plugin}.capabilities])"
            ),
            GrantSource::CommandLine => format!(
                "run it with `--grant {flag}` (on an agent: `{setting}` under [capabilities] in \
                 its manifest, and under [plugins.{plugin}.capabilities] in the agent's policy)"
            ),
        }
    }
}

impl fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostConfig")
            .field("max_memory_bytes", &self.max_memory_bytes)
            .field("max_instances", &self.max_instances)
            .field("pooling", &self.pooling)
            .field("epoch_tick", &self.epoch_tick)
            .field("cancel_grace", &self.cancel_grace)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("cache_dir", &self.cache_dir)
            .field("metrics", &self.metrics.is_some())
            .field("kv", &self.kv.is_some())
            .field("runtimes", &self.runtimes.is_some())
            .finish()
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            max_memory_bytes: 256 << 20,
            max_instances: 64,
            pooling: true,
            epoch_tick: Duration::from_millis(10),
            cancel_grace: Duration::from_secs(5),
            max_output_bytes: 64 << 10,
            max_message_bytes: 16 << 10,
            cache_dir: None,
            metrics: None,
            kv: None,
            runtimes: None,
            grants: GrantSource::default(),
        }
    }
}

/// How to load a plugin; `LoadOptions::default()` is what [`PluginHost::load`] uses.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The fuel each command of this plugin may use (roughly, wasm instructions executed,
    /// instantiation included); a command that uses it up ends with [`InvokeError::Crashed`]
    /// naming the budget. `None`: unmetered, bounded by its deadline only.
    ///
    /// Metered plugins run in an engine of their own, created with the first of them (see
    /// `Runtime` in the host's `engine.rs`): counting fuel makes compute-bound code about 20 %
    /// slower, and unmetered plugins do not pay for it.
    pub fuel: Option<u64>,
    /// What the plugin may touch outside its sandbox: its manifest's request intersected with
    /// the policy of whoever runs the host (the agent's `ferry_agent::policy`). Empty by default: no files, environment or
    /// network.
    pub capabilities: ferry_manifest::Capabilities,
    /// A memory limit below the host's, for this plugin only.
    pub max_memory_bytes: Option<usize>,
    /// The longest any command of this plugin may run, whatever the command asks.
    pub timeout: Option<Duration>,
    /// The topics its manifest declares read-only: their commands run without the journals.
    pub read_only: Vec<String>,
}

/// How a plugin was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadStats {
    /// The compiled component came from the cache in [`HostConfig::cache_dir`] rather than the
    /// compiler.
    pub from_cache: bool,
    /// How long the load took, from the bytes to a plugin ready to run.
    pub duration: Duration,
}

/// Owns the wasmtime engines and loads plugins into them. Cheap to clone; the engines and their
/// epoch threads go away with the last clone and the last [`LoadedPlugin`].
#[derive(Clone)]
pub struct PluginHost {
    shared: Arc<Shared>,
}

/// What the host and every plugin loaded into it share.
struct Shared {
    config: HostConfig,
    /// Instances running now, in either engine, bounded by `config.max_instances`.
    running: AtomicU32,
    cache: Option<ComponentCache>,
    /// The engine of unmetered plugins.
    plain: Arc<Runtime>,
    /// The engine of plugins with a fuel budget, created with the first of them.
    metered: Mutex<Option<Arc<Runtime>>>,
}

impl PluginHost {
    /// Creates the engine, the linker (WASI 0.2 and the `ferry:plugin` imports) and the thread
    /// that drives deadlines. The engine for plugins with a fuel budget is created with the
    /// first of them.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let plain = Arc::new(Runtime::new(&config, false)?);
        tracing::debug!(
            pooling = plain.pooling,
            max_instances = config.max_instances,
            cache = ?config.cache_dir,
            "plugin host ready"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                cache: config.cache_dir.clone().map(ComponentCache::new),
                config,
                running: AtomicU32::new(0),
                plain,
                metered: Mutex::new(None),
            }),
        })
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }

    /// Whether instances come from the pooling allocator (false after a fallback).
    pub fn is_pooling(&self) -> bool {
        self.shared.plain.pooling
    }

    /// Compiles `component`, checks that it is a plugin for a `ferry:plugin` version this host
    /// serves (by the `ferry:plugin/handler@<version>` it exports), links it and
    /// pre-instantiates it against that version's bindings. `name` is used in messages and logs.
    ///
    /// A component that is not a ferry plugin gets an error naming what is missing; one built
    /// for a version this host does not serve, [`HostError::UnservedVersion`].
    pub fn load(&self, name: &str, component: &[u8]) -> Result<LoadedPlugin, HostError> {
        self.load_with(name, component, LoadOptions::default())
    }

    /// [`load`](Self::load) with options: a fuel budget.
    ///
    /// With a [`cache_dir`](HostConfig::cache_dir), the compiled component is taken from the
    /// cache when it is there and written to it when it is not (see
    /// [`LoadedPlugin::load_stats`]); a metered and an unmetered load of the same component are
    /// cached apart, since their compiled code differs.
    pub fn load_with(
        &self,
        name: &str,
        component: &[u8],
        options: LoadOptions,
    ) -> Result<LoadedPlugin, HostError> {
        check::bytes(name, component)?;
        let started = Instant::now();
        let runtime = match options.fuel {
            Some(_) => self.metered()?,
            None => self.shared.plain.clone(),
        };
        let cache = self
            .shared
            .cache
            .as_ref()
            .map(|cache| (cache, ComponentCache::key(component, &runtime.tag)));
        let cached = cache
            .as_ref()
            .and_then(|(cache, key)| cache.get(&runtime.engine, name, key));
        let from_cache = cached.is_some();
        let compiled = match cached {
            Some(compiled) => compiled,
            None => Component::new(&runtime.engine, component).map_err(|e| HostError::Compile {
                name: name.to_string(),
                reason: invoke::chain(&e),
            })?,
        };
        let version = check::handler_version(&runtime.engine, name, &compiled)?;
        let pre = runtime.linker.instantiate_pre(&compiled).map_err(|e| HostError::Link {
            name: name.to_string(),
            reason: format!(
                "{}; this agent provides WASI 0.2 (cli, clocks, filesystem, io, random, sockets; all denied \
                 unless granted) and ferry:plugin/{{{}}}@{}",
                invoke::chain(&e),
                capabilities::interfaces(),
                version.number()
            ),
        })?;
        check::handle_signature(&runtime.engine, name, &compiled, version)?;
        let pre = version.pre(pre).map_err(|e| HostError::NotAPlugin {
            name: name.to_string(),
            reason: invoke::chain(&e),
        })?;
        // Only a component that passed every check is cached.
        if let Some((cache, key)) = &cache
            && !from_cache
        {
            cache.put(name, key, &compiled);
        }
        let stats = LoadStats {
            from_cache,
            duration: started.elapsed(),
        };
        tracing::debug!(
            plugin = name,
            bytes = component.len(),
            from_cache,
            fuel = options.fuel,
            wit = pre.version().number(),
            elapsed = ?stats.duration,
            "plugin loaded"
        );
        let granted = Granted::new(name, &options.capabilities, &self.shared.config);
        Ok(LoadedPlugin {
            inner: Arc::new(LoadedInner {
                name: name.to_string(),
                pre,
                runtime,
                fuel: options.fuel,
                max_memory_bytes: options
                    .max_memory_bytes
                    .map_or(self.shared.config.max_memory_bytes, |m| {
                        m.min(self.shared.config.max_memory_bytes)
                    }),
                timeout: options.timeout,
                read_only: options.read_only.into_iter().collect(),
                granted: Arc::new(granted),
                stats,
                host: self.shared.clone(),
            }),
        })
    }

    /// The metered engine, created on first use.
    fn metered(&self) -> Result<Arc<Runtime>, HostError> {
        let mut metered = self.shared.metered.lock();
        if let Some(runtime) = &*metered {
            return Ok(runtime.clone());
        }
        let runtime = Arc::new(Runtime::new(&self.shared.config, true)?);
        tracing::debug!(
            pooling = runtime.pooling,
            "fuel-metered plugin engine ready"
        );
        *metered = Some(runtime.clone());
        Ok(runtime)
    }
}

impl fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.shared.config)
            .field("pooling", &self.shared.plain.pooling)
            .field("metered_engine", &self.shared.metered.lock().is_some())
            .finish_non_exhaustive()
    }
}

/// A compiled, linked plugin, ready to run commands. Cheap to clone; each
/// [`invoke`](LoadedPlugin::invoke) gets an instance of its own.
#[derive(Clone)]
pub struct LoadedPlugin {
    inner: Arc<LoadedInner>,
}

struct LoadedInner {
    name: String,
    pre: PluginPre,
    /// The engine it was compiled for (metered or not); kept alive with the plugin.
    runtime: Arc<Runtime>,
    /// Its fuel budget per command, when metered.
    fuel: Option<u64>,
    /// Its memory limit (at most the host's).
    max_memory_bytes: usize,
    /// The longest one of its commands may run.
    timeout: Option<Duration>,
    /// The topics its manifest declares read-only.
    read_only: std::collections::BTreeSet<String>,
    /// What it may reach outside its sandbox, capability by capability.
    granted: Arc<Granted>,
    stats: LoadStats,
    host: Arc<Shared>,
}

impl LoadedPlugin {
    /// The name the plugin was loaded under.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether its manifest declares `topic` read-only (its commands skip the journals).
    pub fn is_read_only(&self, topic: &str) -> bool {
        self.inner.read_only.contains(topic)
    }

    /// The fuel budget of each of its commands; `None` when unmetered.
    pub fn fuel(&self) -> Option<u64> {
        self.inner.fuel
    }

    /// How it was loaded: from the cache or compiled, and how long that took.
    pub fn load_stats(&self) -> LoadStats {
        self.inner.stats
    }

    /// Whether its compiled code came from the on-disk cache (see [`LoadStats::from_cache`]).
    pub fn from_cache(&self) -> bool {
        self.inner.stats.from_cache
    }

    /// Runs one command in a fresh instance and reports how it ended.
    ///
    /// Events (logs, progress, captured stdout/stderr) go to `events` while it runs; its
    /// `cancelled()` is what the plugin sees, and after it turns true the plugin has
    /// [`HostConfig::cancel_grace`] to return before the host stops it. This never panics
    /// and never fails the agent: every way a plugin can go wrong is an [`InvokeError`].
    ///
    /// Must be polled inside a tokio runtime with its time driver enabled (WASI and the
    /// deadline timers use it). Dropping the future stops the plugin.
    pub async fn invoke(&self, inv: Invocation, events: Arc<dyn CommandEvents>) -> Invoked {
        let started = Instant::now();
        let meter = Arc::new(Meter::default());
        let id = inv.id.clone();
        let result = invoke::run(&self.inner, inv, events, &meter).await;
        let stats = InvokeStats {
            duration: started.elapsed(),
            fuel_consumed: self.inner.fuel.map(|_| meter.fuel_consumed()),
            peak_memory_bytes: meter.peak(),
        };
        tracing::debug!(
            plugin = %self.inner.name,
            %id,
            ok = result.is_ok(),
            duration = ?stats.duration,
            fuel = stats.fuel_consumed,
            peak_memory = stats.peak_memory_bytes,
            "invocation ended"
        );
        Invoked { result, stats }
    }
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.inner.name)
            .field("fuel", &self.inner.fuel)
            .field("stats", &self.inner.stats)
            .finish_non_exhaustive()
    }
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The command's correlation id.
    pub id: String,
    /// The topic it was sent on.
    pub topic: String,
    /// Its input.
    pub payload: Vec<u8>,
    /// The payload's media type; may be empty.
    pub content_type: String,
    /// When the host stops the plugin with [`InvokeError::TimedOut`]; `None` for no deadline.
    pub deadline: Option<Instant>,
}

/// The level of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Fine detail.
    Trace,
    /// Debugging output.
    Debug,
    /// Normal progress; also the level of the plugin's stdout.
    Info,
    /// Something unexpected; also the level of the plugin's stderr.
    Warn,
    /// A failure.
    Error,
}

/// Where a running command's events go, and where its cancellation comes from.
///
/// Called from the invoking task, in the middle of wasm execution: implementations must be
/// quick and must not block (queue the event, or drop it).
pub trait CommandEvents: Send + Sync {
    /// The plugin logged a line (or wrote one to stdout/stderr).
    fn log(&self, level: LogLevel, message: String);
    /// The plugin reported progress, `percent` in 0..=100.
    fn progress(&self, percent: u8, message: String);
    /// Whether the command has been cancelled.
    fn cancelled(&self) -> bool;
    /// The plugin asks for data by key (`request-data`; the grant is already checked). The
    /// agent asks the server; where there is no server, the default says so.
    fn request_data(
        &self,
        key: String,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, String>> {
        Box::pin(std::future::ready(Err(format!(
            "no data under '{key}': this command is not running under a ferry server, so there is no data to ask for"
        ))))
    }
    /// The plugin asks to remove the agent (`agent.decommission`; the grant is already
    /// checked), once this command's result is out. Only an agent does it; elsewhere the
    /// default refuses, removing nothing.
    fn decommission(&self, reason: String) -> Result<(), String> {
        Err(format!(
            "not removing anything ({reason}): only an agent connected to a server can be decommissioned"
        ))
    }
}

/// How an invocation ended, with its statistics.
#[derive(Debug, Clone)]
pub struct Invoked {
    /// The result payload, or why there is none.
    pub result: Result<Vec<u8>, InvokeError>,
    /// What the invocation cost.
    pub stats: InvokeStats,
}

/// What an invocation cost.
#[derive(Debug, Clone, Default)]
pub struct InvokeStats {
    /// Wall-clock time, from the start of instantiation to the end of the call.
    pub duration: Duration,
    /// Fuel consumed, instantiation included; `None` for a plugin loaded without a fuel
    /// budget ([`LoadOptions::fuel`]).
    pub fuel_consumed: Option<u64>,
    /// The largest size the instance's linear memories reached together, in bytes.
    pub peak_memory_bytes: u64,
}
