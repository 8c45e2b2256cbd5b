//! The agent's runtimes as the plugin host's [`RuntimeSupervisor`]: what the
//! `ferry:plugin/runtimes` interface of a granted plugin manages.
//!
//! The agent keeps the host's `Spec`, `RestartPolicy`, `Status` and `Sample` as they are
//! (serializable, for its state file) and maps only its own `Info`, which adds what only the agent
//! tracks: the spec, the pid's start time, the desired state.

use std::time::Duration;

use ferry_host::RuntimeSupervisor;
use ferry_host::runtimes as host;
use futures::future::BoxFuture;

use super::{Info, Runtimes};

impl RuntimeSupervisor for Runtimes {
    fn create(&self, name: &str, spec: host::Spec, start: bool) -> Result<host::Info, String> {
        Runtimes::create(self, name, spec, start).map(info_to)
    }

    fn start(&self, name: &str) -> Result<host::Info, String> {
        Runtimes::start(self, name).map(info_to)
    }

    fn stop<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<host::Info, String>> {
        Box::pin(async move { Runtimes::stop(self, name).await.map(info_to) })
    }

    fn restart<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<host::Info, String>> {
        Box::pin(async move { Runtimes::restart(self, name).await.map(info_to) })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(Runtimes::delete(self, name))
    }

    fn get(&self, name: &str) -> Result<host::Info, String> {
        Runtimes::get(self, name).map(info_to)
    }

    fn list(&self) -> Vec<host::Info> {
        Runtimes::list(self).into_iter().map(info_to).collect()
    }

    fn consumption(&self, name: &str, period: Duration) -> Result<Vec<host::Sample>, String> {
        Runtimes::consumption(self, name, period)
    }
}

fn info_to(info: Info) -> host::Info {
    host::Info {
        name: info.name,
        status: info.status,
        pid: info.pid,
        restarts: info.restarts,
        last_exit_code: info.last_exit_code,
        port: info.spec.port,
        created_ms: info.created_ms,
        started_ms: info.started_ms,
        detail: info.detail,
    }
}
