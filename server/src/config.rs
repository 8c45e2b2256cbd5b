//! The server's configuration: flags and a TOML file map onto [`ServerConfig`].
//!
//! The limits that bound hostile clients: `max_frame_bytes`; `handshake_timeout` (the whole
//! handshake, and any frame begun later; default 10 s); `max_pending_handshakes` (default 256);
//! `max_agent_streams` (quinn's `max_concurrent_bidi_streams` on the server's transport, default 8:
//! the control stream and fetches; unidirectional streams stay at 0, since ferry has none).
//! `ServerConfig::check` refuses values that would lock every agent out. The annotated example is
//! `examples/config/server.toml`.

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
    /// How long a connecting agent has for its whole handshake: QUIC/TLS, opening its control
    /// stream and sending Hello. Also how long it has to name the package on a fetch stream.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How many connections may be in their handshake (not yet past Hello) at once; the server
    /// refuses further ones at the QUIC level, before any TLS work, until some finish.
    pub max_pending_handshakes: u32,
    /// How many streams one agent may have open at once: its control stream and one per
    /// package it fetches. Enforced by QUIC flow control (an agent cannot open more); commands
    /// go the other way and are bounded by `max_concurrent_commands`.
    pub max_agent_streams: u32,
    /// How long the certificates of enrolled agents (`ferry agent --join`) are valid; agents
    /// renew them at about two thirds of that.
    #[serde(with = "humantime_serde")]
    pub agent_cert_ttl: Duration,
    /// How long an operator API connection has to send a request's headers, counted from when
    /// it connects or its last response went out: a connection that sends nothing (idle, or
    /// a header a byte at a time) is closed after it. A response being sent, such as a
    /// command's event stream, is not limited.
    #[serde(with = "humantime_serde")]
    pub api_header_timeout: Duration,
    /// How many operator API connections may be open at once; further ones are closed as they
    /// arrive, so idle or slow clients cannot take every file descriptor the server has.
    pub api_max_connections: u32,
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
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
            max_agent_streams: 8,
            agent_cert_ttl: Duration::from_secs(24 * 3600),
            api_header_timeout: Duration::from_secs(10),
            api_max_connections: 128,
        }
    }
}

impl ServerConfig {
    /// Refuses settings that would lock every agent out.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.max_agent_streams == 0 {
            return Err("max_agent_streams must be at least 1: an agent's control stream is one; the default is 8".into());
        }
        if self.max_pending_handshakes == 0 {
            return Err("max_pending_handshakes must be at least 1, or no agent can connect; the default is 256".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("handshake_timeout must be longer than zero; the default is 10s".into());
        }
        if self.api_header_timeout.is_zero() {
            return Err(
                "api_header_timeout must be longer than zero, or no request can be read; the default is 10s".into(),
            );
        }
        if self.api_max_connections == 0 {
            return Err("api_max_connections must be at least 1, or the operator API takes no request; the default is 128".into());
        }
        Ok(())
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
    fn reads_the_handshake_and_stream_limits() {
        let config: ServerConfig = toml::from_str(
            r#"
            handshake_timeout = "500ms"
            max_pending_handshakes = 4
            max_agent_streams = 2
            "#,
        )
        .unwrap();
        assert_eq!(config.handshake_timeout, Duration::from_millis(500));
        assert_eq!(config.max_pending_handshakes, 4);
        assert_eq!(config.max_agent_streams, 2);
        let defaults = ServerConfig::default();
        assert_eq!(defaults.handshake_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_pending_handshakes, 256);
        assert_eq!(defaults.max_agent_streams, 8);
        defaults.check().unwrap();
        let locked_out = ServerConfig {
            max_agent_streams: 0,
            ..ServerConfig::default()
        };
        let err = locked_out.check().unwrap_err();
        assert!(err.contains("max_agent_streams"), "{err}");
    }

    #[test]
    fn reads_the_api_connection_limits() {
        let config: ServerConfig = toml::from_str(
            r#"
            api_header_timeout = "2s"
            api_max_connections = 8
            "#,
        )
        .unwrap();
        assert_eq!(config.api_header_timeout, Duration::from_secs(2));
        assert_eq!(config.api_max_connections, 8);
        let closed = ServerConfig {
            api_max_connections: 0,
            ..ServerConfig::default()
        };
        let err = closed.check().unwrap_err();
        assert!(err.contains("api_max_connections"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<ServerConfig>("listn = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }
}
