//! Running one command: a fresh store and instance, the call under its deadline, and the
//! translation of however it ended into an [`InvokeError`].
//!
//! Each command gets a fresh `Store` from the plugin's `InstancePre`. The deadline (the command's,
//! capped by the plugin's own timeout) is enforced by the epoch callback, which also yields every
//! tick, and by a timer for a plugin waiting in a host call. A plugin that ignores `cancelled()` is
//! stopped after `cancel_grace`. Traps and memory or fuel exhaustion map to `InvokeError`s that
//! name the limit and how to raise it.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline, WasmBacktrace};

use super::bindings::{Command, PluginPre};
use super::output::Captured;
use super::state::{Limiter, Meter, State};
use super::{CommandEvents, Invocation, InvokeError, LoadedInner, LogLevel};

/// How often the host looks at `cancelled()` on the plugin's behalf, to start the grace period.
const CANCEL_POLL: Duration = Duration::from_millis(50);
/// Backtrace frames quoted in a crash message.
const BACKTRACE_FRAMES: usize = 3;

/// Runs `inv` in a fresh instance of `plugin`.
pub(crate) async fn run(
    plugin: &LoadedInner,
    inv: Invocation,
    events: Arc<dyn CommandEvents>,
    meter: &Arc<Meter>,
) -> Result<Vec<u8>, InvokeError> {
    let name = plugin.name.as_str();
    let host = &plugin.host;
    let config = &host.config;
    let Some(_slot) = Slot::acquire(&host.running, config.max_instances) else {
        return Err(InvokeError::Instantiate(format!(
            "plugin '{name}' cannot start: all {} plugin instances this agent allows are in use; \
             retry later, or raise the agent's instance limit",
            config.max_instances
        )));
    };
    // The plugin's own timeout (its grant's) caps whatever the command asked for.
    let deadline = match (inv.deadline, plugin.timeout.map(|t| Instant::now() + t)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if deadline.is_some_and(|d| d <= Instant::now()) {
        return Err(InvokeError::TimedOut);
    }

    let stdout = Captured::new(
        "stdout",
        LogLevel::Info,
        events.clone(),
        config.max_output_bytes,
    );
    let stderr = Captured::new(
        "stderr",
        LogLevel::Warn,
        events.clone(),
        config.max_output_bytes,
    );
    let wasi = plugin
        .granted
        .wasi_ctx(&events, stdout.clone(), stderr.clone());
    let state = State::new(
        events.clone(),
        wasi,
        Limiter::new(plugin.max_memory_bytes, meter.clone()),
        deadline,
        config.max_message_bytes,
        config.max_output_bytes,
        plugin.granted.clone(),
    );
    let mut store = Store::new(&plugin.runtime.engine, state);
    store.limiter(|s| &mut s.limiter);
    if let Some(budget) = plugin.fuel
        && let Err(e) = store.set_fuel(budget)
    {
        return Err(InvokeError::Instantiate(format!(
            "plugin '{name}' cannot be given its fuel budget: {}",
            chain(&e)
        )));
    }
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        if state.deadline.is_some_and(|d| Instant::now() >= d) {
            state.timed_out = true;
            return Ok(UpdateDeadline::Interrupt);
        }
        // Yield at every tick so that a plugin computing in a loop shares the runtime's
        // threads with the connection and the other commands; tokio's own yield also
        // respects its cooperative budget.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });

    let cmd = Command {
        id: inv.id,
        topic: inv.topic,
        payload: inv.payload,
        content_type: inv.content_type,
    };
    // The epoch callback ends a plugin that computes past its deadline; these timers also end
    // one that waits in a host call (a sleep, a poll), where no epoch check runs. Dropping
    // the call future drops the instance mid-call, which wasmtime supports.
    let ended = tokio::select! {
        returned = call(&plugin.pre, &mut store, cmd) => Ended::Returned(returned),
        () = until(deadline) => Ended::Deadline,
        () = cancel_ignored(&*events, config.cancel_grace) => Ended::CancelIgnored,
    };
    stdout.finish();
    stderr.finish();
    if let Some(budget) = plugin.fuel {
        meter.set_fuel_consumed(budget.saturating_sub(store.get_fuel().unwrap_or(0)));
    }

    match ended {
        Ended::Returned(Ok(Ok(payload))) => Ok(payload),
        Ended::Returned(Ok(Err(e))) => Err(e),
        Ended::Returned(Err(failure)) if failure.out_of_fuel() => {
            let budget = plugin.fuel.unwrap_or_default();
            let crash = format!(
                "plugin '{name}' ran out of fuel: it used all {budget} units of its budget for one command{}; raise its \
                 fuel limit (`fuel` under `[limits]` in its manifest, within what the agent's policy allows) if it \
                 needs more",
                match failure {
                    Failure::Instantiate(_) => " before it was even instantiated",
                    Failure::Call(_) => "",
                }
            );
            tracing::warn!(plugin = name, "{crash}");
            Err(InvokeError::Crashed(crash))
        }
        Ended::Returned(Err(Failure::Instantiate(e))) => {
            Err(InvokeError::Instantiate(match meter.denied() {
                Some(asked) => format!(
                    "plugin '{name}' needs {} at start, more than its memory limit of {}; {}",
                    mib(asked),
                    mib(plugin.max_memory_bytes as u64),
                    raise_memory_advice(plugin.max_memory_bytes, config.max_memory_bytes)
                ),
                None => format!("plugin '{name}' could not be instantiated: {}", chain(&e)),
            }))
        }
        Ended::Returned(Err(Failure::Call(_))) if store.data().timed_out => {
            Err(InvokeError::TimedOut)
        }
        Ended::Returned(Err(Failure::Call(e))) => {
            let crash = crash_message(
                name,
                &e,
                meter,
                plugin.max_memory_bytes,
                config.max_memory_bytes,
                &stderr.tail(),
            );
            tracing::warn!(plugin = name, "{crash}");
            Err(InvokeError::Crashed(crash))
        }
        Ended::Deadline => Err(InvokeError::TimedOut),
        Ended::CancelIgnored => {
            tracing::warn!(
                plugin = name,
                grace = ?config.cancel_grace,
                "plugin ignored a cancel for the whole grace period; stopped it"
            );
            Err(InvokeError::Cancelled)
        }
    }
}

enum Ended {
    Returned(Result<Result<Vec<u8>, InvokeError>, Failure>),
    Deadline,
    CancelIgnored,
}

enum Failure {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
}

impl Failure {
    fn out_of_fuel(&self) -> bool {
        let (Failure::Instantiate(e) | Failure::Call(e)) = self;
        e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel)
    }
}

