//! Agents come back by themselves when their server does.

use ferry_agent::ConnectionStatus;
use ferry_server::CommandStatus;
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
    assert_eq!(view.status, CommandStatus::Succeeded, "{view:?}");
}
