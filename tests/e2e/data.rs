//! `request-data`: a running command asks the server for data by key; the server answers from
//! the data the command carried, then from data an operator supplied.

use ferry_protocol::{
    Accepted, CommandResult, DataRequest, FrameReader, Message, Outcome, ResultStats, SUPPORTED,
    write_frame,
};
use ferry_server::{RunRequest, RunStatus};
use ferry_tests::{Harness, WAIT};

use crate::handshake::{hello, raw_agent};

#[tokio::test]
async fn a_command_gets_its_own_data_then_the_servers() {
    let harness = Harness::start().await;
    let mut raw = raw_agent(&harness, "asker").await;
    write_frame(&mut raw.send, &hello(SUPPORTED), 1 << 20)
        .await
        .unwrap();
    assert!(matches!(
        raw.recv.next().await.unwrap(),
        Some(Message::Welcome(_))
    ));
    harness
        .server()
        .set_data("shared", b"from the operator".to_vec());
    harness.server().set_data("both", b"the server's".to_vec());

    let entry = harness
        .server()
        .submit(RunRequest {
            agent: "asker".parse().unwrap(),
            topic: "anything".into(),
            payload: vec![],
            content_type: "application/json".into(),
            timeout: None,
            idempotency_key: None,
            data: [
                ("own".to_string(), b"from the command".to_vec()),
                ("both".to_string(), b"the command's".to_vec()),
            ]
            .into(),
            deliver_within: None,
        })
        .await
        .unwrap();

    // Play the agent's part of the command stream.
    let (mut send, recv) = tokio::time::timeout(WAIT, raw.connection.accept_bi())
        .await
        .unwrap()
        .unwrap();
    let mut recv = FrameReader::new(recv, 1 << 20);
    let Some(Message::Command(command)) = recv.next().await.unwrap() else {
        panic!("expected a Command")
    };
    write_frame(
        &mut send,
        &Message::Accepted(Accepted {
            id: command.id.clone(),
        }),
        1 << 20,
    )
    .await
    .unwrap();
    let mut answers = Vec::new();
    for (request, key) in [(1, "own"), (2, "shared"), (3, "both"), (4, "missing")] {
        let ask = Message::DataRequest(DataRequest {
            request,
            key: key.into(),
        });
        write_frame(&mut send, &ask, 1 << 20).await.unwrap();
        match recv.next().await.unwrap() {
            Some(Message::DataResponse(response)) => {
                assert_eq!(response.request, request);
                answers.push((response.value, response.error));
            }
            other => panic!("expected a DataResponse, got {other:?}"),
        }
    }
    assert_eq!(answers[0].0.as_deref(), Some(&b"from the command"[..]));
    assert_eq!(answers[1].0.as_deref(), Some(&b"from the operator"[..]));
    assert_eq!(
        answers[2].0.as_deref(),
        Some(&b"the command's"[..]),
        "the command's own data comes first"
    );
    assert_eq!(answers[3].0, None);
    let why = answers[3].1.clone().unwrap();
    assert!(why.contains("missing") && why.contains("--data"), "{why}");

    let result = Message::Result(CommandResult {
        id: command.id,
        outcome: Outcome::Succeeded,
        payload: b"done".to_vec(),
        stats: ResultStats::default(),
    });
    write_frame(&mut send, &result, 1 << 20).await.unwrap();
    let view = tokio::time::timeout(WAIT, entry.wait()).await.unwrap();
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
}

/// Starts agent `id` serving the `probe` fixture with a manifest that asks for request-data;
/// the policy allows it only when `allow` is true.
async fn agent_with_probe(harness: &Harness, id: &str, allow: bool) -> ferry_agent::Agent {
    let mut config = harness.agent_config(id);
    let probe = harness.path("probe.wasm");
    std::fs::write(&probe, ferry_builtins::fixtures::PROBE.component).unwrap();
    let manifest = harness.path("probe.toml");
    std::fs::write(
        &manifest,
        "[plugin]\nname = \"probe\"\nversion = \"1.0.0\"\ntopics = [\"probe.data\"]\n[capabilities]\nrequest_data = true\n",
    )
    .unwrap();
    let policy = harness.path(&format!("policy-{id}.toml"));
    std::fs::write(
        &policy,
        format!("[plugins.probe.capabilities]\nrequest_data = {allow}\n"),
    )
    .unwrap();
    config.plugins.push(ferry_agent::PluginConfig {
        path: probe,
        topics: vec![],
        name: None,
        manifest: Some(manifest),
    });
    config.policy = Some(policy);
    let agent = ferry_agent::Agent::start(config)
        .await
        .expect("agent starts");
    agent.wait_connected(WAIT).await.expect("agent connects");
    agent
}

async fn ask(harness: &Harness, agent: &str, key: &str) -> std::sync::Arc<ferry_server::RunEntry> {
    harness
        .server()
        .submit(RunRequest {
            agent: agent.parse().unwrap(),
            topic: "probe.data".into(),
            payload: key.as_bytes().to_vec(),
            content_type: "text/plain".into(),
            timeout: None,
            idempotency_key: None,
            data: [("token".to_string(), b"s3cret".to_vec())].into(),
            deliver_within: None,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_plugin_asks_for_data_through_a_real_agent() {
    let harness = Harness::start().await;
    let _agent = agent_with_probe(&harness, "data-agent", true).await;
    harness.server().set_data("motd", b"welcome".to_vec());

    let view = tokio::time::timeout(WAIT, ask(&harness, "data-agent", "token").await.wait())
        .await
        .unwrap();
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    assert_eq!(view.output.payload_text.as_deref(), Some("s3cret"));
    let view = tokio::time::timeout(WAIT, ask(&harness, "data-agent", "motd").await.wait())
        .await
        .unwrap();
    assert_eq!(view.output.payload_text.as_deref(), Some("welcome"));
    let view = tokio::time::timeout(WAIT, ask(&harness, "data-agent", "nothing").await.wait())
        .await
        .unwrap();
    assert_eq!(view.status, RunStatus::Denied, "{view:?}");
    assert!(view.detail.unwrap().contains("no data under 'nothing'"));
}

#[tokio::test]
async fn without_the_policy_grant_request_data_is_refused_by_name() {
    let harness = Harness::start().await;
    let _agent = agent_with_probe(&harness, "no-data-agent", false).await;
    let view = tokio::time::timeout(WAIT, ask(&harness, "no-data-agent", "token").await.wait())
        .await
        .unwrap();
    assert_eq!(view.status, RunStatus::Denied, "{view:?}");
    let detail = view.detail.unwrap();
    assert!(detail.contains("request_data is not granted"), "{detail}");
}
