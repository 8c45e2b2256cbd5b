//! A command's round trip: server → agent → wasm plugin → server, with progress and logs.

use ferry_server::{AgentStatus, RunEvent, RunStatus};
use ferry_tests::{Harness, eventually};

#[tokio::test]
async fn echo_returns_its_payload_with_progress_and_logs() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("edge-1").await;

    let payload = br#"{"greeting":"hello","n":[1,2,3]}"#;
    let view = harness.run("edge-1", "echo", payload, None).await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    assert_eq!(
        view.output.payload,
        Some(serde_json::from_slice(payload).unwrap())
    );
    let stats = view.stats.expect("the agent reports what the command cost");
    assert!(stats.peak_memory_bytes > 0, "{stats:?}");

    let events = harness.server().command(&view.id).unwrap().events_since(0);
    assert!(
        matches!(events.first(), Some(RunEvent::Accepted { .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(RunEvent::Finished { .. })),
        "{events:?}"
    );
    let progress: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Progress { percent, .. } => Some(*percent),
            _ => None,
        })
        .collect();
    assert!(
        progress.contains(&100),
        "progress reaches 100%: {progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {progress:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, RunEvent::Log { .. })),
        "the plugin's log lines arrive: {events:?}"
    );
}

#[tokio::test]
async fn many_commands_run_concurrently_on_one_agent() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("busy").await;
    let runs = (0..40).map(|i| {
        let payload = format!(r#"{{"i":{i}}}"#);
        let harness = &harness;
        async move {
            (
                i,
                harness.run("busy", "echo", payload.as_bytes(), None).await,
            )
        }
    });
    for (i, view) in futures::future::join_all(runs).await {
        assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
        assert_eq!(view.output.payload, Some(serde_json::json!({"i": i})));
    }
}

#[tokio::test]
async fn an_unknown_topic_is_answered_by_name() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("edge-2").await;
    let view = harness.run("edge-2", "no.such.topic", b"{}", None).await;
    assert_eq!(view.status, RunStatus::UnknownTopic, "{view:?}");
    let detail = view.detail.unwrap();
    assert!(
        detail.contains("no.such.topic") && detail.contains("echo"),
        "{detail}"
    );
}

#[tokio::test]
async fn commands_for_an_agent_that_is_not_connected_are_refused() {
    let harness = Harness::start().await;
    let err = harness
        .server()
        .submit(ferry_server::RunRequest {
            agent: "ghost".parse().unwrap(),
            topic: "echo".into(),
            payload: vec![],
            content_type: "application/json".into(),
            timeout: None,
            idempotency_key: None,
            data: Default::default(),
            deliver_within: None,
        })
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("'ghost' is not connected"),
        "{err}"
    );
}

#[tokio::test]
async fn heartbeats_carry_host_metrics_and_a_stopped_agent_goes_offline() {
    let harness = Harness::start().await;
    let agent = harness.start_agent("metered").await;
    let id = agent.id().clone();
    eventually("a heartbeat with metrics arrives", || {
        harness
            .server()
            .agent(&id)
            .is_some_and(|a| a.last_heartbeat.is_some() && a.metrics.is_some())
    })
    .await;
    let info = harness.server().agent(&id).unwrap();
    let metrics = info.metrics.unwrap();
    assert!(
        metrics.memory_total_bytes > 0 && metrics.disk_total_bytes > 0,
        "{metrics:?}"
    );
    assert!(metrics.uptime_secs > 0, "{metrics:?}");
    assert!(
        info.topics.contains(&"echo".to_string()),
        "{:?}",
        info.topics
    );
    assert!(info.wit_versions.contains(&"0.1.0".to_string()));

    agent.shutdown().await;
    eventually("the agent is marked offline", || {
        harness
            .server()
            .agent(&id)
            .is_some_and(|a| a.status == AgentStatus::Offline)
    })
    .await;
}

/// The built-ins that only read declare it; the agent says so in Hello, and their commands
/// (which skip the journals) still come back whole, with their events.
#[tokio::test]
async fn read_only_topics_are_reported_and_run_without_the_journals() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("reader").await;
    let id = ferry_protocol::AgentId::new("reader").unwrap();
    let info = harness.server().agent(&id).expect("the agent is known");
    assert_eq!(
        info.read_only_topics,
        [
            "echo",
            "get_consumption_device",
            "get_consumption_orchestrator"
        ],
        "{info:?}"
    );
    assert!(
        !info
            .read_only_topics
            .iter()
            .any(|t| t == "delete_orchestrator")
    );
    for i in 0..5 {
        let payload = format!(r#"{{"i":{i}}}"#);
        let view = harness
            .run("reader", "echo", payload.as_bytes(), None)
            .await;
        assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
        assert_eq!(view.output.payload, Some(serde_json::json!({"i": i})));
        let events = harness.server().command(&view.id).unwrap().events_since(0);
        assert!(
            events.iter().any(|e| matches!(e, RunEvent::Log { .. }))
                && matches!(events.first(), Some(RunEvent::Accepted { .. })),
            "{events:?}"
        );
    }
}
