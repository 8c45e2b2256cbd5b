//! The wasmtime engines: their configuration, the linker each plugin is linked with, and the
//! thread that drives epoch interruption.
//!
//! There is a `Runtime` per engine: the plain one, and a fuel-metered one created when the first
//! plugin with a fuel budget loads, so that unmetered plugins do not pay metering's ~20 %. Both are
//! async, interrupt by epoch, and use the pooling allocator (memory slots capped at the memory
//! limit; where the kernel has `PAGEMAP_SCAN`, touched pages stay resident and are reset in place,
//! which took echo's instance and call from 34 to 12 µs). The `ferry-epoch` ticker thread lives as
//! long as the host or any loaded plugin.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::state::State;
use super::{HostConfig, HostError, cache};
use super::{bindings, capabilities};

/// Wasm pages are 64 KiB; memory sizes given to the pooling allocator are whole pages.
const WASM_PAGE: usize = 64 * 1024;

/// Linear memories per instance the pool provides for on average: a Rust or C component has
/// one, a few toolchains' components have more.
const MEMORIES_PER_INSTANCE: u32 = 2;
/// Tables per instance: a component's main module has one, and its adapter shims have some.
const TABLES_PER_INSTANCE: u32 = 4;
/// Core instances per component instance. Core instances cost only metadata, so be generous:
/// wit-component adds shim and fixup instances, and interpreters bring several modules.
const CORE_INSTANCES_PER_INSTANCE: u32 = 32;
/// Table elements per table: enough for interpreters compiled to wasm (CPython's function table
/// is large), while each reserved table slot stays at half a MiB of address space.
const TABLE_ELEMENTS: usize = 65_536;
/// How much of a pooled linear memory may stay resident after its instance ends, reset in
/// place, and likewise of a pooled table. See [`pool`].
const MEMORY_KEEP_RESIDENT: usize = 1 << 20;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// One engine and what goes with it: the linker plugins are linked with (a linker belongs to
/// one engine), the thread that advances its epoch, and the tag its compiled code is cached
/// under.
///
/// A host has one for unmetered plugins and, once a plugin with a fuel budget is loaded, a
/// second with fuel metering on. Fuel is an engine-wide setting in wasmtime (the compiled code
/// counts instructions), and it makes plugins about 20 % slower, so only the plugins that have
/// a budget should pay for it: an engine with fuel on for all, handing the others an endless
/// budget, would slow every plugin down. The second engine costs a second pool of address space
/// and a second epoch thread, only on hosts that meter some plugin. Instances of both engines
/// count against the one limit of [`HostConfig::max_instances`].
pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<State>,
    pub(crate) pooling: bool,
    /// The engine's compatibility hash: compiled code is cached under it.
    pub(crate) tag: [u8; 32],
    // Declared last so that it stops after everything else using the engine is gone.
    _ticker: EpochTicker,
}

impl Runtime {
    /// Creates an engine (with fuel metering when `metered`), its linker (WASI 0.2 and every
    /// served version's `ferry:plugin` imports) and its epoch thread.
    pub(crate) fn new(config: &HostConfig, metered: bool) -> Result<Self, HostError> {
        let Built { engine, pooling } = build(config, metered)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| {
            HostError::Engine(format!(
                "cannot add WASI to the linker: {}",
                super::invoke::chain(&e)
            ))
        })?;
        bindings::add_to_linker(&mut linker)
            .and_then(|()| capabilities::add_to_linker(&mut linker))
            .map_err(|e| {
                HostError::Engine(format!(
                    "cannot add the ferry:plugin imports ({}) to the linker: {}",
                    bindings::served(),
                    super::invoke::chain(&e)
                ))
            })?;
        let ticker = EpochTicker::start(&engine, config.epoch_tick)?;
        let tag = cache::engine_tag(&engine);
        Ok(Self {
            engine,
            linker,
            pooling,
            tag,
            _ticker: ticker,
        })
    }
}

/// The engine and whether it pools instances.
struct Built {
    engine: Engine,
    pooling: bool,
}

