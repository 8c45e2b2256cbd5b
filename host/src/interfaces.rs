//! The host capability interfaces, `ferry:plugin/metrics`, `kv`, `process` (see `process.rs`),
//! `runtimes`, `agent.decommission` and `context.request-data`, in the host's own types (each
//! WIT version's bindings adapt to them): each answers only a plugin whose grant
//! ([`LoadOptions::capabilities`](super::LoadOptions)) includes it, and every call of a plugin
//! without the grant gets an error naming the capability and how to grant it.

use std::sync::Arc;

use super::GrantSource;
use super::kv::{self as store, KvStore, MAX_KEY_BYTES};
use super::metrics::MetricsSource;
use super::process::Programs;
use super::runtimes::{self as supervised, RuntimeSupervisor};

/// What one loaded plugin may reach through the host interfaces; shared by its invocations.
pub(crate) struct Interfaces {
    plugin: String,
    metrics_granted: bool,
    kv_granted: bool,
    request_data_granted: bool,
    metrics: Option<Arc<dyn MetricsSource>>,
    kv: Option<Arc<dyn KvStore>>,
    pub(crate) programs: Programs,
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

    pub(crate) fn runtimes(&self) -> Result<&dyn RuntimeSupervisor, String> {
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

    pub(crate) fn metrics(&self) -> Result<&dyn MetricsSource, String> {
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

    // Keys and values are checked before the store is reached: a plugin gets the same answer
    // whatever the store, and the store only ever sees what fits.
    pub(crate) fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let kv = self.kv()?;
        store::check_key(key)?;
        kv.get(&self.plugin, key)
    }

    pub(crate) fn kv_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let kv = self.kv()?;
        store::check_key(key)?;
        store::check_value(key, value)?;
        kv.set(&self.plugin, key, value)
    }

    pub(crate) fn kv_delete(&self, key: &str) -> Result<bool, String> {
        let kv = self.kv()?;
        store::check_key(key)?;
        kv.delete(&self.plugin, key)
    }

    pub(crate) fn kv_list_keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let kv = self.kv()?;
        // No key is longer than this, so none starts with it.
        if prefix.len() > MAX_KEY_BYTES {
            return Ok(Vec::new());
        }
        kv.list_keys(&self.plugin, prefix)
    }

    /// Creates a runtime, its program checked against the grant as for `process`: a runtime
    /// runs a program (or a component file), the same grant as starting it.
    pub(crate) fn create_runtime(
        &self,
        name: &str,
        request: supervised::Request,
        start: bool,
    ) -> Result<supervised::Info, String> {
        let supervisor = self.runtimes()?;
        let spec = supervised::Spec {
            command: self.programs.granted(&request.program)?.to_path_buf(),
            args: request.args,
            env: request.env,
            cwd: request.cwd.map(Into::into),
            restart: request.restart,
            port: request.port,
            component: request.component,
        };
        supervisor.create(name, spec, start)
    }

    /// Fails unless the plugin may decommission the agent.
    pub(crate) fn decommission(&self) -> Result<(), String> {
        if self.decommission_granted {
            Ok(())
        } else {
            Err(self.not_granted("decommission"))
        }
    }
}
