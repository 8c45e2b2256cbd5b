//! Nothing lost, nothing run twice: a command survives a broken connection, a restart of its
//! agent and a restart of the server, and ends in exactly one recorded end state.

use std::time::Duration;

use ferry_agent::{Agent, ConnectionStatus};
use ferry_protocol::AgentId;
use ferry_server::{CommandRequest, CommandStatus, Selector, Target};
use ferry_server::{RunEvent, RunRequest, RunStatus};
use ferry_tests::{Harness, Relay, WAIT, eventually, runs_of};

fn nap(agent: &str, ms: u64) -> RunRequest {
    RunRequest {
        agent: AgentId::new(agent).unwrap(),
        topic: "fault.nap".into(),
        payload: ms.to_string().into_bytes(),
        content_type: "text/plain".into(),
        timeout: Some(Duration::from_secs(60)),
        idempotency_key: None,
        data: Default::default(),
        deliver_within: None,
    }
}

/// An agent with only the `faulty` fixture (the built-ins take long to compile in a debug
/// build), its compiled code shared through the harness's cache.
async fn start(harness: &Harness, id: &str) -> Agent {
    let agent = Agent::start(config(harness, id)).await.unwrap();
    agent
        .wait_connected(WAIT)
        .await
        .unwrap_or_else(|s| panic!("agent {id} did not connect: {s:?}"));
    agent
}

fn config(harness: &Harness, id: &str) -> ferry_agent::AgentConfig {
    let mut config = harness.agent_config(id);
    config.builtins = false;
    config.cache_dir = Some(harness.path("components"));
    config
}

fn finished_events(events: &[RunEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, RunEvent::Finished { .. }))
        .count()
}

