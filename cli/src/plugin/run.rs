//! Running a plugin on this machine, with the plugin host (`ferry-host`) an agent runs but no
//! agent and no server: the same sandbox, limits and deadline a command gets on an agent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use ferry_host::{
    CommandEvents, GrantSource, HostConfig, Invocation, InvokeStats, LoadOptions, LoadedPlugin,
    LogLevel, PluginHost,
};
use ferry_manifest::Capabilities;
use ferry_protocol::message::Outcome;
use futures::future::BoxFuture;
use serde_json::Value;
use tracing::instrument::WithSubscriber as _;

/// A plugin loaded from a file, ready to run commands.
pub struct Local {
    plugin: LoadedPlugin,
    next_id: AtomicU64,
    data: Arc<BTreeMap<String, Vec<u8>>>,
    _scratch: tempfile::TempDir,
}

/// Where `ferry plugin test` keeps compiled plugins: `$FERRY_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/ferry/components`, else `~/.cache/ferry/components`; none if none is set.
fn compiled_cache_dir() -> Option<std::path::PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    var("FERRY_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("ferry/components")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/ferry/components")))
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub topic: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub timeout: Option<Duration>,
    /// Cancel the command this long after it starts.
    pub cancel_after: Option<Duration>,
}

/// How a command ran: its outcome and everything the plugin reported.
#[derive(Debug, Clone)]
pub struct Ran {
    pub outcome: Outcome,
    /// The output; empty unless it succeeded.
    pub output: Vec<u8>,
    pub logs: Vec<(LogLevel, String)>,
    pub progress: Vec<(u8, String)>,
    pub stats: InvokeStats,
}

impl Local {
    /// Reads, compiles and checks the plugin at `path`, granting it `capabilities`; `data`
    /// answers its `request-data` calls, as a server would.
    pub fn load(
        path: &Path,
        capabilities: Capabilities,
        data: BTreeMap<String, Vec<u8>>,
    ) -> Result<Local> {
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow!(
                "cannot read the plugin {}: {e}; give the path of a .wasm component (a Rust \
                 plugin's is target/wasm32-wasip2/release/NAME.wasm after \
                 `cargo build --release --target wasm32-wasip2`)",
                path.display()
            )
        })?;
        // The plugin's name as it would have on an agent: the file's, without `.wasm` (what
        // a policy's [plugins.NAME] would say), not the file name.
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        // One command runs at a time here, so the pool needs one slot, and reserves the
        // address space of one instance rather than an agent's 64.
        // The key-value store and metrics a granted plugin uses live only as long as this run.
        let scratch = tempfile::Builder::new()
            .prefix("ferry-plugin-test-")
            .tempdir()?;
        let host = PluginHost::new(HostConfig {
            max_instances: 1,
            // JavaScript and Python plugins take ~20 s to compile; the cache makes every run
            // after the first take milliseconds, as on an agent.
            cache_dir: compiled_cache_dir(),
            kv: Some(Arc::new(super::local::Kv::default())),
            metrics: Some(Arc::new(super::local::Metrics::new(scratch.path()))),
            grants: GrantSource::CommandLine,
            ..HostConfig::default()
        })?;
        let options = LoadOptions {
            capabilities,
            ..LoadOptions::default()
        };
        let plugin = host
            .load_with(&name, &bytes, options)
            .with_context(|| format!("cannot load {}", path.display()))?;
        Ok(Local {
            plugin,
            next_id: Default::default(),
            data: Arc::new(data),
            _scratch: scratch,
        })
    }

    /// The plugin's name: its file name.
    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    /// Runs `request`; with `live`, prints progress and logs to stderr as they arrive. The
    /// command is cancelled when `cancel` turns true.
    pub async fn run(&self, request: Request, live: bool, cancel: Arc<AtomicBool>) -> Ran {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let started = Instant::now();
        let recorder = Arc::new(Recorder {
            live,
            logs: Mutex::default(),
            progress: Mutex::default(),
            cancel,
            cancel_at: request.cancel_after.map(|after| started + after),
            data: self.data.clone(),
        });
        let invocation = self.plugin.invoke(
            Invocation {
                id: format!("local-{id}"),
                topic: request.topic,
                payload: request.payload,
                content_type: request.content_type,
                deadline: request.timeout.map(|t| started + t),
            },
            recorder.clone(),
        );
        // The host also reports a crash as a warning for the agent's log; here the outcome is
        // printed anyway, so unless RUST_LOG asks for the host's logs, the warning would only
        // say it twice.
        let invoked = if std::env::var_os("RUST_LOG").is_some() {
            invocation.await
        } else {
            invocation
                .with_subscriber(tracing::subscriber::NoSubscriber::default())
                .await
        };
        let (outcome, output) = match invoked.result {
            Ok(output) => (Outcome::Succeeded, output),
            Err(e) => (Outcome::from(e), Vec::new()),
        };
        let logs = std::mem::take(&mut *recorder.logs.lock().unwrap());
        let progress = std::mem::take(&mut *recorder.progress.lock().unwrap());
        Ran {
            outcome,
            output,
            logs,
            progress,
            stats: invoked.stats,
        }
    }
}

