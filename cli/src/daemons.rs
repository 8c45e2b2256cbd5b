//! `ferry server` and `ferry agent`: the two daemons, configured by a TOML file and flags.
//!
//! `ferry agent --join SERVER --token … --ca-fingerprint …` enrolls a new agent; a plain `ferry
//! agent` uses the identity enrolled in its data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ferry_agent::enroll::{self, IdentityFiles, JoinOptions, Joined};
use ferry_agent::{Agent, AgentConfig, PluginConfig};
use ferry_server::{Server, ServerConfig};

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// A TOML config file; flags override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// UDP address for agents (default 0.0.0.0:7443).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TCP address for the operator API (default 127.0.0.1:7444).
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// Turn the operator API off.
    #[arg(long, conflicts_with = "api_listen")]
    pub no_api: bool,
    /// Where the server keeps its keys, certificates and token (default ./ferry-server).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// A TOML config file; flags override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The server's address, host:port.
    #[arg(long)]
    pub server: Option<String>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long)]
    pub server_name: Option<String>,
    /// This agent's certificate (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The CA certificate that signed the server's certificate (PEM).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The server's plugin signing key (plugin-signing.pub; default: beside --ca). Only plugins
    /// it signed are run.
    #[arg(long)]
    pub plugin_key: Option<PathBuf>,
    /// Where the agent keeps its state (default ./ferry-agent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A label, key=value; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A plugin to serve, PATH=topic[,topic…]; repeat for more.
    #[arg(long = "plugin", value_parser = parse_plugin)]
    pub plugins: Vec<PluginConfig>,
    /// Do not serve the built-in plugins.
    #[arg(long)]
    pub no_builtins: bool,
    /// The policy file: what plugins may touch on this host (default: nothing).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Enroll with this server (host:port) first: make a key here, send a certificate request
    /// with --token, keep the certificate the server issues in the data directory, then run.
    /// On a data directory that is already enrolled, the identity there is used.
    #[arg(long, value_name = "SERVER", requires_all = ["join_token", "ca_fingerprint"])]
    pub join: Option<String>,
    /// The join token (`ferry token create` on the server).
    #[arg(
        long = "token",
        id = "join_token",
        value_name = "TOKEN",
        requires = "join"
    )]
    pub join_token: Option<String>,
    /// The SHA-256 fingerprint of the server's CA certificate (`ferry token create` prints it):
    /// the agent talks to no server whose CA does not have it.
    #[arg(long, value_name = "SHA256", requires = "join")]
    pub ca_fingerprint: Option<String>,
    /// The agent id to ask for when enrolling (default: this host's name).
    #[arg(long, requires = "join")]
    pub name: Option<String>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not key=value")),
    }
}

pub fn parse_plugin(text: &str) -> Result<PluginConfig, String> {
    let Some((path, topics)) = text.rsplit_once('=') else {
        return Err(format!("'{text}' is not PATH=topic[,topic…]"));
    };
    let topics: Vec<String> = topics
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if path.is_empty() || topics.is_empty() {
        return Err(format!("'{text}' is not PATH=topic[,topic…]"));
    }
    Ok(PluginConfig {
        path: PathBuf::from(path),
        topics,
        name: None,
        manifest: None,
    })
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))
}

