//! `ferry plugin push|assign|rollback|unassign|list|show`: the server's plugin registry,
//! through the operator API.
//!
//! Also `ferry plugin delete`. `assign`, and `push --to`, wait for the selected agents and fail if
//! any could not load the plugin.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ferry_manifest::Manifest;
use ferry_protocol::package::Package;
use serde_json::{Value, json};

use crate::client::{Client, segment};
use crate::output::{bytes, print_table};
use crate::{ApiArgs, ListArgs};

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The plugin's wasm component.
    pub component: PathBuf,
    /// Its manifest (default: ferry.toml next to the component, else in the current directory).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Assign it right away: `all`, or labels such as `env=prod,region=eu`.
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// How long to wait for agents to load an assigned version.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Return once the server has recorded the assignment, without waiting for agents.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the connected agents to load it (or fail to).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub wait_timeout: std::time::Duration,
}

impl WaitArgs {
    fn wait_ms(&self) -> Value {
        if self.no_wait {
            Value::Null
        } else {
            json!(self.wait_timeout.as_millis() as u64)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The plugin's name.
    pub name: String,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Prints where each agent stands after an assignment; an error if any could not load it or
/// had not finished in time.
fn report_rollout(what: &str, answer: &Value, json: bool) -> Result<()> {
    let Some(agents) = answer["agents"].as_array() else {
        return Ok(());
    };
    if !json {
        if agents.is_empty() {
            eprintln!(
                "no connected agent is selected for {what}; agents that connect later get it"
            );
        }
        for agent in agents {
            let name = agent["agent"].as_str().unwrap_or("?");
            match agent["detail"].as_str() {
                Some(detail) => eprintln!(
                    "  {name}: {} ({detail})",
                    agent["state"].as_str().unwrap_or("?")
                ),
                None => eprintln!("  {name}: {}", agent["state"].as_str().unwrap_or("?")),
            }
        }
    }
    let count = |state: &str| agents.iter().filter(|a| a["state"] == state).count();
    let (failed, pending) = (count("failed"), count("pending"));
    if failed > 0 {
        bail!("{failed} of {} agents could not load {what}", agents.len());
    }
    if pending > 0 {
        bail!(
            "{pending} of {} agents had not finished loading {what} when the wait ended; `ferry plugin show` follows them",
            agents.len()
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AssignArgs {
    /// The plugin's name.
    pub name: String,
    /// The version (default: the newest pushed).
    // Its own id: `version` would clash with the automatic --version flag.
    #[arg(id = "plugin_version", value_name = "VERSION")]
    pub version: Option<String>,
    /// Which agents: `all`, or labels such as `env=prod,region=eu` (an agent needs every one).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The plugin's name.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The manifest to push with `component`: the one named, or `ferry.toml` beside the component,
/// or in the current directory.
fn find_manifest(component: &Path, named: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = named {
        return Ok(path.to_path_buf());
    }
    let beside = component
        .parent()
        .unwrap_or(Path::new("."))
        .join("ferry.toml");
    let here = PathBuf::from("ferry.toml");
    for candidate in [&beside, &here] {
        if candidate.is_file() {
            return Ok(candidate.clone());
        }
    }
    bail!(
        "no manifest for {}: looked for {} and {}; pass --manifest <ferry.toml>",
        component.display(),
        beside.display(),
        here.display()
    )
}

pub async fn push(args: PushArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let component = std::fs::read(&args.component)
        .with_context(|| format!("cannot read {}", args.component.display()))?;
    let manifest_path = find_manifest(&args.component, args.manifest.as_deref())?;
    let manifest_text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    // Checked here too, so a mistake is named before anything is uploaded.
    let manifest = Manifest::from_toml(&manifest_text)
        .with_context(|| format!("{} is not a valid manifest", manifest_path.display()))?;
    let package = Package::new(manifest_text, component).encode();
    let spinner = crate::progress::spinner(
        !args.json,
        format!(
            "pushing {} {} ({})",
            manifest.plugin.name,
            manifest.plugin.version,
            bytes(package.len() as u64)
        ),
    );
    let pushed = client
        .post_bytes("/v1/plugins", "application/vnd.ferry.package+cbor", package)
        .await;
    spinner.finish_and_clear();
    let pushed = pushed?;
    let assigned = match &args.to {
        Some(to) => {
            let spinner = crate::progress::spinner(
                !args.json,
                format!("assigning it to {to} and waiting for the agents to load it"),
            );
            let assigned = client
                .post(
                    &format!("/v1/plugins/{}/assign", manifest.plugin.name),
                    &json!({"version": pushed["version"], "to": to, "wait_ms": args.wait.wait_ms()}),
                )
                .await;
            spinner.finish_and_clear();
            Some(assigned?)
        }
        None => None,
    };
    if args.json {
        let out = json!({"pushed": pushed, "assigned": assigned});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return match &assigned {
            Some(a) => report_rollout(&manifest.plugin.name, a, true),
            None => Ok(()),
        };
    }
    let what = format!(
        "{} {}",
        pushed["name"].as_str().unwrap_or("?"),
        pushed["version"].as_str().unwrap_or("?")
    );
    if pushed["created"].as_bool() == Some(true) {
        println!(
            "pushed {what}: sha256:{}, {}, topics {}",
            pushed["digest"].as_str().unwrap_or("?"),
            bytes(pushed["size"].as_u64().unwrap_or(0)),
            strings(&pushed["topics"]).join(", ")
        );
    } else {
        println!(
            "{what} was already pushed with exactly these contents (sha256:{})",
            pushed["digest"].as_str().unwrap_or("?")
        );
    }
    match assigned {
        Some(a) => {
            println!("assigned {what} to {}", a["to"].as_str().unwrap_or("?"));
            report_rollout(&what, &a, false)?;
        }
        None => {
            let name = pushed["name"].as_str().unwrap_or("?");
            let version = pushed["version"].as_str().unwrap_or("?");
            // What is assigned now decides the next step; a failed look-up only loses the hint.
            let current = client.get(&format!("/v1/plugins/{name}")).await.ok();
            eprintln!(
                "{}",
                next_step(name, version, current.as_ref().map(|p| &p["assigned"]))
            );
        }
    }
    Ok(())
}

/// What a push without `--to` says about serving the version it pushed, from the plugin's
/// current assignment (`null` when none).
fn next_step(name: &str, version: &str, assigned: Option<&Value>) -> String {
    let assigned = assigned.filter(|a| a.is_object());
    let to = assigned.and_then(|a| a["to"].as_str()).unwrap_or("?");
    match assigned.and_then(|a| a["version"].as_str()) {
        Some(current) if current == version => {
            format!("{name} {version} is already assigned to {to}; agents there serve it")
        }
        Some(current) => format!(
            "not assigned: agents ({to}) serve {name} {current}; to serve this one: ferry plugin assign {name} {version} --to {to}"
        ),
        None => format!(
            "not assigned to any agent yet; to serve it: ferry plugin assign {name} {version} --to all"
        ),
    }
}

pub async fn assign(args: AssignArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let spinner = crate::progress::spinner(
        !args.json,
        format!(
            "assigning {} to {} and waiting for the agents to load it",
            args.name, args.to
        ),
    );
    let assigned = client
        .post(
            &format!("/v1/plugins/{}/assign", args.name),
            &json!({"version": args.version, "to": args.to, "wait_ms": args.wait.wait_ms()}),
        )
        .await;
    spinner.finish_and_clear();
    let assigned = assigned?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&assigned)?);
    } else {
        println!(
            "assigned {} {} to {}",
            args.name,
            assigned["version"].as_str().unwrap_or("?"),
            assigned["to"].as_str().unwrap_or("?")
        );
    }
    report_rollout(&args.name, &assigned, args.json)
}

pub async fn rollback(args: RollbackArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let now = client
        .post(
            &format!("/v1/plugins/{}/rollback", args.name),
            &json!({"wait_ms": args.wait.wait_ms()}),
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&now)?);
    } else {
        match now["assigned"].as_object() {
            Some(a) => println!(
                "{} is back at {}, assigned to {}",
                args.name,
                a["version"].as_str().unwrap_or("?"),
                a["to"].as_str().unwrap_or("?")
            ),
            None => println!("{} is back to not being assigned", args.name),
        }
    }
    report_rollout(&args.name, &now, args.json)
}

pub async fn unassign(args: NameArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let now = client
        .post(&format!("/v1/plugins/{}/unassign", args.name), &json!({}))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&now)?);
    } else {
        println!(
            "{} is no longer assigned; agents stop serving it (running commands finish)",
            args.name
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The plugin's name.
    pub name: String,
    /// One version to delete; without it, every version and the assignment history.
    #[arg(value_name = "VERSION")]
    pub plugin_version: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn delete(args: DeleteArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let mut path = format!("/v1/plugins/{}", segment(&args.name));
    if let Some(version) = &args.plugin_version {
        path.push_str(&format!("?version={}", segment(version)));
    }
    let deleted = client.delete(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&deleted)?);
    } else {
        println!(
            "deleted {} {}",
            args.name,
            strings(&deleted["deleted"]).join(", ")
        );
    }
    Ok(())
}

