//! The plugin host: runs each command in a fresh, sandboxed instance of a wasm component
//! plugin for the world `ferry:plugin/plugin@0.1.0` (`wit/0.1.0`).
//!
//! - [`PluginHost::new`] sets up one wasmtime engine (pooling allocator, epoch interruption).
//! - [`PluginHost::load`] compiles a component, checks that it is a ferry plugin, links it
//!   against WASI 0.2 and the `ferry:plugin/context` interface, and pre-instantiates it.
//! - [`LoadedPlugin::invoke`] runs one command in a fresh `Store`: no files, network,
//!   environment or arguments; stdout and stderr become log lines; memory is capped; a
//!   deadline ends it. A trap, a panic or a limit ends that command with
//!   [`InvokeError::Crashed`] or [`InvokeError::TimedOut`], never the agent, and the plugin
//!   keeps serving later commands.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ferry_agent::host::{CommandEvents, HostConfig, Invocation, LogLevel, PluginHost};
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

mod bindings;
mod check;
mod engine;
mod error;
mod invoke;
mod output;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use self::bindings::{Plugin, PluginPre};
use self::engine::EpochTicker;
pub use self::error::{HostError, InvokeError};
use self::state::{Meter, State};

/// The WIT package version this host serves.
pub const WIT_VERSION: &str = "0.1.0";

/// Limits and tuning of a [`PluginHost`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The most linear memory one plugin instance may use, in bytes. A plugin that needs more
    /// crashes with a message naming this limit. Default: 256 MiB.
    pub max_memory_bytes: usize,
    /// How many plugin instances may run at once; the pooling allocator is sized for this
    /// many, and an invocation beyond it fails with [`InvokeError::Instantiate`]. Default: 64.
    ///
    /// The pool reserves address space (not memory) up front: two linear-memory slots per
    /// instance of `max_memory_bytes` plus guard regions each, about 38 GiB of virtual address
    /// space with the defaults, of which only what plugins touch becomes resident.
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
        }
    }
}

/// Owns the wasmtime engine and loads plugins into it. Cheap to clone; the engine and its
/// epoch thread go away with the last clone and the last [`LoadedPlugin`].
#[derive(Clone)]
pub struct PluginHost {
    shared: Arc<Shared>,
}

/// What the host and every plugin loaded into it share.
struct Shared {
    engine: Engine,
    linker: Linker<State>,
    config: HostConfig,
    pooling: bool,
    /// Instances running now, bounded by `config.max_instances`.
    running: AtomicU32,
    // Declared last so that it stops after everything else using the engine is gone.
    _ticker: EpochTicker,
}

impl PluginHost {
    /// Creates the engine, the linker (WASI 0.2 and `ferry:plugin/context`) and the thread
    /// that drives deadlines.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let engine::Built { engine, pooling } = engine::build(&config)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| {
            HostError::Engine(format!(
                "cannot add WASI to the linker: {}",
                invoke::chain(&e)
            ))
        })?;
        Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state).map_err(
            |e| {
                HostError::Engine(format!(
                    "cannot add ferry:plugin/context to the linker: {}",
                    invoke::chain(&e)
                ))
            },
        )?;
        let ticker = EpochTicker::start(&engine, config.epoch_tick)?;
        tracing::debug!(
            pooling,
            max_instances = config.max_instances,
            "plugin host ready"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                linker,
                config,
                pooling,
                running: AtomicU32::new(0),
                _ticker: ticker,
            }),
        })
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }

    /// Whether instances come from the pooling allocator (false after a fallback).
    pub fn is_pooling(&self) -> bool {
        self.shared.pooling
    }

    /// Compiles `component`, checks that it is a `ferry:plugin@0.1.0` plugin, links it and
    /// pre-instantiates it. `name` is used in messages and logs.
    ///
    /// A component that is not a ferry plugin gets an error naming what is missing.
    pub fn load(&self, name: &str, component: &[u8]) -> Result<LoadedPlugin, HostError> {
        check::bytes(name, component)?;
        let started = Instant::now();
        let compiled =
            Component::new(&self.shared.engine, component).map_err(|e| HostError::Compile {
                name: name.to_string(),
                reason: invoke::chain(&e),
            })?;
        check::handler_exported(&self.shared.engine, name, &compiled)?;
        let pre = self.shared.linker.instantiate_pre(&compiled).map_err(|e| HostError::Link {
            name: name.to_string(),
            reason: format!(
                "{}; this agent provides WASI 0.2 (cli, clocks, filesystem, io, random, sockets; all denied \
                 unless granted) and ferry:plugin/context@{WIT_VERSION}",
                invoke::chain(&e)
            ),
        })?;
        check::handle_signature(&self.shared.engine, name, &compiled)?;
        let pre = PluginPre::new(pre).map_err(|e| HostError::NotAPlugin {
            name: name.to_string(),
            reason: invoke::chain(&e),
        })?;
        tracing::debug!(plugin = name, bytes = component.len(), elapsed = ?started.elapsed(), "plugin loaded");
        Ok(LoadedPlugin {
            inner: Arc::new(LoadedInner {
                name: name.to_string(),
                pre,
                host: self.shared.clone(),
            }),
        })
    }
}

impl fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.shared.config)
            .field("pooling", &self.shared.pooling)
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
    pre: PluginPre<State>,
    host: Arc<Shared>,
}

impl LoadedPlugin {
    /// The name the plugin was loaded under.
    pub fn name(&self) -> &str {
        &self.inner.name
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
            fuel_consumed: None,
            peak_memory_bytes: meter.peak(),
        };
        tracing::debug!(
            plugin = %self.inner.name,
            %id,
            ok = result.is_ok(),
            duration = ?stats.duration,
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
    /// Fuel consumed; `None` while fuel metering is off.
    pub fuel_consumed: Option<u64>,
    /// The largest size the instance's linear memories reached together, in bytes.
    pub peak_memory_bytes: u64,
}
