//! Pushed plugins: a plugin pushed to the server reaches the agents it is assigned to, which
//! verify it, serve its topics without a restart, switch to a new version and back, refuse a
//! package that was tampered with, and pick up what was assigned while they were away.

use std::time::Duration;

use ferry_agent::Agent;
use ferry_builtins::ECHO;
use ferry_builtins::fixtures::FAULTY;
use ferry_protocol::AgentId;
use ferry_server::{RunRequest, RunStatus, Selector};
use ferry_tests::{Harness, WAIT, eventually};

fn manifest(name: &str, version: &str, topics: &[&str]) -> String {
    let topics: Vec<String> = topics.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[plugin]\nname = {name:?}\nversion = {version:?}\ntopics = [{}]\n",
        topics.join(", ")
    )
}

fn states(rollout: &[ferry_server::AgentRollout]) -> Vec<(String, &'static str)> {
    rollout
        .iter()
        .map(|r| (r.agent.clone(), r.state.name()))
        .collect()
}

/// The status, and the detail when there is one: `unknown-topic: no plugin…`.
fn outcome(view: &ferry_server::RunView) -> String {
    let status = serde_json::to_value(view.status).unwrap();
    let status = status.as_str().unwrap().to_string();
    match &view.detail {
        Some(detail) => format!("{status}: {detail}"),
        None => status,
    }
}

fn json(view: &ferry_server::RunView) -> serde_json::Value {
    view.output.payload.clone().unwrap_or_default()
}

