//! `ferry token create|list|revoke`: join tokens, with which new agents enroll
//! (`ferry agent --join`), through the operator API.
//!
//! `create` prints the token, the CA fingerprint and the `ferry agent --join` line to run on the
//! new host.

use anyhow::{Result, bail};
use serde_json::{Map, Value, json};

use crate::client::{Client, segment};
use crate::output::{print_listing, print_value};
use crate::{ApiArgs, ListArgs};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Make a join token and print it (once: the server keeps only its hash), the CA
    /// fingerprint agents pin, and the `ferry agent --join` line to run on the new host.
    ///
    /// Example: ferry token create --labels env=prod,zone=b --ttl 1h --uses 3
    Create(CreateArgs),
    /// List join tokens and their state (active, expired, used, revoked).
    List(ListArgs),
    /// Revoke a join token: no agent enrolls with it any more. Agents that enrolled with it
    /// keep their certificates (`ferry agents revoke <id>` refuses one).
    Revoke(RevokeArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Labels for the agents that enroll with it, key=value[,key=value…]; repeatable.
    #[arg(long = "labels", alias = "label")]
    labels: Vec<String>,
    /// How long it is valid (30m, 1h, 7d).
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// How many agents may enroll with it.
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// The address agents reach the server at, for the printed `--join` line (default: the
    /// API's host and the server's agent port).
    #[arg(long)]
    server: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
struct RevokeArgs {
    /// The token's id (`ferry token list`).
    id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn parse_labels(specs: &[String]) -> Result<Map<String, Value>> {
    let mut labels = Map::new();
    for spec in specs {
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    labels.insert(k.to_string(), Value::String(v.to_string()));
                }
                _ => bail!("'{pair}' is not key=value; give labels as --labels env=prod,zone=b"),
            }
        }
    }
    Ok(labels)
}

/// Where agents reach the server: the API's host with the agent port.
fn agent_address(api: &str, port: u64) -> String {
    let host = api
        .split("://")
        .nth(1)
        .unwrap_or(api)
        .split('/')
        .next()
        .unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    format!("{host}:{port}")
}

fn labels_text(labels: &Value) -> String {
    let text: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
        .collect();
    if text.is_empty() {
        "-".into()
    } else {
        text.join(",")
    }
}

pub async fn run(args: TokenArgs) -> Result<()> {
    match args.command {
        TokenCommand::Create(args) => {
            let labels = parse_labels(&args.labels)?;
            let client = Client::from_args(&args.api)?;
            let mut out = client
                .post(
                    "/v1/join-tokens",
                    &json!({"labels": labels, "ttl": args.ttl, "uses": args.uses}),
                )
                .await?;
            let server = args.server.clone().unwrap_or_else(|| {
                agent_address(client.base(), out["agent_port"].as_u64().unwrap_or(7443))
            });
            let token = out["token"].as_str().unwrap_or("?").to_string();
            let fingerprint = out["ca_fingerprint"].as_str().unwrap_or("?").to_string();
            let join = format!(
                "ferry agent --join {server} --token {token} --ca-fingerprint {fingerprint}"
            );
            out["join_command"] = json!(join);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            println!(
                "join token {} ({} use{}, until {}, labels {}); it is not shown again:",
                out["id"].as_str().unwrap_or("?"),
                args.uses,
                if args.uses == 1 { "" } else { "s" },
                out["expires_at"].as_str().unwrap_or("?"),
                labels_text(&out["labels"])
            );
            println!("  token           {token}");
            println!("  CA fingerprint  {fingerprint}");
            println!("on the new host (add --name NAME to choose its id; default: its host name):");
            println!("  {join}");
            Ok(())
        }
        TokenCommand::List(args) => {
            let client = Client::from_args(&args.api)?;
            let list = client.get("/v1/join-tokens").await?;
            print_listing(
                &list,
                args.json,
                &["ID", "STATE", "USED", "EXPIRES", "LABELS", "BY"],
                |t| {
                    let enrolled = t["enrolled"].as_array().map_or(0, Vec::len);
                    vec![
                        t["id"].as_str().unwrap_or("?").to_string(),
                        t["state"].as_str().unwrap_or("?").to_string(),
                        format!("{enrolled}/{}", t["uses"]),
                        t["expires_at"].as_str().unwrap_or("?").to_string(),
                        labels_text(&t["labels"]),
                        t["created_by"].as_str().unwrap_or("?").to_string(),
                    ]
                },
            )
        }
        TokenCommand::Revoke(args) => {
            let client = Client::from_args(&args.api)?;
            let out = client
                .delete(&format!("/v1/join-tokens/{}", segment(&args.id)))
                .await?;
            print_value(&out, args.json, || {
                format!("join token {} revoked", args.id)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_addresses_parse() {
        let labels = parse_labels(&["env=prod,zone=b".into(), "rack=4".into()]).unwrap();
        assert_eq!(labels.len(), 3);
        assert!(parse_labels(&["env".into()]).is_err());
        assert_eq!(
            agent_address("http://127.0.0.1:7444", 7443),
            "127.0.0.1:7443"
        );
        assert_eq!(agent_address("http://[::1]:7444/", 9), "[::1]:9");
        assert_eq!(
            agent_address("https://ferry.example.com", 7443),
            "ferry.example.com:7443"
        );
    }
}
