//! The wasmtime engine: its configuration, and the thread that drives epoch interruption.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{HostConfig, HostError};

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

/// The engine and whether it pools instances.
pub(crate) struct Built {
    pub(crate) engine: Engine,
    pub(crate) pooling: bool,
}

/// Creates the engine: async calls (so plugins can yield to the tokio runtime), the component
/// model, epoch interruption (deadlines), and the pooling allocator when it can be had.
pub(crate) fn build(config: &HostConfig) -> Result<Built, HostError> {
    if config.pooling {
        let mut pooled = base_config(config);
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
    let engine = Engine::new(&base_config(config))
        .map_err(|e| HostError::Engine(super::invoke::chain(&e)))?;
    Ok(Built {
        engine,
        pooling: false,
    })
}

fn base_config(config: &HostConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    // Each memory reserves only what the limit allows (plus the default guard) rather than the
    // default 4 GiB: with a pool of instances, many hosts per test process and a 24 GiB box,
    // address space matters more than the bounds checks this brings back.
    c.memory_reservation(page_ceil(config.max_memory_bytes) as u64);
    c
}

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
pub(crate) struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine, tick: Duration) -> Result<Self, HostError> {
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
