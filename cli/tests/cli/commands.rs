//! The `ferry` binary as a user runs it: `ferry dev`, then `ferry agents` and `ferry run`
//! through the operator API, with the config file `ferry dev` writes.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ferry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // The test must not read or write the user's own config.
    cmd.env_remove("FERRY_API")
        .env_remove("FERRY_TOKEN")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    cmd
}

fn with_config(cmd: &mut Command, config: &Path) -> Output {
    cmd.arg("--config")
        .arg(config)
        .output()
        .expect("ferry runs")
}

/// Starts `ferry dev` in the background and waits until it is ready.
fn start_dev(dir: &Path, extra: &[&str]) -> Running {
    let mut cmd = ferry();
    dev_args(&mut cmd, dir);
    let dev = Running(
        cmd.args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // `ferry dev` writes the CLI config once its self-check has passed: then it is ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("cli.toml").exists() {
        assert!(Instant::now() < deadline, "ferry dev did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    dev
}

fn dev_args(cmd: &mut Command, dir: &Path) {
    cmd.args([
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir.join("data"))
    .arg("--cli-config")
    .arg(dir.join("cli.toml"));
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_once_runs_the_self_check_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = ferry();
    dev_args(&mut cmd, dir.path());
    let out = cmd.arg("--once").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("self-check echo succeeded"), "{stdout}");
    assert!(dir.path().join("cli.toml").exists());
}

/// The README's first command, exactly (default ports, no data directory), while something
/// else holds its default agent port, its default API port, or both: it must fall back to a
/// free port for what is taken and pass its self-check.
#[test]
fn dev_falls_back_to_free_ports_when_the_defaults_are_taken() {
    for (hold_quic, hold_api) in [(true, false), (false, true), (true, true)] {
        // Holding a port that something else already holds is the same condition for `ferry
        // dev`, so a failed bind here is fine.
        let _quic = hold_quic.then(|| std::net::UdpSocket::bind("127.0.0.1:7443"));
        let _api = hold_api.then(|| std::net::TcpListener::bind("127.0.0.1:7444"));
        let dir = tempfile::tempdir().unwrap();
        let out = ferry()
            .args(["dev", "--once", "--cli-config"])
            .arg(dir.path().join("cli.toml"))
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let case =
            format!("holding quic={hold_quic} api={hold_api}\nstdout: {stdout}\nstderr: {stderr}");
        assert!(out.status.success(), "{case}");
        assert!(stdout.contains("self-check echo succeeded"), "{case}");
        if hold_quic {
            assert!(!stdout.contains("server     127.0.0.1:7443 "), "{case}");
        }
        if hold_api {
            assert!(stderr.contains("127.0.0.1:7444 is taken"), "{case}");
            assert!(!stdout.contains("http://127.0.0.1:7444"), "{case}");
        }
        assert!(!stderr.contains("Database already open"), "{case}");
    }
}

#[test]
fn run_and_agents_talk_to_a_running_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    let mut cmd = ferry();
    dev_args(&mut cmd, dir.path());
    let _dev = Running(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // `ferry dev` writes the CLI config once its self-check has passed: then it is ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !config.exists() {
        assert!(Instant::now() < deadline, "ferry dev did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = with_config(ferry().args(["agents", "--json"]), &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(agents[0]["id"], "dev-agent");
    assert_eq!(agents[0]["status"], "online");

    let out = with_config(ferry().args(["agents"]), &config);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("AGENT") && table.contains("dev-agent"),
        "{table}"
    );

    let out = with_config(
        ferry().args(["run", "echo", "--payload", r#"{"from":"cli"}"#]),
        &config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result, serde_json::json!({"from": "cli"}));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("100%") && stderr.contains("succeeded"),
        "progress and outcome are shown: {stderr}"
    );

    let out = with_config(
        ferry().args([
            "run",
            "echo",
            "--json",
            "--agent",
            "dev-agent",
            "--payload",
            "[1,2]",
        ]),
        &config,
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["summary"]["succeeded"], 1);
    assert_eq!(record["results"][0]["agent"], "dev-agent");
    assert_eq!(record["results"][0]["payload"], serde_json::json!([1, 2]));

    // A binary payload well over the HTTP library's default body limit round-trips intact.
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let big_file = dir.path().join("big.bin");
    std::fs::write(&big_file, &big).unwrap();
    let out = with_config(
        ferry()
            .args([
                "run",
                "echo",
                "--json",
                "--content-type",
                "application/octet-stream",
                "--payload-file",
            ])
            .arg(&big_file),
        &config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    use base64::Engine as _;
    let returned = base64::engine::general_purpose::STANDARD
        .decode(
            record["results"][0]["payload_base64"]
                .as_str()
                .expect("binary output comes back as base64"),
        )
        .unwrap();
    assert!(returned == big, "the 3 MiB payload came back changed");

    // Sent without waiting, then followed and its logs read back by id.
    let out = with_config(
        ferry().args(["run", "echo", "--no-wait", "--payload", r#"{"later":1}"#]),
        &config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = with_config(ferry().args(["command", "follow", &id, "--json"]), &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(
        record["results"][0]["payload"],
        serde_json::json!({"later": 1})
    );
    let out = with_config(ferry().args(["command", "logs", &id]), &config);
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.lines().count() >= 1 && logs.lines().all(|l| l.contains("  dev-agent  ")),
        "{logs}"
    );
    let out = with_config(ferry().args(["command", "logs", &id, "--json"]), &config);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .expect("a log line"),
    )
    .unwrap();
    assert_eq!(first["agent"], "dev-agent");

    let out = with_config(ferry().args(["run", "no.such.topic"]), &config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown-topic") && stderr.contains("echo"),
        "{stderr}"
    );

    let out = with_config(
        ferry().args(["run", "echo", "--payload", "{not json"]),
        &config,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let out = with_config(ferry().args(["agents", "--token", "wrong"]), &config);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_a_server_the_cli_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = with_config(ferry().args(["agents"]), &dir.path().join("missing.toml"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ferry dev"));
}

/// An expected failure is its message (and causes), not a 30-frame backtrace, even with
/// `RUST_BACKTRACE=1`.
#[test]
fn an_expected_failure_prints_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let out = with_config(
        ferry().env("RUST_BACKTRACE", "1").args(["agents"]),
        &dir.path().join("missing.toml"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("Error: "), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}

/// A listing piped into a reader that stops early (`| head`) ends the way other Unix tools
/// do, by SIGPIPE, not with a panic about a broken pipe.
#[test]
fn a_listing_whose_reader_goes_away_ends_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tempfile::tempdir().unwrap();
    let _dev = start_dev(dir.path(), &[]);
    let mut child = ferry()
        .args(["agents", "--json", "--config"])
        .arg(dir.path().join("cli.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the command has its answer from the API, so its first write meets it.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

#[test]
fn cancel_reaches_a_running_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    let plugin = dir.path().join("faulty.wasm");
    std::fs::write(&plugin, ferry_builtins::fixtures::FAULTY.component).unwrap();
    let _dev = start_dev(
        dir.path(),
        &["--plugin", &format!("{}=fault.cancel", plugin.display())],
    );

    let out = with_config(
        ferry().args(["run", "fault.cancel", "--no-wait", "--timeout", "60s"]),
        &config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = with_config(ferry().args(["cancel", &id]), &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ended cancelled"), "{stdout}");

    let out = with_config(ferry().args(["cancel", &id]), &config);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already ended"));
    let out = with_config(ferry().args(["cancel", "no-such-command"]), &config);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no command"));
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn operators_label_target_list_and_audit_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    let _dev = start_dev(dir.path(), &[]);

    let out = with_config(
        ferry().args(["agent", "label", "dev-agent", "ring=canary", "dev-"]),
        &config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ring=canary"));
    let agents = stdout_json(&with_config(
        ferry().args(["agents", "--label", "ring=canary", "--json"]),
        &config,
    ));
    assert_eq!(agents.as_array().unwrap().len(), 1);
    let none = stdout_json(&with_config(
        ferry().args(["agents", "--label", "ring=stable", "--json"]),
        &config,
    ));
    assert_eq!(none, serde_json::json!([]));
    let out = with_config(ferry().args(["agent", "show", "dev-agent"]), &config);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("ring=canary") && shown.contains("online") && shown.contains("memory"),
        "{shown}"
    );

    let record = stdout_json(&with_config(
        ferry().args([
            "run",
            "echo",
            "--to",
            "ring=canary",
            "--max-concurrency",
            "1",
            "--payload",
            "7",
            "--json",
        ]),
        &config,
    ));
    assert_eq!(record["target"], "ring=canary");
    assert_eq!(record["max_concurrency"], 1);
    assert_eq!(record["results"][0]["payload"], 7);
    let id = record["id"].as_str().unwrap().to_string();
    let list = stdout_json(&with_config(
        ferry().args(["commands", "--status", "succeeded", "--json"]),
        &config,
    ));
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str())
    );
    let out = with_config(ferry().args(["commands"]), &config);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ID"));
    let out = with_config(ferry().args(["command", "show", &id]), &config);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("dev-agent") && shown.contains("succeeded"),
        "{shown}"
    );

    // A read token can look but not run; the token is printed once, on stdout.
    let out = with_config(
        ferry().args([
            "api-token",
            "create",
            "--name",
            "watcher",
            "--scope",
            "read",
        ]),
        &config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("ferry_at_"), "{token}");
    let out = with_config(ferry().args(["agents", "--token", &token]), &config);
    assert!(out.status.success());
    let out = with_config(ferry().args(["run", "echo", "--token", &token]), &config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("needs run"),
        "{stderr}"
    );
    let tokens = stdout_json(&with_config(
        ferry().args(["api-token", "list", "--json"]),
        &config,
    ));
    let watcher = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "watcher")
        .expect("the new token is listed");
    let out = with_config(
        ferry().args(["api-token", "revoke", watcher["id"].as_str().unwrap()]),
        &config,
    );
    assert!(out.status.success());
    let out = with_config(ferry().args(["agents", "--token", &token]), &config);
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    let audit = stdout_json(&with_config(ferry().args(["audit", "--json"]), &config));
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "agent.labels",
        "command.create",
        "api-token.create",
        "api-token.revoke",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let out = with_config(ferry().args(["audit"]), &config);
    assert!(String::from_utf8_lossy(&out.stdout).contains("watcher"));
    // A full page says how to read the one before it.
    let out = with_config(ferry().args(["audit", "--limit", "2"]), &config);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let before = stderr
        .split("ferry audit --before ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no hint to page back: {stderr}"));
    let older = stdout_json(&with_config(
        ferry().args(["audit", "--json", "--limit", "1", "--before", before]),
        &config,
    ));
    assert_eq!(
        older[0]["seq"].as_u64(),
        Some(before.parse::<u64>().unwrap() - 1),
        "{older}"
    );
}

/// `ferry bench` measures the round trip and, in the same run, the floors it is compared with
/// (a bare QUIC exchange, an fdatasync), and reports the ratios: checked for shape here, not
/// for speed (figures belong in docs/BENCHMARKS.md).
#[test]
fn bench_reports_the_round_trip_against_its_floors() {
    let out = ferry()
        .args([
            "bench",
            "--iterations",
            "30",
            "--warmup",
            "3",
            "--concurrency",
            "4,8",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for figure in [
        "round_trip",
        "journal_free_round_trip",
        "bare_quic",
        "fdatasync",
        "plugin",
    ] {
        let p50 = report[figure]["p50_us"].as_f64().unwrap_or(-1.0);
        assert!(p50 > 0.0, "{figure}: {report}");
    }
    let floor = report["bare_quic"]["p50_us"].as_f64().unwrap()
        + 2.0 * report["fdatasync"]["p50_us"].as_f64().unwrap();
    let ratio = report["durable_ratio"].as_f64().unwrap();
    let expected = report["round_trip"]["p50_us"].as_f64().unwrap() / floor;
    assert!((ratio - expected).abs() < 1e-9, "{report}");
    let ratio = report["journal_free_ratio"].as_f64().unwrap();
    let expected = report["journal_free_round_trip"]["p50_us"]
        .as_f64()
        .unwrap()
        / report["bare_quic"]["p50_us"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{report}");
    for figures in ["throughput", "journal_free_throughput"] {
        let throughput = report[figures].as_array().unwrap();
        assert_eq!(throughput.len(), 2);
        assert_eq!(throughput[1]["in_flight"], 8);
        assert!(throughput[1]["commands_per_second"].as_f64().unwrap() > 0.0);
    }
}
