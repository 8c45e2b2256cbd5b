//! The built-in `orchestrator` plugin: what an edge orchestrator agent reports about itself.
//!
//! | topic | payload (JSON) | answer |
//! |---|---|---|
//! | `get_consumption_orchestrator` | `period_seconds` | the agent process's CPU and memory, and the host's: average, max, samples |
//! | `delete_orchestrator` | optional `reason` | acknowledged; then the agent leaves the server for good, removes its state as configured, and exits |
//!
//! The payload is checked against the topic's contract first: a missing field, a field of the
//! wrong type or an unknown field is `invalid-input` naming the field and the expected type.
//! Every answer carries the command's id as `correlation_id`.

use std::time::Duration;

use ferry_plugin::{Command, Error, metrics};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Period {
    period_seconds: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delete {
    reason: Option<String>,
}

#[derive(Serialize)]
struct Stat<T> {
    avg: f64,
    max: T,
}

fn stat_f32(values: impl Iterator<Item = f32> + Clone, n: f64) -> Stat<f32> {
    Stat {
        avg: values.clone().map(f64::from).sum::<f64>() / n,
        max: values.fold(0.0, f32::max),
    }
}

fn stat_u64(values: impl Iterator<Item = u64> + Clone, n: f64) -> Stat<u64> {
    Stat {
        avg: values.clone().map(|v| v as f64).sum::<f64>() / n,
        max: values.max().unwrap_or(0),
    }
}

/// The payload, checked against the topic's contract; the error names the command.
fn contract<T: serde::de::DeserializeOwned>(cmd: &Command) -> Result<T, Error> {
    cmd.decode().map_err(|e| match e {
        Error::InvalidInput(why) => Error::InvalidInput(format!(
            "command {}: the payload does not match the contract of topic '{}': {why}",
            cmd.id, cmd.topic
        )),
        other => other,
    })
}

fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
    match cmd.topic.as_str() {
        "delete_orchestrator" => {
            let ask: Delete = contract(&cmd)?;
            let reason = ask
                .reason
                .unwrap_or_else(|| format!("delete_orchestrator (command {})", cmd.id));
            ferry_plugin::agent::decommission(&reason).map_err(|why| {
                if why.contains("not granted") {
                    Error::denied(why)
                } else {
                    Error::failed(why)
                }
            })?;
            ferry_plugin::warn!("this agent is being removed: {reason}");
            #[derive(Serialize)]
            struct Ack<'a> {
                correlation_id: &'a str,
                removing: bool,
                reason: &'a str,
            }
            ferry_plugin::to_json(&Ack {
                correlation_id: &cmd.id,
                removing: true,
                reason: &reason,
            })
        }
        "get_consumption_orchestrator" => {
            let ask: Period = contract(&cmd)?;
            let samples = metrics::history(Duration::from_secs(u64::from(ask.period_seconds)))
                .map_err(|why| {
                    if why.contains("not granted") {
                        Error::denied(why)
                    } else {
                        Error::failed(why)
                    }
                })?;
            #[derive(Serialize)]
            struct Agent {
                cpu_percent: Stat<f32>,
                memory_bytes: Stat<u64>,
            }
            #[derive(Serialize)]
            struct Host {
                cpu_percent: Stat<f32>,
                memory_used_bytes: Stat<u64>,
                memory_total_bytes: u64,
            }
            #[derive(Serialize)]
            struct Report<'a> {
                correlation_id: &'a str,
                period_seconds: u32,
                samples: usize,
                agent: Agent,
                host: Host,
            }
            let n = samples.len().max(1) as f64;
            ferry_plugin::to_json(&Report {
                correlation_id: &cmd.id,
                period_seconds: ask.period_seconds,
                samples: samples.len(),
                agent: Agent {
                    cpu_percent: stat_f32(samples.iter().map(|s| s.agent_cpu_percent), n),
                    memory_bytes: stat_u64(samples.iter().map(|s| s.agent_memory_bytes), n),
                },
                host: Host {
                    cpu_percent: stat_f32(samples.iter().map(|s| s.cpu_percent), n),
                    memory_used_bytes: stat_u64(samples.iter().map(|s| s.memory_used_bytes), n),
                    memory_total_bytes: samples.last().map_or(0, |s| s.memory_total_bytes),
                },
            })
        }
        other => Err(Error::invalid_input(format!(
            "command {}: the orchestrator plugin has no topic '{other}'",
            cmd.id
        ))),
    }
}

ferry_plugin::export!(fn handle);
