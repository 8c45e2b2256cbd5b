//! Enrollment with the real binary: `ferry token create` against a `ferry server` process, a
//! new host joining with `ferry agent --join … --token … --ca-fingerprint …`, refusals the
//! agent reports, a restart that uses the enrolled identity, and `ferry agents revoke`.

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
    api: u16,
}

impl Setup {
    fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    fn api(&self, args: &[&str]) -> Output {
        let token = std::fs::read_to_string(self.server_dir().join("operator.token")).unwrap();
        ferry()
            .args(args)
            .args([
                "--api",
                &format!("http://127.0.0.1:{}", self.api),
                "--token",
                &token,
            ])
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.api(args);
        assert!(
            out.status.success(),
            "ferry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn agent(&self, id: &str) -> Option<Value> {
        let out = self.api(&["agents", "--json"]);
        if !out.status.success() {
            return None;
        }
        let agents: Value = serde_json::from_slice(&out.stdout).ok()?;
        agents.as_array()?.iter().find(|a| a["id"] == id).cloned()
    }

    fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
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
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        api: free_port(),
    };
    let quic = free_udp_port();
    let _server = Daemon(
        ferry()
            .arg("server")
            .arg("--data-dir")
            .arg(setup.server_dir())
            .args(["--listen", &format!("127.0.0.1:{quic}")])
            .args(["--api-listen", &format!("127.0.0.1:{}", setup.api)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
