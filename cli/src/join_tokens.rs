//! `ferry token create|list|revoke`: join tokens, with which new agents enroll
//! (`ferry agent --join`), through the operator API.
//!
//! `create` prints the token, the CA fingerprint and the `ferry agent --join` line to run on the
//! new host.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use ferry_api::{CreateJoinToken, JoinTokenView, NewJoinToken};
use serde_json::Value;

use crate::client::{Client, read, segment};
use crate::commands::when;
use crate::output::{print_answer, print_listing};
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
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
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

fn parse_labels(specs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for spec in specs {
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    labels.insert(k.to_string(), v.to_string());
                }
                _ => bail!("'{pair}' is not key=value; give labels as --labels env=prod,zone=b"),
            }
        }
    }
    Ok(labels)
}

/// Where agents reach the server: the API's host with the agent port.
fn agent_address(api: &str, port: u16) -> String {
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

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
            let mut answer = client
                .post_value(
                    "/v1/join-tokens",
                    &CreateJoinToken {
                        labels,
                        ttl: Some(args.ttl),
                        uses: Some(args.uses),
                    },
                )
                .await?;
            let NewJoinToken {
                view,
                token,
                ca_fingerprint: fingerprint,
                agent_port,
            } = read(answer.clone())?;
            let server = args
                .server
                .clone()
                .unwrap_or_else(|| agent_address(client.base(), agent_port));
            let join = format!(
                "ferry agent --join {server} --token {token} --ca-fingerprint {fingerprint}"
            );
            if args.json {
                // The server's answer, with the line to run on the new host.
                answer["join_command"] = Value::String(join);
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            println!(
                "join token {} ({} use{}, until {}, labels {}); it is not shown again:",
                view.token.id,
                args.uses,
                if args.uses == 1 { "" } else { "s" },
                when(Some(view.token.expires_at)),
                labels_text(&view.token.labels)
            );
            println!("  token           {token}");
            println!("  CA fingerprint  {fingerprint}");
            println!("on the new host (add --name NAME to choose its id; default: its host name):");
            println!("  {join}");
            Ok(())
        }
        TokenCommand::List(args) => {
            let client = Client::from_args(&args.api)?;
            let list = client.get_value("/v1/join-tokens").await?;
            print_listing(
                list,
                args.json,
                &["ID", "STATE", "USED", "EXPIRES", "LABELS", "BY"],
                |t: &JoinTokenView| {
                    vec![
                        t.token.id.clone(),
                        t.state.name().to_string(),
                        format!("{}/{}", t.token.enrolled.len(), t.token.uses),
                        when(Some(t.token.expires_at)),
                        labels_text(&t.token.labels),
                        t.token.created_by.clone(),
                    ]
                },
            )
        }
        TokenCommand::Revoke(args) => {
            let client = Client::from_args(&args.api)?;
            let out = client
                .delete_value(&format!("/v1/join-tokens/{}", segment(&args.id)))
                .await?;
            print_answer(out, args.json, |_: JoinTokenView| {
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
