//! The host capability interfaces, `ferry:plugin/metrics`, `ferry:plugin/kv` and
//! `ferry:plugin/process` (see `process.rs`): each answers
//! only a plugin whose grant ([`LoadOptions::capabilities`](super::LoadOptions)) includes it,
//! and every call of a plugin without the grant gets an error naming the capability and how to
//! grant it.

use std::sync::Arc;
use std::time::Duration;

use super::GrantSource;
use super::bindings::ferry::plugin::{agent, kv, metrics, process, runtimes};
use super::kv::{self as store, KvStore, MAX_KEY_BYTES};
use super::metrics::{MetricsSource, Sample};
use super::process::{self as programs, Programs};
use super::runtimes::{self as supervised, RuntimeSupervisor};
use super::state::State;

/// What one loaded plugin may reach through the host interfaces; shared by its invocations.
pub(crate) struct Interfaces {
    plugin: String,
    metrics_granted: bool,
    kv_granted: bool,
    request_data_granted: bool,
    metrics: Option<Arc<dyn MetricsSource>>,
    kv: Option<Arc<dyn KvStore>>,
    programs: Programs,
    runtimes_granted: bool,
    runtimes: Option<Arc<dyn RuntimeSupervisor>>,
    decommission_granted: bool,
    grants: GrantSource,
}

impl Interfaces {
    pub(crate) fn new(
        plugin: &str,
        capabilities: &ferry_manifest::Capabilities,
        metrics: Option<Arc<dyn MetricsSource>>,
        kv: Option<Arc<dyn KvStore>>,
        runtimes: Option<Arc<dyn RuntimeSupervisor>>,
        // The granted environment, which the programs it starts get.
        env: &[(String, String)],
        grants: GrantSource,
    ) -> Self {
        Interfaces {
            plugin: plugin.to_string(),
            metrics_granted: capabilities.metrics,
            kv_granted: capabilities.kv,
            request_data_granted: capabilities.request_data,
            metrics,
            kv,
            programs: Programs::new(plugin, &capabilities.programs, env, grants).with_dirs(
                capabilities
                    .filesystem
                    .iter()
                    .map(|e| e.path.clone())
                    .collect(),
            ),
            runtimes_granted: capabilities.runtimes,
            runtimes,
            decommission_granted: capabilities.decommission,
            grants,
        }
    }

    fn runtimes(&self) -> Result<&dyn RuntimeSupervisor, String> {
        if !self.runtimes_granted {
            return Err(self.not_granted("runtimes"));
        }
        self.runtimes.as_deref().ok_or_else(|| {
            "runtimes are unavailable: no runtime supervisor is configured on this agent".into()
        })
    }

    fn not_granted(&self, capability: &str) -> String {
        let plugin = &self.plugin;
        let how = self
            .grants
            .how(plugin, &format!("{capability} = true"), capability);
        format!("{capability} is not granted to plugin '{plugin}': {how}")
    }

    /// Fails unless the plugin may ask the server for data.
    pub(crate) fn request_data(&self) -> Result<(), String> {
        if self.request_data_granted {
            Ok(())
        } else {
            Err(self.not_granted("request_data"))
        }
    }

    fn metrics(&self) -> Result<&dyn MetricsSource, String> {
        if !self.metrics_granted {
            return Err(self.not_granted("metrics"));
        }
        self.metrics.as_deref().ok_or_else(|| {
            "metrics are unavailable: no metrics source is configured on this agent".into()
        })
    }

    fn kv(&self) -> Result<&dyn KvStore, String> {
        if !self.kv_granted {
            return Err(self.not_granted("kv"));
        }
        self.kv.as_deref().ok_or_else(|| {
            "the key-value store is unavailable: no key-value directory is configured on this agent".into()
        })
    }
}

fn wit(s: Sample) -> metrics::Sample {
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
        Ok(wit(self.interfaces.metrics()?.now()))
    }

    fn history(&mut self, period_seconds: u32) -> Result<Vec<metrics::Sample>, String> {
        let history = self.interfaces.metrics()?;
        Ok(history
            .history(Duration::from_secs(period_seconds.into()))
            .into_iter()
            .map(wit)
            .collect())
    }
}

impl kv::Host for State {
    // Keys and values are checked before the store is reached: a plugin gets the same answer
    // whatever the store, and the store only ever sees what fits.
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let interfaces = &self.interfaces;
        let kv = interfaces.kv()?;
        store::check_key(&key)?;
        kv.get(&interfaces.plugin, &key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let interfaces = &self.interfaces;
        let kv = interfaces.kv()?;
        store::check_key(&key)?;
        store::check_value(&key, &value)?;
        kv.set(&interfaces.plugin, &key, &value)
    }

