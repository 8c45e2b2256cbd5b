//! The built-in `runtimes` plugin: the runtime topics of an edge orchestrator agent, on top of
//! the `ferry:plugin/runtimes` host interface.
//!
//! | topic | payload (JSON) | answer |
//! |---|---|---|
//! | `create_new_runtime` | `name`, `command` (a program, or with `"backend": "component"` a `wasi:cli` component file), optional `args`, `env`, `cwd` (processes only), `restart` (`never`, `on-failure`, `always`; default `on-failure`), `port`, `start` (default true) | the runtime |
//! | `start_device`, `stop_device`, `restart_device` | `name` | the runtime |
//! | `delete_device` | `name` | `deleted` |
//! | `get_consumption_device` | `name`, `period_seconds` | CPU and memory: average, max, samples |
//!
//! Every payload is checked against its topic's contract before anything is done: a missing
//! field, a field of the wrong type or an unknown field is `invalid-input` naming the field and
//! the expected type. Every answer carries the command's id as `correlation_id`.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_plugin::runtimes::{
    self, ComponentSpec, Info, ProcessSpec, RestartPolicy, Spec, Status, Workload,
};
use ferry_plugin::{Command, Error};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    /// `process` (the default) or `component`.
    #[serde(default)]
    backend: Backend,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    #[serde(default)]
    restart: Restart,
    port: Option<u16>,
    #[serde(default = "yes")]
    start: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
enum Backend {
    #[default]
    Process,
    Component,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
enum Restart {
    Never,
    #[default]
    OnFailure,
    Always,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Consumption {
    name: String,
    period_seconds: u32,
}

#[derive(Serialize)]
struct RuntimeView {
    name: String,
    status: &'static str,
    pid: Option<u32>,
    restarts: u32,
    last_exit_code: Option<i32>,
    port: Option<u16>,
    created_ms: u64,
    started_ms: Option<u64>,
    detail: String,
}

impl From<Info> for RuntimeView {
    fn from(info: Info) -> Self {
        RuntimeView {
            name: info.name,
            status: match info.status {
                Status::Running => "running",
                Status::Stopped => "stopped",
                Status::Exited => "exited",
                Status::Restarting => "restarting",
                Status::Failed => "failed",
            },
            pid: info.pid,
            restarts: info.restarts,
            last_exit_code: info.last_exit_code,
            port: info.port,
            created_ms: info.created_ms,
            started_ms: info.started_ms,
            detail: info.detail,
        }
    }
}

#[derive(Serialize)]
struct Stat<T> {
    avg: f64,
    max: T,
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

/// A host refusal or failure, as the error a caller can act on.
fn host_error(why: String) -> Error {
    if why.contains("not granted") {
        Error::denied(why)
    } else if why.starts_with("no runtime named") || why.contains("already exists") {
        Error::invalid_input(why)
    } else {
        Error::failed(why)
    }
}

fn answer(cmd: &Command, runtime: Info) -> Result<Vec<u8>, Error> {
    #[derive(Serialize)]
    struct Answer<'a> {
        correlation_id: &'a str,
        runtime: RuntimeView,
    }
    ferry_plugin::to_json(&Answer {
        correlation_id: &cmd.id,
        runtime: runtime.into(),
    })
}

fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
    match cmd.topic.as_str() {
        "create_new_runtime" => {
            let create: Create = contract(&cmd)?;
            let workload = match create.backend {
                Backend::Process => Workload::Process(ProcessSpec {
                    command: create.command,
                    args: create.args,
                    env: create.env.into_iter().collect(),
                    cwd: create.cwd,
                }),
                Backend::Component => {
                    if create.cwd.is_some() {
                        return Err(Error::invalid_input(format!(
                            "command {}: at `cwd`: a component runtime has no working directory (it sees no files)",
                            cmd.id
                        )));
                    }
                    Workload::Component(ComponentSpec {
                        path: create.command,
                        args: create.args,
                        env: create.env.into_iter().collect(),
                    })
                }
            };
            let spec = Spec {
                workload,
                restart: match create.restart {
                    Restart::Never => RestartPolicy::Never,
                    Restart::OnFailure => RestartPolicy::OnFailure,
                    Restart::Always => RestartPolicy::Always,
                },
                port: create.port,
            };
            let info = runtimes::create(&create.name, &spec, create.start).map_err(host_error)?;
            ferry_plugin::info!("runtime {} created ({:?})", info.name, info.status);
            answer(&cmd, info)
        }
        "start_device" => {
            let Named { name } = contract(&cmd)?;
            answer(&cmd, runtimes::start(&name).map_err(host_error)?)
        }
        "stop_device" => {
            let Named { name } = contract(&cmd)?;
            ferry_plugin::progress(10, "stopping");
            answer(&cmd, runtimes::stop(&name).map_err(host_error)?)
        }
        "restart_device" => {
            let Named { name } = contract(&cmd)?;
            ferry_plugin::progress(10, "restarting");
            answer(&cmd, runtimes::restart(&name).map_err(host_error)?)
        }
        "delete_device" => {
            let Named { name } = contract(&cmd)?;
            runtimes::delete(&name).map_err(host_error)?;
            #[derive(Serialize)]
            struct Deleted<'a> {
                correlation_id: &'a str,
                deleted: &'a str,
            }
            ferry_plugin::to_json(&Deleted {
                correlation_id: &cmd.id,
                deleted: &name,
            })
        }
        "get_consumption_device" => {
            let ask: Consumption = contract(&cmd)?;
            let samples = runtimes::consumption(
                &ask.name,
                Duration::from_secs(u64::from(ask.period_seconds)),
            )
            .map_err(host_error)?;
            #[derive(Serialize)]
            struct Point {
                timestamp_ms: u64,
                cpu_percent: f32,
                memory_bytes: u64,
            }
            #[derive(Serialize)]
            struct Report<'a> {
                correlation_id: &'a str,
                name: &'a str,
                period_seconds: u32,
                samples: usize,
                cpu_percent: Stat<f32>,
                memory_bytes: Stat<u64>,
                series: Vec<Point>,
            }
            let n = samples.len().max(1) as f64;
            ferry_plugin::to_json(&Report {
                correlation_id: &cmd.id,
                name: &ask.name,
                period_seconds: ask.period_seconds,
                samples: samples.len(),
                cpu_percent: Stat {
                    avg: samples
                        .iter()
                        .map(|s| f64::from(s.cpu_percent))
                        .sum::<f64>()
                        / n,
                    max: samples.iter().map(|s| s.cpu_percent).fold(0.0, f32::max),
                },
                memory_bytes: Stat {
                    avg: samples.iter().map(|s| s.memory_bytes as f64).sum::<f64>() / n,
                    max: samples.iter().map(|s| s.memory_bytes).max().unwrap_or(0),
                },
                series: samples
                    .iter()
                    .map(|s| Point {
                        timestamp_ms: s.timestamp_ms,
                        cpu_percent: s.cpu_percent,
                        memory_bytes: s.memory_bytes,
                    })
                    .collect(),
            })
        }
        other => Err(Error::invalid_input(format!(
            "command {}: the runtimes plugin has no topic '{other}'",
            cmd.id
        ))),
    }
}

ferry_plugin::export!(fn handle);
