//! Client commands: `ferry run`, `ferry cancel`, `ferry commands`, `ferry command show`,
//! `ferry agents`.
//!
//! `ferry run` sends to one agent, several, `--to` a selector or `--all`, with `--max-concurrency`
//! and `--max-errors`, and follows the command (`follow.rs`). Also `ferry command show|follow|logs`
//! and `ferry agents [--label k=v]`.

use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use ferry_api::{
    Agent, AgentResult, CommandEvent, CommandStatus, CommandView, CreateCommand, HostMetrics,
    NoBody,
};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ApiArgs;
use crate::client::{Client, query_string, read, segment};
use crate::follow::Follow;
use crate::output::{bytes, micros, print_table, terminal_safe};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The topic to run (`echo`, or any topic a plugin on the agents handles).
    pub topic: String,
    /// An agent to run it on; repeat for several (default: the only online agent, if there is
    /// exactly one).
    #[arg(long, short, conflicts_with_all = ["to", "all"])]
    pub agent: Vec<String>,
    /// Run it on the agents carrying these labels, `key=value[,key=value…]`.
    #[arg(long, conflicts_with = "all")]
    pub to: Option<String>,
    /// Run it on every agent.
    #[arg(long)]
    pub all: bool,
    /// At most this many agents run it at once (the server sends it to the next agent when
    /// one has finished).
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// Stop sending it once this many agents have failed; the rest are `undelivered`.
    #[arg(long)]
    pub max_errors: Option<u32>,
    /// The payload, as JSON.
    #[arg(long, short, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from a file (sent as-is; use --content-type to describe it).
    #[arg(long)]
    pub payload_file: Option<std::path::PathBuf>,
    /// The payload's content type (default: application/json for --payload).
    #[arg(long)]
    pub content_type: Option<String>,
    /// How long the command may run on each agent (e.g. 30s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Wait this long for agents that are not connected (e.g. 10m) before they are
    /// `undelivered`; without it, a command for one agent that is not connected is refused.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deliver_within: Option<Duration>,
    /// A key that makes the command safe to send again: a command with a key used before is
    /// not sent again; the first one is shown.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Data the plugin may ask for while it runs (`request-data`), key=text; repeat for more.
    #[arg(long = "data", value_parser = parse_data)]
    pub data: Vec<(String, String)>,
    /// Print the command's final record as JSON instead of text (no progress display).
    #[arg(long)]
    pub json: bool,
    /// Follow the command until every agent is done (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Submit and print the command id without waiting for the result.
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The command's id (as `ferry run --no-wait` prints it).
    pub id: String,
    /// Return at once instead of waiting until the command has ended.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the command's final record as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// Only agents carrying this label, key=value; repeat for several (all must match).
    #[arg(long = "label", short, value_parser = parse_data)]
    pub labels: Vec<(String, String)>,
    /// Only agents in this state: online, unresponsive or offline.
    #[arg(long)]
    pub status: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct CommandsArgs {
    /// Only commands in this state (running, succeeded, failed, cancelled), or with a run
    /// that ended in this one (timed-out, crashed, denied, invalid-input, undelivered, …).
    #[arg(long)]
    pub status: Option<String>,
    /// Only commands on this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only commands sent to this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    #[command(subcommand)]
    pub command: CommandCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CommandCommand {
    /// Show one command: its target, limits, summary and each agent's result.
    Show(ShowCommandArgs),
    /// Watch a command as `ferry run` does: its events from the start, then its results; for
    /// a command sent with `--no-wait`, or after the terminal that sent it went away. The
    /// exit status is 0 only if it succeeded.
    Follow(ShowCommandArgs),
    /// Print a command's log lines, each with its agent and time: all of them for a command
    /// that ended; for one still running, what it logged so far and then each new line until
    /// it ends. With --json, one JSON object per line.
    Logs(ShowCommandArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowCommandArgs {
    /// The command's id.
    pub id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn parse_data(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not key=value")),
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let mut body = CreateCommand {
        topic: args.topic.clone(),
        max_concurrency: args.max_concurrency,
        max_errors: args.max_errors,
        content_type: args.content_type.clone(),
        timeout_ms: args.timeout.map(|t| t.as_millis() as u64),
        deliver_within_ms: args.deliver_within.map(|d| d.as_millis() as u64),
        idempotency_key: args.idempotency_key.clone(),
        ..CreateCommand::default()
    };
    if args.all {
        body.selector = Some("all".into());
    } else if let Some(to) = &args.to {
        body.selector = Some(to.clone());
    } else {
        match args.agent.as_slice() {
            [] => body.agent = Some(only_online_agent(&client).await?),
            [one] => body.agent = Some(one.clone()),
            many => body.agents = Some(many.to_vec()),
        }
    }
    if let Some(payload) = &args.payload {
        let value: Value = serde_json::from_str(payload)
            .with_context(|| format!("--payload is not valid JSON: {payload}; quote it for your shell, e.g. --payload '{{\"name\":\"ferry\"}}'"))?;
        body.payload = Some(value);
    }
    if let Some(path) = &args.payload_file {
        use base64::Engine as _;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        body.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if !args.data.is_empty() {
        let data: BTreeMap<String, Value> = args
            .data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        body.data = Some(data);
    }
    let answer = client.post_value("/v1/commands", &body).await?;
    let created: CommandView = read(answer.clone())?;
    let id = created.id.clone();
    if args.no_wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            println!("{id}");
        }
        return Ok(());
    }

    let agents = agents_of(&created);
    let human = !args.json;
    if human {
        match agents.as_slice() {
            [one] => eprintln!("command {id}: {} on {one}", args.topic),
            many => eprintln!(
                "command {id}: {} on {} agents ({})",
                args.topic,
                many.len(),
                created.target
            ),
        }
    }
    watch(&client, &id, &agents, args.json).await
}

/// The agents a command was sent to, in its results' order.
fn agents_of(command: &CommandView) -> Vec<String> {
    command
        .results
        .iter()
        .flatten()
        .map(|r| r.agent.clone())
        .collect()
}

/// Follows command `id` sent to `agents` to its end as `ferry run` shows it, then prints its
/// results; an error (exit status 1) unless it succeeded.
async fn watch(client: &Client, id: &str, agents: &[String], json: bool) -> Result<()> {
    let mut display = Follow::new(!json, agents);
    client
        .follow(&format!("/v1/commands/{id}/events"), |event| {
            display.event(&event)
        })
        .await?;
    display.finish();
    let answer = client.get_value(&format!("/v1/commands/{id}")).await?;
    let done: CommandView = read(answer.clone())?;
    let first = done.results.iter().flatten().next();
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if agents.len() == 1 {
        match first {
            Some(result) => print_single(result)?,
            None => eprintln!("  unknown"),
        }
    } else {
        print_results(&done);
        eprintln!("{}", summary_line(&done));
    }
    if done.status != CommandStatus::Succeeded {
        if agents.len() == 1 {
            let one = first.map_or(done.status.name(), |r| r.status.name());
            bail!("command {id} ended {one}");
        }
        bail!(
            "command {id} ended {}: {}",
            done.status,
            summary_line(&done)
        );
    }
    Ok(())
}

/// One agent's result as `ferry run` showed it before there were fleets: outcome and cost on
/// stderr, output on stdout.
fn print_single(result: &AgentResult) -> Result<()> {
    eprintln!("  {}{}", result.status.name(), cost(result));
    if let Some(detail) = &result.detail {
        eprintln!("  {detail}");
    }
    let output = &result.output;
    if let Some(payload) = &output.payload {
        println!("{}", serde_json::to_string_pretty(payload)?);
    } else if let Some(text) = &output.payload_text {
        println!("{text}");
    } else if let Some(b64) = &output.payload_base64 {
        println!("{b64}");
    }
    Ok(())
}

fn cost(result: &AgentResult) -> String {
    match &result.stats {
        Some(stats) => format!(
            " in {} (peak memory {})",
            micros(stats.duration_us),
            bytes(stats.peak_memory_bytes)
        ),
        None => String::new(),
    }
}

/// A one-line output of a result, for tables.
fn output_cell(result: &AgentResult) -> String {
    let output = &result.output;
    let text = if let Some(detail) = &result.detail {
        detail.clone()
    } else if let Some(payload) = &output.payload {
        payload.to_string()
    } else if let Some(text) = &output.payload_text {
        text.clone()
    } else if let Some(b64) = &output.payload_base64 {
        format!("base64:{b64}")
    } else {
        String::new()
    };
    let line = text.lines().next().unwrap_or("").to_string();
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(59).collect::<String>())
    } else {
        line
    }
}

fn print_results(command: &CommandView) {
    let rows: Vec<Vec<String>> = command
        .results
        .iter()
        .flatten()
        .map(|r| {
            let duration = r
                .stats
                .as_ref()
                .map(|s| micros(s.duration_us))
                .unwrap_or_else(|| "-".into());
            vec![
                r.agent.clone(),
                r.status.name().to_string(),
                duration,
                output_cell(r),
            ]
        })
        .collect();
    print_table(&["AGENT", "STATUS", "DURATION", "OUTPUT"], &rows);
}

/// `50 agents: 48 succeeded, 2 failed (at most 10 at once)`.
fn summary_line(command: &CommandView) -> String {
    let s = &command.summary;
    let mut parts = Vec::new();
    for (n, name) in [
        (s.succeeded, "succeeded"),
        (s.failed, "failed"),
        (s.timed_out, "timed out"),
        (s.undelivered, "undelivered"),
        (s.cancelled, "cancelled"),
        (s.running, "running"),
        (s.pending, "pending"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {name}"));
        }
    }
    format!(
        "{} agents: {} (at most {} at once)",
        s.total,
        parts.join(", "),
        command.peak_concurrency
    )
}

pub async fn cancel(args: CancelArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let id = &args.id;
    let _: CommandView = client
        .post(&format!("/v1/commands/{id}/cancel"), &NoBody {})
        .await?;
    if args.no_wait {
        eprintln!("cancel requested for command {id}");
        return Ok(());
    }
    // The events stream ends with the command's `done` event.
    client
        .follow_raw(&format!("/v1/commands/{id}/events"), |_, _| {})
        .await?;
    let answer = client.get_value(&format!("/v1/commands/{id}")).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        let done: CommandView = read(answer)?;
        println!(
            "command {id} ended {}: {}",
            done.status,
            summary_line(&done)
        );
    }
    Ok(())
}