#[tokio::test]
async fn a_result_finished_during_a_network_partition_arrives_once_after_it() {
    let harness = Harness::start().await;
    let relay = Relay::start(harness.config.listen).await;
    let mut config = config(&harness, "partitioned");
    config.server = relay.addr().to_string();
    config.idle_timeout = Duration::from_secs(2);
    let agent = Agent::start(config).await.unwrap();
    agent.wait_connected(WAIT).await.unwrap();

    let entry = harness
        .server()
        .submit(nap("partitioned", 1500))
        .await
        .unwrap();
    eventually("the agent runs the command", || {
        entry.view().status == RunStatus::Running
    })
    .await;
    // The link goes dark while the plugin naps: both sides lose the connection (idle timeout)
    // and the plugin finishes with nobody to tell.
    relay.cut();
    eventually("the agent notices the partition", || {
        !matches!(agent.status(), ConnectionStatus::Connected { .. })
    })
    .await;
    assert_eq!(
        entry.view().status,
        RunStatus::Running,
        "still waiting for the result"
    );
    relay.mend();

    let view = tokio::time::timeout(WAIT, entry.wait()).await.unwrap();
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    assert_eq!(view.output.payload_text.as_deref(), Some("napped 1500 ms"));
    assert_eq!(finished_events(&entry.events_since(0)), 1);
    assert_eq!(runs_of(&view.id), 1, "the plugin ran exactly once");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_command_running_when_its_agent_restarts_ends_once_as_cancelled() {
    let harness = Harness::start().await;
    let agent = start(&harness, "restarting").await;
    let entry = harness
        .server()
        .submit(nap("restarting", 20_000))
        .await
        .unwrap();
    eventually("the agent runs the command", || {
        entry.view().status == RunStatus::Running
    })
    .await;
    agent.shutdown().await;

    // The agent journaled the cancelled run; its next start delivers the result.
    let agent = start(&harness, "restarting").await;
    let view = tokio::time::timeout(WAIT, entry.wait()).await.unwrap();
    assert_eq!(view.status, RunStatus::Cancelled, "{view:?}");
    assert_eq!(finished_events(&entry.events_since(0)), 1);
    assert_eq!(runs_of(&view.id), 1);

    // The restarted agent serves as before.
    let again = harness.server().submit(nap("restarting", 1)).await.unwrap();
    let again = tokio::time::timeout(WAIT, again.wait()).await.unwrap();
    assert_eq!(again.status, RunStatus::Succeeded, "{again:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_server_restart_during_a_fan_out_loses_nothing_and_runs_nothing_twice() {
    let mut harness = Harness::start().await;
    let mut agents = Vec::new();
    for i in 0..12 {
        agents.push(start(&harness, &format!("fan-{i:02}")).await);
    }
    let fleet = harness
        .server()
        .submit_fleet(CommandRequest {
            target: Target::Selector(Selector::all()),
            topic: "fault.nap".into(),
            payload: b"1200".to_vec(),
            content_type: "text/plain".into(),
            timeout: Some(Duration::from_secs(60)),
            idempotency_key: None,
            data: Default::default(),
            max_concurrency: Some(4),
            max_errors: None,
            deliver_within: None,
            created_by: "test".into(),
        })
        .await
        .unwrap();
    let id = fleet.id().to_string();
    eventually("the first agents run it", || {
        fleet.view(false).summary.running > 0
    })
    .await;
    drop(fleet);

    harness.restart_server().await;
    let fleet = harness
        .server()
        .fleet_command(&id)
        .expect("the command is back after the restart");
    let view = tokio::time::timeout(Duration::from_secs(90), fleet.wait())
        .await
        .expect("the restored command ends");
    assert_eq!(view.status, CommandStatus::Succeeded, "{:?}", view.summary);
    assert_eq!(view.summary.total, 12);
    assert_eq!(view.summary.succeeded, 12);
    assert!(
        view.peak_concurrency <= 4,
        "peak {} over the limit",
        view.peak_concurrency
    );
    let results = view.results.expect("per-agent results");
    for result in &results {
        let run = result.agent_command_id.as_deref().expect("sent");
        assert_eq!(
            runs_of(run),
            1,
            "{} ran its command {} times",
            result.agent,
            runs_of(run)
        );
    }
    for agent in agents {
        agent.shutdown().await;
    }
}

#[tokio::test]
async fn a_command_for_an_offline_agent_waits_for_it_until_its_delivery_deadline() {
    let harness = Harness::start().await;
    // Never seen yet: the command waits for it.
    let mut waiting = nap("late", 10);
    waiting.deliver_within = Some(Duration::from_secs(60));
    let entry = harness.server().submit(waiting).await.unwrap();
    assert_eq!(entry.view().status, RunStatus::Pending);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(entry.view().status, RunStatus::Pending);
    let agent = start(&harness, "late").await;
    let view = tokio::time::timeout(WAIT, entry.wait()).await.unwrap();
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    agent.shutdown().await;

    // Gone again, and back too late: undelivered, which is not a timeout.
    let mut hopeless = nap("late", 10);
    hopeless.deliver_within = Some(Duration::from_millis(300));
    let entry = harness.server().submit(hopeless).await.unwrap();
    let view = tokio::time::timeout(WAIT, entry.wait()).await.unwrap();
    assert_eq!(view.status, RunStatus::Undelivered, "{view:?}");
    let detail = view.detail.unwrap_or_default();
    assert!(detail.contains("delivery deadline"), "{detail}");
    assert_eq!(runs_of(&view.id), 0);
}

#[tokio::test]
async fn an_idempotency_key_seen_again_returns_the_first_command_without_running_it_again() {
    let harness = Harness::start().await;
    let agent = start(&harness, "once").await;
    let mut first = nap("once", 10);
    first.idempotency_key = Some("deploy-42".into());
    let entry = harness.server().submit(first.clone()).await.unwrap();
    let view = tokio::time::timeout(WAIT, entry.wait()).await.unwrap();
    assert_eq!(view.status, RunStatus::Succeeded);

    let again = harness.server().submit(first).await.unwrap();
    assert_eq!(again.view().id, view.id, "the same command answers");
    assert_eq!(runs_of(&view.id), 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn acknowledged_commands_and_results_survive_a_server_restart() {
    let mut harness = Harness::start().await;
    let agent = start(&harness, "keeper").await;
    let done = harness.server().submit(nap("keeper", 1)).await.unwrap();
    let done = tokio::time::timeout(WAIT, done.wait()).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    let running = harness.server().submit(nap("keeper", 1500)).await.unwrap();
    let running_id = running.view().id;
    eventually("the nap runs", || {
        running.view().status == RunStatus::Running
    })
    .await;

    harness.restart_server().await;
    let kept = harness
        .server()
        .command(&done.id)
        .expect("the ended command is kept");
    let kept = kept.view();
    assert_eq!(kept.status, RunStatus::Succeeded);
    assert_eq!(kept.output.payload_text.as_deref(), Some("napped 1 ms"));
    let resumed = harness
        .server()
        .command(&running_id)
        .expect("the running command is kept");
    let view = tokio::time::timeout(WAIT, resumed.wait()).await.unwrap();
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    assert_eq!(runs_of(&running_id), 1);
    assert!(
        harness.server().agents().iter().any(|a| a.id == "keeper"),
        "the agent is known"
    );
    agent.shutdown().await;
}

/// Submissions of one new idempotency key at the same moment make one command, which the
/// agent runs once: the key is claimed in the transaction that records the command.
#[tokio::test]
async fn concurrent_submissions_of_one_key_make_one_command_that_runs_once() {
    let harness = Harness::start().await;
    let _agent = start(&harness, "keyed").await;
    let server = harness.server();
    let submissions = (0..8).map(|_| {
        let mut request = nap("keyed", 50);
        request.idempotency_key = Some("one-key-at-once".into());
        server.submit(request)
    });
    let mut ids = std::collections::HashSet::new();
    for run in futures::future::join_all(submissions).await {
        let run = run.unwrap();
        ids.insert(run.view().id);
        assert_eq!(run.wait().await.status, RunStatus::Succeeded);
    }
    assert_eq!(ids.len(), 1, "one key made {} runs: {ids:?}", ids.len());
    let id = ids.into_iter().next().unwrap();
    assert_eq!(runs_of(&id), 1);
}
