//! `ferry dev`: a server and one agent in this process, on loopback, with no configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_agent::{Agent, AgentConfig};
use ferry_protocol::AgentId;
use ferry_protocol::pki::PkiDir;
use ferry_server::{RunRequest, RunStatus, Server, ServerConfig, StartError};

use crate::client::{CliConfig, default_config_path, write_config};
use crate::daemons::shutdown_signal;
use crate::output::micros;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Keep state here (default: a temporary directory removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// UDP address for agents; a free port is chosen if the default is taken.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TCP address for the operator API; a free port is chosen if the default is taken.
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// The embedded agent's id.
    #[arg(long, default_value = "dev-agent")]
    pub agent_id: String,
    /// Where to write the CLI config that later `ferry` commands read
    /// (default: $FERRY_CONFIG, else $XDG_CONFIG_HOME/ferry/cli.toml).
    #[arg(long, env = "FERRY_CONFIG")]
    pub cli_config: Option<PathBuf>,
    /// Also serve this plugin on the embedded agent, PATH=topic[,topic…]; repeat for more.
    #[arg(long = "plugin", value_parser = crate::daemons::parse_plugin)]
    pub plugins: Vec<ferry_agent::PluginConfig>,
    /// The embedded agent's policy file: what plugins may touch (default: nothing).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Run the self-check (an `echo` command end to end), print its result and exit.
    #[arg(long)]
    pub once: bool,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
const DEFAULT_API: &str = "127.0.0.1:7444";

pub async fn run(args: DevArgs) -> Result<()> {
    let agent_id = AgentId::new(args.agent_id.clone())?;
    let (data_dir, _temp) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new().prefix("ferry-dev-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };

    let server = start_server(&args, &data_dir).await?;
    let api = server.api_addr().context("the operator API is off")?;
    let pki = PkiDir::open_or_create(&data_dir.join("server/pki"), &[])?;
    let (cert, key) = pki.ensure_agent(&agent_id)?;
    let agent = Agent::start(AgentConfig {
        server: server.quic_addr().to_string(),
        server_name: "localhost".into(),
        cert,
        key,
        ca: pki.ca_cert_path(),
        data_dir: data_dir.join("agent"),
        labels: [("dev".to_string(), "true".to_string())].into(),
        plugins: args.plugins.clone(),
        policy: args.policy.clone(),
        ..AgentConfig::default()
    })
    .await
    .context("the embedded agent could not start")?;
    if let Err(status) = agent.wait_connected(Duration::from_secs(20)).await {
        bail!("the embedded agent did not connect to the embedded server: {status:?}");
    }

    // A command through the whole path: API-side dispatch, QUIC, the agent, the wasm plugin.
    let check = server
        .submit(RunRequest {
            agent: agent_id.clone(),
            topic: "echo".into(),
            payload: br#"{"hello":"ferry"}"#.to_vec(),
            content_type: "application/json".into(),
            timeout: Some(Duration::from_secs(30)),
            idempotency_key: None,
            data: Default::default(),
            deliver_within: None,
        })
        .await?;
    let view = check.wait().await;
    let self_check = match (&view.status, &view.stats) {
        (RunStatus::Succeeded, Some(stats)) => format!(
            "echo succeeded on the agent in {} (plugin time)",
            micros(stats.duration_us)
        ),
        (status, _) => format!(
            "echo ended {status:?}: {}",
            view.detail.clone().unwrap_or_default()
        ),
    };
    let ok = view.status == RunStatus::Succeeded;

    let token_path = data_dir.join("server/operator.token");
    let cli_config = args.cli_config.clone().or_else(default_config_path);
    if let Some(path) = &cli_config {
        write_config(
            path,
            &CliConfig {
                api: format!("http://{api}"),
                token: server.api_token().to_string(),
            },
        )?;
    }

    let exe = std::env::args().next().unwrap_or_else(|| "ferry".into());
    println!("ferry dev: a server and an agent on loopback");
    println!(
        "  server     {} (QUIC, mutual TLS; CA {})",
        server.quic_addr(),
        pki.ca_cert_path().display()
    );
    println!(
        "  api        http://{api} (token in {})",
        token_path.display()
    );
    println!(
        "  agent      {agent_id}, serving: {}",
        agent.topics().join(", ")
    );
    println!("  self-check {self_check}");
    if let Some(path) = &cli_config {
        println!("  cli config {}", path.display());
    }
    if args.once {
        agent.shutdown().await;
        server.shutdown().await;
        if !ok {
            bail!("the self-check failed: {self_check}");
        }
        return Ok(());
    }
    println!();
    println!("In another terminal:");
    println!("  {exe} agents");
    println!("  {exe} run echo --payload '{{\"hello\":\"ferry\"}}'");
    println!(
        "Another agent: `{exe} token create` prints the `{exe} agent --join …` line to run (here, add --data-dir DIR)."
    );
    println!("Stop with Ctrl-C.");

    shutdown_signal().await;
    eprintln!("stopping");
    agent.shutdown().await;
    server.shutdown().await;
    Ok(())
}

async fn start_server(args: &DevArgs, data_dir: &std::path::Path) -> Result<Server> {
    let mut config = ServerConfig {
        listen: args
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid")),
        api_listen: Some(
            args.api_listen
                .unwrap_or_else(|| DEFAULT_API.parse().expect("valid")),
        ),
        data_dir: data_dir.join("server"),
        ..ServerConfig::default()
    };
    // Heartbeats every second so `ferry agents` shows fresh figures while you watch.
    config.heartbeat_interval = Duration::from_secs(1);
    config.heartbeat_grace = Duration::from_secs(5);
    loop {
        match Server::start(config.clone()).await {
            Ok(server) => return Ok(server),
            // A default port is taken (another `ferry dev`?): take a free one; the CLI config
            // records whichever port is used.
            Err(StartError::Bind { addr, .. })
                if addr == config.listen && args.listen.is_none() && addr.port() != 0 =>
            {
                eprintln!("note: {addr} is taken; using a free port for agents");
                config.listen.set_port(0);
            }
            Err(StartError::Bind { addr, .. })
                if Some(addr) == config.api_listen
                    && args.api_listen.is_none()
                    && addr.port() != 0 =>
            {
                eprintln!("note: {addr} is taken; using a free port for the operator API");
                config.api_listen = Some(SocketAddr::new(addr.ip(), 0));
            }
            Err(e) => return Err(e).context("the embedded server could not start"),
        }
    }
}
