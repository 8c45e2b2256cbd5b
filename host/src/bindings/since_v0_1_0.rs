//! `ferry:plugin@0.1.0`, bound from `wit/0.1.0` (released, frozen): the bindings, and the
//! adapters between this version's types and the host's.

use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker};

use self::ferry::plugin::{agent, context, kv, metrics, process, runtimes, types};
use super::Interface;
use crate::capabilities::metrics::Sample;
use crate::capabilities::process as programs;
use crate::capabilities::runtimes as supervised;
use crate::state::State;
use crate::{InvokeError, LogLevel};

/// The version these bindings are generated from (the `path` below).
pub(crate) const VERSION: &str = "0.1.0";

/// The type of `handler.handle` in this version, as `check.rs` renders types.
pub(crate) const HANDLE_TYPE: &str = "func(record { id: string, topic: string, payload: list<u8>, content-type: string }) \
     -> result<list<u8>, variant { invalid-input(string), denied(string), failed(string), cancelled, timed-out }>";

wasmtime::component::bindgen!({
    path: "../wit/0.1.0",
    world: "plugin",
    exports: { default: async },
    // Waiting for a child process, or for the server's answer, must not hold a runtime thread.
    imports: {
        "ferry:plugin/process.run": async,
        "ferry:plugin/process.run-with": async,
        "ferry:plugin/context.request-data": async,
        // Stopping a runtime waits for its process group to go.
        "ferry:plugin/runtimes.stop": async,
        "ferry:plugin/runtimes.restart": async,
        "ferry:plugin/runtimes.delete": async,
    },
});

/// Adds this version's `interface` to `linker`.
pub(crate) fn link(linker: &mut Linker<State>, interface: Interface) -> wasmtime::Result<()> {
    fn state(state: &mut State) -> &mut State {
        state
    }
    match interface {
        Interface::Context => {
            types::add_to_linker::<State, HasSelf<State>>(linker, state)?;
            context::add_to_linker::<State, HasSelf<State>>(linker, state)
        }
        Interface::Process => process::add_to_linker::<State, HasSelf<State>>(linker, state),
        Interface::Metrics => metrics::add_to_linker::<State, HasSelf<State>>(linker, state),
        Interface::Kv => kv::add_to_linker::<State, HasSelf<State>>(linker, state),
        Interface::Runtimes => runtimes::add_to_linker::<State, HasSelf<State>>(linker, state),
        Interface::Agent => agent::add_to_linker::<State, HasSelf<State>>(linker, state),
    }
}

/// Calls the plugin's `handle` with `cmd`.
pub(crate) async fn handle(
    plugin: &Plugin,
    store: &mut Store<State>,
    cmd: super::Command,
) -> wasmtime::Result<Result<Vec<u8>, InvokeError>> {
    let cmd = types::Command {
        id: cmd.id,
        topic: cmd.topic,
        payload: cmd.payload,
        content_type: cmd.content_type,
    };
    let returned = plugin
        .ferry_plugin_handler()
        .call_handle(store, &cmd)
        .await?;
    Ok(returned.map_err(|e| match e {
        types::Error::InvalidInput(m) => InvokeError::InvalidInput(m),
        types::Error::Denied(m) => InvokeError::Denied(m),
        types::Error::Failed(m) => InvokeError::Failed(m),
        types::Error::Cancelled => InvokeError::Cancelled,
        types::Error::TimedOut => InvokeError::TimedOut,
    }))
}

impl types::Host for State {}

impl context::Host for State {
    fn log(&mut self, level: context::Level, message: String) {
        let level = match level {
            context::Level::Trace => LogLevel::Trace,
            context::Level::Debug => LogLevel::Debug,
            context::Level::Info => LogLevel::Info,
            context::Level::Warn => LogLevel::Warn,
            context::Level::Error => LogLevel::Error,
        };
        self.emit_log(level, message);
    }

    fn progress(&mut self, percent: u8, message: String) {
        self.emit_progress(percent, message);
    }

    fn cancelled(&mut self) -> bool {
        self.events.cancelled()
    }

    async fn request_data(&mut self, key: String) -> Result<Vec<u8>, String> {
        self.granted.request_data.check()?;
        self.events.request_data(key).await
    }
}

fn sample(s: Sample) -> metrics::Sample {
    metrics::Sample {
        timestamp_ms: s.timestamp_ms,
        cpu_percent: s.cpu_percent,
        memory_used_bytes: s.memory_used_bytes,
        memory_total_bytes: s.memory_total_bytes,
        disk_used_bytes: s.disk_used_bytes,
        disk_total_bytes: s.disk_total_bytes,
        agent_cpu_percent: s.agent_cpu_percent,
        agent_memory_bytes: s.agent_memory_bytes,
    }
}

impl metrics::Host for State {
    fn now(&mut self) -> Result<metrics::Sample, String> {
        self.granted.metrics.now().map(sample)
    }

    fn history(&mut self, period_seconds: u32) -> Result<Vec<metrics::Sample>, String> {
        let history = self
            .granted
            .metrics
            .history(Duration::from_secs(period_seconds.into()))?;
        Ok(history.into_iter().map(sample).collect())
    }
}