/// An agent with no plugins of its own but the built-ins.
async fn bare_agent(harness: &Harness, id: &str, labels: &[(&str, &str)]) -> Agent {
    let mut config = harness.agent_config(id);
    config.plugins.clear();
    config.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let agent = Agent::start(config).await.expect("agent starts");
    agent
        .wait_connected(WAIT)
        .await
        .unwrap_or_else(|s| panic!("agent {id} did not connect: {s:?}"));
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_plugin_serves_a_new_topic_is_replaced_and_rolled_back() {
    let harness = Harness::start().await;
    let agent = bare_agent(&harness, "edge-1", &[]).await;

    let before = harness.run("edge-1", "greet", br#"{"n":1}"#, None).await;
    assert!(outcome(&before).starts_with("unknown-topic"), "{before:?}");

    // Version 1 is the echo component: it answers with the payload.
    let rollout = harness
        .deploy(
            &manifest("greeter", "1.0.0", &["greet"]),
            ECHO.component,
            "all",
        )
        .await;
    assert_eq!(states(&rollout), [("edge-1".to_string(), "ready")]);
    let v1 = harness.run("edge-1", "greet", br#"{"n":1}"#, None).await;
    assert_eq!(outcome(&v1), "succeeded");
    assert_eq!(json(&v1), serde_json::json!({"n": 1}));
    assert!(agent.topics().contains(&"greet".to_string()));
    eventually("the server sees the new topic", || {
        harness
            .server()
            .agent(&AgentId::new("edge-1").unwrap())
            .unwrap()
            .topics
            .contains(&"greet".to_string())
    })
    .await;

    // Version 2 is another component: it fails every topic it does not know.
    let rollout = harness
        .deploy(
            &manifest("greeter", "2.0.0", &["greet"]),
            FAULTY.component,
            "all",
        )
        .await;
    assert_eq!(states(&rollout), [("edge-1".to_string(), "ready")]);
    let v2 = harness.run("edge-1", "greet", br#"{"n":2}"#, None).await;
    assert!(
        outcome(&v2).contains("faulty has no topic 'greet'"),
        "{v2:?}"
    );

    // Rolling back brings version 1 back, without fetching anything new.
    let plugins = harness.server().plugins();
    let back = plugins.rollback("greeter", "e2e").unwrap().unwrap();
    assert_eq!(back.version, "1.0.0");
    // The history keeps what was rolled back, and the rollback, with who and when.
    let history = plugins
        .show("greeter", &harness.server().agents())
        .unwrap()
        .history;
    let seen: Vec<(Option<&str>, &str)> = history
        .iter()
        .map(|c| {
            (
                c.assigned.as_ref().map(|a| a.version.as_str()),
                c.by.as_str(),
            )
        })
        .collect();
    assert_eq!(
        &seen[seen.len() - 3..],
        [
            (Some("1.0.0"), "the test harness"),
            (Some("2.0.0"), "the test harness"),
            (Some("1.0.0"), "e2e")
        ]
    );
    let rollout = harness.settle("greeter", "all").await;
    assert_eq!(states(&rollout), [("edge-1".to_string(), "ready")]);
    let again = harness.run("edge-1", "greet", br#"{"n":3}"#, None).await;
    assert_eq!(outcome(&again), "succeeded");

    let shown = plugins.show("greeter", &harness.server().agents()).unwrap();
    assert_eq!(shown.summary.versions.len(), 2);
    assert_eq!(shown.agents.len(), 1);
    assert_eq!(shown.agents[0].version.as_deref(), Some("1.0.0"));
    assert_eq!(shown.agents[0].state, "ready");

    // Unassigned: the topic is gone again.
    plugins.unassign("greeter", "e2e").unwrap();
    eventually("the agent drops the topic", || {
        !agent.topics().contains(&"greet".to_string())
    })
    .await;
    let gone = harness.run("edge-1", "greet", b"{}", None).await;
    assert!(outcome(&gone).starts_with("unknown-topic"), "{gone:?}");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_command_finishes_on_the_version_it_started_with() {
    let harness = Harness::start().await;
    let agent = bare_agent(&harness, "edge-1", &[]).await;
    // `fault.cancel` loops until cancelled in the faulty component; echo answers at once.
    harness
        .deploy(
            &manifest("worker", "1.0.0", &["fault.cancel"]),
            FAULTY.component,
            "all",
        )
        .await;
    let long = harness
        .server()
        .submit(RunRequest {
            agent: AgentId::new("edge-1").unwrap(),
            topic: "fault.cancel".into(),
            payload: vec![],
            content_type: "text/plain".into(),
            timeout: Some(Duration::from_secs(60)),
            idempotency_key: None,
            data: Default::default(),
            deliver_within: None,
        })
        .await
        .unwrap();
    eventually("the long command runs", || {
        long.view().status == RunStatus::Running
    })
    .await;

    let rollout = harness
        .deploy(
            &manifest("worker", "2.0.0", &["fault.cancel"]),
            ECHO.component,
            "all",
        )
        .await;
    assert_eq!(states(&rollout), [("edge-1".to_string(), "ready")]);
    let new = harness
        .run("edge-1", "fault.cancel", br#"{"version":2}"#, None)
        .await;
    assert_eq!(outcome(&new), "succeeded", "new commands run version 2");
    assert!(
        !long.view().status.is_final(),
        "the old one is still running"
    );

    long.request_cancel();
    let ended = tokio::time::timeout(WAIT, long.wait()).await.unwrap();
    assert_eq!(outcome(&ended), "cancelled", "version 1 saw its cancel");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_package_is_refused_and_reported_and_the_old_version_keeps_serving() {
    let harness = Harness::start().await;
    let agent = bare_agent(&harness, "edge-1", &[]).await;
    harness
        .deploy(
            &manifest("greeter", "1.0.0", &["greet"]),
            ECHO.component,
            "all",
        )
        .await;

    let plugins = harness.server().plugins();
    let package = ferry_protocol::package::Package::new(
        manifest("greeter", "2.0.0", &["greet"]),
        FAULTY.component.to_vec(),
    );
    let pushed = plugins.push(&package.encode()).unwrap();
    // Someone changes the stored package on the server's disk.
    let path = harness
        .config
        .data_dir
        .join("plugins")
        .join(format!("{}.pkg", pushed.package.digest));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    plugins
        .assign(
            "greeter",
            Some("2.0.0"),
            Selector::all(),
            &harness.server().agents(),
            "e2e",
        )
        .unwrap();
    let rollout = harness.settle("greeter", "all").await;
    assert_eq!(rollout[0].state, "failed");
    let why = rollout[0].detail.clone().unwrap();
    assert!(why.contains("changed after it was signed"), "{why}");
    assert!(why.contains("still serving version 1.0.0"), "{why}");

    // Nothing of it was stored on the agent, and version 1 still answers.
    let stored = std::fs::read_dir(harness.path("agent-edge-1").join("packages"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(
        !stored
            .iter()
            .any(|f| f.contains(&pushed.package.digest.to_string())),
        "{stored:?}"
    );
    let run = harness
        .run("edge-1", "greet", br#"{"still":1}"#, None)
        .await;
    assert_eq!(outcome(&run), "succeeded");
    assert_eq!(json(&run), serde_json::json!({"still": 1}));

    let shown = plugins.show("greeter", &harness.server().agents()).unwrap();
    assert_eq!(shown.agents[0].state, "failed");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_signed_by_another_key_is_refused() {
    let harness = Harness::start().await;
    // This agent pinned some other server's key.
    let other = tempfile::tempdir().unwrap();
    let (key, public) = (other.path().join("k"), other.path().join("k.pub"));
    ferry_protocol::package::SigningKey::load_or_create(&key, &public).unwrap();
    let mut config = harness.agent_config("edge-1");
    config.plugin_key = Some(public);
    let agent = Agent::start(config).await.unwrap();
    agent.wait_connected(WAIT).await.unwrap();

    let rollout = harness
        .deploy(
            &manifest("greeter", "1.0.0", &["greet"]),
            ECHO.component,
            "all",
        )
        .await;
    assert_eq!(rollout[0].state, "failed");
    let why = rollout[0].detail.clone().unwrap();
    assert!(why.contains("not signed by its server"), "{why}");
    let run = harness.run("edge-1", "greet", b"{}", None).await;
    assert!(outcome(&run).contains("could not be loaded"), "{run:?}");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_away_during_the_push_get_it_when_they_connect_and_keep_it_across_restarts() {
    let mut harness = Harness::start().await;
    // Nobody is connected yet.
    let rollout = harness
        .deploy(
            &manifest("greeter", "1.0.0", &["greet"]),
            ECHO.component,
            "env=prod",
        )
        .await;
    assert!(rollout.is_empty());

    let prod = bare_agent(&harness, "prod-1", &[("env", "prod")]).await;
    let dev = bare_agent(&harness, "dev-1", &[("env", "dev")]).await;
    let rollout = harness.settle("greeter", "env=prod").await;
    assert_eq!(states(&rollout), [("prod-1".to_string(), "ready")]);
    let run = harness
        .run("prod-1", "greet", br#"{"late":true}"#, None)
        .await;
    assert_eq!(outcome(&run), "succeeded");
    let run = harness.run("dev-1", "greet", b"{}", None).await;
    assert!(
        outcome(&run).starts_with("unknown-topic"),
        "labels keep it off dev: {run:?}"
    );

    // A restarted agent serves what it was assigned before it has even reached the server.
    prod.shutdown().await;
    harness.stop_server().await;
    let config = {
        let mut config = harness.agent_config("prod-1");
        config.plugins.clear();
        config.labels = [("env".to_string(), "prod".to_string())].into();
        config
    };
    let restarted = Agent::start(config).await.unwrap();
    assert!(restarted.topics().contains(&"greet".to_string()));
    drop(dev);
    restarted.shutdown().await;
}
