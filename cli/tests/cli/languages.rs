//! The healthcheck example in C, Go, JavaScript and Python (`examples/healthcheck/`), each
//! built with `ferry plugin build`, tested with its cases file by `ferry plugin test`, and run
//! on a real agent over loopback, where its result carries the host's real metrics. The agent is
//! then restarted, and the plugin's second load comes from the compiled-component cache.
//!
//! A language whose toolchain is missing is skipped with a loud message; in CI (`CI=true`) it
//! fails instead, so that CI proves every language works. `.ci/run` installs the toolchains.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_agent::{Agent, AgentConfig};
use ferry_server::{RunEvent, RunStatus};
use ferry_tests::{Harness, WAIT};
use serde_json::json;
use tracing::instrument::WithSubscriber as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// One example: its folder under examples/healthcheck and the name (and topic) in its manifest.
struct Example {
    folder: &'static str,
    name: &'static str,
}

const C: Example = Example {
    folder: "c",
    name: "healthcheck-c",
};
const GO: Example = Example {
    folder: "go",
    name: "healthcheck-go",
};
const JS: Example = Example {
    folder: "js",
    name: "healthcheck-js",
};
const PYTHON: Example = Example {
    folder: "python",
    name: "healthcheck-py",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_example_builds_passes_its_cases_and_runs_on_an_agent() {
    check(&C).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_example_builds_passes_its_cases_and_runs_on_an_agent() {
    check(&GO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_example_builds_passes_its_cases_and_runs_on_an_agent() {
    check(&JS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_builds_passes_its_cases_and_runs_on_an_agent() {
    check(&PYTHON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_template_builds_passes_its_cases_and_runs_on_an_agent() {
    check_template("c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_template_builds_passes_its_cases_and_runs_on_an_agent() {
    check_template("go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_template_builds_passes_its_cases_and_runs_on_an_agent() {
    check_template("js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_template_builds_passes_its_cases_and_runs_on_an_agent() {
    check_template("python").await;
}

/// `ferry plugin new --lang <lang>`: the project builds, passes its own cases and greets on an
/// agent.
async fn check_template(lang: &str) {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("test-cache");
    let name = format!("hello-{lang}");
    let project = work.path().join(&name);
    let new = ferry(
        &[
            "plugin",
            "new",
            &name,
            "--lang",
            lang,
            "--dir",
            project.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(new.status.success(), "{}", show(&new));
    let build = ferry(
        &["plugin", "build", "--dir", project.to_str().unwrap()],
        &cache,
    );
    if !build.status.success() {
        let stderr = String::from_utf8_lossy(&build.stderr);
        if stderr.contains("is not installed") {
            missing_toolchain(&name, &stderr);
            return;
        }
        panic!("ferry plugin build failed:\n{}", show(&build));
    }
    let component = project.join("build").join(format!("{name}.wasm"));
    let cases = ferry(
        &[
            "plugin",
            "test",
            component.to_str().unwrap(),
            project.join("cases.toml").to_str().unwrap(),
        ],
        &cache,
    );
    assert!(
        cases.status.success()
            && String::from_utf8_lossy(&cases.stdout).ends_with("7 passed, 0 failed\n"),
        "{}",
        show(&cases)
    );

    let harness = Harness::start().await;
    let mut config = agent_config(&harness, "lang-agent", &project.join("ferry.toml"));
    // The agent compiles as `ferry plugin test` does: sharing its cache spares the test the
    // ~20 s compile of a JavaScript or Python template a second time.
    config.cache_dir = Some(cache.clone());
    let (agent, loads) = start_agent(config).await;
    push(&harness, &component, &project.join("ferry.toml")).await;
    assert_eq!(
        loads_of(&loads, &name),
        [true],
        "loaded from the shared cache"
    );
    let view = harness
        .run(
            "lang-agent",
            &name,
            br#"{"name": "ferry", "times": 2}"#,
            Some(Duration::from_secs(20)),
        )
        .await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    assert_eq!(
        view.output.payload,
        Some(json!({"greeting": "hello, ferry! hello, ferry!"}))
    );
    assert_eq!(view.progress, Some(100), "{view:?}");
    agent.shutdown().await;
}

/// The Go bindings are written by hand (`cli/templates/go/ferry/`): a plugin calls every one of
/// their functions against the real host, and the test checks what came back.
#[test]
fn the_go_bindings_reach_every_host_interface() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("test-cache");
    let project = work.path().join("probe-go");
    let new = ferry(
        &[
            "plugin",
            "new",
            "probe-go",
            "--lang",
            "go",
            "--dir",
            project.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(new.status.success(), "{}", show(&new));
    std::fs::write(project.join("main.go"), GO_PROBE).unwrap();
    let build = ferry(
        &["plugin", "build", "--dir", project.to_str().unwrap()],
        &cache,
    );
    if !build.status.success() {
        let stderr = String::from_utf8_lossy(&build.stderr);
        if stderr.contains("is not installed") {
            missing_toolchain("probe-go", &stderr);
            return;
        }
        panic!("ferry plugin build failed:\n{}", show(&build));
    }
    let component = project.join("build/probe-go.wasm");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "plugin",
            "test",
            component.to_str().unwrap(),
            "--topic",
            "probe-go",
            "--payload",
            "{}",
            "--json",
        ];
        args.extend_from_slice(extra);
        let output = ferry(&args, &cache);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", show(&output)));
        report
    };

    let granted = run(&[
        "--grant",
        "kv",
        "--grant",
        "metrics",
        "--grant",
        "request_data",
        "--grant",
        "program=/bin/sh",
        "--data",
        "token=s3cr\u{e9}t",
    ]);
    assert_eq!(granted["status"], "succeeded", "{granted}");
    let out = &granted["payload"];
    assert_eq!(out["data"], "s3cr\u{e9}t", "{out}");
    assert_eq!(out["kv_before"], false, "{out}");
    assert_eq!(out["kv_value"], "v\u{0}1", "{out}");
    assert_eq!(out["kv_keys"], json!(["k1", "k2"]), "{out}");
    assert_eq!(out["kv_deleted"], json!([true, false]), "{out}");
    assert_eq!(out["kv_after"], json!(["k2"]), "{out}");
    assert_eq!(
        out["memory_total_bytes"].as_u64(),
        Some(mem_total_bytes()),
        "{out}"
    );
    assert!(out["history_samples"].is_u64(), "{out}");
    assert_eq!(out["exit_code"], 3, "{out}");
    assert_eq!(out["exit_stdout"], "out a b\n", "{out}");
    assert_eq!(out["exit_stderr"], json!(["err"]), "{out}");
    assert_eq!(out["stopped_signal"], 9, "{out}");
    assert_eq!(out["stopped_reason"], 0, "{out}");
    assert_eq!(out["cancelled"], false, "{out}");
    let logs = granted["logs"].as_array().unwrap();
    assert!(
        logs.iter()
            .any(|l| l["level"] == "warn" && l["message"] == "probe: warned"),
        "{granted}"
    );
    assert_eq!(
        granted["progress"],
        json!([{"percent": 42, "message": "halfway"}]),
        "{granted}"
    );

    // Each refusal arrives as an error the plugin can read: the first one ends the command.
    let refused = run(&[]);
    assert_eq!(refused["status"], "failed", "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("request_data is not granted")),
        "{refused}"
    );
}

/// Calls every function of the Go bindings and reports what each returned.
const GO_PROBE: &str = r#"package main

import (
	"encoding/json"

	"probe-go/ferry"
)

func init() {
	ferry.Handle(func(cmd ferry.Command) ([]byte, error) {
		out := map[string]any{}
		data, err := ferry.RequestData("token")
		if err != nil {
			return nil, err
		}
		out["data"] = string(data)
		_, found, err := ferry.KVGet("k1")
		if err != nil {
			return nil, err
		}
		out["kv_before"] = found
		if err := ferry.KVSet("k1", []byte("v\x001")); err != nil {
			return nil, err
		}
		if err := ferry.KVSet("k2", []byte("two")); err != nil {
			return nil, err
		}
		value, _, _ := ferry.KVGet("k1")
		out["kv_value"] = string(value)
		out["kv_keys"], _ = ferry.KVListKeys("k")
		first, _ := ferry.KVDelete("k1")
		second, _ := ferry.KVDelete("k1")
		out["kv_deleted"] = []bool{first, second}
		out["kv_after"], _ = ferry.KVListKeys("")
		sample, err := ferry.MetricsNow()
		if err != nil {
			return nil, err
		}
		out["memory_total_bytes"] = sample.MemoryTotalBytes
		history, err := ferry.MetricsHistory(60)
		if err != nil {
			return nil, err
		}
		out["history_samples"] = len(history)
		exit, err := ferry.RunProcess("/bin/sh", []string{"-c", "echo out $0 $1; echo err >&2; exit 3", "a", "b"}, 0)
		if err != nil {
			return nil, err
		}
		out["exit_code"] = *exit.Code
		out["exit_stdout"] = string(exit.Stdout)
		out["exit_stderr"] = exit.StderrTail
		stopped, err := ferry.RunProcess("/bin/sh", []string{"-c", "sleep 10"}, 100)
		if err != nil {
			return nil, err
		}
		out["stopped_signal"] = *stopped.Signal
		out["stopped_reason"] = *stopped.Stopped
		out["cancelled"] = ferry.Cancelled()
		ferry.Warnf("probe: %s", "warned")
		ferry.Progress(42, "halfway")
		return json.Marshal(out)
	})
}

func main() {}
"#;

async fn check(example: &Example) {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join(example.folder);
    copy_tree(&examples().join(example.folder), &project);
    // `ferry plugin test` keeps compiled plugins here rather than in the user's cache.
    let cache = work.path().join("test-cache");

    // Build.
    let started = Instant::now();
    let build = ferry(
        &["plugin", "build", "--dir", project.to_str().unwrap()],
        &cache,
    );
    if !build.status.success() {
        let stderr = String::from_utf8_lossy(&build.stderr);
        if stderr.contains("is not installed") {
            missing_toolchain(example.name, &stderr);
            return;
        }
        panic!("ferry plugin build failed:\n{}", show(&build));
    }
    let component = PathBuf::from(String::from_utf8_lossy(&build.stdout).trim());
    assert_eq!(
        component,
        project.join("build").join(format!("{}.wasm", example.name)),
        "{}",
        show(&build)
    );
    let size = std::fs::metadata(&component).unwrap().len();
    eprintln!(
        "{}: built {} bytes in {:?}",
        example.name,
        size,
        started.elapsed()
    );

    // Its own cases, with the capability it needs granted as an agent's policy would.
    let cases = ferry(
        &[
            "plugin",
            "test",
            component.to_str().unwrap(),
            project.join("cases.toml").to_str().unwrap(),
            "--grant",
            "metrics",
        ],
        &cache,
    );
    let summary = String::from_utf8_lossy(&cases.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        cases.status.success() && summary == "9 passed, 0 failed",
        "{}",
        show(&cases)
    );
    // Without the grant, the metrics call is refused, and the plugin says so as `denied`.
    let denied = ferry(
        &[
            "plugin",
            "test",
            component.to_str().unwrap(),
            "--topic",
            example.name,
            "--payload",
            "{}",
        ],
        &cache,
    );
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success()
            && stderr.contains("ended denied")
            && stderr.contains("metrics is not granted"),
        "{}",
        show(&denied)
    );

    // On an agent, over loopback.
    let harness = Harness::start().await;
    let config = agent_config(&harness, "lang-agent", &project.join("ferry.toml"));
    let (agent, loads) = start_agent(config.clone()).await;
    push(&harness, &component, &project.join("ferry.toml")).await;
    assert_eq!(
        loads_of(&loads, example.name),
        [false],
        "the first load compiles"
    );
    run_on_agent(&harness, example).await;
    agent.shutdown().await;

    // A restarted agent serves the pushed plugin from its own store, and takes the compiled
    // plugin from its cache instead of compiling it again (~20 s for JavaScript and Python).
    let (agent, loads) = start_agent(config).await;
    assert_eq!(
        loads_of(&loads, example.name),
        [true],
        "the second load comes from the cache"
    );
    run_on_agent(&harness, example).await;
    agent.shutdown().await;
}

/// An agent whose policy allows the plugin what its manifest asks for (`metrics`).
fn agent_config(harness: &Harness, agent: &str, manifest: &Path) -> AgentConfig {
    let name = ferry_manifest::Manifest::from_toml(&std::fs::read_to_string(manifest).unwrap())
        .unwrap()
        .plugin
        .name;
    let policy = harness.path("policy.toml");
    std::fs::write(
        &policy,
        format!("[plugins.{name}.capabilities]\nmetrics = true\n"),
    )
    .unwrap();
    let mut config = harness.agent_config(agent);
    config.policy = Some(policy);
    config
}

/// Pushes the plugin to the server, assigns it to every agent, and waits until the connected
/// ones have fetched, verified and loaded it.
async fn push(harness: &Harness, component: &Path, manifest: &Path) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let name = ferry_manifest::Manifest::from_toml(&text)
        .unwrap()
        .plugin
        .name;
    let mut rollout = harness
        .deploy(&text, &std::fs::read(component).unwrap(), "all")
        .await;
    // A JavaScript or Python component takes 15–20 s to compile in a debug build, longer on a
    // busy machine: give it more than the harness's usual wait.
    if rollout.iter().any(|r| r.state == "pending") {
        let agents: Vec<String> = rollout.iter().map(|r| r.agent.clone()).collect();
        rollout = harness
            .server()
            .plugins()
            .wait_settled(&name, &agents, Duration::from_secs(300))
            .await;
    }
    assert!(
        !rollout.is_empty() && rollout.iter().all(|r| r.state == "ready"),
        "{rollout:?}"
    );
}

/// How each plugin was loaded as the agent started: (plugin, from the cache, how long it took).
type Loads = Arc<Mutex<Vec<(String, bool, String)>>>;

/// Starts an agent, recording how its plugins were loaded (the host's `plugin loaded` events),
/// and waits until it is connected.
async fn start_agent(config: AgentConfig) -> (Agent, Loads) {
    let loads = Loads::default();
    let subscriber = tracing_subscriber::registry().with(LoadRecorder(loads.clone()));
    let agent = Agent::start(config)
        .with_subscriber(subscriber)
        .await
        .expect("the agent starts");
    agent
        .wait_connected(WAIT)
        .await
        .unwrap_or_else(|status| panic!("the agent did not connect: {status:?}"));
    (agent, loads)
}

/// Whether each load of `plugin` came from the cache; prints how long they took.
fn loads_of(loads: &Loads, plugin: &str) -> Vec<bool> {
    let loads = loads.lock().unwrap();
    let mine: Vec<_> = loads.iter().filter(|(name, ..)| name == plugin).collect();
    for (_, from_cache, elapsed) in &mine {
        eprintln!("{plugin}: loaded in {elapsed} (from the cache: {from_cache})");
    }
    mine.iter().map(|(_, from_cache, _)| *from_cache).collect()
}

/// Runs two commands through the server and checks the results against the host's real state.
async fn run_on_agent(harness: &Harness, example: &Example) {
    let topic = example.name;
    // A memory limit of 1% is exceeded on any host that runs an agent; 100% never is.
    let payload = json!({"max_memory_percent": 1, "history_seconds": 60});
    let view = harness
        .run(
            "lang-agent",
            topic,
            payload.to_string().as_bytes(),
            Some(Duration::from_secs(20)),
        )
        .await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    let result = view.output.payload.clone().expect("a JSON result");
    assert_eq!(result["healthy"], false, "{result}");
    let checks = result["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 2, "{result}");
    let (memory, disk) = (&checks[0], &checks[1]);
    assert_eq!(memory["name"], "memory", "{result}");
    assert_eq!(memory["ok"], false, "{result}");
    assert_eq!(memory["limit_percent"].as_f64(), Some(1.0), "{result}");
    let used = memory["used_percent"].as_f64().expect("used_percent");
    assert!(used > 1.0 && used <= 100.0, "{result}");
    assert_eq!(disk["name"], "disk", "{result}");
    assert_eq!(disk["limit_percent"].as_f64(), Some(90.0), "{result}");
    // The metrics capability's real values: the host's memory as the kernel reports it.
    assert_eq!(
        result["memory_total_bytes"].as_u64(),
        Some(mem_total_bytes()),
        "{result}"
    );
    assert!(
        result["disk_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{result}"
    );
    assert!(
        result["agent_memory_bytes"].as_u64().unwrap_or(0) > 1 << 20,
        "{result}"
    );
    assert_eq!(result["history"]["seconds"], 60, "{result}");
    assert!(result["history"]["samples"].is_u64(), "{result}");

    let events = harness
        .server()
        .command(&view.id)
        .expect("the command is recorded")
        .events_since(0);
    let progress: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Progress { percent, .. } => Some(*percent),
            _ => None,
        })
        .collect();
    assert_eq!(progress, [10, 50, 80, 100], "{events:?}");
    let logged = |text: &str| {
        events.iter().any(|e| match e {
            RunEvent::Log { message, .. } => message.contains(text),
            _ => false,
        })
    };
    assert!(logged("memory is "), "no warning: {events:?}");
    assert!(logged("over the limit of 1%"), "no warning: {events:?}");

    let view = harness
        .run(
            "lang-agent",
            topic,
            br#"{"max_memory_percent": 100, "max_disk_percent": 100}"#,
            Some(Duration::from_secs(20)),
        )
        .await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    let result = view.output.payload.expect("a JSON result");
    assert_eq!(result["healthy"], true, "{result}");
    assert!(result.get("history").is_none(), "{result}");

    let view = harness
        .run(
            "lang-agent",
            topic,
            br#"{"max_disk_percent": "most"}"#,
            Some(Duration::from_secs(20)),
        )
        .await;
    assert_eq!(view.status, RunStatus::InvalidInput, "{view:?}");
    assert!(
        view.detail
            .as_deref()
            .is_some_and(|d| d.contains("`max_disk_percent` must be a number from 1 to 100")),
        "{view:?}"
    );
}

/// MemTotal from /proc/meminfo, in bytes.
fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .expect("MemTotal in /proc/meminfo");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of KiB");
    kib * 1024
}

/// Skips a language whose toolchain is not installed, loudly; fails in CI.
fn missing_toolchain(plugin: &str, why: &str) {
    let message = format!(
        "{plugin} needs a toolchain this machine lacks: {}",
        why.trim()
    );
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{message}\n(CI must prove every language works: .ci/run installs the toolchains)");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED: {message}\n!!!!!!!!!! (.ci/run shows how to install it)\n");
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/healthcheck")
}

/// Copies an example, without what a local build left in it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if ["build", "node_modules", "__pycache__"]
            .iter()
            .any(|skip| name == *skip)
        {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

fn ferry(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_CACHE_DIR", cache)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .output()
        .expect("ferry runs")
}

fn show(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Records the plugin host's `plugin loaded` events: which plugin, and whether its compiled code
/// came from the cache.
struct LoadRecorder(Loads);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LoadRecorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            message: String,
            plugin: Option<String>,
            from_cache: Option<bool>,
            elapsed: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "plugin" {
                    self.plugin = Some(value.to_string());
                }
            }
            fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
                if field.name() == "from_cache" {
                    self.from_cache = Some(value);
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "elapsed" => self.elapsed = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message == "plugin loaded"
            && let (Some(plugin), Some(from_cache)) = (fields.plugin, fields.from_cache)
        {
            self.0
                .lock()
                .unwrap()
                .push((plugin, from_cache, fields.elapsed));
        }
    }
}

#[test]
fn the_examples_share_their_cases_and_carry_the_wit_ferry_serves() {
    let wit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/0.1.0/plugin.wit"),
    )
    .unwrap();
    let reference = std::fs::read_to_string(examples().join("python/cases.toml")).unwrap();
    for example in [&C, &GO, &JS, &PYTHON] {
        let dir = examples().join(example.folder);
        assert_eq!(
            std::fs::read_to_string(dir.join("wit/0.1.0/plugin.wit")).unwrap(),
            wit,
            "{}: wit/0.1.0 is not the WIT ferry serves; copy it again",
            example.folder
        );
        let cases = std::fs::read_to_string(dir.join("cases.toml")).unwrap();
        assert_eq!(
            cases.replace(example.name, "NAME"),
            reference.replace(PYTHON.name, "NAME"),
            "{}: the examples' cases files differ",
            example.folder
        );
        let manifest = ferry_manifest::Manifest::from_toml(
            &std::fs::read_to_string(dir.join("ferry.toml")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest.plugin.name, example.name);
        assert_eq!(manifest.plugin.topics, [example.name]);
        assert!(manifest.capabilities.metrics, "{}", example.folder);
        assert!(
            std::fs::read_to_string(dir.join("README.md"))
                .unwrap()
                .contains("ferry plugin push"),
            "{}: the README shows no push",
            example.folder
        );
    }
    // The examples' copies of the files `ferry plugin new` writes are the same files.
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    for (copy, original) in [
        ("go/ferry/abi.go", "go/ferry/abi.go"),
        ("go/ferry/ferry.go", "go/ferry/ferry.go"),
        ("c/src/json.c", "c/src/json.c"),
        ("c/src/json.h", "c/src/json.h"),
    ] {
        assert_eq!(
            std::fs::read_to_string(examples().join(copy)).unwrap(),
            std::fs::read_to_string(templates.join(original)).unwrap(),
            "examples/healthcheck/{copy} differs from cli/templates/{original}"
        );
    }
}
