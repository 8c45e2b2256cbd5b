//! Component runtimes: a `wasi:cli` program run by the agent itself, in a sandbox of its own.
//!
//! It gets its arguments and environment, its stdout and stderr appended to the runtime's log
//! file, a memory limit, and nothing else: no preopened directories, no sockets (the WASI
//! context's defaults deny every address). Its engine interrupts it every epoch tick so that
//! it yields its thread, and so that dropping its future (a stop) ends it promptly.
//!
//! Aborting its task stops it. A component runtime stops with the agent, and the next agent starts
//! it again.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::OutputFile;
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Spec;

/// How often a running component yields.
const TICK: Duration = Duration::from_millis(10);
/// The most linear memory a component runtime may use.
const MAX_MEMORY: usize = 256 << 20;

struct Runner {
    engine: Engine,
    linker: Linker<Data>,
}

struct Data {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for Data {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One engine for every component runtime of the process, made on first use with the thread
/// that advances its epoch.
fn runner() -> Result<&'static Runner, String> {
    static RUNNER: OnceLock<Result<Runner, String>> = OnceLock::new();
    RUNNER
        .get_or_init(|| {
            let mut config = Config::new();
            config.epoch_interruption(true);
            let engine =
                Engine::new(&config).map_err(|e| format!("cannot create the engine: {e}"))?;
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                .map_err(|e| format!("cannot link WASI: {e}"))?;
            let ticking = engine.weak();
            std::thread::Builder::new()
                .name("ferry-runtime-epoch".into())
                .spawn(move || {
                    while let Some(engine) = ticking.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(TICK);
                    }
                })
                .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
            Ok(Runner { engine, linker })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A compiled component, ready to be started (again).
#[derive(Clone)]
pub(super) struct Prepared {
    component: Arc<Component>,
}

/// Compiles the component at `spec.command`; a file that is not a `wasi:cli` program is an
/// error that says so.
pub(super) fn prepare(spec: &Spec) -> Result<Prepared, String> {
    let runner = runner()?;
    let bytes = std::fs::read(&spec.command)
        .map_err(|e| format!("cannot read {}: {e}", spec.command.display()))?;
    let component = Component::new(&runner.engine, &bytes)
        .map_err(|e| format!("{} is not a wasm component: {e}", spec.command.display()))?;
    let exports_run = component
        .component_type()
        .exports(&runner.engine)
        .any(|(name, _)| name.starts_with("wasi:cli/run@"));
    if !exports_run {
        return Err(format!(
            "{} is not a wasi:cli program: it exports no wasi:cli/run (build it as a command, e.g. a Rust binary for wasm32-wasip2)",
            spec.command.display()
        ));
    }
    Ok(Prepared {
        component: Arc::new(component),
    })
}

/// Runs the component until it ends: (exit code, success, description).
pub(super) async fn run(
    prepared: Prepared,
    name: String,
    spec: Spec,
    log: &Path,
) -> (Option<i32>, bool, String) {
    match run_inner(prepared, name, spec, log).await {
        Ok(code) => (Some(code), code == 0, format!("exited with code {code}")),
        Err(why) => (None, false, why),
    }
}

async fn run_inner(
    prepared: Prepared,
    name: String,
    spec: Spec,
    log: &Path,
) -> Result<i32, String> {
    let runner = runner()?;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))
    };
    let mut wasi = WasiCtx::builder();
    wasi.arg(&name)
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(OutputFile::new(open()?))
        .stderr(OutputFile::new(open()?));
    let mut store = Store::new(
        &runner.engine,
        Data {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(MAX_MEMORY).build(),
        },
    );
    store.limiter(|data| &mut data.limits);
    // Yield at every tick, forever: a runtime has no deadline, only a stop.
    store.epoch_deadline_async_yield_and_update(1);
    let command = Command::instantiate_async(&mut store, &prepared.component, &runner.linker)
        .await
        .map_err(|e| format!("cannot start the component: {e}"))?;
    match command.wasi_cli_run().call_run(&mut store).await {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(format!("crashed: {e:#}")),
        },
    }
}
