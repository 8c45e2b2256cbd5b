//! `ferry server` and `ferry agent` as separate processes, as they run on separate hosts: an
//! agent with a certificate from `ferry cert issue` joins, runs commands, and comes back by
//! itself after the server process is killed (no clean shutdown) and started again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

    fn agent_status(&self, id: &str) -> Option<String> {
        let out = self.api(&["agents", "--json"]);
        if !out.status.success() {
            return None;
        }
        let agents: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        agents
            .as_array()?
            .iter()
            .find(|a| a["id"] == id)
            .and_then(|a| a["status"].as_str().map(String::from))
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
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        quic: free_port(),
        api: free_port(),
    };
    let mut server = setup.start_server();
    wait_for_file(&setup.server_dir().join("operator.token"));

    let certs = setup.dir.path().join("certs");
    let out = ferry()
        .args(["cert", "issue", "edge-9", "--data-dir"])
        .arg(setup.server_dir())
        .arg("--out")
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The agent's config file, with short keep-alives so a dead server is noticed quickly.
    let config = setup.dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\ncert = {:?}\nkey = {:?}\nca = {:?}\ndata_dir = {:?}\nkeep_alive = \"500ms\"\nidle_timeout = \"5s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n[labels]\nenv = \"test\"\n",
            setup.quic,
            certs.join("edge-9.pem"),
            certs.join("edge-9.key"),
            certs.join("ca.pem"),
            setup.dir.path().join("agent"),
        ),
    )
    .unwrap();
    let agent = Daemon(
        ferry()
            .args(["agent", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
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
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
            serde_json::json!({ "greeted": n })
        );
    };
    greet(1);
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
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "greeter");
    assert_eq!(list[0]["assigned"]["to"], "env=test");
    greet(2);
    // The restarted server learns again what the agent has (its reports are not persisted).
    let deadline = Instant::now() + WAIT;
    loop {
        let out = setup.api(&["plugin", "show", "greeter", "--json"]);
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