async fn only_online_agent(client: &Client) -> Result<String> {
    let agents: Vec<Agent> = client.get("/v1/agents").await?;
    let online: Vec<&str> = agents
        .iter()
        .filter(|a| a.status == ferry_api::AgentStatus::Online)
        .map(|a| a.id.as_str())
        .collect();
    match online.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "no agent is online; start one (`ferry dev` starts one), or name one with --agent"
        ),
        many => bail!(
            "{} agents are online ({}); choose one with --agent",
            many.len(),
            many.join(", ")
        ),
    }
}

pub async fn agents(args: AgentsArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let selector = (!args.labels.is_empty()).then(|| {
        args.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let answer = client
        .get_value(&format!(
            "/v1/agents{}",
            query_string(&[("selector", selector), ("status", args.status.clone())])
        ))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let list: Vec<Agent> = read(answer)?;
    if list.is_empty() {
        eprintln!("no agents match (or none has connected to this server yet)");
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let (cpu, mem) = metrics_cells(a.metrics.as_ref());
            let mut status = if a.revoked.is_some() {
                "revoked".to_string()
            } else {
                a.status.name().to_string()
            };
            // Another host presented this identity and was refused: say so where it is seen.
            if a.duplicate.is_some() {
                status.push_str(" (duplicate refused)");
            }
            vec![
                a.id.clone(),
                status,
                ago(a.last_heartbeat, now),
                cpu,
                mem,
                a.topics.join(","),
                labels_text(&a.labels),
            ]
        })
        .collect();
    print_table(
        &[
            "AGENT",
            "STATUS",
            "HEARTBEAT",
            "CPU",
            "MEMORY",
            "TOPICS",
            "LABELS",
        ],
        &rows,
    );
    Ok(())
}

pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A time as the API writes it (RFC 3339), or `-` for none.
pub fn when(time: Option<OffsetDateTime>) -> String {
    time.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

pub fn ago(time: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    time.map(|t| format!("{}s ago", (now - t).whole_seconds().max(0)))
        .unwrap_or_else(|| "never".into())
}

pub fn metrics_cells(m: Option<&HostMetrics>) -> (String, String) {
    match m {
        Some(m) => (
            format!("{:.0}%", m.cpu_percent),
            format!(
                "{} / {}",
                bytes(m.memory_used_bytes),
                bytes(m.memory_total_bytes)
            ),
        ),
        None => ("-".into(), "-".into()),
    }
}

pub async fn commands(args: CommandsArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let answer = client
        .get_value(&format!(
            "/v1/commands{}",
            query_string(&[
                ("limit", Some(args.limit.to_string())),
                ("status", args.status.clone()),
                ("topic", args.topic.clone()),
                ("agent", args.agent.clone()),
            ])
        ))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let list: Vec<CommandView> = read(answer)?;
    if list.is_empty() {
        eprintln!("no commands match");
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.topic.clone(),
                c.target.clone(),
                c.status.name().to_string(),
                format!("{}/{}", c.summary.succeeded, c.summary.total),
                ago(Some(c.created_at), now),
                c.created_by.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "TOPIC",
            "TARGET",
            "STATUS",
            "SUCCEEDED",
            "CREATED",
            "BY",
        ],
        &rows,
    );
    Ok(())
}

pub async fn command(args: CommandArgs) -> Result<()> {
    match args.command {
        CommandCommand::Show(args) => show_command(args).await,
        CommandCommand::Follow(args) => follow_command(args).await,
        CommandCommand::Logs(args) => command_logs(args).await,
    }
}

async fn follow_command(args: ShowCommandArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let id = segment(&args.id);
    let command: CommandView = client.get(&format!("/v1/commands/{id}")).await?;
    let agents = agents_of(&command);
    if !args.json {
        eprintln!(
            "command {}: {} on {}",
            args.id, command.topic, command.target
        );
    }
    watch(&client, &id, &agents, args.json).await
}

async fn command_logs(args: ShowCommandArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let path = format!("/v1/commands/{}/events", segment(&args.id));
    let mut lines = 0usize;
    if args.json {
        // Each line as the server sent it.
        client
            .follow_raw(&path, |kind, event| {
                if kind == "log" {
                    println!("{event}");
                }
            })
            .await?;
        return Ok(());
    }
    client
        .follow(&path, |event| {
            match event {
                CommandEvent::Log {
                    agent,
                    at,
                    level,
                    message,
                } => {
                    lines += 1;
                    let level = level.to_string();
                    let message = terminal_safe(&message, false);
                    println!("{}  {agent}  {level:<5} {message}", when(Some(at)));
                }
                CommandEvent::Dropped { count } => eprintln!(
                    "… {count} log and progress events dropped here (the server keeps the newest 1,000 of a command)"
                ),
                _ => {}
            }
        })
        .await?;
    if lines == 0 {
        eprintln!("command {} logged nothing", args.id);
    }
    Ok(())
}

async fn show_command(args: ShowCommandArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let answer = client
        .get_value(&format!("/v1/commands/{}", segment(&args.id)))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let command: CommandView = read(answer)?;
    let limit = |n: Option<u32>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    println!("command   {}", command.id);
    println!("topic     {}", command.topic);
    println!("target    {}", command.target);
    println!("status    {}", command.status);
    println!("by        {}", command.created_by);
    println!("created   {}", when(Some(command.created_at)));
    println!("finished  {}", when(command.finished_at));
    println!(
        "limits    max concurrency {}, max errors {}",
        limit(command.max_concurrency),
        limit(command.max_errors)
    );
    println!("summary   {}", summary_line(&command));
    println!();
    print_results(&command);
    Ok(())
}
