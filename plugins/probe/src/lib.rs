//! A plugin that reaches outside its sandbox when asked to: a test fixture for the agent's
//! capability checks. Each topic tries one thing and reports exactly what happened, so a test
//! can tell "granted and worked" from "refused" without guessing.
//!
//! | topic | payload (text) | returns |
//! |---|---|---|
//! | `probe.read` | a file path | the file's contents |
//! | `probe.write` | `path` newline `content` | `written` |
//! | `probe.list` | a directory path | the entries, one per line, sorted |
//! | `probe.env` | a variable name | its value |
//! | `probe.connect` | `host:port` | `connected` |
//! | `probe.data` | a key | the data `request-data` returns for it |
//! | `probe.metrics.now` | (none) | the sample, one `field=value` per line |
//! | `probe.metrics.history` | a period in seconds | one line per sample: `timestamp_ms cpu_percent memory_used_bytes agent_memory_bytes` |
//! | `probe.kv.set` | `key` newline `value` | `stored` |
//! | `probe.kv.get` | a key | its value, or `(none)` |
//! | `probe.kv.delete` | a key | `deleted` or `absent` |
//! | `probe.kv.list` | a prefix | the keys, one per line |
//! | `probe.kv.set-big` | `key` newline a size in bytes | `stored` (a value of that many `x`) |
//! | `probe.process.run` | `program`, then one argument per line | the exit, see below |
//! | `probe.process.run-timeout` | a timeout in ms, then as `probe.process.run` | the exit, see below |
//!
//! The exit is `code=C`, `signal=S`, `stopped=R`, `truncated=B`, `stderr=LINES` (joined by
//! `|`), one per line (`-` for none), then `stdout:` and the program's stdout. A program the
//! agent stopped because the command was cancelled makes the command end as cancelled.
//!
//! Any failure is returned as `error.denied` with the operating system's (or the agent's)
//! message, so the test sees the refusal the plugin saw.

use std::io::Write;

use ferry_plugin::{Command, Error, Plugin, kv, metrics, process};

struct Probe;

fn denied(what: &str, e: impl std::fmt::Display) -> Error {
    Error::denied(format!("{what}: {e}"))
}