/// Keeps what the plugin reports, and prints it when the run is watched live. Printing from
/// inside the plugin's call is fine here, unlike on an agent: nothing else waits on this
/// process's threads.
struct Recorder {
    live: bool,
    logs: Mutex<Vec<(LogLevel, String)>>,
    progress: Mutex<Vec<(u8, String)>>,
    cancel: Arc<AtomicBool>,
    cancel_at: Option<Instant>,
    data: Arc<BTreeMap<String, Vec<u8>>>,
}

impl CommandEvents for Recorder {
    fn log(&self, level: LogLevel, message: String) {
        if self.live {
            eprintln!("  {:<5} {message}", level_name(level));
        }
        self.logs.lock().unwrap().push((level, message));
    }

    fn progress(&self, percent: u8, message: String) {
        if self.live {
            eprintln!("  [{percent:>3}%] {message}");
        }
        self.progress.lock().unwrap().push((percent, message));
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.cancel_at.is_some_and(|t| Instant::now() >= t)
    }

    fn request_data(&self, key: String) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let answer = self.data.get(&key).cloned().ok_or_else(|| {
            format!("no data under '{key}': pass it with `ferry plugin test … --data {key}=VALUE`")
        });
        Box::pin(std::future::ready(answer))
    }
}

/// A log level as `ferry run` prints it.
pub fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// Whether `content_type`, without parameters, is `exact` or ends with `suffix` (`+json`),
/// as the plugin SDK decides which format a payload is in.
pub fn content_type_is(content_type: &str, exact: &str, suffix: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(exact)
        || essence
            .get(essence.len().saturating_sub(suffix.len())..)
            .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
}

/// The output as a JSON value: parsed as JSON, or, when the request was CBOR (plugins answer
/// in the format they were asked in), decoded from CBOR.
pub fn output_as_json(output: &[u8], request_content_type: &str) -> Option<Value> {
    if let Ok(value) = serde_json::from_slice(output) {
        return Some(value);
    }
    if content_type_is(request_content_type, "application/cbor", "+cbor") {
        return cbor_as_json(output);
    }
    None
}

/// One CBOR value as JSON, if it has a JSON form (no byte strings, string keys only).
fn cbor_as_json(bytes: &[u8]) -> Option<Value> {
    let mut rest = bytes;
    let value = ciborium::from_reader(&mut rest).ok()?;
    rest.is_empty().then_some(value)
}

/// How an output is shown.
#[derive(Debug, PartialEq)]
pub enum Rendered {
    Empty,
    Json { value: Value, from_cbor: bool },
    Text(String),
    Base64(String),
}

/// Picks how to show `output`: as JSON when it is JSON (or CBOR, for a CBOR request), as
/// text when it is UTF-8, otherwise as base64.
pub fn render(output: &[u8], request_content_type: &str) -> Rendered {
    if output.is_empty() {
        return Rendered::Empty;
    }
    if let Some(value) = output_as_json(output, request_content_type) {
        let from_cbor = serde_json::from_slice::<Value>(output).is_err();
        return Rendered::Json { value, from_cbor };
    }
    match std::str::from_utf8(output) {
        Ok(text) => Rendered::Text(text.to_string()),
        Err(_) => {
            use base64::Engine as _;
            Rendered::Base64(base64::engine::general_purpose::STANDARD.encode(output))
        }
    }
}

/// JSON equality with numbers compared by value, so that `1` equals `1.0` (TOML and a
/// plugin's serializer need not agree on how to write a number).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn compares_numbers_by_value() {
        assert!(json_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1.5})));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!json_eq(&json!([1]), &json!(["1"])));
        assert!(json_eq(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_eq(&json!(-1), &json!(u64::MAX)));
    }

    #[test]
    fn renders_json_cbor_text_and_binary() {
        assert_eq!(render(b"", ""), Rendered::Empty);
        assert_eq!(
            render(br#"{"a":1}"#, "application/json"),
            Rendered::Json {
                value: json!({"a": 1}),
                from_cbor: false
            }
        );
        let mut cbor = Vec::new();
        ciborium::into_writer(&json!({"a": 1}), &mut cbor).unwrap();
        assert_eq!(
            render(&cbor, "application/cbor"),
            Rendered::Json {
                value: json!({"a": 1}),
                from_cbor: true
            }
        );
        // Without a CBOR request, the same bytes are not taken for CBOR.
        assert!(matches!(render(&cbor, ""), Rendered::Base64(_)));
        assert_eq!(render(b"hi", ""), Rendered::Text("hi".into()));
        assert_eq!(render(&[0xff, 0], ""), Rendered::Base64("/wA=".into()));
    }
}
