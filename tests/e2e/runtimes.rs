//! The edge-orchestrator topics served by the built-in `runtimes` and `orchestrator` plugins:
//! supervised runtimes created, stopped, started, restarted and deleted through commands,
//! kept alive across an agent restart, their consumption and the agent's, and every payload
//! checked against its topic's contract.

use std::time::Duration;

use ferry_agent::{Agent, AgentConfig};
use ferry_server::{RunStatus, RunView};
use ferry_tests::{Harness, WAIT, eventually};
use serde_json::{Value, json};

/// The programs runtimes and `run_command` may use here: `/bin/sh`, and python3 (for an HTTP
/// server) where the host has it.
fn programs() -> Vec<String> {
    let mut programs = vec!["/bin/sh".to_string()];
    programs.extend(python3());
    programs
}

fn python3() -> Option<String> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_string)
}

fn config(harness: &Harness, id: &str) -> AgentConfig {
    let policy = harness.path("policy.toml");
    let work = harness.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let ticker = harness.path("ticker.wasm");
    std::fs::write(&ticker, ferry_builtins::fixtures::TICKER).unwrap();
    let mut allowed = programs();
    allowed.push(ticker.display().to_string());
    let programs = format!("{allowed:?}");
    std::fs::write(
        &policy,
        format!(
            r#"
[plugins.runtimes.capabilities]
runtimes = true
programs = {programs}

[plugins.orchestrator.capabilities]
metrics = true
decommission = true

[plugins.run-command.capabilities]
programs = {programs}
filesystem = [{{ path = {work:?}, access = "read-only" }}]
runtimes = true
network = ["127.0.0.1:*"]
"#
        ),
    )
    .unwrap();
    let mut config = harness.agent_config(id);
    config.policy = Some(policy);
    config.metrics_interval = Duration::from_millis(100);
    config
}

async fn start(config: AgentConfig) -> Agent {
    let agent = Agent::start(config).await.expect("agent starts");
    agent.wait_connected(WAIT).await.expect("agent connects");
    agent
}

async fn run(harness: &Harness, topic: &str, payload: Value) -> RunView {
    let bytes = serde_json::to_vec(&payload).unwrap();
    harness.run("edge-1", topic, &bytes, None).await
}

