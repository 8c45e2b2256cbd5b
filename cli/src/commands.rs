//! Client commands: `ferry run`, `ferry cancel`, `ferry commands`, `ferry command show`,
//! `ferry agents`.
//!
//! `ferry run` sends to one agent, several, `--to` a selector or `--all`, with `--max-concurrency`
//! and `--max-errors`, and follows the command (`follow.rs`). Also `ferry command show|follow|logs`
//! and `ferry agents [--label k=v]`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ApiArgs;
use crate::client::{Client, query_string, segment};
use crate::follow::Follow;
use crate::output::{bytes, micros, print_table};

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
    let mut body = json!({"topic": args.topic});
    if args.all {
        body["selector"] = json!("all");
    } else if let Some(to) = &args.to {
        body["selector"] = json!(to);
    } else {
        match args.agent.as_slice() {
            [] => body["agent"] = json!(only_online_agent(&client).await?),
            [one] => body["agent"] = json!(one),
            many => body["agents"] = json!(many),
        }
    }
    if let Some(n) = args.max_concurrency {
        body["max_concurrency"] = json!(n);
    }
    if let Some(n) = args.max_errors {
        body["max_errors"] = json!(n);
    }
    if let Some(payload) = &args.payload {
        let value: Value = serde_json::from_str(payload)
            .with_context(|| format!("--payload is not valid JSON: {payload}; quote it for your shell, e.g. --payload '{{\"name\":\"ferry\"}}'"))?;
        body["payload"] = value;
    }
    if let Some(path) = &args.payload_file {
        use base64::Engine as _;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        body["payload_base64"] =
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if let Some(content_type) = &args.content_type {
        body["content_type"] = Value::String(content_type.clone());
    }
    if let Some(timeout) = args.timeout {
        body["timeout_ms"] = json!(timeout.as_millis() as u64);
    }
    if let Some(within) = args.deliver_within {
        body["deliver_within_ms"] = json!(within.as_millis() as u64);
    }
    if let Some(key) = &args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    if !args.data.is_empty() {
        let data: serde_json::Map<String, Value> = args
            .data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        body["data"] = Value::Object(data);
    }
    let created = client.post("/v1/commands", &body).await?;
    let id = created["id"]
        .as_str()
        .context("the server's answer has no command id")?
        .to_string();
    if args.no_wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&created)?);
        } else {
            println!("{id}");
        }
        return Ok(());
    }

    let agents = agents_of(&created);
    let human = !args.json;
    if human {
        let target = created["target"].as_str().unwrap_or("?");
        match agents.as_slice() {
            [one] => eprintln!("command {id}: {} on {one}", args.topic),
            many => eprintln!(
                "command {id}: {} on {} agents ({target})",
                args.topic,
                many.len()
            ),
        }
    }
    watch(&client, &id, &agents, args.json).await
}

