//! Misbehaving plugins end their own command, never the agent.

use std::time::Duration;

use ferry_server::RunStatus;
use ferry_tests::Harness;

#[tokio::test]
async fn a_trapping_plugin_fails_its_command_and_the_agent_keeps_serving() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("sturdy").await;

    let view = harness.run("sturdy", "fault.trap", b"{}", None).await;
    assert_eq!(view.status, RunStatus::Crashed, "{view:?}");
    let detail = view.detail.unwrap_or_default();
    assert!(
        detail.contains("trap") || detail.contains("unreachable"),
        "{detail}"
    );

    let view = harness.run("sturdy", "fault.panic", b"{}", None).await;
    assert_eq!(view.status, RunStatus::Crashed, "{view:?}");

    // The same plugin and the agent both still work.
    let view = harness.run("sturdy", "fault.fail", b"{}", None).await;
    assert_eq!(view.status, RunStatus::Failed, "{view:?}");
    let view = harness
        .run("sturdy", "echo", br#""still here""#, None)
        .await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
}

#[tokio::test]
async fn a_plugin_that_loops_forever_is_stopped_at_its_timeout() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("looper").await;
    let view = harness
        .run(
            "looper",
            "fault.loop",
            b"{}",
            Some(Duration::from_millis(300)),
        )
        .await;
    assert_eq!(view.status, RunStatus::TimedOut, "{view:?}");
    let view = harness.run("looper", "echo", b"1", None).await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
}

#[tokio::test]
async fn a_cancel_reaches_the_plugin() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("canceller").await;
    let entry = harness
        .server()
        .submit(ferry_server::RunRequest {
            agent: "canceller".parse().unwrap(),
            topic: "fault.cancel".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            timeout: Some(Duration::from_secs(20)),
            idempotency_key: None,
            data: Default::default(),
            deliver_within: None,
        })
        .await
        .unwrap();
    ferry_tests::eventually("the command runs", || {
        entry.view().status == RunStatus::Running
    })
    .await;
    entry.request_cancel();
    let view = tokio::time::timeout(ferry_tests::WAIT, entry.wait())
        .await
        .unwrap();
    assert_eq!(view.status, RunStatus::Cancelled, "{view:?}");
}

#[tokio::test]
async fn a_fuel_budget_from_the_manifest_ends_a_runaway_plugin_and_is_reported() {
    let harness = Harness::start().await;
    let mut config = harness.agent_config("metered");
    let manifest = harness.path("faulty.toml");
    std::fs::write(
        &manifest,
        "[plugin]\nname = \"faulty\"\nversion = \"1.0.0\"\ntopics = [\"fault.loop\", \"fault.fail\"]\n[limits]\nfuel = 5_000_000\n",
    )
    .unwrap();
    config.plugins[0].manifest = Some(manifest);
    let agent = ferry_agent::Agent::start(config).await.unwrap();
    agent.wait_connected(ferry_tests::WAIT).await.unwrap();

    let view = harness
        .run(
            "metered",
            "fault.loop",
            b"{}",
            Some(Duration::from_secs(20)),
        )
        .await;
    assert_eq!(view.status, RunStatus::Crashed, "{view:?}");
    assert!(
        view.detail
            .as_deref()
            .unwrap_or_default()
            .contains("ran out of fuel"),
        "{view:?}"
    );
    assert_eq!(
        view.stats.unwrap().fuel,
        Some(5_000_000),
        "the Result reports the fuel used"
    );

    let view = harness.run("metered", "fault.fail", b"{}", None).await;
    assert_eq!(
        view.status,
        RunStatus::Failed,
        "the agent keeps serving: {view:?}"
    );
    let fuel = view
        .stats
        .unwrap()
        .fuel
        .expect("metered commands report fuel");
    assert!(fuel > 0 && fuel < 5_000_000, "{fuel}");
}
