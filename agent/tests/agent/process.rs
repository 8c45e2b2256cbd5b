//! The `process` host interface: denied unless the program is granted; a granted program's
//! output arrives as log events and its exit status comes back; it is killed, and gone, when the
//! command times out or is cancelled. Each test runs the `probe` fixture with Debian's
//! `/bin/echo`, `/bin/sh` and `/bin/sleep`.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_agent::host::{
    CommandEvents, HostConfig, Invocation, InvokeError, LoadOptions, LoadedPlugin, LogLevel,
    PluginHost,
};
use ferry_builtins::fixtures::PROBE;
use ferry_manifest::Capabilities;
use parking_lot::Mutex;

#[derive(Default)]
struct Recorder {
    logs: Mutex<Vec<(LogLevel, String)>>,
    cancel: AtomicBool,
}

impl Recorder {
    fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.lock().clone()
    }
}

impl CommandEvents for Recorder {
    fn log(&self, level: LogLevel, message: String) {
        self.logs.lock().push((level, message));
    }
    fn progress(&self, _percent: u8, _message: String) {}
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

fn load(programs: &[&str]) -> LoadedPlugin {
    let host = PluginHost::new(HostConfig {
        max_instances: 4,
        ..HostConfig::default()
    })
    .unwrap();
    host.load_with(
        "probe",
        PROBE.component,
        LoadOptions {
            capabilities: Capabilities {
                programs: programs.iter().map(PathBuf::from).collect(),
                ..Capabilities::default()
            },
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

async fn run_with(
    plugin: &LoadedPlugin,
    topic: &str,
    payload: &str,
    deadline: Duration,
    events: Arc<Recorder>,
) -> Result<String, InvokeError> {
    plugin
        .invoke(
            Invocation {
                id: "t".into(),
                topic: topic.into(),
                payload: payload.as_bytes().to_vec(),
                content_type: "text/plain".into(),
                deadline: Some(Instant::now() + deadline),
            },
            events,
        )
        .await
        .result
        .map(|b| String::from_utf8(b).unwrap())
}

async fn run(
    plugin: &LoadedPlugin,
    payload: &str,
) -> (Result<String, InvokeError>, Vec<(LogLevel, String)>) {
    let events = Arc::new(Recorder::default());
    let result = run_with(
        plugin,
        "probe.process.run",
        payload,
        Duration::from_secs(30),
        events.clone(),
    )
    .await;
    (result, events.logs())
}

fn field<'a>(exit: &'a str, name: &str) -> &'a str {
    exit.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {exit}"))
}

fn stdout(exit: &str) -> &str {
    exit.split_once("stdout:\n")
        .unwrap_or_else(|| panic!("no stdout in {exit}"))
        .1
}

/// The pids the program printed (`echo $$`), from the command's log.
fn logged_pids(logs: &[(LogLevel, String)]) -> Vec<u32> {
    logs.iter()
        .filter_map(|(_, m)| m.strip_prefix("sh: ")?.trim().parse().ok())
        .collect()
}

fn logged_pid(logs: &[(LogLevel, String)]) -> u32 {
    *logged_pids(logs)
        .first()
        .unwrap_or_else(|| panic!("no pid in {logs:?}"))
}

/// Waits (generously) for `/proc/<pid>` to disappear: killed and reaped.
async fn gone(pid: u32) -> bool {
    let proc = format!("/proc/{pid}");
    for _ in 0..200 {
        if !Path::new(&proc).exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_program_not_granted_is_refused_with_how_to_grant_it() {
    let plugin = load(&["/bin/echo"]);
    for program in ["/bin/sh", "sh", "/bin/../bin/echo", "echo"] {
        let (result, _) = run(&plugin, &format!("{program}\n-c\ntrue")).await;
        let Err(InvokeError::Denied(message)) = result else {
            panic!("{program}: expected a refusal, got {result:?}");
        };
        assert!(
            message.contains(&format!("{program:?} is not granted to plugin 'probe'"))
                && message.contains(&format!("`programs = [{program:?}]` under [capabilities]"))
                && message.contains("[plugins.probe.capabilities]"),
            "{program}: {message}"
        );
    }
    // Nothing granted at all.
    let (result, _) = run(&load(&[]), "/bin/echo\nhello").await;
    assert!(
        matches!(&result, Err(InvokeError::Denied(m)) if m.contains("\"/bin/echo\" is not granted")),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_granted_program_runs_and_its_output_is_logged() {
    let plugin = load(&["/bin/echo"]);
    let (result, logs) = run(&plugin, "/bin/echo\nhello\nworld").await;
    let exit = result.unwrap();
    assert_eq!(field(&exit, "code"), "0", "{exit}");
    assert_eq!(field(&exit, "signal"), "-", "{exit}");
    assert_eq!(field(&exit, "stopped"), "-", "{exit}");
    assert_eq!(field(&exit, "truncated"), "false", "{exit}");
    assert_eq!(stdout(&exit), "hello world\n");
    assert!(
        logs.iter()
            .any(|(level, m)| *level == LogLevel::Info && m == "echo: hello world"),
        "{logs:?}"
    );
}

#[tokio::test]
async fn the_exit_code_and_stderr_come_back() {
    let plugin = load(&["/bin/sh"]);
    let (result, logs) = run(&plugin, "/bin/sh\n-c\necho oops >&2; echo fine; exit 3").await;
    let exit = result.unwrap();
    assert_eq!(field(&exit, "code"), "3", "{exit}");
    assert_eq!(field(&exit, "stderr"), "oops", "{exit}");
    assert_eq!(stdout(&exit), "fine\n");
    assert!(
        logs.iter()
            .any(|(level, m)| *level == LogLevel::Warn && m == "sh: oops"),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|(level, m)| *level == LogLevel::Info && m == "sh: fine"),
        "{logs:?}"
    );
    // The environment is the plugin's (empty here), not the agent's.
    let (result, _) = run(&plugin, "/bin/sh\n-c\necho \"[$HOME]\"; pwd").await;
    assert_eq!(stdout(&result.unwrap()), "[]\n/\n");
}

#[tokio::test]
async fn a_program_is_killed_when_its_own_timeout_passes() {
    let plugin = load(&["/bin/sleep"]);
    let started = Instant::now();
    let result = run_with(
        &plugin,
        "probe.process.run-timeout",
        "200\n/bin/sleep\n30",
        Duration::from_secs(30),
        Arc::new(Recorder::default()),
    )
    .await;
    let exit = result.unwrap();
    assert_eq!(field(&exit, "stopped"), "timeout", "{exit}");
    assert_eq!(field(&exit, "signal"), "9", "{exit}");
    assert_eq!(field(&exit, "code"), "-", "{exit}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_program_is_killed_at_the_commands_deadline() {
    let plugin = load(&["/bin/sh"]);
    let events = Arc::new(Recorder::default());
    let started = Instant::now();
    let result = run_with(
        &plugin,
        "probe.process.run",
        // The program, and one it leaves in the background: both go.
        "/bin/sh\n-c\necho $$; sleep 30 & echo $!; exec sleep 30",
        Duration::from_millis(1500),
        events.clone(),
    )
    .await;
    assert_eq!(result, Err(InvokeError::TimedOut));
    assert!(started.elapsed() < Duration::from_secs(20));
    let pids = logged_pids(&events.logs());
    assert_eq!(pids.len(), 2, "{:?}", events.logs());
    for pid in pids {
        assert!(gone(pid).await, "pid {pid} is still alive");
    }
}

#[tokio::test]
async fn a_program_is_killed_when_the_command_is_cancelled() {
    let plugin = load(&["/bin/sh"]);
    let events = Arc::new(Recorder::default());
    let started = Instant::now();
    let canceller = {
        let events = events.clone();
        tokio::spawn(async move {
            // Cancel once the program has started (it logged its pid).
            for _ in 0..400 {
                if events.logs().iter().any(|(_, m)| m.starts_with("sh: ")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            events.cancel.store(true, Ordering::Relaxed);
        })
    };
    let result = run_with(
        &plugin,
        "probe.process.run",
        "/bin/sh\n-c\necho $$; exec sleep 30",
        Duration::from_secs(60),
        events.clone(),
    )
    .await;
    canceller.await.unwrap();
    assert_eq!(result, Err(InvokeError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(20));
    let pid = logged_pid(&events.logs());
    assert!(gone(pid).await, "pid {pid} is still alive");
}

#[tokio::test]
async fn output_beyond_the_limit_is_cut_and_counted() {
    let plugin = load(&["/bin/sh"]);
    let (result, logs) = run(
        &plugin,
        "/bin/sh\n-c\ni=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done",
    )
    .await;
    let exit = result.unwrap();
    assert_eq!(field(&exit, "code"), "0", "{exit}");
    assert_eq!(field(&exit, "truncated"), "true", "{exit}");
    assert_eq!(stdout(&exit).len(), HostConfig::default().max_output_bytes);
    assert!(
        logs.iter().any(|(level, m)| *level == LogLevel::Warn
            && m.contains("more bytes of its stdout were dropped")),
        "{:?}",
        logs.last()
    );
}
