//! `ferry agent show|label|revoke|unrevoke`, `ferry api-token create|list|revoke`,
//! `ferry audit`: through the operator API.
//!
//! Listings share `ListArgs` and `output::print_listing`. API tokens are `ferry api-token`, apart
//! from the join tokens of `ferry token`.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use ferry_api::{
    Agent, AgentDetails, ApiToken, AuditEntry, CreateApiToken, LabelsRequest, NewApiToken, NoBody,
    RevokeRequest, RevokedAgent, Scope,
};
use serde_json::Value;
use time::OffsetDateTime;

use crate::client::{Client, query_string, read, segment};
use crate::commands::{ago, labels_text, metrics_cells, when};
use crate::output::{print_answer, print_listing, print_table};
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
                .post_value(
                    &format!("/v1/agents/{}/unrevoke", segment(&args.id)),
                    &NoBody {},
                )
                .await?;
            print_answer(out, args.json, |_: RevokedAgent| {
                format!("agent {} may connect again", args.id)
            })
        }
    }
}

/// `ferry agent revoke <id>` and `ferry agents revoke <id>`.
pub async fn revoke(args: RevokeArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let out = client
        .post_value(
            &format!("/v1/agents/{}/revoke", segment(&args.id)),
            &RevokeRequest {
                reason: args.reason.clone(),
            },
        )
        .await?;
    print_answer(out, args.json, |_: RevokedAgent| {
        format!(
            "agent {} revoked; it is refused until `ferry agent unrevoke {}`",
            args.id, args.id
        )
    })
}

async fn label(args: LabelArgs) -> Result<()> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for change in &args.changes {
        if let Some((key, value)) = change.split_once('=') {
            set.insert(key.to_string(), value.to_string());
        } else if let Some(key) = change.strip_suffix('-') {
            remove.push(key.to_string());
        } else {
            bail!("'{change}' is neither key=value (set a label) nor key- (remove one)");
        }
    }
    let client = Client::from_args(&args.api)?;
    let out = client
        .post_value(
            &format!("/v1/agents/{}/labels", segment(&args.id)),
            &LabelsRequest { set, remove },
        )
        .await?;
    print_answer(out, args.json, |agent: Agent| {
        format!("agent {}: {}", args.id, labels_text(&agent.labels))
    })
}

