//! `ferry plugin test`: run a plugin on this machine, one command or a file of cases.
//!
//! It runs one command, or a cases file and ends with `N passed, N failed`. `--grant` stands in for
//! the agent's policy and `--data` for the server's data; `local.rs` supplies metrics and a
//! key-value store. Compiled plugins are cached in `$XDG_CACHE_HOME/ferry/components` (else
//! `~/.cache/ferry/components`), since a JavaScript or Python component takes ~20 s to compile.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ferry_protocol::message::Outcome;
use serde_json::{Value, json};

use super::cases::{self, DEFAULT_TIMEOUT};
use super::run::{Local, Ran, Rendered, Request, content_type_is, level_name, render};
use crate::output::{bytes, micros};

#[derive(Debug, clap::Args)]
#[command(after_long_help = cases::FORMAT)]
pub struct TestArgs {
    /// The plugin: a wasm component for ferry:plugin@0.1.0, such as
    /// target/wasm32-wasip2/release/NAME.wasm.
    pub plugin: PathBuf,
    /// A TOML file of test cases to run (the format is at the end of --help).
    pub cases: Option<PathBuf>,
    /// The topic to send one command on.
    #[arg(
        long,
        short,
        required_unless_present = "cases",
        conflicts_with = "cases"
    )]
    pub topic: Option<String>,
    /// The payload: JSON (sent as CBOR with --content-type application/cbor), or any text with
    /// another --content-type.
    #[arg(long, short, conflicts_with_all = ["payload_file", "cases"])]
    pub payload: Option<String>,
    /// Read the payload from a file, sent as it is (describe it with --content-type).
    #[arg(long, conflicts_with = "cases")]
    pub payload_file: Option<PathBuf>,
    /// The payload's content type [default: application/json with --payload, none otherwise].
    #[arg(long, conflicts_with = "cases")]
    pub content_type: Option<String>,
    /// How long the plugin may run before it is stopped, e.g. 5s or 250ms; with a cases file,
    /// for the cases that set none [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print a JSON report on stdout instead of text; progress and logs are in it rather than
    /// on stderr.
    #[arg(long)]
    pub json: bool,
    // The forms come from the capability table, `ferry_manifest::CAPABILITIES`.
    #[arg(
        long = "grant",
        value_parser = super::grant::parse_grant,
        help = format!(
            "Grant the plugin a capability, as an agent's policy would: {} (fs=PATH is read-only). \
             Nothing is granted by default. Repeat for more",
            super::grant::help()
        )
    )]
    pub grants: Vec<ferry_manifest::Capabilities>,
    /// Data the plugin may ask for with request-data, key=text, as a server would answer it
    /// (the plugin also needs --grant request_data). Repeat for more.
    #[arg(long = "data", value_parser = parse_data)]
    pub data: Vec<(String, String)>,
}

fn parse_data(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not key=value")),
    }
}

/// Loads the plugin with the run's grants and data.
fn load(args: &TestArgs) -> Result<Local> {
    let data = args
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    Local::load(&args.plugin, super::grant::merge(&args.grants), data)
}

pub async fn run(args: TestArgs) -> Result<()> {
    match args.cases.clone() {
        Some(file) => run_cases(args, file).await,
        None => run_one(args).await,
    }
}