    fn delete(&mut self, key: String) -> Result<bool, String> {
        let interfaces = &self.interfaces;
        let kv = interfaces.kv()?;
        store::check_key(&key)?;
        kv.delete(&interfaces.plugin, &key)
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, String> {
        let interfaces = &self.interfaces;
        let kv = interfaces.kv()?;
        // No key is longer than this, so none starts with it.
        if prefix.len() > MAX_KEY_BYTES {
            return Ok(Vec::new());
        }
        kv.list_keys(&interfaces.plugin, &prefix)
    }
}

impl process::Host for State {
    async fn run(
        &mut self,
        program: String,
        args: Vec<String>,
        timeout_ms: Option<u32>,
    ) -> Result<process::Exit, String> {
        let cx = programs::Context {
            events: self.events.clone(),
            deadline: self.deadline,
            max_output_bytes: self.max_output_bytes,
        };
        let interfaces = self.interfaces.clone();
        let request = programs::Request {
            program,
            args,
            stdin: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout_ms,
        };
        programs::run(&interfaces.programs, cx, request).await
    }

    async fn run_with(&mut self, request: process::Request) -> Result<process::Exit, String> {
        let cx = programs::Context {
            events: self.events.clone(),
            deadline: self.deadline,
            max_output_bytes: self.max_output_bytes,
        };
        let interfaces = self.interfaces.clone();
        let request = programs::Request {
            program: request.program,
            args: request.args,
            stdin: request.stdin,
            env: request.env,
            cwd: request.cwd,
            timeout_ms: request.timeout_ms,
        };
        programs::run(&interfaces.programs, cx, request).await
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
        let interfaces = self.interfaces.clone();
        let supervisor = interfaces.runtimes()?;
        // A runtime runs a program (or a component file): the same grant as starting it
        // through `process`.
        let restart = match spec.restart {
            runtimes::RestartPolicy::Never => supervised::RestartPolicy::Never,
            runtimes::RestartPolicy::OnFailure => supervised::RestartPolicy::OnFailure,
            runtimes::RestartPolicy::Always => supervised::RestartPolicy::Always,
        };
        let spec = match spec.workload {
            runtimes::Workload::Process(p) => supervised::Spec {
                command: interfaces.programs.granted(&p.command)?.to_path_buf(),
                args: p.args,
                env: p.env,
                cwd: p.cwd.map(Into::into),
                restart,
                port: spec.port,
                component: false,
            },
            runtimes::Workload::Component(c) => supervised::Spec {
                command: interfaces.programs.granted(&c.path)?.to_path_buf(),
                args: c.args,
                env: c.env,
                cwd: None,
                restart,
                port: spec.port,
                component: true,
            },
        };
        supervisor.create(&name, spec, start).map(runtime_info)
    }

    fn start(&mut self, name: String) -> Result<runtimes::Info, String> {
        let interfaces = self.interfaces.clone();
        interfaces.runtimes()?.start(&name).map(runtime_info)
    }

    async fn stop(&mut self, name: String) -> Result<runtimes::Info, String> {
        let interfaces = self.interfaces.clone();
        interfaces.runtimes()?.stop(&name).await.map(runtime_info)
    }

    async fn restart(&mut self, name: String) -> Result<runtimes::Info, String> {
        let interfaces = self.interfaces.clone();
        interfaces
            .runtimes()?
            .restart(&name)
            .await
            .map(runtime_info)
    }

    async fn delete(&mut self, name: String) -> Result<(), String> {
        let interfaces = self.interfaces.clone();
        interfaces.runtimes()?.delete(&name).await
    }

    fn get(&mut self, name: String) -> Result<runtimes::Info, String> {
        let interfaces = self.interfaces.clone();
        interfaces.runtimes()?.get(&name).map(runtime_info)
    }

    fn all(&mut self) -> Result<Vec<runtimes::Info>, String> {
        let interfaces = self.interfaces.clone();
        Ok(interfaces
            .runtimes()?
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
        let interfaces = self.interfaces.clone();
        let samples = interfaces
            .runtimes()?
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
        if !self.interfaces.decommission_granted {
            return Err(self.interfaces.not_granted("decommission"));
        }
        self.events.decommission(reason)
    }
}
