//! `ferry server` and `ferry agent` as separate processes, as they run on separate hosts: an
//! agent with a certificate from `ferry cert issue` joins, runs commands, and comes back by
//! itself after the server process is killed (no clean shutdown) and started again.
//! A new host enrolls the same way: `ferry token create` against the server process, then
//! `ferry agent --join … --token … --ca-fingerprint …`, refusals the agent reports, a restart
//! that uses the enrolled identity, and `ferry agents revoke`.
//!
//! The server is also killed with SIGKILL while commands run, and every acknowledged command and
//! result is there after the restart; and an agent killed three times during a command sees its
//! plugin quarantined.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn ferry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.env_remove("FERRY_API")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    cmd
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    dir: tempfile::TempDir,
    quic: u16,
    api: u16,
}

impl Setup {
    fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    fn start_server(&self) -> Daemon {
        let child = ferry()
            .arg("server")
            .arg("--data-dir")
            .arg(self.server_dir())
            .args(["--listen", &format!("127.0.0.1:{}", self.quic)])
            .args(["--api-listen", &format!("127.0.0.1:{}", self.api)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon(child)
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.server_dir().join("operator.token")).unwrap()
    }

    fn api(&self, args: &[&str]) -> Output {
        ferry()
            .args(args)
            .args([
                "--api",
                &format!("http://127.0.0.1:{}", self.api),
                "--token",
                &self.token(),
            ])
            .output()
            .unwrap()
    }

    /// `ferry <args> --json`'s output, which must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.api(args);
        assert!(
            out.status.success(),
            "ferry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Agent `id` as `ferry agents --json` lists it (`None` while the API does not answer).
    fn agent(&self, id: &str) -> Option<Value> {
        let out = self.api(&["agents", "--json"]);
        if !out.status.success() {
            return None;
        }
        let agents: Value = serde_json::from_slice(&out.stdout).ok()?;
        agents.as_array()?.iter().find(|a| a["id"] == id).cloned()
    }

    fn agent_status(&self, id: &str) -> Option<String> {
        self.agent(id)
            .and_then(|a| a["status"].as_str().map(String::from))
    }

    fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            quic: free_udp_port(),
            api: free_port(),
        }
    }

