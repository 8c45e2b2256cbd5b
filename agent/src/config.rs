//! The agent's configuration: flags and a TOML file map onto [`AgentConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ferry_protocol::DEFAULT_MAX_FRAME;
use serde::Deserialize;

/// Everything an agent needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The server's QUIC address, `host:port`.
    pub server: String,
    /// The name the server's certificate must carry; the host part of `server` when empty.
    pub server_name: String,
    /// This agent's certificate (PEM); the agent id is read from it.
    pub cert: PathBuf,
    /// This agent's private key (PEM).
    pub key: PathBuf,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// The server's plugin signing key (`plugin-signing.pub`, written by the server next to its
    /// CA and by `ferry cert issue`): only packages signed with it are run. When absent,
    /// `plugin-signing.pub` next to `ca` is used if it exists; without a key the agent refuses
    /// every pushed plugin and says why.
    pub plugin_key: Option<PathBuf>,
    /// The largest plugin package the agent fetches, in bytes.
    pub max_plugin_bytes: u64,
    /// What the agent removes when it is decommissioned (`delete_orchestrator`).
    pub decommission: DecommissionConfig,
    /// Where the agent keeps its state.
    pub data_dir: PathBuf,
    /// Labels for targeting (`env = "prod"`).
    pub labels: BTreeMap<String, String>,
    /// Serve the built-in plugins (`echo`).
    pub builtins: bool,
    /// Plugins to load from files.
    pub plugins: Vec<PluginConfig>,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The shortest wait before reconnecting.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// The longest wait before reconnecting.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How many commands may run at once.
    pub max_concurrent_commands: u32,
    /// The largest frame accepted, in bytes.
    pub max_frame_bytes: u32,
    /// QUIC keep-alive interval.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// QUIC idle timeout.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Memory limit of one plugin instance, in MiB.
    pub plugin_memory_mib: usize,
    /// Where compiled plugins are cached, so that a restart does not compile them again;
    /// `<data_dir>/cache/components` when absent or empty. Only the agent's user may write
    /// there: its contents run as native code.
    pub cache_dir: Option<PathBuf>,
    /// The policy file: what plugins may touch on this host. Without one, plugins get no
    /// capabilities at all (no files, environment, network or programs).
    pub policy: Option<PathBuf>,
    /// How often the agent records a metrics sample for plugins granted `metrics`.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// How much metrics history the agent keeps (in memory: about 1 MiB for a day of samples
    /// every 5 s).
    #[serde(with = "humantime_serde")]
    pub metrics_history: Duration,
}

/// What a decommissioned agent removes before it exits. Everything, by default: an agent that
/// was deleted should leave nothing that could act for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecommissionConfig {
    /// Stop and forget its runtimes (their processes would otherwise run unsupervised).
    pub stop_runtimes: bool,
    /// Delete its data directory: packages, caches, key-value store, runtime state.
    pub remove_data: bool,
    /// Delete its certificate and private key.
    pub remove_keys: bool,
}

impl Default for DecommissionConfig {
    fn default() -> Self {
        DecommissionConfig {
            stop_runtimes: true,
            remove_data: true,
            remove_keys: true,
        }
    }
}

/// A plugin loaded from a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file (`.wasm`).
    pub path: PathBuf,
    /// The topics it handles; the manifest's topics when empty.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Its manifest (`ferry.toml`): name, topics, the capabilities it asks for and its limits.
    /// Without one the plugin asks for, and gets, no capabilities.
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// Its name in logs; the file stem when absent.
    pub name: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            server: "127.0.0.1:7443".into(),
            server_name: String::new(),
            cert: PathBuf::from("agent.pem"),
            key: PathBuf::from("agent.key"),
            ca: PathBuf::from("ca.pem"),
            plugin_key: None,
            max_plugin_bytes: 256 << 20,
            decommission: DecommissionConfig::default(),
            data_dir: PathBuf::from("ferry-agent"),
            labels: BTreeMap::new(),
            builtins: true,
            plugins: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            max_concurrent_commands: 32,
            max_frame_bytes: DEFAULT_MAX_FRAME,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            plugin_memory_mib: 256,
            cache_dir: None,
            policy: None,
            metrics_interval: Duration::from_secs(5),
            metrics_history: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl AgentConfig {
    /// The plugin signing key file to use, if there is one.
    pub fn effective_plugin_key(&self) -> Option<PathBuf> {
        if let Some(path) = &self.plugin_key {
            return Some(path.clone());
        }
        let beside_ca = self.ca.with_file_name("plugin-signing.pub");
        beside_ca.exists().then_some(beside_ca)
    }

    /// The TLS server name to verify.
    pub fn effective_server_name(&self) -> String {
        if !self.server_name.is_empty() {
            return self.server_name.clone();
        }
        let host = match self.server.rsplit_once(':') {
            Some((host, _)) => host,
            None => &self.server,
        };
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_defaults_to_the_host() {
        let mut c = AgentConfig {
            server: "edge.example.com:7443".into(),
            ..Default::default()
        };
        assert_eq!(c.effective_server_name(), "edge.example.com");
        c.server = "[::1]:7443".into();
        assert_eq!(c.effective_server_name(), "::1");
        c.server_name = "ferry.internal".into();
        assert_eq!(c.effective_server_name(), "ferry.internal");
    }

    #[test]
    fn reads_toml() {
        let c: AgentConfig = toml::from_str(
            r#"
            server = "10.0.0.1:7443"
            reconnect_max = "10s"
            labels = { env = "prod" }
            [[plugins]]
            path = "/opt/ferry/hello.wasm"
            topics = ["hello"]
            "#,
        )
        .unwrap();
        assert_eq!(c.reconnect_max, Duration::from_secs(10));
        assert_eq!(c.labels["env"], "prod");
        assert_eq!(c.plugins[0].topics, ["hello"]);
    }
}
