//! The application-level handshake: Hello, then Welcome or Reject.

use ferry_protocol::tls::{self, Identity, TransportSettings};
use ferry_protocol::{
    AgentId, FrameReader, Heartbeat, Hello, HostMetrics, Message, RejectCode, SUPPORTED,
    VersionRange, write_frame,
};
use ferry_tests::{Harness, WAIT};

pub(crate) struct RawAgent {
    pub(crate) connection: quinn::Connection,
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: FrameReader<quinn::RecvStream>,
    _endpoint: quinn::Endpoint,
}

pub(crate) async fn raw_agent(harness: &Harness, id: &str) -> RawAgent {
    try_raw_agent(harness, id)
        .await
        .unwrap_or_else(|e| panic!("raw agent {id} could not connect: {e}"))
}

/// A connection with agent `id`'s valid certificate and its control stream opened (but nothing
/// sent, so the server does not see the stream yet), or why the server refused the connection.
pub(crate) async fn try_raw_agent(
    harness: &Harness,
    id: &str,
) -> Result<RawAgent, quinn::ConnectionError> {
    let pki = harness.pki();
    let (cert, key) = pki.ensure_agent(&AgentId::new(id).unwrap()).unwrap();
    let client = tls::client_config(
        Identity::from_pem_files(&cert, &key).unwrap(),
        tls::roots_from_pem_file(&pki.ca_cert_path()).unwrap(),
        &TransportSettings::default(),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(client, harness.config.listen, "localhost")
        .unwrap()
        .await?;
    let (send, recv) = connection.open_bi().await?;
    Ok(RawAgent {
        connection,
        send,
        recv: FrameReader::new(recv, 1 << 20),
        _endpoint: endpoint,
    })
}

pub(crate) fn hello(protocol: VersionRange) -> Message {
    Message::Hello(Hello {
        protocol,
        agent_version: "test".into(),
        labels: Default::default(),
        wit_versions: vec![],
        topics: vec![],
        read_only: Vec::new(),
        cached_plugins: vec![],
        instance: None,
    })
}

async fn answer(raw: &mut RawAgent) -> Option<Message> {
    tokio::time::timeout(WAIT, raw.recv.next())
        .await
        .expect("answered in time")
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_version_outside_the_servers_range_gets_reject_with_both_ranges() {
    let harness = Harness::start().await;
    let mut raw = raw_agent(&harness, "from-the-future").await;
    let future = VersionRange { min: 7, max: 9 };
    write_frame(&mut raw.send, &hello(future), 1 << 20)
        .await
        .unwrap();
    match answer(&mut raw).await {
        Some(Message::Reject(reject)) => {
            assert_eq!(reject.code, RejectCode::UnsupportedVersion);
            assert_eq!(reject.server_protocol, Some(SUPPORTED));
            assert_eq!(reject.agent_protocol, Some(future));
            assert!(
                reject.message.contains("upgrade the server"),
                "{}",
                reject.message
            );
        }
        other => panic!("expected Reject, got {other:?}"),
    }
    assert!(harness.server().agents().is_empty());
}

#[tokio::test]
async fn a_first_frame_other_than_hello_is_rejected() {
    let harness = Harness::start().await;
    let mut raw = raw_agent(&harness, "impatient").await;
    let beat = Message::Heartbeat(Heartbeat {
        metrics: HostMetrics::default(),
        running_commands: 0,
        sent_at: String::new(),
        health: Default::default(),
        runtimes: vec![],
    });
    write_frame(&mut raw.send, &beat, 1 << 20).await.unwrap();
    match answer(&mut raw).await {
        Some(Message::Reject(reject)) => {
            assert_eq!(reject.code, RejectCode::BadHello, "{reject:?}")
        }
        other => panic!("expected Reject, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_from_the_wrong_role_closes_only_that_connection() {
    let harness = Harness::start().await;
    let _good = harness.start_agent("good-citizen").await;
    let mut raw = raw_agent(&harness, "impostor").await;
    write_frame(&mut raw.send, &hello(SUPPORTED), 1 << 20)
        .await
        .unwrap();
    assert!(matches!(answer(&mut raw).await, Some(Message::Welcome(_))));
    // An agent may not send a Welcome; the server closes this connection, naming the breach.
    let welcome = Message::Welcome(ferry_protocol::Welcome {
        session: "x".into(),
        protocol: 1,
        heartbeat_interval_ms: 1,
        features: vec![],
        limits: ferry_protocol::Limits {
            max_frame_bytes: 1,
            max_concurrent_commands: 1,
        },
    });
    write_frame(&mut raw.send, &welcome, 1 << 20).await.unwrap();
    let reason = tokio::time::timeout(WAIT, raw.connection.closed())
        .await
        .expect("closed in time");
    assert!(reason.to_string().contains("Welcome"), "{reason}");
    // The other agent is unaffected.
    let view = harness.run("good-citizen", "echo", b"1", None).await;
    assert_eq!(view.status, ferry_server::RunStatus::Succeeded, "{view:?}");
}

#[tokio::test]
async fn garbage_on_the_control_stream_closes_only_that_connection() {
    let harness = Harness::start().await;
    let _good = harness.start_agent("bystander").await;
    let mut raw = raw_agent(&harness, "noisy").await;
    // A length far over the limit, then nothing: refused before any allocation.
    raw.send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(m)) = raw.recv.next().await {
        rest.push(m);
    }
    assert!(matches!(rest.first(), Some(Message::Reject(_))), "{rest:?}");
    let view = harness.run("bystander", "echo", b"2", None).await;
    assert_eq!(view.status, ferry_server::RunStatus::Succeeded, "{view:?}");
}
