//! The server's configuration: flags and a TOML file map onto [`ServerConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry_protocol::DEFAULT_MAX_FRAME;
use serde::Deserialize;

/// Everything a server needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// UDP address agents connect to.
    pub listen: SocketAddr,
    /// TCP address of the operator HTTP API; `None` turns the API off.
    pub api_listen: Option<SocketAddr>,
    /// Where keys, certificates and the operator token live.
    pub data_dir: PathBuf,
    /// Certificates to use instead of the ones the server makes under `data_dir/pki`.
    pub tls: Option<TlsPaths>,
    /// Extra DNS names or IP addresses for the server certificate the server makes itself.
    pub server_names: Vec<String>,
    /// How often agents send a heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An agent with no heartbeat for this long is marked offline.
    #[serde(with = "humantime_serde")]
    pub heartbeat_grace: Duration,
    /// The largest frame accepted, in bytes.
    pub max_frame_bytes: u32,
    /// How many commands run on one agent at once.
    pub max_concurrent_commands: u32,
    /// The timeout of a command that names none.
    #[serde(with = "humantime_serde")]
    pub default_command_timeout: Duration,
    /// QUIC keep-alive interval.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// QUIC idle timeout: a silent peer is gone after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long past a command's timeout the server waits for an agent whose connection broke
    /// during the command to come back with its result (which the agent keeps in its
    /// journal), before the command ends as `lost`.
    #[serde(with = "humantime_serde")]
    pub result_wait: Duration,
    /// After a restart, how long a command restored from disk waits for an agent still due its
    /// copy to reconnect (agents back off up to their `reconnect_max`, 30 s by default) before
    /// that agent is `undelivered`. A command's own `deliver_within`, when longer, wins.
    #[serde(with = "humantime_serde")]
    pub restart_grace: Duration,
    /// The largest plugin package (manifest and component) accepted by `ferry plugin push`, in
    /// bytes. JavaScript and Python components are 10–20 MB.
    pub max_plugin_bytes: u64,
}

/// Certificate files for the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA whose certificates agents must present (PEM).
    pub client_ca: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:7443".parse().expect("valid address"),
            api_listen: Some("127.0.0.1:7444".parse().expect("valid address")),
            data_dir: PathBuf::from("ferry-server"),
            tls: None,
            server_names: Vec::new(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_grace: Duration::from_secs(15),
            max_frame_bytes: DEFAULT_MAX_FRAME,
            max_concurrent_commands: 32,
            default_command_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            result_wait: Duration::from_secs(600),
            restart_grace: Duration::from_secs(60),
            max_plugin_bytes: 256 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_with_durations() {
        let config: ServerConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            heartbeat_interval = "2s"
            data_dir = "/var/lib/ferry"
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(config.heartbeat_grace, Duration::from_secs(15));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<ServerConfig>("listn = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }
}
