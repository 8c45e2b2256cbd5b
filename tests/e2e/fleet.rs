//! Commands for many agents: the server's fan-out keeps to `max_concurrency` (checked from the
//! server's count and, independently, from when each agent was sent the command and when it
//! ended), stops at `max_errors`, and cancels.

use std::time::{Duration, Instant};

use ferry_agent::Agent;
use ferry_server::{CommandRequest, CommandStatus, CommandView, RunStatus, Selector, Target};
use ferry_tests::{Harness, WAIT};

fn request(topic: &str, target: Target) -> CommandRequest {
    CommandRequest {
        target,
        topic: topic.into(),
        payload: br#"{"fleet":true}"#.to_vec(),
        content_type: "application/json".into(),
        timeout: Some(Duration::from_secs(20)),
        idempotency_key: None,
        data: Default::default(),
        max_concurrency: None,
        max_errors: None,
        deliver_within: None,
        created_by: "test".into(),
    }
}

/// The most agents whose runs overlapped, from when each was sent the command to when it
/// ended: the server's accounting does not enter into it.
fn overlap(view: &CommandView) -> usize {
    let mut edges = Vec::new();
    for r in view.results.as_ref().unwrap() {
        if let (Some(sent), Some(ended)) = (r.sent_at, r.finished_at) {
            // At equal times an end comes before a start: the next agent is sent the command
            // only after the previous one ended.
            edges.push((sent, 1i32));
            edges.push((ended, -1));
        }
    }
    edges.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        peak = peak.max(now);
    }
    peak as usize
}

#[tokio::test]
async fn a_fan_out_to_50_agents_never_runs_more_than_max_concurrency_at_once() {
    // Heartbeats every 2 s: 50 agents each sampling host metrics five times a second would
    // keep these small machines busy.
    let harness = Harness::start_with(|config| {
        config.heartbeat_interval = Duration::from_secs(2);
        config.heartbeat_grace = Duration::from_secs(20);
    })
    .await;
    let started = Instant::now();
    let cache = harness.path("shared-cache");
    let mut agents: Vec<Agent> = Vec::new();
    for i in 0..50 {
        let id = format!("node-{i:02}");
        let mut config = harness.agent_config(&id);
        // Only the built-in echo, compiled once into a cache all agents share; small memory
        // slots and few instances, so 50 plugin hosts' pooled reservations stay modest.
        config.plugins.clear();
        config.cache_dir = Some(cache.clone());
        config.plugin_memory_mib = 32;
        config.max_concurrent_commands = 4;
        config.labels.insert(
            "ring".into(),
            if i % 2 == 0 { "even" } else { "odd" }.into(),
        );
        agents.push(Agent::start(config).await.expect("agent starts"));
    }
    for agent in &agents {
        agent.wait_connected(WAIT).await.expect("agent connects");
    }
    eprintln!("50 agents up in {:?}", started.elapsed());

    let limit = 5;
    let mut limited = request("echo", Target::Selector(Selector::all()));
    limited.max_concurrency = Some(limit);
    let t = Instant::now();
    let fleet = harness.server().submit_fleet(limited).await.unwrap();
    let view = tokio::time::timeout(WAIT, fleet.wait()).await.unwrap();
    eprintln!("fan-out to 50 agents, {limit} at a time: {:?}", t.elapsed());
    assert_eq!(view.status, CommandStatus::Succeeded, "{:?}", view.summary);
    assert_eq!(view.summary.total, 50);
    assert_eq!(view.summary.succeeded, 50);
    for result in view.results.as_ref().unwrap() {
        assert_eq!(
            result.output.payload,
            Some(serde_json::json!({"fleet": true}))
        );
    }
    assert!(
        view.peak_concurrency as usize <= limit as usize,
        "the server ran {} at once",
        view.peak_concurrency
    );
    let observed = overlap(&view);
    assert!(
        observed <= limit as usize,
        "{observed} agents ran it at once; the limit is {limit}"
    );
    assert!(
        observed >= 2,
        "the limit was used, not just one at a time: {observed}"
    );

    // The same measurement sees more than the limit when there is none: it can fail.
    let t = Instant::now();
    let fleet = harness
        .server()
        .submit_fleet(request("echo", Target::Selector(Selector::all())))
        .await
        .unwrap();
    let unlimited = tokio::time::timeout(WAIT, fleet.wait()).await.unwrap();
    eprintln!("fan-out to 50 agents, all at once: {:?}", t.elapsed());
    assert_eq!(unlimited.summary.succeeded, 50);
    assert!(
        overlap(&unlimited) > limit as usize,
        "without a limit more than {limit} overlap: {}",
        overlap(&unlimited)
    );

    // A selector picks by label.
    let fleet = harness
        .server()
        .submit_fleet(request(
            "echo",
            Target::Selector("ring=odd".parse().unwrap()),
        ))
        .await
        .unwrap();
    let odd = tokio::time::timeout(WAIT, fleet.wait()).await.unwrap();
    assert_eq!(odd.summary.succeeded, 25);
    futures::future::join_all(agents.into_iter().map(Agent::shutdown)).await;
}

#[tokio::test]
async fn sending_stops_once_max_errors_agents_have_failed() {
    let harness = Harness::start().await;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = format!("fails-{i}");
        agents.push(harness.start_agent(&id).await);
        ids.push(id.parse().unwrap());
    }
    // One more, named but offline: undelivered, and not counted as an error.
    let mut targets: Vec<_> = vec!["away".parse().unwrap()];
    targets.extend(ids);
    let mut failing = request("fault.fail", Target::Agents(targets));
    failing.max_concurrency = Some(1);
    failing.max_errors = Some(2);
    let fleet = harness.server().submit_fleet(failing).await.unwrap();
    let view = tokio::time::timeout(WAIT, fleet.wait()).await.unwrap();
    assert_eq!(view.status, CommandStatus::Failed);
    assert_eq!(view.summary.failed, 2, "{:?}", view.summary);
    assert_eq!(view.summary.undelivered, 5, "{:?}", view.summary);
    let results = view.results.unwrap();
    assert_eq!(results[0].status, RunStatus::Undelivered);
    assert!(
        results[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("not connected")
    );
    let skipped = &results[3];
    assert_eq!(skipped.status, RunStatus::Undelivered);
    assert!(skipped.agent_command_id.is_none(), "{skipped:?}");
    assert!(
        skipped
            .detail
            .as_deref()
            .unwrap()
            .contains("max_errors (2)"),
        "{skipped:?}"
    );
    drop(agents);
}

#[tokio::test]
async fn cancelling_stops_the_sending_and_the_running() {
    let harness = Harness::start().await;
    let mut agents = Vec::new();
    for i in 0..4 {
        agents.push(harness.start_agent(&format!("waits-{i}")).await);
    }
    let mut waiting = request("fault.cancel", Target::Selector(Selector::all()));
    waiting.max_concurrency = Some(2);
    let fleet = harness.server().submit_fleet(waiting).await.unwrap();
    ferry_tests::eventually("two agents run it", || {
        fleet.view(false).summary.running == 2
    })
    .await;
    assert!(fleet.request_cancel());
    let view = tokio::time::timeout(WAIT, fleet.wait()).await.unwrap();
    assert_eq!(view.status, CommandStatus::Cancelled);
    assert_eq!(view.summary.cancelled, 4, "{:?}", view.summary);
    let results = view.results.unwrap();
    assert!(results[0].agent_command_id.is_some() && results[1].agent_command_id.is_some());
    assert!(results[3].agent_command_id.is_none());
    assert!(
        !fleet.request_cancel(),
        "an ended command cannot be cancelled"
    );
    drop(agents);
}
