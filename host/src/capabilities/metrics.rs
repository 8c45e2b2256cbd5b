//! The `metrics` capability: `ferry:plugin/metrics` reads a [`MetricsSource`], supplied by
//! whoever runs the host (the agent passes the history its sampling task keeps), for plugins
//! granted `metrics`.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;

use super::Switch;
use crate::bindings::{self, Interface};
use crate::state::State;

/// One measurement of the host and of the process running the plugin host: what the `metrics`
/// interface of `ferry:plugin` returns.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The host's CPU use, 0 to 100, since the previous sample.
    pub cpu_percent: f32,
    /// The host's memory in use, in bytes.
    pub memory_used_bytes: u64,
    /// The host's total memory, in bytes.
    pub memory_total_bytes: u64,
    /// Used space on the volume holding the data directory, in bytes.
    pub disk_used_bytes: u64,
    /// The size of that volume, in bytes.
    pub disk_total_bytes: u64,
    /// The agent process's CPU use as a share of the whole host, 0 to 100.
    pub agent_cpu_percent: f32,
    /// The agent process's resident memory, in bytes.
    pub agent_memory_bytes: u64,
}

/// The source of `ferry:plugin/metrics` ([`HostConfig::metrics`](crate::HostConfig::metrics)).
///
/// Called in the middle of wasm execution, on the invoking task's thread: a call may block for
/// as long as reading the system takes (milliseconds), no longer.
pub trait MetricsSource: Send + Sync {
    /// A sample taken now (`metrics.now`).
    fn now(&self) -> Sample;
    /// The samples recorded in the last `period`, oldest first (`metrics.history`).
    fn history(&self, period: Duration) -> Vec<Sample>;
}

/// A loaded plugin's `metrics`: its grant, and the host's source.
pub(crate) struct Metrics {
    pub(super) granted: Switch,
    source: Option<Arc<dyn MetricsSource>>,
}

impl Metrics {
    pub(crate) fn new(granted: Switch, source: Option<Arc<dyn MetricsSource>>) -> Self {
        Metrics { granted, source }
    }

    fn source(&self) -> Result<&dyn MetricsSource, String> {
        self.granted.check()?;
        self.source.as_deref().ok_or_else(|| {
            "metrics are unavailable: no metrics source is configured on this agent".into()
        })
    }

    /// `metrics.now`.
    pub(crate) fn now(&self) -> Result<Sample, String> {
        Ok(self.source()?.now())
    }

    /// `metrics.history`.
    pub(crate) fn history(&self, period: Duration) -> Result<Vec<Sample>, String> {
        Ok(self.source()?.history(period))
    }
}

/// Links `ferry:plugin/metrics`.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    bindings::link(linker, Interface::Metrics)
}
