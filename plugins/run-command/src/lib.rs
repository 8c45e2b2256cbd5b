//! The built-in `run-command` plugin: the `run_command` topic of an edge orchestrator agent.
//!
//! Either a program (`program`, optional `args`, `env`, `cwd`, `stdin`, `timeout_ms`): it runs
//! through the `process` interface, its output streams into the command's log as it comes, and
//! the answer has its exit code and its captured stdout and stderr (bounded, with
//! `stdout_truncated`/`stderr_truncated` saying when there was more);
//!
//! or an HTTP request to a runtime (`runtime`, `http: {method, path, headers, body}`,
//! optional `timeout_ms`): sent to `127.0.0.1:<the runtime's port>`, as the agent proxies
//! commands to its runtimes; the answer has the status, headers and body.
//!
//! The payload is checked against the contract first; every answer carries `correlation_id`.
//!
//! The request to a runtime is a bare HTTP/1.0 request over WASI sockets, with `Connection: close`,
//! so the answer is never chunked and ends when the stream does.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ferry_plugin::process::{self, Request, StopReason};
use ferry_plugin::{Command, Error, runtimes};
use serde::{Deserialize, Serialize};

/// The most of an HTTP answer kept.
const MAX_HTTP_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunCommand {
    program: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    #[serde(default)]
    stdin: String,
    timeout_ms: Option<u32>,
    runtime: Option<String>,
    http: Option<Http>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    #[serde(default = "get")]
    method: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

fn invalid(cmd: &Command, why: impl std::fmt::Display) -> Error {
    Error::invalid_input(format!(
        "command {}: the payload does not match the contract of topic '{}': {why}",
        cmd.id, cmd.topic
    ))
}

fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
    if cmd.topic != "run_command" {
        return Err(invalid(&cmd, format!("no topic '{}' here", cmd.topic)));
    }
    let ask: RunCommand = cmd.decode().map_err(|e| match e {
        Error::InvalidInput(why) => invalid(&cmd, why),
        other => other,
    })?;
    match (&ask.program, &ask.runtime, &ask.http) {
        (Some(_), None, None) => run_program(&cmd, ask),
        (None, Some(_), Some(_)) => http_to_runtime(&cmd, ask),
        (None, Some(_), None) => Err(invalid(
            &cmd,
            "`runtime` needs `http`, the request to send it",
        )),
        (None, None, Some(_)) => Err(invalid(
            &cmd,
            "`http` needs `runtime`, the runtime to send it to",
        )),
        (None, None, None) => Err(invalid(
            &cmd,
            "give either `program` or `runtime` with `http`",
        )),
        (Some(_), _, _) => Err(invalid(
            &cmd,
            "give either `program` or `runtime`, not both",
        )),
    }
}

fn run_program(cmd: &Command, ask: RunCommand) -> Result<Vec<u8>, Error> {
    let program = ask.program.expect("checked");
    ferry_plugin::progress(10, &format!("running {program}"));
    let exit = process::run_with(&Request {
        program: program.clone(),
        args: ask.args,
        stdin: ask.stdin.into_bytes(),
        env: ask.env.into_iter().collect(),
        cwd: ask.cwd,
        timeout_ms: ask.timeout_ms,
    })
    .map_err(|why| {
        if why.contains("not granted") || why.contains("is refused") {
            Error::denied(why)
        } else {
            Error::failed(why)
        }
    })?;
    if exit.stopped == Some(StopReason::Cancelled) {
        return Err(Error::Cancelled);
    }
    #[derive(Serialize)]
    struct Answer<'a> {
        correlation_id: &'a str,
        program: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        stdout: String,
        stdout_truncated: bool,
        stderr: String,
        stderr_truncated: bool,
    }
    ferry_plugin::progress(100, "done");
    ferry_plugin::to_json(&Answer {
        correlation_id: &cmd.id,
        program,
        exit_code: exit.code,
        signal: exit.signal,
        timed_out: exit.stopped == Some(StopReason::Timeout),
        stdout: String::from_utf8_lossy(&exit.stdout).into_owned(),
        stdout_truncated: exit.stdout_truncated,
        stderr: String::from_utf8_lossy(&exit.stderr).into_owned(),
        stderr_truncated: exit.stderr_truncated,
    })
}

fn http_to_runtime(cmd: &Command, ask: RunCommand) -> Result<Vec<u8>, Error> {
    let name = ask.runtime.expect("checked");
    let http = ask.http.expect("checked");
    let runtime = runtimes::get(&name).map_err(|why| {
        if why.contains("not granted") {
            Error::denied(why)
        } else {
            Error::invalid_input(why)
        }
    })?;
    let port = runtime.port.ok_or_else(|| {
        Error::invalid_input(format!(
            "runtime '{name}' has no port; create it with \"port\" to send it requests"
        ))
    })?;
    if http.method.is_empty() || !http.method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            cmd,
            format!("at `http.method`: {:?} is not an HTTP method", http.method),
        ));
    }
    if !http.path.starts_with('/') || http.path.contains(['\r', '\n', ' ']) {
        return Err(invalid(
            cmd,
            format!(
                "at `http.path`: {:?} must start with / and hold no spaces or line breaks",
                http.path
            ),
        ));
    }
    let timeout = Duration::from_millis(u64::from(ask.timeout_ms.unwrap_or(30_000)));
    let failed = |what: &str, e: std::io::Error| {
        let why = format!("{what} runtime '{name}' on 127.0.0.1:{port}: {e}");
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            Error::denied(why)
        } else {
            Error::failed(why)
        }
    };
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| failed("cannot reach", e))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    // HTTP/1.0 with Connection: close: the answer ends when the stream does, never chunked.
    let mut request = format!(
        "{} {} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        http.method,
        http.path,
        http.body.len()
    );
    for (key, value) in &http.headers {
        if key.contains([':', '\r', '\n']) || value.contains(['\r', '\n']) {
            return Err(invalid(
                cmd,
                format!("at `http.headers.{key}`: a header holds no line breaks"),
            ));
        }
        request.push_str(&format!("{key}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(http.body.as_bytes()))
        .map_err(|e| failed("cannot send to", e))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_HTTP_BYTES + 1)
        .read_to_end(&mut answer)
        .map_err(|e| failed("no answer from", e))?;
    let truncated = answer.len() as u64 > MAX_HTTP_BYTES;
    answer.truncate(MAX_HTTP_BYTES as usize);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::failed(format!("runtime '{name}' did not answer with HTTP")))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let body = String::from_utf8_lossy(&answer[split + 4..]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::failed(format!("runtime '{name}' sent no HTTP status line")))?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    #[derive(Serialize)]
    struct Answer<'a> {
        correlation_id: &'a str,
        runtime: &'a str,
        status: u16,
        headers: BTreeMap<String, String>,
        body: String,
        body_truncated: bool,
    }
    ferry_plugin::to_json(&Answer {
        correlation_id: &cmd.id,
        runtime: &name,
        status,
        headers,
        body,
        body_truncated: truncated,
    })
}

ferry_plugin::export!(fn handle);
