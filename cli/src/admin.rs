//! `ferry agent show|label|revoke|unrevoke`, `ferry api-token create|list|revoke`,
//! `ferry audit`: through the operator API.
//!
//! Listings share `ListArgs` and `output::print_listing`. API tokens are `ferry api-token`, apart
//! from the join tokens of `ferry token`.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::client::{Client, query_string, segment};
use crate::commands::{ago, labels_text, metrics_cells, strings};
use crate::output::{print_listing, print_table, print_value};
use crate::{ApiArgs, ListArgs};

/// `ferry agent <subcommand>`; `ferry agent` without one runs the agent daemon.
#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Show one agent: status, labels (its own and the server's), metrics, runtimes, plugins.
    Show(AgentIdArgs),
    /// Set labels on the server (`key=value`, merged over the agent's own) or remove them
    /// (`key-`); selectors (`ferry run --to`) use them.
    Label(LabelArgs),
    /// Refuse the agent from now on (at its handshake, also after a server restart) and close
    /// its connection now.
    Revoke(RevokeArgs),
    /// Let a revoked agent connect again.
    Unrevoke(AgentIdArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgentIdArgs {
    /// The agent's id.
    id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    /// The agent's id.
    id: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    changes: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The agent's id.
    id: String,
    /// Why, for the record.
    #[arg(long)]
    reason: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn agent(command: AgentCommand) -> Result<()> {
    match command {
        AgentCommand::Show(args) => show(args).await,
        AgentCommand::Label(args) => label(args).await,
        AgentCommand::Revoke(args) => revoke(args).await,
        AgentCommand::Unrevoke(args) => {
            let client = Client::from_args(&args.api)?;
            let out = client
                .post(
                    &format!("/v1/agents/{}/unrevoke", segment(&args.id)),
                    &json!({}),
                )
                .await?;
            print_value(&out, args.json, || {
                format!("agent {} may connect again", args.id)
            })
        }
    }
}

/// `ferry agent revoke <id>` and `ferry agents revoke <id>`.
pub async fn revoke(args: RevokeArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let out = client
        .post(
            &format!("/v1/agents/{}/revoke", segment(&args.id)),
            &json!({"reason": args.reason}),
        )
        .await?;
    print_value(&out, args.json, || {
        format!(
            "agent {} revoked; it is refused until `ferry agent unrevoke {}`",
            args.id, args.id
        )
    })
}

async fn label(args: LabelArgs) -> Result<()> {
    let mut set = serde_json::Map::new();
    let mut remove = Vec::new();
    for change in &args.changes {
        if let Some((key, value)) = change.split_once('=') {
            set.insert(key.to_string(), Value::String(value.to_string()));
        } else if let Some(key) = change.strip_suffix('-') {
            remove.push(key.to_string());
        } else {
            bail!("'{change}' is neither key=value (set a label) nor key- (remove one)");
        }
    }
    let client = Client::from_args(&args.api)?;
    let out = client
        .post(
            &format!("/v1/agents/{}/labels", segment(&args.id)),
            &json!({"set": set, "remove": remove}),
        )
        .await?;
    print_value(&out, args.json, || {
        format!("agent {}: {}", args.id, labels_text(&out["labels"]))
    })
}

async fn show(args: AgentIdArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let a = client
        .get(&format!("/v1/agents/{}", segment(&args.id)))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!("agent       {}", text(&a["id"]));
    println!("status      {}", text(&a["status"]));
    if let Some(duplicate) = a["duplicate"].as_object() {
        println!(
            "duplicate   another installation of this identity (instance {}) from {} was refused {} time(s), last at {}: one identity on two hosts; give each host its own",
            text(&duplicate["instance"]),
            text(&duplicate["remote_address"]),
            text(&duplicate["refused"]),
            text(&duplicate["at"]),
        );
    }
    if let Some(revoked) = a["revoked"].as_object() {
        println!(
            "revoked     by {} at {}{}",
            text(&revoked["by"]),
            text(&revoked["at"]),
            revoked["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    println!("version     {}", text(&a["agent_version"]));
    println!("address     {}", text(&a["remote_address"]));
    println!("connected   {}", text(&a["connected_since"]));
    println!("heartbeat   {}", ago(&a["last_heartbeat"], now));
    println!("labels      {}", labels_text(&a["labels"]));
    println!("  own       {}", labels_text(&a["agent_labels"]));
    println!("  server    {}", labels_text(&a["server_labels"]));
    println!("topics      {}", strings(&a["topics"]).join(", "));
    let read_only = strings(&a["read_only_topics"]);
    if !read_only.is_empty() {
        println!("read-only   {}", read_only.join(", "));
    }
    println!("wit         {}", strings(&a["wit_versions"]).join(", "));
    println!("running     {} commands", text(&a["running_commands"]));
    let m = &a["metrics"];
    if m.is_object() {
        let (cpu, mem) = metrics_cells(m);
        println!("cpu         {cpu}");
        println!("memory      {mem}");
        println!(
            "disk        {} / {}",
            crate::output::bytes(m["disk_used_bytes"].as_u64().unwrap_or(0)),
            crate::output::bytes(m["disk_total_bytes"].as_u64().unwrap_or(0))
        );
        println!("uptime      {}s", text(&m["uptime_secs"]));
    }
    if let Some(health) = a["heartbeat"]["status"].as_str() {
        println!("health      {health}");
    }
    // Runtimes are supervised workloads the agent reports in its heartbeats.
    if let Some(runtimes) = a["heartbeat"]
        .get("runtimes")
        .or_else(|| a.get("runtimes"))
        .and_then(Value::as_array)
    {
        println!();
        if runtimes.is_empty() {
            println!("no runtimes");
        } else {
            let rows: Vec<Vec<String>> = runtimes
                .iter()
                .map(|r| {
                    vec![
                        text(
                            r.get("name")
                                .or_else(|| r.get("id"))
                                .unwrap_or(&Value::Null),
                        ),
                        text(
                            r.get("state")
                                .or_else(|| r.get("status"))
                                .unwrap_or(&Value::Null),
                        ),
                        r.as_object()
                            .into_iter()
                            .flatten()
                            .filter(|(k, _)| {
                                !["name", "id", "state", "status"].contains(&k.as_str())
                            })
                            .map(|(k, v)| format!("{k}={}", text(v)))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                })
                .collect();
            print_table(&["RUNTIME", "STATE", "DETAILS"], &rows);
        }
    }
    println!();
    let plugins = a["plugins"].as_array().cloned().unwrap_or_default();
    if plugins.is_empty() {
        println!("no pushed plugins");
    } else {
        let rows: Vec<Vec<String>> = plugins
            .iter()
            .map(|p| {
                vec![
                    text(&p["name"]),
                    text(&p["version"]),
                    text(&p["state"]),
                    text(&p["detail"]),
                ]
            })
            .collect();
        print_table(&["PLUGIN", "VERSION", "STATE", "DETAIL"], &rows);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ApiTokenArgs {
    #[command(subcommand)]
    command: ApiTokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ApiTokenCommand {
    /// Make a token for the operator API and print it, once (the server keeps only its hash).
    ///
    /// Scopes nest: read (look), run (also send and cancel commands, supply data), admin
    /// (also plugins, agent labels and revocation, tokens, the audit log).
    Create(CreateTokenArgs),
    /// List the live tokens (names, scopes, ids; never the tokens).
    List(ListArgs),
    /// Revoke a token at once.
    Revoke(RevokeTokenArgs),
}

#[derive(Debug, clap::Args)]
struct CreateTokenArgs {
    /// What it is for (`ci`, `dashboard`): the audit log names it.
    #[arg(long)]
    name: String,
    /// read, run or admin.
    #[arg(long, default_value = "read")]
    scope: String,
    /// Print the record and token as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
struct RevokeTokenArgs {
    /// The token's id (`ferry api-token list`).
    id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn api_token(args: ApiTokenArgs) -> Result<()> {
    match args.command {
        ApiTokenCommand::Create(args) => {
            let client = Client::from_args(&args.api)?;
            let out = client
                .post(
                    "/v1/api-tokens",
                    &json!({"name": args.name, "scope": args.scope}),
                )
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                eprintln!(
                    "token '{}' (id {}, scope {}); it is not shown again:",
                    out["name"].as_str().unwrap_or("?"),
                    out["id"].as_str().unwrap_or("?"),
                    out["scope"].as_str().unwrap_or("?")
                );
                println!("{}", out["token"].as_str().unwrap_or("?"));
            }
            Ok(())
        }
        ApiTokenCommand::List(args) => {
            let client = Client::from_args(&args.api)?;
            let list = client.get("/v1/api-tokens").await?;
            print_listing(
                &list,
                args.json,
                &["ID", "NAME", "SCOPE", "CREATED", "BY"],
                |t| {
                    vec![
                        t["id"].as_str().unwrap_or("?").to_string(),
                        t["name"].as_str().unwrap_or("?").to_string(),
                        t["scope"].as_str().unwrap_or("?").to_string(),
                        t["created_at"].as_str().unwrap_or("?").to_string(),
                        t["created_by"].as_str().unwrap_or("-").to_string(),
                    ]
                },
            )
        }
        ApiTokenCommand::Revoke(args) => {
            let client = Client::from_args(&args.api)?;
            let out = client
                .delete(&format!("/v1/api-tokens/{}", segment(&args.id)))
                .await?;
            print_value(&out, args.json, || {
                format!(
                    "token '{}' ({}) revoked",
                    out["name"].as_str().unwrap_or("?"),
                    args.id
                )
            })
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// At most this many entries, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only entries older than this sequence number (to page back).
    #[arg(long)]
    before: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn audit(args: AuditArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let list = client
        .get(&format!(
            "/v1/audit{}",
            query_string(&[
                ("limit", Some(args.limit.to_string())),
                ("before", args.before.map(|b| b.to_string())),
            ])
        ))
        .await?;
    print_listing(
        &list,
        args.json,
        &["SEQ", "AT", "WHO", "ACTION", "RESULT", "WHAT"],
        |e| {
            vec![
                e["seq"].to_string(),
                e["at"].as_str().unwrap_or("?").to_string(),
                e["token_name"].as_str().unwrap_or("?").to_string(),
                e["action"].as_str().unwrap_or("?").to_string(),
                e["result"].as_str().unwrap_or("?").to_string(),
                e["detail"]
                    .as_str()
                    .unwrap_or_else(|| e["request"].as_str().unwrap_or(""))
                    .to_string(),
            ]
        },
    )
}
