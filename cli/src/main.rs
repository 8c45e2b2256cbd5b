//! `ferry`: run a server, an agent, or both on loopback (`ferry dev`); send commands and list
//! agents through a server's operator API.

mod bench;
mod cert;
mod client;
mod commands;
mod daemons;
mod dev;
mod output;
mod plugin;
mod progress;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// ferry: a WebAssembly-pluggable command runtime for fleets of agents.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the CLI reaches a server's operator API.
#[derive(Debug, Clone, clap::Args)]
struct ApiArgs {
    /// The operator API's URL (default: from the config file `ferry dev` writes).
    #[arg(long, env = "FERRY_API", global = true)]
    api: Option<String>,
    /// The operator token (default: from the config file `ferry dev` writes).
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The CLI config file (default: $XDG_CONFIG_HOME/ferry/cli.toml).
    #[arg(long, env = "FERRY_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a server and one agent in this process, on loopback, and keep them running.
    Dev(dev::DevArgs),
    /// Run a ferry server.
    Server(daemons::ServerArgs),
    /// Run a ferry agent.
    Agent(daemons::AgentArgs),
    /// Send a command to an agent, show its progress and logs, then its result.
    Run(commands::RunArgs),
    /// Cancel a running command; the plugin sees `cancelled()` turn true.
    Cancel(commands::CancelArgs),
    /// List the agents the server knows.
    Agents(commands::AgentsArgs),
    /// Measure a command's round trip on loopback (embedded server and agent).
    Bench(bench::BenchArgs),
    /// Issue certificates from a server's CA.
    Cert(cert::CertArgs),
    /// Write plugins and test them on this machine, without a server.
    Plugin(plugin::PluginArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let daemon = matches!(
        cli.command,
        Command::Dev(_) | Command::Server(_) | Command::Agent(_)
    );
    init_tracing(daemon);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Server(args) => daemons::server(args).await,
            Command::Agent(args) => daemons::agent(args).await,
            Command::Run(args) => commands::run(args).await,
            Command::Cancel(args) => commands::cancel(args).await,
            Command::Agents(args) => commands::agents(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Cert(args) => cert::run(args),
            Command::Plugin(args) => plugin::run(args).await,
        }
    })
}

fn init_tracing(daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