async fn run_one(args: TestArgs) -> Result<()> {
    let topic = args
        .topic
        .clone()
        .context("give --topic to run one command, or a cases file")?;
    let (payload, content_type) = payload(&args)?;
    let plugin = load(&args)?;
    let timeout = args.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let human = !args.json;
    if human {
        eprintln!(
            "{}: topic {topic}, {} bytes of {}",
            plugin.name(),
            payload.len(),
            if content_type.is_empty() {
                "unspecified type"
            } else {
                &content_type
            }
        );
    }
    let cancel = Arc::new(AtomicBool::new(false));
    cancel_on_ctrl_c(cancel.clone(), human);
    let ran = plugin
        .run(
            Request {
                topic: topic.clone(),
                payload,
                content_type: content_type.clone(),
                timeout: Some(timeout),
                cancel_after: None,
            },
            human,
            cancel,
        )
        .await;
    let rendered = render(&ran.output, &content_type);
    if human {
        eprintln!(
            "  {} in {} (peak memory {})",
            ran.outcome.name(),
            micros(ran.stats.duration.as_micros() as u64),
            bytes(ran.stats.peak_memory_bytes)
        );
        match rendered {
            Rendered::Empty => {}
            Rendered::Json { value, from_cbor } => {
                if from_cbor {
                    eprintln!("  (the output is CBOR, shown as JSON)");
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            Rendered::Text(text) => println!("{}", text.strip_suffix('\n').unwrap_or(&text)),
            Rendered::Base64(b64) => {
                eprintln!(
                    "  (the output is {} bytes of binary, shown as base64)",
                    ran.output.len()
                );
                println!("{b64}");
            }
        }
    } else {
        let mut report = json!({
            "plugin": plugin.name(),
            "topic": topic,
            "status": ran.outcome.name(),
            "logs": ran.logs.iter().map(|(level, message)| json!({"level": level_name(*level), "message": message})).collect::<Vec<_>>(),
            "progress": ran.progress.iter().map(|(percent, message)| json!({"percent": percent, "message": message})).collect::<Vec<_>>(),
            "stats": stats(&ran),
        });
        if let Some(detail) = ran.outcome.detail() {
            report["detail"] = json!(detail);
        }
        match rendered {
            Rendered::Empty => {}
            Rendered::Json { value, from_cbor } => {
                report["payload"] = value;
                if from_cbor {
                    report["payload_cbor"] = json!(true);
                }
            }
            Rendered::Text(text) => report["payload_text"] = json!(text),
            Rendered::Base64(b64) => report["payload_base64"] = json!(b64),
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    match &ran.outcome {
        Outcome::Succeeded => Ok(()),
        Outcome::TimedOut => bail!(
            "{} timed out on topic {topic}: it ran past the {} timeout and was stopped; if it \
             needs longer, raise --timeout",
            plugin.name(),
            humantime::format_duration(timeout)
        ),
        other => bail!("{} ended {other} (topic {topic})", plugin.name()),
    }
}

/// The payload bytes and content type the flags describe.
fn payload(args: &TestArgs) -> Result<(Vec<u8>, String)> {
    if let Some(path) = &args.payload_file {
        let payload = std::fs::read(path)
            .with_context(|| format!("cannot read --payload-file {}", path.display()))?;
        return Ok((payload, args.content_type.clone().unwrap_or_default()));
    }
    let Some(text) = &args.payload else {
        return Ok((Vec::new(), args.content_type.clone().unwrap_or_default()));
    };
    let content_type = args
        .content_type
        .clone()
        .unwrap_or_else(|| "application/json".into());
    if content_type_is(&content_type, "application/cbor", "+cbor") {
        let value: Value = serde_json::from_str(text).with_context(|| {
            format!("--payload is not valid JSON, so it cannot be sent as CBOR: {text}")
        })?;
        let mut cbor = Vec::new();
        ciborium::into_writer(&value, &mut cbor)
            .map_err(|e| anyhow!("cannot encode --payload as CBOR: {e}"))?;
        return Ok((cbor, content_type));
    }
    // A payload declared as JSON on purpose is sent even when it is not JSON, to see how the
    // plugin handles that; without --content-type it is checked, since a shell's quoting
    // mangles JSON easily.
    if args.content_type.is_none()
        && let Err(e) = serde_json::from_str::<Value>(text)
    {
        bail!(
            "--payload is not valid JSON ({e}): {text}; quote it for your shell, e.g. \
             --payload '{{\"name\":\"ferry\"}}', or give --content-type (text/plain, or \
             application/json to send it anyway)"
        );
    }
    Ok((text.clone().into_bytes(), content_type))
}

/// On the first Ctrl-C, cancels the command (the plugin sees `cancelled()` turn true); on
/// the second, exits.
fn cancel_on_ctrl_c(cancel: Arc<AtomicBool>, human: bool) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        cancel.store(true, Ordering::Relaxed);
        if human {
            eprintln!("  cancelling; press Ctrl-C again to quit at once");
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}

fn stats(ran: &Ran) -> Value {
    json!({
        "duration_us": ran.stats.duration.as_micros() as u64,
        "peak_memory_bytes": ran.stats.peak_memory_bytes,
        "fuel": ran.stats.fuel_consumed,
    })
}

/// The log lines of a failed case shown under it; its last ones, where a failure shows.
const FAILED_CASE_LOG_LINES: usize = 20;

async fn run_cases(args: TestArgs, file: PathBuf) -> Result<()> {
    let cases = cases::load(&file)?;
    let plugin = load(&args)?;
    let never = Arc::new(AtomicBool::new(false));
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut reports = Vec::new();
    for case in &cases {
        let ran = plugin
            .run(
                Request {
                    topic: case.topic.clone(),
                    payload: case.payload.clone(),
                    content_type: case.content_type.clone(),
                    timeout: Some(case.timeout.or(args.timeout).unwrap_or(DEFAULT_TIMEOUT)),
                    cancel_after: case.cancel_after,
                },
                false,
                never.clone(),
            )
            .await;
        let problems = cases::check(case, &ran);
        let took = micros(ran.stats.duration.as_micros() as u64);
        if problems.is_empty() {
            passed += 1;
            if !args.json {
                println!("ok    {} ({took})", case.name);
            }
        } else {
            failed += 1;
            if !args.json {
                println!(
                    "FAIL  {} (line {}, {took}): {}",
                    case.name,
                    case.line,
                    problems.join("; ")
                );
                let skipped = ran.logs.len().saturating_sub(FAILED_CASE_LOG_LINES);
                if skipped > 0 {
                    eprintln!("      … {skipped} earlier log lines");
                }
                for (level, message) in &ran.logs[skipped..] {
                    eprintln!("      {:<5} {message}", level_name(*level));
                }
            }
        }
        if args.json {
            let mut report = json!({
                "name": case.name,
                "line": case.line,
                "passed": problems.is_empty(),
                "problems": problems,
                "status": ran.outcome.name(),
                "stats": stats(&ran),
            });
            if let Some(detail) = ran.outcome.detail() {
                report["detail"] = json!(detail);
            }
            reports.push(report);
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "plugin": plugin.name(),
                "passed": passed,
                "failed": failed,
                "cases": reports,
            }))?
        );
    } else {
        // Tools read this line; keep its form.
        println!("{passed} passed, {failed} failed");
    }
    if failed > 0 {
        bail!(
            "{failed} of {} cases in {} failed",
            cases.len(),
            file.display()
        );
    }
    Ok(())
}