pub async fn server(args: ServerArgs) -> Result<()> {
    let mut config: ServerConfig = match &args.config {
        Some(path) => read_toml(path)?,
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(api) = args.api_listen {
        config.api_listen = Some(api);
    }
    if args.no_api {
        config.api_listen = None;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let data_dir = config.data_dir.clone();
    let server = Server::start(config)
        .await
        .context("the server could not start")?;
    eprintln!(
        "ferry server listening for agents on {} (QUIC)",
        server.quic_addr()
    );
    if let Some(api) = server.api_addr() {
        eprintln!(
            "operator API on http://{api}; token in {}",
            data_dir.join("operator.token").display()
        );
    }
    eprintln!(
        "agents must present certificates from the CA {}",
        server.ca_cert_path().display()
    );
    shutdown_signal().await;
    eprintln!("stopping");
    server.shutdown().await;
    Ok(())
}

/// With `--join`: enrolls (unless the data directory already holds an identity) and uses the
/// identity. Without: uses an enrolled identity in the data directory when no certificate was
/// configured.
async fn enrolled_identity(
    config: &mut AgentConfig,
    join: Option<String>,
    token: Option<String>,
    ca_fingerprint: Option<String>,
    name: Option<String>,
    server_given: bool,
    identity_given: bool,
) -> Result<()> {
    let files = IdentityFiles::in_data_dir(&config.data_dir);
    let defaults = AgentConfig::default();
    let identity_configured =
        identity_given || config.cert != defaults.cert || config.key != defaults.key;
    if let Some(server) = join {
        if identity_configured {
            bail!(
                "--join makes this agent's identity; drop --cert/--key (or cert/key in the config file), or drop --join to use them"
            );
        }
        let options = JoinOptions {
            server: server.clone(),
            server_name: config.server_name.clone(),
            token: token.unwrap_or_default(),
            ca_fingerprint: ca_fingerprint.unwrap_or_default(),
            name,
            data_dir: config.data_dir.clone(),
            timeout: config
                .connect_timeout
                .max(std::time::Duration::from_secs(10)),
        };
        match enroll::join(&options).await? {
            Joined::Enrolled(id) => eprintln!(
                "enrolled as agent '{id}'; its key and certificate are in {}",
                files.cert.parent().unwrap_or(&config.data_dir).display()
            ),
            Joined::AlreadyEnrolled => eprintln!(
                "{} already holds this agent's identity: using it, and not the token (to enroll again, delete that directory first)",
                files.cert.parent().unwrap_or(&config.data_dir).display()
            ),
        }
        config.server = server;
        files.apply(config);
    } else if !identity_configured && files.exists() {
        if !server_given
            && config.server == defaults.server
            && let Some(server) = files.server()
        {
            config.server = server;
        }
        files.apply(config);
    }
    Ok(())
}

pub async fn agent(args: AgentArgs) -> Result<()> {
    let mut config: AgentConfig = match &args.config {
        Some(path) => read_toml(path)?,
        None => AgentConfig::default(),
    };
    let server_flag = args.server.is_some();
    let identity_flags = args.cert.is_some() || args.key.is_some();
    if let Some(v) = args.server {
        config.server = v;
    }
    if let Some(v) = args.server_name {
        config.server_name = v;
    }
    if let Some(v) = args.cert {
        config.cert = v;
    }
    if let Some(v) = args.key {
        config.key = v;
    }
    if let Some(v) = args.plugin_key {
        config.plugin_key = Some(v);
    }
    if let Some(v) = args.ca {
        config.ca = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    config.labels.extend(args.labels);
    config.plugins.extend(args.plugins);
    if args.no_builtins {
        config.builtins = false;
    }
    if let Some(policy) = args.policy {
        config.policy = Some(policy);
    }
    enrolled_identity(
        &mut config,
        args.join,
        args.join_token,
        args.ca_fingerprint,
        args.name,
        server_flag,
        identity_flags,
    )
    .await?;
    if !config.builtins && config.plugins.is_empty() {
        bail!(
            "this agent would serve no topic: keep the built-in plugins or add one with --plugin PATH=topic"
        );
    }
    let agent = Agent::start(config)
        .await
        .context("the agent could not start")?;
    eprintln!(
        "ferry agent '{}' serving: {}",
        agent.id(),
        agent.topics().join(", ")
    );
    tokio::select! {
        _ = shutdown_signal() => {
            eprintln!("stopping");
            agent.shutdown().await;
        }
        status = agent.stopped() => {
            if let ferry_agent::ConnectionStatus::Removed { reason } = status {
                eprintln!("this agent was decommissioned ({reason}): it left its server for good and removed its state");
            }
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_flags_parse() {
        let p = parse_plugin("/opt/a=b.wasm=hello,world").unwrap();
        assert_eq!(p.path, PathBuf::from("/opt/a=b.wasm"));
        assert_eq!(p.topics, ["hello", "world"]);
        assert!(parse_plugin("x.wasm").is_err());
        assert!(parse_plugin("x.wasm=").is_err());
        assert_eq!(
            parse_label("env=prod").unwrap(),
            ("env".into(), "prod".into())
        );
        assert!(parse_label("=x").is_err());
    }

    #[test]
    fn the_example_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
        let server: ServerConfig = read_toml(&root.join("server.toml")).unwrap();
        assert_eq!(server.listen.port(), 7443);
        let agent: AgentConfig = read_toml(&root.join("agent.toml")).unwrap();
        assert_eq!(agent.plugins[0].topics, ["hello", "hello.loud"]);
        let policy = ferry_agent::policy::Policy::load(&root.join("policy.toml")).unwrap();
        assert_eq!(policy.plugins["hello"].capabilities.filesystem.len(), 2);
    }
}