    /// Issues agent `id` a certificate from the server's CA; returns the directory it is in.
    fn issue_cert(&self, id: &str) -> PathBuf {
        let certs = self.dir.path().join("certs");
        let out = ferry()
            .args(["cert", "issue", id, "--data-dir"])
            .arg(self.server_dir())
            .arg("--out")
            .arg(&certs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        certs
    }

    /// Writes agent `id`'s config file, with short keep-alives so a dead server is noticed
    /// quickly, and `extra` TOML at its end.
    fn agent_config(&self, id: &str, extra: &str) -> PathBuf {
        let certs = self.issue_cert(id);
        let config = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "server = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\ncert = {:?}\nkey = {:?}\nca = {:?}\ndata_dir = {:?}\nkeep_alive = \"500ms\"\nidle_timeout = \"5s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n{extra}",
                self.quic,
                certs.join(format!("{id}.pem")),
                certs.join(format!("{id}.key")),
                certs.join("ca.pem"),
                self.dir.path().join(id),
            ),
        )
        .unwrap();
        config
    }

    fn start_agent(&self, config: &Path) -> Daemon {
        Daemon(
            ferry()
                .args(["agent", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// `ferry command show <id> --json`, once it satisfies `done`.
    fn wait_command(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.api(&["command", "show", id, "--json"]);
            if out.status.success() {
                let view: Value = serde_json::from_slice(&out.stdout).unwrap();
                if done(&view) {
                    return view;
                }
                assert!(Instant::now() < deadline, "command {id} is still {view}");
            } else {
                assert!(
                    Instant::now() < deadline,
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `topic` with `payload` to `agent` without waiting; returns the command id.
    fn send(&self, topic: &str, agent: &str, payload: &str) -> String {
        let out = self.api(&[
            "run",
            topic,
            "--agent",
            agent,
            "--payload",
            payload,
            "--no-wait",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn wait_online(&self, id: &str) {
        let deadline = Instant::now() + WAIT;
        while self.agent_status(id).as_deref() != Some("online") {
            assert!(Instant::now() < deadline, "agent {id} did not come online");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_agent_process_survives_its_server_being_killed_and_restarted() {
    let setup = Setup::new();
    let mut server = setup.start_server();
    wait_for_file(&setup.server_dir().join("operator.token"));
    let config = setup.agent_config("edge-9", "[labels]\nenv = \"test\"\n");
    let agent = setup.start_agent(&config);
    setup.wait_online("edge-9");

    let out = setup.api(&[
        "run",
        "echo",
        "--agent",
        "edge-9",
        "--payload",
        r#"{"n":1}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!({"n": 1})
    );

    // A plugin pushed with the CLI reaches the agent, which serves its new topic at once.
    let component = setup.dir.path().join("greeter.wasm");
    std::fs::write(&component, ferry_builtins::ECHO.component).unwrap();
    std::fs::write(
        setup.dir.path().join("ferry.toml"),
        "[plugin]\nname = \"greeter\"\nversion = \"1.0.0\"\ntopics = [\"greet\"]\n",
    )
    .unwrap();
    let out = setup.api(&[
        "plugin",
        "push",
        component.to_str().unwrap(),
        "--to",
        "env=test",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("pushed greeter 1.0.0"), "{stdout}");
    assert!(stderr.contains("edge-9: ready"), "{stderr}");
    let greet = |n: u32| {
        let out = setup.api(&[
            "run",
            "greet",
            "--agent",
            "edge-9",
            "--payload",
            &format!(r#"{{"greeted":{n}}}"#),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&out.stdout).unwrap(),
            serde_json::json!({ "greeted": n })
        );
    };
    greet(1);
    // Pushed again without --to: the push says the version is already served, not that it
    // is assigned to no agent.
    let out = setup.api(&["plugin", "push", component.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("greeter 1.0.0 is already assigned to env=test"),
        "{stderr}"
    );
    // A new version pushed without --to names what is served and the assign that moves it.
    std::fs::write(
        setup.dir.path().join("ferry.toml"),
        "[plugin]\nname = \"greeter\"\nversion = \"1.1.0\"\ntopics = [\"greet\"]\n",
    )
    .unwrap();
    let out = setup.api(&["plugin", "push", component.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("serve greeter 1.0.0")
            && stderr.contains("ferry plugin assign greeter 1.1.0 --to env=test"),
        "{stderr}"
    );
    // The version not assigned can be deleted; the plugin, while assigned, cannot.
    let out = setup.api(&["plugin", "delete", "greeter", "1.1.0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deleted greeter 1.1.0"), "{stdout}");
    let out = setup.api(&["plugin", "delete", "greeter"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is assigned to env=test") && stderr.contains("ferry plugin unassign"),
        "{stderr}"
    );
    // A file that is not a component is refused with the reason, and nothing is stored.
    let bad = setup.dir.path().join("bad.wasm");
    std::fs::write(&bad, b"not a component").unwrap();
    let out = setup.api(&["plugin", "push", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not WebAssembly"), "{stderr}");
    let out = setup.api(&["plugin", "show", "nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no plugin named nope"), "{stderr}");

    // Kill, not stop: no close frames reach the agent.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);
    let _server = setup.start_server();
    setup.wait_online("edge-9");
    let out = setup.api(&[
        "run",
        "echo",
        "--agent",
        "edge-9",
        "--payload",
        r#"{"n":2}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The registry survived the kill, and the agent still serves the plugin.
    let out = setup.api(&["plugin", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "greeter");
    assert_eq!(list[0]["assigned"]["to"], "env=test");
    greet(2);
    // The restarted server learns again what the agent has (its reports are not persisted).
    let deadline = Instant::now() + WAIT;
    loop {
        let out = setup.api(&["plugin", "show", "greeter", "--json"]);
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown["agents"][0]["agent"], "edge-9");
        if shown["agents"][0]["state"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "{shown}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM stops the agent cleanly, and the server sees it go.
    let status = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    while setup.agent_status("edge-9").as_deref() != Some("offline") {
        assert!(
            Instant::now() < deadline,
            "the stopped agent was not marked offline"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cert_issue_without_a_server_ca_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry()
        .args(["cert", "issue", "x", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no CA") && stderr.contains("ferry server"),
        "{stderr}"
    );
}

fn status(view: &Value) -> &str {
    view["results"][0]["status"].as_str().unwrap_or("")
}

/// The faulty test plugin on the agent, for commands that take a while (`fault.nap`).
fn faulty_plugin(setup: &Setup) -> String {
    let path = setup.dir.path().join("faulty.wasm");
    std::fs::write(&path, ferry_builtins::fixtures::FAULTY.component).unwrap();
    format!(
        "[[plugins]]\npath = {path:?}\nname = \"faulty\"\ntopics = [\"fault.nap\", \"fault.fail\"]\n"
    )
}

#[test]
fn commands_and_results_survive_the_server_being_killed_mid_run() {
    let setup = Setup::new();
    let mut server = setup.start_server();
    wait_for_file(&setup.server_dir().join("operator.token"));
    let config = setup.agent_config("keeper", &faulty_plugin(&setup));
    let _agent = setup.start_agent(&config);
    setup.wait_online("keeper");

    let ended = setup.send("echo", "keeper", r#"{"kept":true}"#);
    setup.wait_command(&ended, |v| status(v) == "succeeded");
    let naps: Vec<String> = (0..3)
        .map(|_| setup.send("fault.nap", "keeper", "2500"))
        .collect();
    for nap in &naps {
        setup.wait_command(nap, |v| status(v) == "running");
    }

    // Killed, not stopped: whatever the server acknowledged must be on its disk already.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);
    let _server = setup.start_server();

    let view = setup.wait_command(&ended, |v| status(v) == "succeeded");
    assert_eq!(
        view["results"][0]["payload"],
        serde_json::json!({"kept": true})
    );
    for nap in &naps {
        // The agent finished each nap while the server was away and delivers the result once.
        let view = setup.wait_command(nap, |v| v["status"] != "running");
        assert_eq!(status(&view), "succeeded", "{view}");
        assert_eq!(
            view["results"][0]["payload_text"], "napped 2500 ms",
            "{view}"
        );
    }
    let out = setup.api(&["commands", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    for id in naps.iter().chain([&ended]) {
        assert_eq!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["id"] == id.as_str())
                .count(),
            1,
            "{id} listed once"
        );
    }
}

#[test]
fn a_plugin_running_each_time_its_agent_is_killed_is_quarantined() {
    let setup = Setup::new();
    let _server = setup.start_server();
    wait_for_file(&setup.server_dir().join("operator.token"));
    let config = setup.agent_config("crashy", &faulty_plugin(&setup));
    let mut agent = setup.start_agent(&config);
    setup.wait_online("crashy");

    for round in 1..=3 {
        let nap = setup.send("fault.nap", "crashy", "60000");
        setup.wait_command(&nap, |v| status(v) == "running");
        agent.0.kill().unwrap();
        agent.0.wait().unwrap();
        agent = setup.start_agent(&config);
        // The restarted agent reports the interrupted run: it ends once, as crashed.
        let view = setup.wait_command(&nap, |v| v["status"] != "running");
        assert_eq!(status(&view), "crashed", "round {round}: {view}");
        let detail = view["results"][0]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("the agent stopped while plugin 'faulty' ran"),
            "{detail}"
        );
        setup.wait_online("crashy");
    }
    let refused = setup.send("fault.fail", "crashy", "1");
    let view = setup.wait_command(&refused, |v| v["status"] != "running");
    assert_eq!(status(&view), "rejected", "{view}");
    let detail = view["results"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("quarantined"), "{detail}");
    // Other plugins are not affected.
    let echo = setup.send("echo", "crashy", "{}");
    setup.wait_command(&echo, |v| status(v) == "succeeded");
}

fn join(create: &Value, name: &str, data_dir: &Path, fingerprint: &str) -> Command {
    let command = create["join_command"].as_str().unwrap();
    let server = command
        .split_whitespace()
        .skip_while(|w| *w != "--join")
        .nth(1)
        .unwrap()
        .to_string();
    let mut cmd = ferry();
    cmd.arg("agent")
        .args(["--join", &server])
        .args(["--token", create["token"].as_str().unwrap()])
        .args(["--ca-fingerprint", fingerprint])
        .args(["--name", name])
        .args(["--server-name", "localhost"])
        .arg("--data-dir")
        .arg(data_dir);
    cmd
}

#[test]
fn a_host_joins_with_the_printed_command_and_is_revoked_with_ferry_agents_revoke() {
    let setup = Setup::new();
    let quic = setup.quic;
    let _server = setup.start_server();
    wait_for_file(&setup.server_dir().join("operator.token"));
    setup.wait_until("the API answers", || {
        setup.api(&["token", "list", "--json"]).status.success()
    });

    let create = setup.json(&[
        "token", "create", "--labels", "site=cli", "--ttl", "10m", "--json",
    ]);
    let fingerprint = create["ca_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 64);
    let command = create["join_command"].as_str().unwrap();
    assert!(
        command.starts_with(&format!(
            "ferry agent --join 127.0.0.1:{quic} --token ferry_jt_"
        )),
        "{command}"
    );
    // The text form shows the same.
    let text = setup.api(&["token", "create"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("ferry agent --join") && text.contains(&fingerprint),
        "{text}"
    );

    // A wrong fingerprint: the agent refuses the server and says why.
    let data_dir = setup.dir.path().join("agent");
    let wrong = "ab".repeat(32);
    let out = join(&create, "cli-agent", &data_dir, &wrong)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pinned fingerprint"), "{stderr}");

    let mut agent = Daemon(
        join(&create, "cli-agent", &data_dir, &fingerprint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    setup.wait_until("the agent is online", || {
        setup
            .agent("cli-agent")
            .is_some_and(|a| a["status"] == "online" && a["labels"]["site"] == "cli")
    });
    let listed = setup.json(&["token", "list", "--json"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "used" && t["enrolled"][0] == "cli-agent"),
        "{listed}"
    );

    // The used-up token is refused with a clear message for another host.
    let out = join(
        &create,
        "cli-other",
        &setup.dir.path().join("other"),
        &fingerprint,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("used up"), "{stderr}");

    // Restarted without --join, the agent uses its enrolled identity and server.
    let before = setup.agent("cli-agent").unwrap()["connected_since"].clone();
    drop(agent);
    agent = Daemon(
        ferry()
            .arg("agent")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--server-name", "localhost"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    setup.wait_until("the agent is back", || {
        setup
            .agent("cli-agent")
            .is_some_and(|a| a["status"] == "online" && a["connected_since"] != before)
    });

    let out = setup.api(&["agents", "revoke", "cli-agent", "--reason", "test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    setup.wait_until("the revoked agent is offline", || {
        setup
            .agent("cli-agent")
            .is_some_and(|a| a["status"] == "offline" && a["revoked"].is_object())
    });
    drop(agent);
}