async fn call(
    pre: &PluginPre,
    store: &mut Store<State>,
    cmd: Command,
) -> Result<Result<Vec<u8>, InvokeError>, Failure> {
    let plugin = pre
        .instantiate(&mut *store)
        .await
        .map_err(Failure::Instantiate)?;
    plugin.handle(&mut *store, cmd).await.map_err(Failure::Call)
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => pending().await,
    }
}

/// Resolves once the command has been cancelled for `grace` and the plugin still runs.
async fn cancel_ignored(events: &dyn CommandEvents, grace: Duration) {
    while !events.cancelled() {
        tokio::time::sleep(CANCEL_POLL).await;
    }
    tokio::time::sleep(grace).await;
}

/// One of the host's instance slots, given back on drop.
struct Slot<'a>(&'a AtomicU32);

impl<'a> Slot<'a> {
    fn acquire(running: &'a AtomicU32, max: u32) -> Option<Self> {
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(running))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a plugin's memory limit comes from, and so where to raise it.
fn raise_memory_advice(plugin_max: usize, host_max: usize) -> &'static str {
    if plugin_max < host_max {
        "its own limit comes from `memory_mib` under [limits] in its manifest or the agent's policy: raise it there if it needs more"
    } else {
        "raise `plugin_memory_mib` in the agent's config if it needs more"
    }
}

fn crash_message(
    name: &str,
    error: &wasmtime::Error,
    meter: &Meter,
    max_memory: usize,
    host_max_memory: usize,
    stderr: &[String],
) -> String {
    let trap = error.downcast_ref::<Trap>();
    let what = match (trap, error.downcast_ref::<wasmtime_wasi::I32Exit>()) {
        (Some(trap), _) => trap
            .to_string()
            .trim_start_matches("wasm trap: ")
            .to_string(),
        (None, Some(exit)) => format!(
            "it exited with status {} instead of returning a result",
            exit.0
        ),
        (None, None) => chain(error),
    };
    let mut message = match (meter.denied(), trap) {
        (Some(asked), _) => format!(
            "plugin '{name}' exceeded its memory limit of {} (it asked for {}) and crashed: {what}; {}",
            mib(max_memory as u64),
            mib(asked),
            raise_memory_advice(max_memory, host_max_memory)
        ),
        (None, Some(_)) => format!("plugin '{name}' trapped: {what}"),
        (None, None) => format!("plugin '{name}' crashed: {what}"),
    };
    if let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() {
        let frames = summarize(backtrace);
        if !frames.is_empty() {
            message.push_str(&format!(" (at {frames})"));
        }
    }
    let said: Vec<&str> = stderr
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if !said.is_empty() {
        let mut said = said.join(" ");
        if said.len() > 500 {
            let mut end = 500;
            while !said.is_char_boundary(end) {
                end -= 1;
            }
            said.truncate(end);
            said.push('…');
        }
        message.push_str(&format!("; its stderr ended with: {said}"));
    }
    message
}

/// The innermost frames of a wasm backtrace, as `module!function`, innermost first. Frames
/// whose function has no name (plugins are usually stripped) carry no information and are
/// left out.
fn summarize(backtrace: &WasmBacktrace) -> String {
    backtrace
        .to_string()
        .lines()
        .filter_map(|line| {
            let (index, rest) = line.trim_start().split_once(": ")?;
            index.parse::<usize>().ok()?;
            let frame = rest.split_once(" - ").map_or(rest, |(_, f)| f).trim();
            (!frame.contains("<wasm function")).then(|| frame.to_string())
        })
        .take(BACKTRACE_FRAMES)
        .collect::<Vec<_>>()
        .join(" ← ")
}

fn mib(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.2} MiB", bytes as f64 / MIB as f64)
    }
}

/// An error and its causes on one line, without the multi-line wasm backtrace.
pub(crate) fn chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|e| e.to_string())
        .filter(|s| !s.starts_with("error while executing at wasm backtrace"))
        .collect::<Vec<_>>()
        .join(": ")
}
