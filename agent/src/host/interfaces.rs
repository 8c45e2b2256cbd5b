//! The host capability interfaces, `ferry:plugin/metrics`, `ferry:plugin/kv` and
//! `ferry:plugin/process` (see `process.rs`): each answers
//! only a plugin whose grant ([`LoadOptions::capabilities`](super::LoadOptions)) includes it,
//! and every call of a plugin without the grant gets an error naming the capability and how to
//! grant it.

use std::sync::Arc;
use std::time::Duration;

use super::bindings::ferry::plugin::{kv, metrics, process};
use super::kv::KvStore;
use super::process::{self as programs, Programs};
use super::state::State;
use crate::metrics::{MetricsHistory, Sample};

/// What one loaded plugin may reach through the host interfaces; shared by its invocations.
pub(crate) struct Interfaces {
    plugin: String,
    metrics_granted: bool,
    kv_granted: bool,
    request_data_granted: bool,
    metrics: Option<MetricsHistory>,
    kv: Option<Arc<KvStore>>,
    programs: Programs,
}

impl Interfaces {
    pub(crate) fn new(
        plugin: &str,
        capabilities: &ferry_manifest::Capabilities,
        metrics: Option<MetricsHistory>,
        kv: Option<Arc<KvStore>>,
        // The granted environment, which the programs it starts get.
        env: &[(String, String)],
    ) -> Self {
        Interfaces {
            plugin: plugin.to_string(),
            metrics_granted: capabilities.metrics,
            kv_granted: capabilities.kv,
            request_data_granted: capabilities.request_data,
            metrics,
            kv,
            programs: Programs::new(plugin, &capabilities.programs, env),
        }
    }

    fn not_granted(&self, capability: &str) -> String {
        let plugin = &self.plugin;
        format!(
            "{capability} is not granted to plugin '{plugin}': its manifest must set `{capability} = true` under \
             [capabilities] and the agent's policy allow it (`{capability} = true` under [plugins.{plugin}.capabilities])"
        )
    }

    /// Fails unless the plugin may ask the server for data.
    pub(crate) fn request_data(&self) -> Result<(), String> {
        if self.request_data_granted {
            Ok(())
        } else {
            Err(self.not_granted("request_data"))
        }
    }

    fn metrics(&self) -> Result<&MetricsHistory, String> {
        if !self.metrics_granted {
            return Err(self.not_granted("metrics"));
        }
        self.metrics.as_ref().ok_or_else(|| {
            "metrics are unavailable: no metrics source is configured on this agent".into()
        })
    }

    fn kv(&self) -> Result<&KvStore, String> {
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
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let interfaces = &self.interfaces;
        interfaces.kv()?.get(&interfaces.plugin, &key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let interfaces = &self.interfaces;
        interfaces.kv()?.set(&interfaces.plugin, &key, &value)
    }

    fn delete(&mut self, key: String) -> Result<bool, String> {
        let interfaces = &self.interfaces;
        interfaces.kv()?.delete(&interfaces.plugin, &key)
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, String> {
        let interfaces = &self.interfaces;
        interfaces.kv()?.list_keys(&interfaces.plugin, &prefix)
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
        programs::run(&interfaces.programs, cx, program, args, timeout_ms).await
    }
}
