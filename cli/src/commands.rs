//! Client commands: `ferry run` and `ferry agents`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ApiArgs;
use crate::client::Client;
use crate::output::{bytes, micros, print_table};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The topic to run (`echo`, or any topic a plugin on the agent handles).
    pub topic: String,
    /// The agent to run it on (default: the only online agent, if there is exactly one).
    #[arg(long, short)]
    pub agent: Option<String>,
    /// The payload, as JSON.
    #[arg(long, short, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from a file (sent as-is; use --content-type to describe it).
    #[arg(long)]
    pub payload_file: Option<std::path::PathBuf>,
    /// The payload's content type (default: application/json for --payload).
    #[arg(long)]
    pub content_type: Option<String>,
    /// How long the command may run on the agent (e.g. 30s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Data the plugin may ask for while it runs (`request-data`), key=text; repeat for more.
    #[arg(long = "data", value_parser = parse_data)]
    pub data: Vec<(String, String)>,
    /// Print the command's final record as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Submit and print the command id without waiting for the result.
    #[arg(long)]
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
    /// Print JSON instead of a table.
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
    let agent = match args.agent {
        Some(agent) => agent,
        None => only_online_agent(&client).await?,
    };
    let mut body = json!({"agent": agent, "topic": args.topic});
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

    let human = !args.json;
    if human {
        eprintln!("command {id}: {} on {agent}", args.topic);
    }
    client
        .follow(&format!("/v1/commands/{id}/events"), |kind, event| {
            if !human {
                return;
            }
            match kind {
                "accepted" => eprintln!("  accepted"),
                "progress" => eprintln!(
                    "  [{:>3}%] {}",
                    event["percent"].as_u64().unwrap_or(0),
                    event["message"].as_str().unwrap_or("")
                ),
                "log" => eprintln!(
                    "  {:<5} {}",
                    event["level"].as_str().unwrap_or("?").to_lowercase(),
                    event["message"].as_str().unwrap_or("")
                ),
                _ => {}
            }
        })
        .await?;
    let done = client.get(&format!("/v1/commands/{id}")).await?;
    let status = done["status"].as_str().unwrap_or("unknown").to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        let stats = &done["stats"];
        let cost = if stats.is_object() {
            format!(
                " in {} (peak memory {})",
                micros(stats["duration_us"].as_u64().unwrap_or(0)),
                bytes(stats["peak_memory_bytes"].as_u64().unwrap_or(0))
            )
        } else {
            String::new()
        };
        eprintln!("  {status}{cost}");
        if let Some(detail) = done["detail"].as_str() {
            eprintln!("  {detail}");
        }
        if let Some(payload) = done.get("payload") {
            println!("{}", serde_json::to_string_pretty(payload)?);
        } else if let Some(text) = done["payload_text"].as_str() {
            println!("{text}");
        } else if let Some(b64) = done["payload_base64"].as_str() {
            println!("{b64}");
        }
    }
    if status != "succeeded" {
        bail!("command {id} ended {status}");
    }
    Ok(())
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
        match done["detail"].as_str() {
            Some(detail) => println!("command {id} ended {status}: {detail}"),
            None => println!("command {id} ended {status}"),
        }
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
    let agents = client.get("/v1/agents").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(());
    }
    let list = agents.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no agents have connected to this server yet");
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let heartbeat = a["last_heartbeat"]
                .as_str()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                .map(|t| format!("{}s ago", (now - t).whole_seconds().max(0)))
                .unwrap_or_else(|| "never".into());
            let m = &a["metrics"];
            let (cpu, mem) = if m.is_object() {
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
            };
            let topics: Vec<&str> = a["topics"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            vec![
                a["id"].as_str().unwrap_or("?").to_string(),
                a["status"].as_str().unwrap_or("?").to_string(),
                heartbeat,
                cpu,
                mem,
                topics.join(","),
            ]
        })
        .collect();
    print_table(
        &["AGENT", "STATUS", "HEARTBEAT", "CPU", "MEMORY", "TOPICS"],
        &rows,
    );
    Ok(())
}