/// Runs a command that must succeed; returns its JSON answer, after checking it carries the
/// command's id.
async fn ok(harness: &Harness, topic: &str, payload: Value) -> Value {
    let view = run(harness, topic, payload).await;
    assert_eq!(view.status, RunStatus::Succeeded, "{topic}: {view:?}");
    let answer = view.output.payload.clone().expect("a JSON answer");
    assert_eq!(answer["correlation_id"], view.id.as_str(), "{answer}");
    answer
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

async fn gone(pid: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When `pid` started (clock ticks since boot), so that a pid reused by another process is
/// never mistaken for a workload.
fn start_time(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Kills the workloads a test started if it fails half-way, so none outlives it; each only if
/// its pid still names the same process (pids are reused quickly on a busy host).
struct Cleanup(Vec<(u64, Option<u64>)>);

impl Cleanup {
    fn add(&mut self, pid: u64) {
        self.0.push((pid, start_time(pid)));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &(pid, started) in &self.0 {
            if started.is_some() && start_time(pid) == started {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &format!("-{pid}")])
                    .status();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_live_through_their_topics_and_an_agent_restart() {
    let harness = Harness::start().await;
    let agent = start(config(&harness, "edge-1")).await;
    let mut cleanup = Cleanup(Vec::new());

    let created = ok(
        &harness,
        "create_new_runtime",
        json!({
            "name": "web",
            "command": "/bin/sh",
            "args": ["-c", "echo started; exec sleep 120"],
            "env": {"MODE": "test"},
            "restart": "on-failure",
            "port": 8080
        }),
    )
    .await;
    let runtime = &created["runtime"];
    assert_eq!(runtime["status"], "running", "{created}");
    assert_eq!(runtime["port"], 8080);
    let first = runtime["pid"].as_u64().unwrap();
    cleanup.add(first);
    assert!(alive(first));

    // Heartbeats carry the runtime, in the shape edge-orchestrator tools read.
    let id = ferry_protocol::AgentId::new("edge-1").unwrap();
    eventually("a heartbeat reports the runtime", || {
        harness
            .server()
            .agent(&id)
            .and_then(|a| a.heartbeat)
            .is_some_and(|h| {
                h.runtimes
                    .iter()
                    .any(|r| r.name == "web" && r.status == "running")
            })
    })
    .await;
    let beat = harness.server().agent(&id).unwrap().heartbeat.unwrap();
    let beat = serde_json::to_value(&beat).unwrap();
    assert_eq!(beat["agent_id"], "edge-1");
    assert_eq!(beat["status"], "ok");
    for field in [
        "cpu_usage_percent",
        "memory_usage_gb",
        "memory_total_gb",
        "disk_usage_gb",
        "disk_total_gb",
        "uptime_s",
    ] {
        assert!(beat[field].is_number(), "{field}: {beat}");
    }
    assert!(beat["memory_total_gb"].as_f64().unwrap() > 0.0, "{beat}");
    let sent = beat["timestamp"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(sent, &time::format_description::well_known::Rfc3339).is_ok(),
        "ISO-8601: {sent}"
    );

    let stopped = ok(&harness, "stop_device", json!({"name": "web"})).await;
    assert_eq!(stopped["runtime"]["status"], "stopped");
    gone(first).await;

    let started = ok(&harness, "start_device", json!({"name": "web"})).await;
    assert_eq!(started["runtime"]["status"], "running");
    let second = started["runtime"]["pid"].as_u64().unwrap();
    cleanup.add(second);
    assert_ne!(second, first);

    let restarted = ok(&harness, "restart_device", json!({"name": "web"})).await;
    assert_eq!(restarted["runtime"]["restarts"], 1);
    let third = restarted["runtime"]["pid"].as_u64().unwrap();
    cleanup.add(third);
    gone(second).await;

    // Consumption, from samples the agent takes every 100 ms here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let device = ok(
        &harness,
        "get_consumption_device",
        json!({"name": "web", "period_seconds": 60}),
    )
    .await;
    assert!(device["samples"].as_u64().unwrap() >= 2, "{device}");
    assert!(
        device["memory_bytes"]["max"].as_u64().unwrap() > 0,
        "{device}"
    );
    assert!(device["cpu_percent"]["avg"].is_number(), "{device}");
    let agent_use = ok(
        &harness,
        "get_consumption_orchestrator",
        json!({"period_seconds": 60}),
    )
    .await;
    assert!(agent_use["samples"].as_u64().unwrap() >= 2, "{agent_use}");
    assert!(
        agent_use["agent"]["memory_bytes"]["max"].as_u64().unwrap() > 1 << 20,
        "{agent_use}"
    );
    assert!(agent_use["host"]["memory_total_bytes"].as_u64().unwrap() > 0);

    // The agent restarts; the runtime does not.
    agent.shutdown().await;
    assert!(alive(third), "the runtime outlives its agent");
    let agent = start(config(&harness, "edge-1")).await;
    assert!(alive(third));
    // The new agent supervises it: stopping it through a command ends that same process.
    let stopped = ok(&harness, "stop_device", json!({"name": "web"})).await;
    assert_eq!(stopped["runtime"]["status"], "stopped");
    gone(third).await;

    let deleted = ok(&harness, "delete_device", json!({"name": "web"})).await;
    assert_eq!(deleted["deleted"], "web");
    let again = run(&harness, "start_device", json!({"name": "web"})).await;
    assert_eq!(again.status, RunStatus::InvalidInput, "{again:?}");
    assert!(again.detail.unwrap().contains("no runtime named 'web'"));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_checks_its_payload_against_its_contract() {
    let harness = Harness::start().await;
    let agent = start(config(&harness, "edge-1")).await;
    let cases = [
        (
            "create_new_runtime",
            json!({"command": "/bin/sh"}),
            "missing field `name`",
        ),
        (
            "create_new_runtime",
            json!({"name": "x", "command": "/bin/sh", "port": "eighty"}),
            "at `port`: invalid type: string \"eighty\", expected u16",
        ),
        (
            "create_new_runtime",
            json!({"name": "x", "command": "/bin/sh", "args": [1]}),
            "at `args[0]`: invalid type: integer `1`, expected a string",
        ),
        (
            "create_new_runtime",
            json!({"name": "x", "command": "/bin/sh", "restart": "sometimes"}),
            "at `restart`: unknown variant `sometimes`",
        ),
        (
            "create_new_runtime",
            json!({"name": "x", "command": "/bin/sh", "env": {"A": 1}}),
            "at `env.A`: invalid type: integer `1`, expected a string",
        ),
        ("start_device", json!({}), "missing field `name`"),
        (
            "stop_device",
            json!({"name": 7}),
            "at `name`: invalid type: integer `7`, expected a string",
        ),
        (
            "restart_device",
            json!({"name": "x", "force": true}),
            "unknown field `force`",
        ),
        ("delete_device", json!([]), "expected struct Named"),
        (
            "get_consumption_device",
            json!({"name": "x"}),
            "missing field `period_seconds`",
        ),
        (
            "get_consumption_device",
            json!({"name": "x", "period_seconds": -5}),
            "at `period_seconds`: invalid value: integer `-5`, expected u32",
        ),
        (
            "get_consumption_orchestrator",
            json!({"period_seconds": "1h"}),
            "at `period_seconds`: invalid type: string \"1h\", expected u32",
        ),
    ];
    for (topic, payload, expected) in cases {
        let view = run(&harness, topic, payload.clone()).await;
        assert_eq!(
            view.status,
            RunStatus::InvalidInput,
            "{topic} {payload}: {view:?}"
        );
        let detail = view.detail.clone().unwrap();
        assert!(detail.contains(expected), "{topic} {payload}: {detail}");
        assert!(
            detail.contains(&format!("command {}", view.id)),
            "the correlation id: {detail}"
        );
    }
    // A program the policy does not grant is refused, naming it.
    let view = run(
        &harness,
        "create_new_runtime",
        json!({"name": "x", "command": "/usr/bin/env"}),
    )
    .await;
    assert_eq!(view.status, RunStatus::Denied, "{view:?}");
    assert!(view.detail.unwrap().contains("/usr/bin/env"));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_grant_the_topics_are_denied_and_say_how_to_grant_them() {
    let harness = Harness::start().await;
    let agent = harness.start_agent("edge-1").await;
    let view = run(
        &harness,
        "create_new_runtime",
        json!({"name": "x", "command": "/bin/sh"}),
    )
    .await;
    assert_eq!(view.status, RunStatus::Denied, "{view:?}");
    let detail = view.detail.unwrap();
    assert!(
        detail.contains("[plugins.runtimes.capabilities]"),
        "{detail}"
    );
    let view = run(
        &harness,
        "get_consumption_orchestrator",
        json!({"period_seconds": 5}),
    )
    .await;
    assert_eq!(view.status, RunStatus::Denied, "{view:?}");
    assert!(view.detail.unwrap().contains("metrics"));
    let view = run(&harness, "delete_orchestrator", json!({})).await;
    assert_eq!(view.status, RunStatus::Denied, "{view:?}");
    assert!(view.detail.unwrap().contains("decommission"));
    assert!(
        matches!(
            agent.status(),
            ferry_agent::ConnectionStatus::Connected { .. }
        ),
        "a refused removal removes nothing"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_command_runs_a_program_with_input_environment_and_directory() {
    let harness = Harness::start().await;
    let agent = start(config(&harness, "edge-1")).await;
    let work = harness.path("work");
    let answer = ok(
        &harness,
        "run_command",
        json!({
            "program": "/bin/sh",
            "args": ["-c", "read line; echo \"got $line in $(pwd) as $GREETING\"; echo oops >&2; exit 3"],
            "stdin": "hello\n",
            "env": {"GREETING": "hi"},
            "cwd": work,
        }),
    )
    .await;
    assert_eq!(answer["exit_code"], 3, "{answer}");
    assert_eq!(
        answer["stdout"],
        format!("got hello in {} as hi\n", work.display())
    );
    assert_eq!(answer["stderr"], "oops\n");
    assert_eq!(answer["stdout_truncated"], false);
    assert_eq!(answer["timed_out"], false);

    let slow = ok(
        &harness,
        "run_command",
        json!({"program": "/bin/sh", "args": ["-c", "sleep 10"], "timeout_ms": 200}),
    )
    .await;
    assert_eq!(slow["timed_out"], true, "{slow}");

    let big = ok(
        &harness,
        "run_command",
        json!({"program": "/bin/sh", "args": ["-c", "yes ferry | head -c 200000"]}),
    )
    .await;
    assert_eq!(big["stdout_truncated"], true, "the truncation is said");
    assert!(big["stdout"].as_str().unwrap().len() < 200_000);

    for (payload, status, expected) in [
        (
            json!({}),
            RunStatus::InvalidInput,
            "give either `program` or `runtime`",
        ),
        (
            json!({"program": 5}),
            RunStatus::InvalidInput,
            "at `program`: invalid type: integer `5`, expected a string",
        ),
        (
            json!({"program": "/bin/sh", "shell": true}),
            RunStatus::InvalidInput,
            "unknown field `shell`",
        ),
        (
            json!({"program": "/bin/sh", "env": {"LD_PRELOAD": "/x.so"}}),
            RunStatus::Denied,
            "LD_PRELOAD",
        ),
        (
            json!({"program": "/bin/sh", "cwd": "/etc"}),
            RunStatus::Denied,
            "\"/etc\"",
        ),
        (
            json!({"program": "/usr/bin/env"}),
            RunStatus::Denied,
            "/usr/bin/env",
        ),
        (
            json!({"runtime": "nope"}),
            RunStatus::InvalidInput,
            "`runtime` needs `http`",
        ),
    ] {
        let view = run(&harness, "run_command", payload.clone()).await;
        assert_eq!(view.status, status, "{payload}: {view:?}");
        let detail = view.detail.unwrap();
        assert!(detail.contains(expected), "{payload}: {detail}");
    }
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_command_sends_http_requests_to_a_runtime() {
    let Some(python) = python3() else {
        assert!(
            !std::env::var("CI").is_ok_and(|ci| ci == "true"),
            "python3 is needed for this test and CI installs it"
        );
        eprintln!(
            "SKIPPED run_command_sends_http_requests_to_a_runtime: no python3 on this host to serve HTTP"
        );
        return;
    };
    let harness = Harness::start().await;
    let agent = start(config(&harness, "edge-1")).await;
    let work = harness.path("work");
    std::fs::write(work.join("hello.txt"), "hello from the runtime").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let created = ok(
        &harness,
        "create_new_runtime",
        json!({
            "name": "files",
            "command": python,
            "args": ["-m", "http.server", port.to_string(), "--bind", "127.0.0.1"],
            "cwd": work,
            "port": port,
        }),
    )
    .await;
    let mut cleanup = Cleanup(Vec::new());
    cleanup.add(created["runtime"]["pid"].as_u64().unwrap());
    // The server needs a moment to listen: retry, boundedly.
    let deadline = tokio::time::Instant::now() + WAIT;
    let answer = loop {
        let view = run(
            &harness,
            "run_command",
            json!({"runtime": "files", "http": {"method": "GET", "path": "/hello.txt"}, "timeout_ms": 5000}),
        )
        .await;
        if view.status == RunStatus::Succeeded {
            break view.output.payload.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "{view:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"], "hello from the runtime");
    assert!(answer["headers"]["content-length"].is_string(), "{answer}");
    ok(&harness, "delete_device", json!({"name": "files"})).await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_runtime_is_created_stopped_and_deleted_through_its_topics() {
    let harness = Harness::start().await;
    let agent = start(config(&harness, "edge-1")).await;
    let created = ok(
        &harness,
        "create_new_runtime",
        json!({
            "name": "ticker",
            "backend": "component",
            "command": harness.path("ticker.wasm"),
            "args": ["20"],
            "env": {"GREETING": "hi"},
        }),
    )
    .await;
    assert_eq!(created["runtime"]["status"], "running", "{created}");
    assert!(
        created["runtime"]["pid"].is_null(),
        "it runs inside the agent"
    );
    let log = harness.path("agent-edge-1/runtimes/ticker/output.log");
    eventually("the component ticks", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("tick 2 hi"))
    })
    .await;
    let stopped = ok(&harness, "stop_device", json!({"name": "ticker"})).await;
    assert_eq!(stopped["runtime"]["status"], "stopped");
    let view = run(
        &harness,
        "create_new_runtime",
        json!({"name": "x", "backend": "component", "command": harness.path("ticker.wasm"), "cwd": "/"}),
    )
    .await;
    assert_eq!(view.status, RunStatus::InvalidInput, "{view:?}");
    assert!(view.detail.unwrap().contains("at `cwd`"));
    ok(&harness, "delete_device", json!({"name": "ticker"})).await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_orchestrator_removes_the_agent_for_good() {
    let harness = Harness::start().await;
    let config = config(&harness, "edge-1");
    let agent = start(config.clone()).await;
    let mut cleanup = Cleanup(Vec::new());
    let created = ok(
        &harness,
        "create_new_runtime",
        json!({"name": "left-behind", "command": "/bin/sh", "args": ["-c", "exec sleep 120"]}),
    )
    .await;
    let pid = created["runtime"]["pid"].as_u64().unwrap();
    cleanup.add(pid);

    let bad = run(&harness, "delete_orchestrator", json!({"reason": 5})).await;
    assert_eq!(bad.status, RunStatus::InvalidInput, "{bad:?}");
    assert!(
        bad.detail
            .unwrap()
            .contains("at `reason`: invalid type: integer `5`, expected a string")
    );

    let answer = ok(
        &harness,
        "delete_orchestrator",
        json!({"reason": "retired"}),
    )
    .await;
    assert_eq!(answer["removing"], true);
    let status = tokio::time::timeout(WAIT, agent.stopped()).await.unwrap();
    assert_eq!(
        status,
        ferry_agent::ConnectionStatus::Removed {
            reason: "retired".into()
        }
    );
    gone(pid).await;
    assert!(!config.data_dir.exists(), "its state is gone");
    assert!(
        !config.cert.exists() && !config.key.exists(),
        "so are its keys"
    );

    // The server refuses it from now on, even with a certificate issued again.
    let again = Agent::start(harness.agent_config("edge-1")).await.unwrap();
    let refused = again.wait_connected(Duration::from_secs(3)).await;
    assert!(refused.is_err(), "{refused:?}");
    again.shutdown().await;
}
