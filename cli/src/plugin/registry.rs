//! `ferry plugin push|assign|rollback|unassign|list|show`: the server's plugin registry,
//! through the operator API.
//!
//! Also `ferry plugin delete`. `assign`, and `push --to`, wait for the selected agents and fail if
//! any could not load the plugin.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ferry_api::{
    AgentRollout, AssignOutcome, AssignRequest, Assignment, DeleteOutcome, LoadState, NoBody,
    PluginDetails, PluginSummary, PushOutcome, RollbackOutcome, RollbackRequest, UnassignOutcome,
};
use ferry_manifest::Manifest;
use ferry_protocol::package::Package;
use serde::Serialize;
use serde_json::Value;

use crate::client::{Client, read, segment};
use crate::commands::when;
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
    fn wait_ms(&self) -> Option<u64> {
        (!self.no_wait).then_some(self.wait_timeout.as_millis() as u64)
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
fn report_rollout(what: &str, agents: Option<&[AgentRollout]>, json: bool) -> Result<()> {
    let Some(agents) = agents else {
        return Ok(());
    };
    if !json {
        if agents.is_empty() {
            eprintln!(
                "no connected agent is selected for {what}; agents that connect later get it"
            );
        }
        for agent in agents {
            let (name, state) = (&agent.agent, agent.state.name());
            match &agent.detail {
                Some(detail) => eprintln!("  {name}: {state} ({detail})"),
                None => eprintln!("  {name}: {state}"),
            }
        }
    }
    let count = |state: LoadState| agents.iter().filter(|a| a.state == state).count();
    let (failed, pending) = (count(LoadState::Failed), count(LoadState::Pending));
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
    let pushed_answer = pushed?;
    let pushed: PushOutcome = read(pushed_answer.clone())?;
    let assigned_answer = match &args.to {
        Some(to) => {
            let spinner = crate::progress::spinner(
                !args.json,
                format!("assigning it to {to} and waiting for the agents to load it"),
            );
            let assigned = client
                .post_value(
                    &format!("/v1/plugins/{}/assign", manifest.plugin.name),
                    &AssignRequest {
                        version: Some(pushed.package.version.clone()),
                        to: to.clone(),
                        wait_ms: args.wait.wait_ms(),
                    },
                )
                .await;
            spinner.finish_and_clear();
            Some(assigned?)
        }
        None => None,
    };
    let assigned: Option<AssignOutcome> = assigned_answer.clone().map(read).transpose()?;
    if args.json {
        /// Both answers as the server sent them.
        #[derive(Serialize)]
        struct Out {
            assigned: Option<Value>,
            pushed: Value,
        }
        let out = Out {
            assigned: assigned_answer,
            pushed: pushed_answer,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return match &assigned {
            Some(a) => report_rollout(&manifest.plugin.name, a.agents.as_deref(), true),
            None => Ok(()),
        };
    }
    let package = &pushed.package;
    let what = format!("{} {}", package.name, package.version);
    if pushed.created {
        println!(
            "pushed {what}: sha256:{}, {}, topics {}",
            package.digest,
            bytes(package.size),
            package.topics.join(", ")
        );
    } else {
        println!(
            "{what} was already pushed with exactly these contents (sha256:{})",
            package.digest
        );
    }
    match assigned {
        Some(a) => {
            println!("assigned {what} to {}", a.assignment.to);
            report_rollout(&what, a.agents.as_deref(), false)?;
        }
        None => {
            let (name, version) = (&package.name, &package.version);
            // What is assigned now decides the next step; a failed look-up only loses the hint.
            let current: Option<PluginDetails> =
                client.get(&format!("/v1/plugins/{name}")).await.ok();
            eprintln!(
                "{}",
                next_step(
                    name,
                    version,
                    current.as_ref().and_then(|p| p.summary.assigned.as_ref())
                )
            );
        }
    }
    Ok(())
}

/// What a push without `--to` says about serving the version it pushed, from the plugin's
/// current assignment (none when it is not assigned).
fn next_step(name: &str, version: &str, assigned: Option<&Assignment>) -> String {
    match assigned {
        Some(current) if current.version == version => format!(
            "{name} {version} is already assigned to {}; agents there serve it",
            current.to
        ),
        Some(current) => format!(
            "not assigned: agents ({to}) serve {name} {}; to serve this one: ferry plugin assign {name} {version} --to {to}",
            current.version,
            to = current.to
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
    let answer = client
        .post_value(
            &format!("/v1/plugins/{}/assign", args.name),
            &AssignRequest {
                version: args.version.clone(),
                to: args.to.clone(),
                wait_ms: args.wait.wait_ms(),
            },
        )
        .await;
    spinner.finish_and_clear();
    let answer = answer?;
    let assigned: AssignOutcome = read(answer.clone())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "assigned {} {} to {}",
            args.name, assigned.assignment.version, assigned.assignment.to
        );
    }
    report_rollout(&args.name, assigned.agents.as_deref(), args.json)
}

pub async fn rollback(args: RollbackArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let answer = client
        .post_value(
            &format!("/v1/plugins/{}/rollback", args.name),
            &RollbackRequest {
                wait_ms: args.wait.wait_ms(),
            },
        )
        .await?;
    let now: RollbackOutcome = read(answer.clone())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        match &now.assigned {
            Some(a) => println!(
                "{} is back at {}, assigned to {}",
                args.name, a.version, a.to
            ),
            None => println!("{} is back to not being assigned", args.name),
        }
    }
    report_rollout(&args.name, now.agents.as_deref(), args.json)
}

pub async fn unassign(args: NameArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let answer = client
        .post_value(&format!("/v1/plugins/{}/unassign", args.name), &NoBody {})
        .await?;
    let _: UnassignOutcome = read(answer.clone())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
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
    let answer = client.delete_value(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        let deleted: DeleteOutcome = read(answer)?;
        println!("deleted {} {}", args.name, deleted.deleted.join(", "));
    }
    Ok(())
}

pub async fn list(args: ListArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let answer = client.get_value("/v1/plugins").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let list: Vec<PluginSummary> = read(answer)?;
    if list.is_empty() {
        eprintln!("no plugins pushed yet: ferry plugin push <component.wasm> --to all");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let versions: Vec<&str> = p.versions.iter().map(|v| v.version.as_str()).collect();
            let topics = p.versions.last().map(|v| v.topics.join(","));
            let (assigned, to) = match &p.assigned {
                Some(a) => (a.version.clone(), a.to.to_string()),
                None => ("-".into(), "-".into()),
            };
            vec![
                p.name.clone(),
                assigned,
                to,
                versions.join(","),
                topics.unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["PLUGIN", "ASSIGNED", "TO", "VERSIONS", "TOPICS"], &rows);
    Ok(())
}

pub async fn show(args: NameArgs) -> Result<()> {
    let client = Client::from_args(&args.api)?;
    let answer = client
        .get_value(&format!("/v1/plugins/{}", args.name))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let plugin: PluginDetails = read(answer)?;
    println!("plugin {}", args.name);
    match &plugin.summary.assigned {
        Some(a) => println!(
            "assigned: {} to {} (since {})",
            a.version,
            a.to,
            when(Some(a.at))
        ),
        None => println!("assigned: nowhere"),
    }
    println!();
    let versions: Vec<Vec<String>> = plugin
        .summary
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.clone(),
                v.digest.to_string().chars().take(16).collect(),
                bytes(v.size),
                format!("ferry:plugin@{}", v.wit_version),
                v.topics.join(","),
                when(Some(v.pushed_at)),
            ]
        })
        .collect();
    print_table(
        &["VERSION", "DIGEST", "SIZE", "WORLD", "TOPICS", "PUSHED"],
        &versions,
    );
    let agents: Vec<Vec<String>> = plugin
        .agents
        .iter()
        .map(|a| {
            vec![
                a.agent.clone(),
                a.agent_status.name().to_string(),
                a.version.clone().unwrap_or_else(|| "-".into()),
                a.state.name().to_string(),
                a.detail.clone().unwrap_or_default(),
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