pub async fn list(args: ListArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let plugins = client.get("/v1/plugins").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plugins)?);
        return Ok(());
    }
    let list = plugins.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no plugins pushed yet: ferry plugin push <component.wasm> --to all");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let versions: Vec<String> = p["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["version"].as_str().map(str::to_string))
                .collect();
            let newest = p["versions"]
                .as_array()
                .and_then(|v| v.last())
                .cloned()
                .unwrap_or(Value::Null);
            let (assigned, to) = match p["assigned"].as_object() {
                Some(a) => (
                    a["version"].as_str().unwrap_or("?").to_string(),
                    a["to"].as_str().unwrap_or("?").to_string(),
                ),
                None => ("-".into(), "-".into()),
            };
            vec![
                p["name"].as_str().unwrap_or("?").to_string(),
                assigned,
                to,
                versions.join(","),
                strings(&newest["topics"]).join(","),
            ]
        })
        .collect();
    print_table(&["PLUGIN", "ASSIGNED", "TO", "VERSIONS", "TOPICS"], &rows);
    Ok(())
}

pub async fn show(args: NameArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let plugin = client.get(&format!("/v1/plugins/{}", args.name)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plugin)?);
        return Ok(());
    }
    println!("plugin {}", args.name);
    match plugin["assigned"].as_object() {
        Some(a) => println!(
            "assigned: {} to {} (since {})",
            a["version"].as_str().unwrap_or("?"),
            a["to"].as_str().unwrap_or("?"),
            a["at"].as_str().unwrap_or("?")
        ),
        None => println!("assigned: nowhere"),
    }
    println!();
    let versions: Vec<Vec<String>> = plugin["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            vec![
                v["version"].as_str().unwrap_or("?").to_string(),
                v["digest"]
                    .as_str()
                    .unwrap_or("?")
                    .chars()
                    .take(16)
                    .collect(),
                bytes(v["size"].as_u64().unwrap_or(0)),
                format!("ferry:plugin@{}", v["wit_version"].as_str().unwrap_or("?")),
                strings(&v["topics"]).join(","),
                v["pushed_at"].as_str().unwrap_or("?").to_string(),
            ]
        })
        .collect();
    print_table(
        &["VERSION", "DIGEST", "SIZE", "WORLD", "TOPICS", "PUSHED"],
        &versions,
    );
    let agents: Vec<Vec<String>> = plugin["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                a["agent"].as_str().unwrap_or("?").to_string(),
                a["agent_status"].as_str().unwrap_or("?").to_string(),
                a["version"].as_str().unwrap_or("-").to_string(),
                a["state"].as_str().unwrap_or("?").to_string(),
                a["detail"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    println!();
    if agents.is_empty() {
        println!("no agent has it or is selected for it");
    } else {
        print_table(
            &["AGENT", "CONNECTION", "VERSION", "STATE", "DETAIL"],
            &agents,
        );
    }
    Ok(())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_found_beside_the_component() {
        let dir = tempfile::tempdir().unwrap();
        let component = dir.path().join("x.wasm");
        let err = find_manifest(&component, None).unwrap_err().to_string();
        assert!(err.contains("--manifest"), "{err}");
        std::fs::write(dir.path().join("ferry.toml"), "").unwrap();
        assert_eq!(
            find_manifest(&component, None).unwrap(),
            dir.path().join("ferry.toml")
        );
        let named = dir.path().join("other.toml");
        assert_eq!(find_manifest(&component, Some(&named)).unwrap(), named);
    }
}