/// The agents a command was sent to, in its results' order.
fn agents_of(command: &Value) -> Vec<String> {
    command["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["agent"].as_str().map(str::to_string))
        .collect()
}

/// Follows command `id` sent to `agents` to its end as `ferry run` shows it, then prints its
/// results; an error (exit status 1) unless it succeeded.
async fn watch(client: &Client, id: &str, agents: &[String], json: bool) -> Result<()> {
    let mut display = Follow::new(!json, agents);
    client
        .follow(&format!("/v1/commands/{id}/events"), |kind, event| {
            display.event(kind, &event)
        })
        .await?;
    display.finish();
    let done = client.get(&format!("/v1/commands/{id}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if agents.len() == 1 {
        print_single(&done["results"][0])?;
    } else {
        print_results(&done);
        eprintln!("{}", summary_line(&done));
    }
    let status = done["status"].as_str().unwrap_or("unknown");
    if status != "succeeded" {
        if agents.len() == 1 {
            let one = done["results"][0]["status"].as_str().unwrap_or(status);
            bail!("command {id} ended {one}");
        }
        bail!("command {id} ended {status}: {}", summary_line(&done));
    }
    Ok(())
}

/// One agent's result as `ferry run` showed it before there were fleets: outcome and cost on
/// stderr, output on stdout.
fn print_single(result: &Value) -> Result<()> {
    let status = result["status"].as_str().unwrap_or("unknown");
    eprintln!("  {status}{}", cost(result));
    if let Some(detail) = result["detail"].as_str() {
        eprintln!("  {detail}");
    }
    if let Some(payload) = result.get("payload") {
        println!("{}", serde_json::to_string_pretty(payload)?);
    } else if let Some(text) = result["payload_text"].as_str() {
        println!("{text}");
    } else if let Some(b64) = result["payload_base64"].as_str() {
        println!("{b64}");
    }
    Ok(())
}

fn cost(result: &Value) -> String {
    let stats = &result["stats"];
    if stats.is_object() {
        format!(
            " in {} (peak memory {})",
            micros(stats["duration_us"].as_u64().unwrap_or(0)),
            bytes(stats["peak_memory_bytes"].as_u64().unwrap_or(0))
        )
    } else {
        String::new()
    }
}

/// A one-line output of a result, for tables.
fn output_cell(result: &Value) -> String {
    let text = if let Some(detail) = result["detail"].as_str() {
        detail.to_string()
    } else if let Some(payload) = result.get("payload") {
        payload.to_string()
    } else if let Some(text) = result["payload_text"].as_str() {
        text.to_string()
    } else if let Some(b64) = result["payload_base64"].as_str() {
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

fn print_results(command: &Value) {
    let rows: Vec<Vec<String>> = command["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let duration = r["stats"]["duration_us"]
                .as_u64()
                .map(micros)
                .unwrap_or_else(|| "-".into());
            vec![
                r["agent"].as_str().unwrap_or("?").to_string(),
                r["status"].as_str().unwrap_or("?").to_string(),
                duration,
                output_cell(r),
            ]
        })
        .collect();
    print_table(&["AGENT", "STATUS", "DURATION", "OUTPUT"], &rows);
}

/// `50 agents: 48 succeeded, 2 failed (at most 10 at once)`.
fn summary_line(command: &Value) -> String {
    let s = &command["summary"];
    let mut parts = Vec::new();
    for (key, name) in [
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("timed_out", "timed out"),
        ("undelivered", "undelivered"),
        ("cancelled", "cancelled"),
        ("running", "running"),
        ("pending", "pending"),
    ] {
        let n = s[key].as_u64().unwrap_or(0);
        if n > 0 {
            parts.push(format!("{n} {name}"));
        }
    }
    format!(
        "{} agents: {} (at most {} at once)",
        s["total"].as_u64().unwrap_or(0),
        parts.join(", "),
        command["peak_concurrency"].as_u64().unwrap_or(0)
    )
}

pub async fn cancel(args: CancelArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let id = &args.id;
    client
        .post(&format!("/v1/commands/{id}/cancel"), &json!({}))
        .await?;
    if args.no_wait {
        eprintln!("cancel requested for command {id}");
        return Ok(());
    }
    // The events stream ends with the command's `finished` event.
    client
        .follow(&format!("/v1/commands/{id}/events"), |_, _| {})
        .await?;
    let done = client.get(&format!("/v1/commands/{id}")).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        let status = done["status"].as_str().unwrap_or("unknown");
        println!("command {id} ended {status}: {}", summary_line(&done));
    }
    Ok(())
}

async fn only_online_agent(client: &Client) -> Result<String> {
    let agents = client.get("/v1/agents").await?;
    let online: Vec<&str> = agents
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["status"] == "online")
        .filter_map(|a| a["id"].as_str())
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
    let agents = client
        .get(&format!(
            "/v1/agents{}",
            query_string(&[("selector", selector), ("status", args.status.clone())])
        ))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(());
    }
    let list = agents.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no agents match (or none has connected to this server yet)");
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let (cpu, mem) = metrics_cells(&a["metrics"]);
            let mut status = if a["revoked"].is_object() {
                "revoked".to_string()
            } else {
                a["status"].as_str().unwrap_or("?").to_string()
            };
            // Another host presented this identity and was refused: say so where it is seen.
            if a["duplicate"].is_object() {
                status.push_str(" (duplicate refused)");
            }
            vec![
                a["id"].as_str().unwrap_or("?").to_string(),
                status,
                ago(&a["last_heartbeat"], now),
                cpu,
                mem,
                strings(&a["topics"]).join(","),
                labels_text(&a["labels"]),
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

pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

pub fn labels_text(labels: &Value) -> String {
    labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn ago(time: &Value, now: OffsetDateTime) -> String {
    time.as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .map(|t| format!("{}s ago", (now - t).whole_seconds().max(0)))
        .unwrap_or_else(|| "never".into())
}

pub fn metrics_cells(m: &Value) -> (String, String) {
    if m.is_object() {
        (
            format!("{:.0}%", m["cpu_percent"].as_f64().unwrap_or(0.0)),
            format!(
                "{} / {}",
                bytes(m["memory_used_bytes"].as_u64().unwrap_or(0)),
                bytes(m["memory_total_bytes"].as_u64().unwrap_or(0))
            ),
        )
    } else {
        ("-".into(), "-".into())
    }
}

pub async fn commands(args: CommandsArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let list = client
        .get(&format!(
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
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no commands match");
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let s = &c["summary"];
            vec![
                c["id"].as_str().unwrap_or("?").to_string(),
                c["topic"].as_str().unwrap_or("?").to_string(),
                c["target"].as_str().unwrap_or("?").to_string(),
                c["status"].as_str().unwrap_or("?").to_string(),
                format!(
                    "{}/{}",
                    s["succeeded"].as_u64().unwrap_or(0),
                    s["total"].as_u64().unwrap_or(0)
                ),
                ago(&c["created_at"], now),
                c["created_by"].as_str().unwrap_or("?").to_string(),
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
    let command = client.get(&format!("/v1/commands/{id}")).await?;
    let agents = agents_of(&command);
    if !args.json {
        eprintln!(
            "command {}: {} on {}",
            args.id,
            command["topic"].as_str().unwrap_or("?"),
            command["target"].as_str().unwrap_or("?")
        );
    }
    watch(&client, &id, &agents, args.json).await
}

async fn command_logs(args: ShowCommandArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let id = segment(&args.id);
    let mut lines = 0usize;
    client
        .follow(&format!("/v1/commands/{id}/events"), |kind, event| {
            if kind != "log" {
                return;
            }
            lines += 1;
            if args.json {
                println!("{event}");
            } else {
                println!(
                    "{}  {}  {:<5} {}",
                    event["at"].as_str().unwrap_or("?"),
                    event["agent"].as_str().unwrap_or("?"),
                    event["level"].as_str().unwrap_or("?").to_lowercase(),
                    event["message"].as_str().unwrap_or("")
                );
            }
        })
        .await?;
    if lines == 0 && !args.json {
        eprintln!("command {} logged nothing", args.id);
    }
    Ok(())
}

async fn show_command(args: ShowCommandArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let command = client
        .get(&format!("/v1/commands/{}", segment(&args.id)))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&command)?);
        return Ok(());
    }
    let field = |key: &str| match &command[key] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("command   {}", field("id"));
    println!("topic     {}", field("topic"));
    println!("target    {}", field("target"));
    println!("status    {}", field("status"));
    println!("by        {}", field("created_by"));
    println!("created   {}", field("created_at"));
    println!("finished  {}", field("finished_at"));
    println!(
        "limits    max concurrency {}, max errors {}",
        field("max_concurrency"),
        field("max_errors")
    );
    println!("summary   {}", summary_line(&command));
    println!();
    print_results(&command);
    Ok(())
}
