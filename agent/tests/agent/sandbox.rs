//! The sandbox: a plugin reaches only what its grant (manifest ∩ policy) allows. Each test runs
//! the `probe` fixture, which tries one thing and reports what happened.

use std::path::Path;
use std::sync::Arc;

use ferry_agent::host::{
    CommandEvents, HostConfig, Invocation, InvokeError, LoadOptions, LoadedPlugin, LogLevel,
    PluginHost,
};
use ferry_agent::policy::Policy;
use ferry_builtins::fixtures::PROBE;
use ferry_manifest::{Access, Capabilities, FsEntry, Manifest};
use parking_lot::Mutex;

#[derive(Default)]
struct Events {
    logs: Mutex<Vec<String>>,
}

impl CommandEvents for Events {
    fn log(&self, _level: LogLevel, message: String) {
        self.logs.lock().push(message);
    }
    fn progress(&self, _percent: u8, _message: String) {}
    fn cancelled(&self) -> bool {
        false
    }
}

fn load(capabilities: Capabilities) -> LoadedPlugin {
    let host = PluginHost::new(HostConfig::default()).unwrap();
    host.load_with(
        "probe",
        PROBE.component,
        LoadOptions {
            capabilities,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

async fn probe_with(
    plugin: &LoadedPlugin,
    topic: &str,
    arg: &str,
) -> (Result<String, InvokeError>, Vec<String>) {
    let events = Arc::new(Events::default());
    let invoked = plugin
        .invoke(
            Invocation {
                id: "t".into(),
                topic: topic.into(),
                payload: arg.as_bytes().to_vec(),
                content_type: "text/plain".into(),
                deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(20)),
            },
            events.clone(),
        )
        .await;
    let logs = events.logs.lock().clone();
    (invoked.result.map(|b| String::from_utf8(b).unwrap()), logs)
}

async fn probe(plugin: &LoadedPlugin, topic: &str, arg: &str) -> Result<String, InvokeError> {
    probe_with(plugin, topic, arg).await.0
}

fn dir_grant(path: &Path, access: Access) -> Capabilities {
    Capabilities {
        filesystem: vec![FsEntry {
            path: path.to_path_buf(),
            access,
        }],
        ..Capabilities::default()
    }
}

fn denied(result: Result<String, InvokeError>) -> String {
    match result {
        Err(InvokeError::Denied(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn without_a_grant_a_plugin_sees_no_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret").unwrap();
    let plugin = load(Capabilities::default());
    let path = dir.path().join("secret");
    denied(probe(&plugin, "probe.read", path.to_str().unwrap()).await);
    denied(probe(&plugin, "probe.list", "/").await);
}

#[tokio::test]
async fn a_read_only_grant_reads_but_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.txt"), "hello").unwrap();
    let plugin = load(dir_grant(dir.path(), Access::ReadOnly));
    let file = dir.path().join("data.txt");
    assert_eq!(
        probe(&plugin, "probe.read", file.to_str().unwrap())
            .await
            .unwrap(),
        "hello"
    );
    assert_eq!(
        probe(&plugin, "probe.list", dir.path().to_str().unwrap())
            .await
            .unwrap(),
        "data.txt"
    );
    let target = dir.path().join("new.txt");
    denied(probe(&plugin, "probe.write", &format!("{}\nx", target.display())).await);
    assert!(!target.exists());
}

#[tokio::test]
async fn a_read_write_grant_writes_inside_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let plugin = load(dir_grant(dir.path(), Access::ReadWrite));
    let target = dir.path().join("new.txt");
    assert_eq!(
        probe(
            &plugin,
            "probe.write",
            &format!("{}\nwritten by a plugin", target.display())
        )
        .await
        .unwrap(),
        "written"
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "written by a plugin"
    );
    let escape = outside.path().join("escaped.txt");
    denied(probe(&plugin, "probe.write", &format!("{}\nx", escape.display())).await);
    assert!(!escape.exists());
}

#[tokio::test]
async fn dot_dot_and_symlink_escapes_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(root.path().join("secret"), "s3cret").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.path().join("secret"), granted.join("link")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.path(), granted.join("up")).unwrap();
    let plugin = load(dir_grant(&granted, Access::ReadWrite));

    let dotdot = format!("{}/../secret", granted.display());
    denied(probe(&plugin, "probe.read", &dotdot).await);
    #[cfg(unix)]
    {
        denied(
            probe(
                &plugin,
                "probe.read",
                granted.join("link").to_str().unwrap(),
            )
            .await,
        );
        denied(
            probe(
                &plugin,
                "probe.read",
                granted.join("up/secret").to_str().unwrap(),
            )
            .await,
        );
        denied(
            probe(
                &plugin,
                "probe.write",
                &format!("{}\nx", granted.join("up/planted").display()),
            )
            .await,
        );
        assert!(!root.path().join("planted").exists());
    }
    assert_eq!(
        std::fs::read_to_string(root.path().join("secret")).unwrap(),
        "s3cret"
    );
}

#[tokio::test]
async fn only_granted_environment_variables_are_visible() {
    // SAFETY: set before any plugin runs; no other thread of this test reads the environment.
    unsafe {
        std::env::set_var("FERRY_TEST_VISIBLE", "yes");
        std::env::set_var("FERRY_TEST_HIDDEN", "no");
    }
    let plugin = load(Capabilities {
        env: vec!["FERRY_TEST_VISIBLE".into(), "FERRY_TEST_UNSET".into()],
        ..Capabilities::default()
    });
    assert_eq!(
        probe(&plugin, "probe.env", "FERRY_TEST_VISIBLE")
            .await
            .unwrap(),
        "yes"
    );
    denied(probe(&plugin, "probe.env", "FERRY_TEST_HIDDEN").await);
    denied(probe(&plugin, "probe.env", "FERRY_TEST_UNSET").await);
    denied(probe(&plugin, "probe.env", "PATH").await);
}

#[tokio::test]
async fn only_granted_destinations_can_be_reached() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap().to_string();
    let other_addr = other.local_addr().unwrap().to_string();

    let none = load(Capabilities::default());
    denied(probe(&none, "probe.connect", &open_addr).await);

    let plugin = load(Capabilities {
        network: vec![open_addr.parse().unwrap()],
        ..Capabilities::default()
    });
    assert_eq!(
        probe(&plugin, "probe.connect", &open_addr).await.unwrap(),
        "connected"
    );
    let (result, logs) = probe_with(&plugin, "probe.connect", &other_addr).await;
    denied(result);
    assert!(
        logs.iter()
            .any(|l| l.contains(&other_addr) && l.contains("network")),
        "the refusal is logged with the address: {logs:?}"
    );

    let by_name = load(Capabilities {
        network: vec![
            format!("localhost:{}", open.local_addr().unwrap().port())
                .parse()
                .unwrap(),
        ],
        ..Capabilities::default()
    });
    assert_eq!(
        probe(&by_name, "probe.connect", &open_addr).await.unwrap(),
        "connected"
    );
}