impl Plugin for Probe {
    fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
        let arg = cmd.payload_str()?.trim_end_matches('\n').to_string();
        match cmd.topic.as_str() {
            "probe.read" => std::fs::read(&arg).map_err(|e| denied(&format!("read {arg}"), e)),
            "probe.write" => {
                let (path, content) = arg.split_once('\n').ok_or_else(|| {
                    Error::invalid_input("payload must be: path, a newline, the content")
                })?;
                let mut file = std::fs::File::create(path)
                    .map_err(|e| denied(&format!("create {path}"), e))?;
                file.write_all(content.as_bytes())
                    .map_err(|e| denied(&format!("write {path}"), e))?;
                Ok(b"written".to_vec())
            }
            "probe.list" => {
                let mut names: Vec<String> = std::fs::read_dir(&arg)
                    .map_err(|e| denied(&format!("list {arg}"), e))?
                    .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| denied(&format!("list {arg}"), e))?;
                names.sort();
                Ok(names.join("\n").into_bytes())
            }
            "probe.env" => std::env::var(&arg)
                .map(String::into_bytes)
                .map_err(|e| denied(&format!("env {arg}"), e)),
            "probe.connect" => std::net::TcpStream::connect(&arg)
                .map(|_| b"connected".to_vec())
                .map_err(|e| denied(&format!("connect {arg}"), e)),
            "probe.metrics.now" => {
                let s = metrics::now().map_err(|e| denied("metrics.now", e))?;
                Ok(format!(
                    "timestamp_ms={}\ncpu_percent={}\nmemory_used_bytes={}\nmemory_total_bytes={}\n\
                     disk_used_bytes={}\ndisk_total_bytes={}\nagent_cpu_percent={}\nagent_memory_bytes={}",
                    s.timestamp_ms,
                    s.cpu_percent,
                    s.memory_used_bytes,
                    s.memory_total_bytes,
                    s.disk_used_bytes,
                    s.disk_total_bytes,
                    s.agent_cpu_percent,
                    s.agent_memory_bytes
                )
                .into_bytes())
            }
            "probe.metrics.history" => {
                let seconds: u64 = arg
                    .parse()
                    .map_err(|e| Error::invalid_input(format!("period: {e}")))?;
                let samples = metrics::history(std::time::Duration::from_secs(seconds))
                    .map_err(|e| denied("metrics.history", e))?;
                Ok(samples
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} {} {}",
                            s.timestamp_ms,
                            s.cpu_percent,
                            s.memory_used_bytes,
                            s.agent_memory_bytes
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes())
            }
            "probe.kv.set" => {
                let (key, value) = arg.split_once('\n').ok_or_else(|| {
                    Error::invalid_input("payload must be: key, a newline, the value")
                })?;
                kv::set(key, value.as_bytes()).map_err(|e| denied("kv.set", e))?;
                Ok(b"stored".to_vec())
            }
            "probe.kv.set-big" => {
                let (key, size) = arg.split_once('\n').ok_or_else(|| {
                    Error::invalid_input("payload must be: key, a newline, a size")
                })?;
                let size: usize = size
                    .parse()
                    .map_err(|e| Error::invalid_input(format!("size: {e}")))?;
                kv::set(key, &vec![b'x'; size]).map_err(|e| denied("kv.set", e))?;
                Ok(b"stored".to_vec())
            }
            "probe.kv.get" => match kv::get(&arg).map_err(|e| denied("kv.get", e))? {
                Some(value) => Ok(value),
                None => Ok(b"(none)".to_vec()),
            },
            "probe.kv.delete" => match kv::delete(&arg).map_err(|e| denied("kv.delete", e))? {
                true => Ok(b"deleted".to_vec()),
                false => Ok(b"absent".to_vec()),
            },
            "probe.kv.list" => Ok(kv::list_keys(&arg)
                .map_err(|e| denied("kv.list", e))?
                .join("\n")
                .into_bytes()),
            "probe.data" => ferry_plugin::request_data(&arg)
                .map_err(|e| denied(&format!("request-data {arg}"), e)),
            "probe.process.run" => run(&arg, None),
            "probe.process.run-timeout" => {
                let (ms, rest) = arg.split_once('\n').ok_or_else(|| {
                    Error::invalid_input("payload must be: a timeout in ms, a newline, the program")
                })?;
                let ms: u64 = ms
                    .parse()
                    .map_err(|e| Error::invalid_input(format!("timeout: {e}")))?;
                run(rest, Some(std::time::Duration::from_millis(ms)))
            }
            other => Err(Error::invalid_input(format!(
                "probe has no topic '{other}'"
            ))),
        }
    }
}

/// Runs the program on the first line of `arg` with the other lines as its arguments.
fn run(arg: &str, timeout: Option<std::time::Duration>) -> Result<Vec<u8>, Error> {
    let mut lines = arg.split('\n');
    let program = lines.next().unwrap_or_default();
    let args: Vec<&str> = lines.collect();
    let exit = process::run(program, &args, timeout).map_err(|e| denied("process.run", e))?;
    if exit.stopped == Some(process::StopReason::Cancelled) {
        return Err(Error::Cancelled);
    }
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "code={}\nsignal={}\nstopped={}\ntruncated={}\nstderr={}\nstdout:\n",
        or_none(exit.code.map(|c| c.to_string())),
        or_none(exit.signal.map(|s| s.to_string())),
        or_none(exit.stopped.map(|r| match r {
            process::StopReason::Timeout => "timeout".into(),
            process::StopReason::Cancelled => "cancelled".into(),
        })),
        exit.stdout_truncated,
        exit.stderr_tail.join("|"),
    )
    .into_bytes();
    out.extend_from_slice(&exit.stdout);
    Ok(out)
}

ferry_plugin::export!(Probe);