impl kv::Host for State {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        self.granted.kv.get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.granted.kv.set(&key, &value)
    }

    fn delete(&mut self, key: String) -> Result<bool, String> {
        self.granted.kv.delete(&key)
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, String> {
        self.granted.kv.list_keys(&prefix)
    }
}

fn exit(exit: programs::Exit) -> process::Exit {
    process::Exit {
        code: exit.code,
        signal: exit.signal,
        stopped: exit.stopped.map(|reason| match reason {
            programs::StopReason::Timeout => process::StopReason::Timeout,
            programs::StopReason::Cancelled => process::StopReason::Cancelled,
        }),
        stdout: exit.stdout,
        stdout_truncated: exit.stdout_truncated,
        stderr_tail: exit.stderr_tail,
        stderr: exit.stderr,
        stderr_truncated: exit.stderr_truncated,
    }
}

impl process::Host for State {
    async fn run(
        &mut self,
        program: String,
        args: Vec<String>,
        timeout_ms: Option<u32>,
    ) -> Result<process::Exit, String> {
        let request = programs::Request {
            program,
            args,
            stdin: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout_ms,
        };
        self.run_program(request).await.map(exit)
    }

    async fn run_with(&mut self, request: process::Request) -> Result<process::Exit, String> {
        let request = programs::Request {
            program: request.program,
            args: request.args,
            stdin: request.stdin,
            env: request.env,
            cwd: request.cwd,
            timeout_ms: request.timeout_ms,
        };
        self.run_program(request).await.map(exit)
    }
}

fn runtime_info(info: supervised::Info) -> runtimes::Info {
    use supervised::Status as S;
    runtimes::Info {
        name: info.name,
        status: match info.status {
            S::Running => runtimes::Status::Running,
            S::Stopped => runtimes::Status::Stopped,
            S::Exited => runtimes::Status::Exited,
            S::Restarting => runtimes::Status::Restarting,
            S::Failed => runtimes::Status::Failed,
        },
        pid: info.pid,
        restarts: info.restarts,
        last_exit_code: info.last_exit_code,
        port: info.port,
        created_ms: info.created_ms,
        started_ms: info.started_ms,
        detail: info.detail,
    }
}

impl runtimes::Host for State {
    fn create(
        &mut self,
        name: String,
        spec: runtimes::Spec,
        start: bool,
    ) -> Result<runtimes::Info, String> {
        let restart = match spec.restart {
            runtimes::RestartPolicy::Never => supervised::RestartPolicy::Never,
            runtimes::RestartPolicy::OnFailure => supervised::RestartPolicy::OnFailure,
            runtimes::RestartPolicy::Always => supervised::RestartPolicy::Always,
        };
        let request = match spec.workload {
            runtimes::Workload::Process(p) => supervised::Request {
                program: p.command,
                args: p.args,
                env: p.env,
                cwd: p.cwd,
                restart,
                port: spec.port,
                component: false,
            },
            runtimes::Workload::Component(c) => supervised::Request {
                program: c.path,
                args: c.args,
                env: c.env,
                cwd: None,
                restart,
                port: spec.port,
                component: true,
            },
        };
        let granted = &self.granted;
        granted
            .runtimes
            .create(&name, request, start, &granted.programs)
            .map(runtime_info)
    }

    fn start(&mut self, name: String) -> Result<runtimes::Info, String> {
        self.granted
            .runtimes
            .supervisor()?
            .start(&name)
            .map(runtime_info)
    }

    async fn stop(&mut self, name: String) -> Result<runtimes::Info, String> {
        let granted = self.granted.clone();
        granted
            .runtimes
            .supervisor()?
            .stop(&name)
            .await
            .map(runtime_info)
    }

    async fn restart(&mut self, name: String) -> Result<runtimes::Info, String> {
        let granted = self.granted.clone();
        granted
            .runtimes
            .supervisor()?
            .restart(&name)
            .await
            .map(runtime_info)
    }

    async fn delete(&mut self, name: String) -> Result<(), String> {
        let granted = self.granted.clone();
        granted.runtimes.supervisor()?.delete(&name).await
    }

    fn get(&mut self, name: String) -> Result<runtimes::Info, String> {
        self.granted
            .runtimes
            .supervisor()?
            .get(&name)
            .map(runtime_info)
    }

    fn all(&mut self) -> Result<Vec<runtimes::Info>, String> {
        Ok(self
            .granted
            .runtimes
            .supervisor()?
            .list()
            .into_iter()
            .map(runtime_info)
            .collect())
    }

    fn consumption(
        &mut self,
        name: String,
        period_seconds: u32,
    ) -> Result<Vec<runtimes::Sample>, String> {
        let samples = self
            .granted
            .runtimes
            .supervisor()?
            .consumption(&name, Duration::from_secs(u64::from(period_seconds)))?;
        Ok(samples
            .into_iter()
            .map(|s| runtimes::Sample {
                timestamp_ms: s.timestamp_ms,
                cpu_percent: s.cpu_percent,
                memory_bytes: s.memory_bytes,
            })
            .collect())
    }
}

impl agent::Host for State {
    fn decommission(&mut self, reason: String) -> Result<(), String> {
        self.granted.decommission.check()?;
        self.events.decommission(reason)
    }
}