#[tokio::test]
async fn a_manifest_gets_only_what_the_policy_allows() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    let refused = dir.path().join("refused");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::create_dir(&refused).unwrap();
    std::fs::write(allowed.join("a"), "A").unwrap();
    std::fs::write(refused.join("b"), "B").unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(
        &policy_path,
        format!("[plugins.probe.capabilities]\nfilesystem = [{{ path = {:?}, access = \"read-only\" }}]\n", allowed.display().to_string()),
    )
    .unwrap();
    let manifest = Manifest::from_toml(&format!(
        "[plugin]\nname = \"probe\"\nversion = \"1.0.0\"\ntopics = [\"probe.read\"]\n[capabilities]\nfilesystem = [{{ path = {:?}, access = \"read-only\" }}, {{ path = {:?}, access = \"read-only\" }}]\n",
        allowed.display().to_string(),
        refused.display().to_string()
    ))
    .unwrap();
    let grant = Policy::load(&policy_path).unwrap().grant(&manifest);
    assert_eq!(grant.refusals.len(), 1);
    assert!(
        grant.refusals[0]
            .message
            .contains(&refused.display().to_string())
    );
    let plugin = load(grant.capabilities);
    assert_eq!(
        probe(&plugin, "probe.read", allowed.join("a").to_str().unwrap())
            .await
            .unwrap(),
        "A"
    );
    denied(probe(&plugin, "probe.read", refused.join("b").to_str().unwrap()).await);
}

#[tokio::test]
async fn a_plugins_own_memory_limit_applies_and_is_named() {
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let faulty = host
        .load_with(
            "faulty",
            ferry_builtins::fixtures::FAULTY.component,
            LoadOptions {
                max_memory_bytes: Some(16 << 20),
                ..LoadOptions::default()
            },
        )
        .unwrap();
    let invoked = faulty
        .invoke(
            Invocation {
                id: "m".into(),
                topic: "fault.memory".into(),
                payload: vec![],
                content_type: String::new(),
                deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(20)),
            },
            Arc::new(Events::default()),
        )
        .await;
    match invoked.result {
        Err(InvokeError::Crashed(message)) => {
            assert!(message.contains("memory limit of 16 MiB"), "{message}");
            assert!(message.contains("[limits] in its manifest"), "{message}");
        }
        other => panic!("expected a crash at the memory limit, got {other:?}"),
    }
    assert!(
        invoked.stats.peak_memory_bytes <= 16 << 20,
        "{:?}",
        invoked.stats
    );
}