/// Creates an engine: async calls (so plugins can yield to the tokio runtime), the component
/// model, epoch interruption (deadlines), fuel when `metered`, and the pooling allocator when
/// it can be had.
fn build(config: &HostConfig, metered: bool) -> Result<Built, HostError> {
    if config.pooling {
        let mut pooled = base_config(config, metered);
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(config)));
        match Engine::new(&pooled) {
            Ok(engine) => {
                return Ok(Built {
                    engine,
                    pooling: true,
                });
            }
            // The pool reserves its address space up front; where that is refused (a ulimit on
            // virtual memory, say), instances allocated on demand still work, only slower.
            Err(e) => tracing::warn!(
                error = %super::invoke::chain(&e),
                "cannot create the pooling instance allocator; allocating plugin instances on demand"
            ),
        }
    }
    let engine = Engine::new(&base_config(config, metered))
        .map_err(|e| HostError::Engine(super::invoke::chain(&e)))?;
    Ok(Built {
        engine,
        pooling: false,
    })
}

fn base_config(config: &HostConfig, metered: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.consume_fuel(metered);
    // Each memory reserves only what the limit allows (plus the default guard) rather than the
    // default 4 GiB: with a pool of instances, many hosts per test process and a 24 GiB box,
    // address space matters more than the bounds checks this brings back.
    c.memory_reservation(page_ceil(config.max_memory_bytes) as u64);
    c
}

/// The pool: sized for `max_instances` instances, with memory slots capped at the memory
/// limit.
///
/// When an instance ends, its memories and tables must be reset before the slot is used again.
/// By default wasmtime gives the pages back to the kernel (`madvise`), so the next instance
/// page-faults them in again, and each `madvise` flushes the TLB of every thread of the process.
/// For the echo plugin that was about 30 of an invocation's 40 µs (the faults while it ran, the
/// `madvise` when it ended), and it kept two invokers from getting much more done than one (see
/// `benches/instance.rs`). Where Linux offers `PAGEMAP_SCAN` (6.7 and later), wasmtime instead
/// finds the pages the instance dirtied and restores them in place (zeros, or the module's
/// initial data), up to [`MEMORY_KEEP_RESIDENT`] per memory and [`TABLE_KEEP_RESIDENT`] per
/// table, and `madvise`s only what lies beyond. The next instance sees exactly the contents a
/// fresh slot would have, so nothing leaks between invocations; the cost is that idle slots keep
/// up to that much of what their last instance touched resident. Without `PAGEMAP_SCAN`,
/// keeping memory resident would mean `memset`ting the whole amount at every reset, which is
/// slower than `madvise` for small plugins, so the default stays.
fn pool(config: &HostConfig) -> PoolingAllocationConfig {
    let n = config.max_instances.max(1);
    let mut p = PoolingAllocationConfig::new();
    p.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
        .total_memories(n.saturating_mul(MEMORIES_PER_INSTANCE))
        .total_tables(n.saturating_mul(TABLES_PER_INSTANCE))
        .total_stacks(n)
        .table_elements(TABLE_ELEMENTS)
        .max_memory_size(page_ceil(config.max_memory_bytes));
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        p.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT);
    }
    p
}

fn page_ceil(bytes: usize) -> usize {
    bytes
        .max(WASM_PAGE)
        .div_ceil(WASM_PAGE)
        .saturating_mul(WASM_PAGE)
}

/// Increments the engine's epoch every tick, from a thread of its own, until dropped.
///
/// A thread rather than a tokio task: the host may be created outside a runtime, and a busy
/// runtime must not delay the ticks that let it take its threads back from plugins.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: &Engine, tick: Duration) -> Result<Self, HostError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let engine = engine.weak();
        let thread = std::thread::Builder::new()
            .name("ferry-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| HostError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once; joining means no thread outlives the
        // host (tests create and drop many hosts).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::page_ceil;

    #[test]
    fn rounds_memory_to_pages() {
        assert_eq!(page_ceil(0), 65_536);
        assert_eq!(page_ceil(65_537), 131_072);
        assert_eq!(page_ceil(256 << 20), 256 << 20);
    }
}
