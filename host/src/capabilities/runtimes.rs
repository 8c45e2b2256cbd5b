//! The `runtimes` capability: `ferry:plugin/runtimes` manages what a [`RuntimeSupervisor`]
//! supervises, supplied by whoever runs the host (the agent passes its supervisor, which keeps
//! runtimes in `<data_dir>/runtimes` and outlives any one command), for plugins granted
//! `runtimes`. The types here are the host's view of a runtime: what a plugin may ask for and
//! be told.
//!
//! A workload's program is checked against the `programs` grant, as for `process`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;

use super::Switch;
use super::process::Programs;
use crate::bindings::{self, Interface};
use crate::state::State;

/// What to do when a workload ends by itself. Serializable, as the agent keeps each runtime's
/// spec in its state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it ended.
    Never,
    /// Start it again after a non-zero exit or a signal.
    OnFailure,
    /// Start it again whenever it ends.
    Always,
}

/// A runtime's spec, as a plugin asked for it, its program already checked against the
/// plugin's grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// The program, an absolute path.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory; `/` when none.
    pub cwd: Option<PathBuf>,
    /// What to do when it ends by itself.
    pub restart: RestartPolicy,
    /// The port it serves on, for others.
    pub port: Option<u16>,
    /// `command` is a `wasi:cli` component to run, not a program.
    #[serde(default)]
    pub component: bool,
}

/// A runtime as a plugin asks for it, in any WIT version, before its program is checked
/// against the plugin's grant.
pub(crate) struct Request {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<String>,
    pub(crate) restart: RestartPolicy,
    pub(crate) port: Option<u16>,
    pub(crate) component: bool,
}

/// Where a runtime stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Its workload runs.
    Running,
    /// Stopped on request.
    Stopped,
    /// Ended by itself; the policy leaves it ended.
    Exited,
    /// Ended; about to start again.
    Restarting,
    /// Could not be started.
    Failed,
}

/// A runtime as a plugin is told of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub status: Status,
    /// Its workload's pid while it runs.
    pub pid: Option<u32>,
    /// How many times it was started again.
    pub restarts: u32,
    /// The exit code of its last end, when it exited.
    pub last_exit_code: Option<i32>,
    /// The port it serves on.
    pub port: Option<u16>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When its workload last started.
    pub started_ms: Option<u64>,
    /// Why it failed or how it last ended.
    pub detail: String,
}

/// One measurement of a runtime's workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// CPU as a share of the whole host, 0–100.
    pub cpu_percent: f32,
    /// Resident memory in bytes.
    pub memory_bytes: u64,
}

/// The supervisor behind `ferry:plugin/runtimes`
/// ([`HostConfig::runtimes`](crate::HostConfig::runtimes)). Errors are the messages the plugin
/// gets. The synchronous calls are made in the middle of wasm execution and must be quick.
pub trait RuntimeSupervisor: Send + Sync {
    /// Creates the runtime `name` from `spec`, and starts it when `start`.
    fn create(&self, name: &str, spec: Spec, start: bool) -> Result<Info, String>;
    /// Starts a stopped runtime.
    fn start(&self, name: &str) -> Result<Info, String>;
    /// Stops a runtime's workload.
    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Info, String>>;
    /// Stops and starts a runtime's workload.
    fn restart<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Info, String>>;
    /// Stops a runtime and forgets it.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// One runtime.
    fn get(&self, name: &str) -> Result<Info, String>;
    /// Every runtime.
    fn list(&self) -> Vec<Info>;
    /// The samples of `name`'s workload in the last `period`, oldest first.
    fn consumption(&self, name: &str, period: Duration) -> Result<Vec<Sample>, String>;
}

/// A loaded plugin's `runtimes`: its grant, and the host's supervisor.
pub(crate) struct Runtimes {
    pub(super) granted: Switch,
    supervisor: Option<Arc<dyn RuntimeSupervisor>>,
}

impl Runtimes {
    pub(crate) fn new(granted: Switch, supervisor: Option<Arc<dyn RuntimeSupervisor>>) -> Self {
        Runtimes {
            granted,
            supervisor,
        }
    }

    /// The supervisor, if the plugin is granted `runtimes` and there is one.
    pub(crate) fn supervisor(&self) -> Result<&dyn RuntimeSupervisor, String> {
        self.granted.check()?;
        self.supervisor.as_deref().ok_or_else(|| {
            "runtimes are unavailable: no runtime supervisor is configured on this agent".into()
        })
    }

    /// `runtimes.create`. A runtime runs a program (or a component file): it needs the same
    /// grant in `programs` as starting it through `process`.
    pub(crate) fn create(
        &self,
        name: &str,
        request: Request,
        start: bool,
        programs: &Programs,
    ) -> Result<Info, String> {
        let supervisor = self.supervisor()?;
        let spec = Spec {
            command: programs.granted(&request.program)?.to_path_buf(),
            args: request.args,
            env: request.env,
            cwd: request.cwd.map(Into::into),
            restart: request.restart,
            port: request.port,
            component: request.component,
        };
        supervisor.create(name, spec, start)
    }
}

/// Links `ferry:plugin/runtimes`.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    bindings::link(linker, Interface::Runtimes)
}