async fn show(args: AgentIdArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let answer = client
        .get_value(&format!("/v1/agents/{}", segment(&args.id)))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let AgentDetails { agent: a, plugins } = read(answer)?;
    let now = OffsetDateTime::now_utc();
    let or_dash = |s: Option<&str>| s.unwrap_or("-").to_string();
    println!("agent       {}", a.id);
    println!("status      {}", a.status);
    if let Some(duplicate) = &a.duplicate {
        println!(
            "duplicate   another installation of this identity (instance {}) from {} was refused {} time(s), last at {}: one identity on two hosts; give each host its own",
            duplicate.instance,
            duplicate.remote_address,
            duplicate.refused,
            when(Some(duplicate.at)),
        );
    }
    if let Some(revoked) = &a.revoked {
        println!(
            "revoked     by {} at {}{}",
            revoked.by,
            when(Some(revoked.at)),
            revoked
                .reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    println!("version     {}", a.agent_version);
    println!("address     {}", or_dash(a.remote_address.as_deref()));
    println!("connected   {}", when(a.connected_since));
    println!("heartbeat   {}", ago(a.last_heartbeat, now));
    println!("labels      {}", labels_text(&a.labels));
    println!("  own       {}", labels_text(&a.agent_labels));
    println!("  server    {}", labels_text(&a.server_labels));
    println!("topics      {}", a.topics.join(", "));
    if !a.read_only_topics.is_empty() {
        println!("read-only   {}", a.read_only_topics.join(", "));
    }
    println!("wit         {}", a.wit_versions.join(", "));
    println!("running     {} commands", a.running_commands);
    if let Some(m) = &a.metrics {
        let (cpu, mem) = metrics_cells(Some(m));
        println!("cpu         {cpu}");
        println!("memory      {mem}");
        println!(
            "disk        {} / {}",
            crate::output::bytes(m.disk_used_bytes),
            crate::output::bytes(m.disk_total_bytes)
        );
        println!("uptime      {}s", m.uptime_secs);
    }
    if let Some(heartbeat) = &a.heartbeat {
        println!("health      {}", heartbeat.status.name());
        // Runtimes are supervised workloads the agent reports in its heartbeats.
        println!();
        if heartbeat.runtimes.is_empty() {
            println!("no runtimes");
        } else {
            let rows: Vec<Vec<String>> = heartbeat
                .runtimes
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.status.clone(),
                        format!(
                            "pid={} restarts={}",
                            r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                            r.restarts
                        ),
                    ]
                })
                .collect();
            print_table(&["RUNTIME", "STATE", "DETAILS"], &rows);
        }
    }
    println!();
    if plugins.is_empty() {
        println!("no pushed plugins");
    } else {
        let rows: Vec<Vec<String>> = plugins
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    or_dash(p.version.as_deref()),
                    p.state.name().to_string(),
                    or_dash(p.detail.as_deref()),
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
    scope: Scope,
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
                .post_value(
                    "/v1/api-tokens",
                    &CreateApiToken {
                        name: args.name.clone(),
                        scope: args.scope,
                    },
                )
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let NewApiToken { record, token } = read(out)?;
                eprintln!(
                    "token '{}' (id {}, scope {}); it is not shown again:",
                    record.name, record.id, record.scope
                );
                println!("{token}");
            }
            Ok(())
        }
        ApiTokenCommand::List(args) => {
            let client = Client::from_args(&args.api)?;
            let list = client.get_value("/v1/api-tokens").await?;
            print_listing(
                list,
                args.json,
                &["ID", "NAME", "SCOPE", "CREATED", "BY"],
                |t: &ApiToken| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.scope.to_string(),
                        when(Some(t.created_at)),
                        t.created_by.clone().unwrap_or_else(|| "-".into()),
                    ]
                },
            )
        }
        ApiTokenCommand::Revoke(args) => {
            let client = Client::from_args(&args.api)?;
            let out = client
                .delete_value(&format!("/v1/api-tokens/{}", segment(&args.id)))
                .await?;
            print_answer(out, args.json, |token: ApiToken| {
                format!("token '{}' ({}) revoked", token.name, args.id)
            })
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// At most this many entries, newest first (more than the server's page of 1,000 are
    /// read page by page).
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

/// The most entries the server gives in one page of `GET /v1/audit`.
const AUDIT_PAGE: usize = 1_000;

pub async fn audit(args: AuditArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    // The server gives at most a page at a time, newest first: more than that is asked for
    // page by page, each before the oldest entry of the one before.
    let mut entries: Vec<Value> = Vec::new();
    let mut before = args.before;
    while entries.len() < args.limit {
        let want = (args.limit - entries.len()).min(AUDIT_PAGE);
        let page = client
            .get_value(&format!(
                "/v1/audit{}",
                query_string(&[
                    ("limit", Some(want.to_string())),
                    ("before", before.map(|b| b.to_string())),
                ])
            ))
            .await?;
        let page: Vec<Value> = read(page)?;
        let got = page.len();
        before = page.last().and_then(|e| e["seq"].as_u64());
        entries.extend(page);
        if got < want || before.is_none() {
            break;
        }
    }
    if !args.json
        && entries.len() == args.limit
        && let Some(oldest) = before
        && oldest > 1
    {
        eprintln!("older entries: `ferry audit --before {oldest}`");
    }
    let list = Value::Array(entries);
    print_listing(
        list,
        args.json,
        &["SEQ", "AT", "WHO", "ACTION", "RESULT", "WHAT"],
        |e: &AuditEntry| {
            vec![
                e.seq.to_string(),
                when(Some(e.at)),
                e.token_name.clone(),
                e.action.clone(),
                e.result.clone(),
                e.detail.clone().unwrap_or_else(|| e.request.clone()),
            ]
        },
    )
}
