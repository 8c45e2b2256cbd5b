//! `ferry`: run a server, an agent, or both on loopback (`ferry dev`); send commands and list
//! agents through a server's operator API.

mod admin;
mod bench;
mod cert;
mod client;
mod commands;
mod daemons;
mod dev;
mod follow;
mod join_tokens;
mod output;
mod plugin;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// The API token (default: from the config file `ferry dev` writes).
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The CLI config file (default: $XDG_CONFIG_HOME/ferry/cli.toml).
    #[arg(long, env = "FERRY_CONFIG", global = true)]
    config: Option<PathBuf>,
}

/// What every listing takes: where the API is, and `--json`.
#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// `ferry agent [FLAGS]` runs the daemon; `ferry agent show <id>` and its siblings manage one.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentCliArgs {
    #[command(subcommand)]
    manage: Option<admin::AgentCommand>,
    #[command(flatten)]
    daemon: daemons::AgentArgs,
}

/// `ferry agents [FLAGS]` lists agents; `ferry agents revoke <id>` refuses one.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentsCliArgs {
    #[command(subcommand)]
    manage: Option<AgentsCommand>,
    #[command(flatten)]
    list: commands::AgentsArgs,
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Refuse the agent from now on (at its next handshake, also after a server restart) and
    /// close its connection now; it cannot renew its certificate either.
    Revoke(admin::RevokeArgs),
}

// Parsed once per process: the size of the largest variant (the agent's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Start a server and one agent in this process, on loopback, and keep them running.
    Dev(dev::DevArgs),
    /// Run a ferry server.
    Server(daemons::ServerArgs),
    /// Run a ferry agent; or, with a subcommand, look at or change one agent through the
    /// server's API (`ferry agent show <id>`, `label`, `revoke`, `unrevoke`).
    Agent(AgentCliArgs),
    /// Send a command to one agent, several, those with given labels, or all; show its
    /// progress, then each agent's result.
    ///
    /// The server sends it to at most --max-concurrency agents at once and stops sending once
    /// --max-errors agents have failed.
    ///
    /// Examples:
    ///
    ///   ferry run echo --payload '{"hello":"ferry"}'
    ///
    ///   ferry run disk.report --to env=prod --max-concurrency 10 --max-errors 2
    ///
    ///   ferry run echo --agent edge-1 --agent edge-2 --json
    Run(commands::RunArgs),
    /// Cancel a command: no more agents are sent it, and each running plugin sees
    /// `cancelled()` turn true.
    Cancel(commands::CancelArgs),
    /// List commands, newest first.
    Commands(commands::CommandsArgs),
    /// One command: `ferry command show <id>`.
    #[command(name = "command")]
    Show(commands::CommandArgs),
    /// List the agents the server knows; `ferry agents revoke <id>` refuses one.
    Agents(AgentsCliArgs),
    /// Join tokens for enrolling new agents (`ferry agent --join`): create, list, revoke.
    Token(join_tokens::TokenArgs),
    /// Tokens for the operator API: create, list, revoke.
    ApiToken(admin::ApiTokenArgs),
    /// The audit log: who did what, when, and how it ended.
    Audit(admin::AuditArgs),
    /// Measure a command's round trip on loopback (embedded server and agent).
    Bench(bench::BenchArgs),
    /// Issue certificates from a server's CA.
    Cert(cert::CertArgs),
    /// Write plugins and test them on this machine, without a server.
    Plugin(plugin::PluginArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(
        cli.command,
        Command::Dev(_) | Command::Server(_) | Command::Agent(AgentCliArgs { manage: None, .. })
    );
    if only_prints(&cli.command) {
        stop_quietly_when_the_reader_goes();
    }
    init_tracing(daemon);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints a failure the way anyhow would, the causes included, but without a backtrace even
/// when `RUST_BACKTRACE` is set: these are expected failures (a command that failed, no
/// server), whose message says what to do; a backtrace is for panics, which still get one.
fn report(error: &anyhow::Error) {
    eprintln!("Error: {error}");
    let causes: Vec<String> = error.chain().skip(1).map(|c| c.to_string()).collect();
    match causes.as_slice() {
        [] => {}
        [one] => eprintln!("\nCaused by:\n    {one}"),
        many => {
            eprintln!("\nCaused by:");
            for (i, cause) in many.iter().enumerate() {
                eprintln!("    {i}: {cause}");
            }
        }
    }
}

/// Commands that only talk to the server and print: nothing of theirs writes to a pipe but
/// their own output.
fn only_prints(command: &Command) -> bool {
    match command {
        Command::Run(_)
        | Command::Cancel(_)
        | Command::Commands(_)
        | Command::Show(_)
        | Command::Agents(_)
        | Command::Token(_)
        | Command::ApiToken(_)
        | Command::Audit(_)
        | Command::Cert(_) => true,
        Command::Agent(AgentCliArgs { manage, .. }) => manage.is_some(),
        Command::Plugin(args) => args.only_prints(),
        Command::Dev(_) | Command::Server(_) | Command::Bench(_) => false,
    }
}

/// Ends the process at once, as other Unix tools do, when the reader of its output goes away
/// (`ferry agents --json | head`): Rust ignores SIGPIPE, so `println!` would panic instead.
/// Only for commands that start no children and hold no connections whose writes could meet
/// a closed pipe: those must see the error, not die of the signal.
fn stop_quietly_when_the_reader_goes() {
    // SAFETY: signal(2) with SIG_DFL installs no handler, so no code runs in signal context;
    // it is called before any thread of ours exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Server(args) => daemons::server(args).await,
            Command::Agent(AgentCliArgs {
                manage: Some(command),
                ..
            }) => admin::agent(command).await,
            Command::Agent(args) => daemons::agent(args.daemon).await,
            Command::Run(args) => commands::run(args).await,
            Command::Cancel(args) => commands::cancel(args).await,
            Command::Commands(args) => commands::commands(args).await,
            Command::Show(args) => commands::command(args).await,
            Command::Agents(AgentsCliArgs {
                manage: Some(AgentsCommand::Revoke(args)),
                ..
            }) => admin::revoke(args).await,
            Command::Agents(args) => commands::agents(args.list).await,
            Command::Token(args) => join_tokens::run(args).await,
            Command::ApiToken(args) => admin::api_token(args).await,
            Command::Audit(args) => admin::audit(args).await,
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

#[cfg(test)]
mod tests {
    /// clap checks a command's definition only when it is used, in debug builds; a clash
    /// (an argument named like an automatic flag, say) would panic for a user instead.
    #[test]
    fn every_command_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
