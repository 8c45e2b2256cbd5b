//! Agents come back by themselves when their server does.

use ferry_agent::ConnectionStatus;
use ferry_server::RunStatus;
use ferry_tests::{Harness, WAIT, eventually};

#[tokio::test]
async fn an_agent_reconnects_after_the_server_restarts() {
    let mut harness = Harness::start().await;
    let agent = harness.start_agent("comeback").await;
    let first_session = match agent.status() {
        ConnectionStatus::Connected { session } => session,
        other => panic!("{other:?}"),
    };

    harness.stop_server().await;
    eventually("the agent notices the server is gone", || {
        !matches!(agent.status(), ConnectionStatus::Connected { .. })
    })
    .await;

    harness.restart_server().await;
    let session = agent
        .wait_connected(WAIT)
        .await
        .expect("the agent reconnects by itself");
    assert_ne!(session, first_session, "a new session after the restart");
    let view = harness
        .run("comeback", "echo", br#"{"after":"restart"}"#, None)
        .await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
}

/// One identity on two hosts (a copied data directory, a cloned machine): the second
/// installation is refused with `DuplicateAgent` while the first is connected and answering,
/// so a command runs on one of them only; the refusal shows in the agent's view; and once the
/// first is gone the second takes over by itself.
#[tokio::test]
async fn a_second_installation_of_one_identity_is_refused_while_the_first_answers() {
    use ferry_protocol::AgentId;
    use ferry_server::RunRequest;
    use std::time::Duration;

    let harness = Harness::start().await;
    let config = |dir: &str| {
        let mut config = harness.agent_config("twin");
        config.builtins = false;
        config.cache_dir = Some(harness.path("components"));
        config.data_dir = harness.path(dir);
        config
    };
    let first = ferry_agent::Agent::start(config("host-a")).await.unwrap();
    first.wait_connected(WAIT).await.unwrap();
    let second = ferry_agent::Agent::start(config("host-b")).await.unwrap();
    eventually("the second installation is refused", || {
        matches!(second.status(), ConnectionStatus::Disconnected { reason, .. }
            if reason.contains("already connected") && reason.contains("another installation"))
    })
    .await;
    assert!(matches!(first.status(), ConnectionStatus::Connected { .. }));
    let id = AgentId::new("twin").unwrap();
    let seen = harness.server().agent(&id).unwrap();
    let duplicate = seen
        .duplicate
        .expect("the refusal shows in the agent's view");
    assert!(duplicate.refused >= 1);
    assert_ne!(Some(duplicate.instance), seen.instance);

    // A command for the identity runs once, on the installation that holds it.
    let run = harness
        .server()
        .submit(RunRequest {
            agent: id.clone(),
            topic: "fault.nap".into(),
            payload: b"10".to_vec(),
            content_type: "text/plain".into(),
            timeout: Some(Duration::from_secs(30)),
            idempotency_key: None,
            data: Default::default(),
            deliver_within: None,
        })
        .await
        .unwrap();
    assert_eq!(run.wait().await.status, RunStatus::Succeeded);
    assert_eq!(ferry_tests::runs_of(&run.view().id), 1);

    // The first host goes away: the second takes over without anyone's help.
    first.shutdown().await;
    second
        .wait_connected(WAIT)
        .await
        .expect("the second installation gets in once the first is gone");
    let now = harness.server().agent(&id).unwrap();
    assert_ne!(now.instance, seen.instance);
}
