//! What one invocation's `Store` holds: the sandboxed WASI context, the limits, the command's
//! events, which the `ferry:plugin/context` imports reach, and the plugin's grant of each
//! capability (`capabilities/`), in the host's own types: each WIT version's bindings
//! (`bindings/`) adapt to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::capabilities::{Granted, process};
use super::{CommandEvents, LogLevel};

/// The data of one invocation's store.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) events: Arc<dyn CommandEvents>,
    max_message_bytes: usize,
    /// Bytes of a program's stdout, and as many of its stderr, forwarded as log lines.
    pub(crate) max_output_bytes: usize,
    /// The wall-clock deadline, checked at every epoch tick.
    pub(crate) deadline: Option<Instant>,
    /// Set when the host interrupted the plugin for passing its deadline, so that the trap
    /// this causes is reported as a timeout rather than a crash.
    pub(crate) timed_out: bool,
    /// What the plugin may reach outside its sandbox, capability by capability.
    pub(crate) granted: Arc<Granted>,
}

impl State {
    pub(crate) fn new(
        events: Arc<dyn CommandEvents>,
        // Built from the plugin's grant by `capabilities/`: deny by default.
        wasi: WasiCtx,
        limiter: Limiter,
        deadline: Option<Instant>,
        max_message_bytes: usize,
        max_output_bytes: usize,
        granted: Arc<Granted>,
    ) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter,
            events,
            max_message_bytes,
            max_output_bytes,
            deadline,
            timed_out: false,
            granted,
        }
    }

    /// A log line from the plugin (`context.log`), bounded.
    pub(crate) fn emit_log(&self, level: LogLevel, message: String) {
        let message = self.bounded(message);
        self.events.log(level, message);
    }

    /// The plugin's progress (`context.progress`), bounded.
    pub(crate) fn emit_progress(&self, percent: u8, message: String) {
        let message = self.bounded(message);
        self.events.progress(percent.min(100), message);
    }

    /// Runs a program the plugin asked for (`process.run`, `run-with`), if granted. The
    /// future holds nothing of the store's: a store is not `Sync`.
    pub(crate) fn run_program(
        &self,
        request: process::Request,
    ) -> impl Future<Output = Result<process::Exit, String>> + Send + 'static {
        let cx = process::Context {
            events: self.events.clone(),
            deadline: self.deadline,
            max_output_bytes: self.max_output_bytes,
        };
        let granted = self.granted.clone();
        async move { process::run(&granted.programs, cx, request).await }
    }

    fn bounded(&self, mut message: String) -> String {
        if message.len() > self.max_message_bytes {
            let mut end = self.max_message_bytes;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" […]");
        }
        message
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Memory use of one invocation, readable after its store is gone (a timed-out store is
/// dropped with the future that ran it).
#[derive(Debug, Default)]
pub(crate) struct Meter {
    peak: AtomicU64,
    /// The size, in bytes, of the last memory growth the limit refused; 0 if none was.
    denied: AtomicU64,
    /// Fuel used, for a metered plugin.
    fuel_consumed: AtomicU64,
}

impl Meter {
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub(crate) fn denied(&self) -> Option<u64> {
        Some(self.denied.load(Ordering::Relaxed)).filter(|&d| d > 0)
    }

    pub(crate) fn fuel_consumed(&self) -> u64 {
        self.fuel_consumed.load(Ordering::Relaxed)
    }

    pub(crate) fn set_fuel_consumed(&self, fuel: u64) {
        self.fuel_consumed.store(fuel, Ordering::Relaxed);
    }
}

/// [`StoreLimits`] plus bookkeeping: the peak of all linear memories together, and whether
/// the limit refused a growth (which is what makes a later trap an out-of-memory crash).
pub(crate) struct Limiter {
    limits: StoreLimits,
    max_memory_bytes: usize,
    meter: Arc<Meter>,
    total: usize,
}

impl Limiter {
    pub(crate) fn new(max_memory_bytes: usize, meter: Arc<Meter>) -> Self {
        Self {
            limits: StoreLimitsBuilder::new()
                .memory_size(max_memory_bytes)
                .build(),
            max_memory_bytes,
            meter,
            total: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?
            && maximum.is_none_or(|m| desired <= m);
        if allowed {
            self.total = self.total.saturating_sub(current).saturating_add(desired);
            self.meter
                .peak
                .fetch_max(self.total as u64, Ordering::Relaxed);
        } else if desired > self.max_memory_bytes {
            // Only our limit counts: a module's own declared maximum is its own business.
            self.meter.denied.store(desired as u64, Ordering::Relaxed);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!(error = %error, "a plugin's memory could not grow");
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
