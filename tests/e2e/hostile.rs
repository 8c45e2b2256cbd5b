//! Hostile input: a client with a valid certificate that breaks the protocol on purpose —
//! oversized lengths, truncated frames, messages of the wrong role, floods of streams, slow
//! handshakes. In every case the server closes that one connection, saying why, while a
//! well-behaved agent keeps running commands and new agents can still connect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_protocol::{
    Command, FetchReply, Limits, Message, PluginAssign, RejectCode, SUPPORTED, Welcome, close,
    codec, write_frame,
};
use ferry_server::{RunStatus, ServerConfig};
use ferry_tests::{Harness, WAIT};

use crate::handshake::{RawAgent, hello, raw_agent, try_raw_agent};

/// Short enough that the slow-handshake cases run in about a second each.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
const GOOD: &str = "good-agent";

/// A server with a short handshake timeout, and a well-behaved agent connected to it.
async fn setup(configure: impl FnOnce(&mut ServerConfig)) -> (Harness, ferry_agent::Agent) {
    let harness = Harness::start_with(|config| {
        config.handshake_timeout = HANDSHAKE_TIMEOUT;
        configure(config);
    })
    .await;
    let good = harness.start_agent(GOOD).await;
    (harness, good)
}

/// Runs `attack` while the good agent runs `echo` commands back to back; every one of them
/// must succeed, and at least one runs while the attack is on.
async fn during<T>(harness: &Harness, attack: impl Future<Output = T>) -> T {
    let done = AtomicBool::new(false);
    let busy = async {
        let mut ran = 0;
        while !done.load(Ordering::Relaxed) || ran == 0 {
            let view = harness.run(GOOD, "echo", b"\"still here\"", None).await;
            assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
            ran += 1;
        }
        ran
    };
    let attack = async {
        let out = attack.await;
        done.store(true, Ordering::Relaxed);
        out
    };
    let (ran, out) = tokio::join!(busy, attack);
    assert!(ran >= 1);
    out
}

/// After an attack: the server still answers its API, the good agent still runs commands, and
/// a new agent can connect and run one.
async fn still_serving(harness: &Harness, fresh: &str) {
    let health = reqwest::get(format!("{}/v1/health", harness.api_url()))
        .await
        .expect("the operator API answers");
    assert!(health.status().is_success(), "{health:?}");
    let view = harness.run(GOOD, "echo", b"1", None).await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
    let _agent = harness.start_agent(fresh).await;
    let view = harness.run(fresh, "echo", b"2", None).await;
    assert_eq!(view.status, RunStatus::Succeeded, "{view:?}");
}

/// Waits for the server to close `connection`, and returns its code and reason.
async fn closed_by_server(connection: &quinn::Connection) -> (u32, String) {
    let error = tokio::time::timeout(WAIT, connection.closed())
        .await
        .expect("the server closes the offending connection in time");
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => (
            u32::try_from(close.error_code.into_inner()).expect("a ferry close code"),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected the server to close the connection with a reason, got {other}"),
    }
}

fn assert_closed_for(closed: (u32, String), code: u32, says: &str) {
    let (got, reason) = closed;
    assert_eq!(got, code, "close code (reason: {reason})");
    assert!(
        reason.contains(says),
        "the close reason should say {says:?}: {reason}"
    );
}

/// A raw agent past its handshake: Hello sent, Welcome received.
async fn welcomed(harness: &Harness, id: &str) -> RawAgent {
    let mut raw = raw_agent(harness, id).await;
    write_frame(&mut raw.send, &hello(SUPPORTED), 1 << 20)
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, raw.recv.next())
        .await
        .expect("answered in time");
    assert!(
        matches!(answer, Ok(Some(Message::Welcome(_)))),
        "{answer:?}"
    );
    raw
}

#[tokio::test]
async fn an_oversized_length_closes_only_that_connection() {
    let (harness, _good) = setup(|_| {}).await;
    during(&harness, async {
        // On the control stream, after Welcome.
        let mut raw = welcomed(&harness, "oversized-control").await;
        let _ = raw.send.write_all(&u32::MAX.to_be_bytes()).await;
        assert_closed_for(
            closed_by_server(&raw.connection).await,
            close::PROTOCOL_ERROR,
            "exceeds the limit",
        );
        // On a stream the agent opens (a fetch stream).
        let raw = welcomed(&harness, "oversized-fetch").await;
        let (mut send, _recv) = raw.connection.open_bi().await.unwrap();
        let _ = send.write_all(&u32::MAX.to_be_bytes()).await;
        assert_closed_for(
            closed_by_server(&raw.connection).await,
            close::PROTOCOL_ERROR,
            "exceeds the limit",
        );
    })
    .await;
    still_serving(&harness, "after-oversized").await;
}

#[tokio::test]
async fn a_truncated_frame_closes_only_that_connection() {
    let (harness, _good) = setup(|_| {}).await;
    during(&harness, async {
        // A length of 100, 10 bytes, then the end of the stream.
        let mut raw = welcomed(&harness, "truncated-fin").await;
        let mut partial = 100u32.to_be_bytes().to_vec();
        partial.extend_from_slice(&[0xa1; 10]);
        raw.send.write_all(&partial).await.unwrap();
        raw.send.finish().unwrap();
        assert_closed_for(
            closed_by_server(&raw.connection).await,
            close::PROTOCOL_ERROR,
            "stream ended inside a frame",
        );
        // The same, with the stream and the connection left open: the half frame stalls.
        let mut raw = welcomed(&harness, "truncated-open").await;
        raw.send.write_all(&partial).await.unwrap();
        assert_closed_for(
            closed_by_server(&raw.connection).await,
            close::PROTOCOL_ERROR,
            "stayed incomplete",
        );
        // Before Hello, the half frame is bounded by the handshake timeout.
        let mut raw = raw_agent(&harness, "truncated-hello").await;
        raw.send.write_all(&partial).await.unwrap();
        assert_closed_for(
            closed_by_server(&raw.connection).await,
            close::REJECTED,
            "no complete Hello within the handshake timeout",
        );
    })
    .await;
    still_serving(&harness, "after-truncated").await;
}

/// Messages only the server may send, which an agent sends here.
fn server_messages() -> Vec<Message> {
    vec![
        Message::Command(Command {
            id: "c-1".into(),
            topic: "echo".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            timeout_ms: None,
            idempotency_key: None,
        }),
        Message::Welcome(Welcome {
            session: "x".into(),
            protocol: 1,
            heartbeat_interval_ms: 1,
            features: vec![],
            limits: Limits {
                max_frame_bytes: 1,
                max_concurrent_commands: 1,
            },
        }),
        Message::PluginAssign(PluginAssign { plugins: vec![] }),
        Message::FetchReply(FetchReply {
            size: Some(1),
            error: None,
        }),
    ]
}

#[tokio::test]
async fn messages_of_the_wrong_role_close_only_that_connection() {
    let (harness, _good) = setup(|_| {}).await;
    during(&harness, async {
        for (i, message) in server_messages().into_iter().enumerate() {
            let kind = message.kind();
            // As the first frame, instead of Hello: Reject, then a close saying why.
            let mut raw = raw_agent(&harness, &format!("wrong-first-{i}")).await;
            write_frame(&mut raw.send, &message, 1 << 20).await.unwrap();
            match tokio::time::timeout(WAIT, raw.recv.next()).await {
                Ok(Ok(Some(Message::Reject(reject)))) => {
                    assert_eq!(reject.code, RejectCode::BadHello);
                    assert!(reject.message.contains(kind), "{}", reject.message);
                }
                other => panic!("expected Reject for {kind} before Hello, got {other:?}"),
            }
            assert_closed_for(
                closed_by_server(&raw.connection).await,
                close::REJECTED,
                &format!("expected Hello, got {kind}"),
            );

            // On the control stream after Welcome.
            let mut raw = welcomed(&harness, &format!("wrong-control-{i}")).await;
            let _ = write_frame(&mut raw.send, &message, 1 << 20).await;
            assert_closed_for(
                closed_by_server(&raw.connection).await,
                close::PROTOCOL_ERROR,
                &format!("agent sent `{kind}` on a control stream"),
            );

            // As the first frame of a stream the agent opens.
            let raw = welcomed(&harness, &format!("wrong-stream-{i}")).await;
            let (mut send, _recv) = raw.connection.open_bi().await.unwrap();
            let _ = write_frame(&mut send, &message, 1 << 20).await;
            assert_closed_for(
                closed_by_server(&raw.connection).await,
                close::PROTOCOL_ERROR,
                &format!("agent sent `{kind}` on a fetch stream"),
            );
        }
    })
    .await;
    still_serving(&harness, "after-wrong-role").await;
}

#[tokio::test]
async fn a_flood_of_streams_is_held_to_the_limit_and_then_closed() {
    const STREAMS: u32 = 4;
    let (harness, _good) = setup(|config| config.max_agent_streams = STREAMS).await;
    during(&harness, async {
        let raw = welcomed(&harness, "stream-flood").await;
        // ferry has no unidirectional streams: the server grants none, so one never opens.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), raw.connection.open_uni())
                .await
                .is_err(),
            "the server granted a unidirectional stream"
        );
        // As many bidirectional streams as it can, each with half a frame: only the limit's
        // worth open (the control stream is one of them); the rest wait for credit that does
        // not come.
        let mut opened = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(200), raw.connection.open_bi()).await {
                Ok(Ok((mut send, recv))) => {
                    let _ = send.write_all(&[0, 0]).await;
                    opened.push((send, recv));
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        assert_eq!(
            opened.len() as u32,
            STREAMS - 1,
            "streams opened beside the control stream"
        );
        // None of them names a package in time: the connection is closed.
        assert_closed_for(
            closed_by_server(&raw.connection).await,
            close::PROTOCOL_ERROR,
            "no Fetch within",
        );
    })
    .await;
    still_serving(&harness, "after-stream-flood").await;
}

#[tokio::test]
async fn slow_handshakes_are_closed_at_the_handshake_timeout() {
    let (harness, _good) = setup(|_| {}).await;
    during(&harness, async {
        // QUIC and TLS done, but no control stream ever.
        let raw = raw_agent(&harness, "no-control-stream").await;
        assert_closed_for(
            closed_by_server(&raw.connection).await,
            close::PROTOCOL_ERROR,
            "no control stream opened within the handshake timeout",
        );
        // The control stream opened (with the first byte of a length), but no Hello.
        let mut raw = raw_agent(&harness, "no-hello").await;
        raw.send.write_all(&[0]).await.unwrap();
        assert_closed_for(
            closed_by_server(&raw.connection).await,
            close::REJECTED,
            "no complete Hello within the handshake timeout",
        );
        // Hello a byte at a time, each byte well within the timeout, the whole far beyond it.
        let mut raw = raw_agent(&harness, "slowloris").await;
        let frame = {
            let body = codec::encode(&hello(SUPPORTED)).unwrap();
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend(body);
            frame
        };
        let drip = HANDSHAKE_TIMEOUT / 5;
        assert!(frame.len() > 10, "a Hello takes more than two timeouts to drip");
        let slow = async {
            for byte in &frame {
                if raw.send.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(drip).await;
            }
        };
        let closed = tokio::select! {
            closed = closed_by_server(&raw.connection) => closed,
            () = slow => panic!("the server took a whole Hello dripped over {:?}", drip * frame.len() as u32),
        };
        assert_closed_for(
            closed,
            close::REJECTED,
            "no complete Hello within the handshake timeout",
        );
    })
    .await;
    still_serving(&harness, "after-slow-handshakes").await;
}

#[tokio::test]
async fn a_flood_of_handshakes_is_refused_beyond_the_limit() {
    const PENDING: u32 = 3;
    // A longer timeout than the other cases, so that the first handshakes still hold their
    // slots while the rest arrive, even on a slow machine.
    let (harness, _good) = setup(|config| {
        config.max_pending_handshakes = PENDING;
        config.handshake_timeout = Duration::from_secs(3);
    })
    .await;
    let (admitted, refused) = during(&harness, async {
        let names: Vec<String> = (0..12).map(|i| format!("idle-{i}")).collect();
        let attempts = names.iter().map(|name| try_raw_agent(&harness, name));
        let mut admitted = Vec::new();
        let mut refused = 0;
        for attempt in futures::future::join_all(attempts).await {
            match attempt {
                Ok(raw) => admitted.push(raw),
                Err(quinn::ConnectionError::ConnectionClosed(close))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    refused += 1
                }
                Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
            }
        }
        // The ones let in never open their control stream: each is closed at the timeout.
        for raw in &admitted {
            assert_closed_for(
                closed_by_server(&raw.connection).await,
                close::PROTOCOL_ERROR,
                "no control stream opened within the handshake timeout",
            );
        }
        (admitted.len(), refused)
    })
    .await;
    assert!(
        admitted >= 1 && refused >= 1,
        "admitted {admitted}, refused {refused} with {PENDING} handshake slots"
    );
    // The slots are free again.
    still_serving(&harness, "after-handshake-flood").await;
}

/// Operator API connections are bounded: one that sends nothing, or its headers a byte at a
/// time, is closed at `api_header_timeout`; past `api_max_connections` open ones a new one is
/// closed at once; and once the idle ones are gone the API answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_api_connections_are_closed_and_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    const MAX: u32 = 4;
    let (harness, _good) = setup(|config| {
        config.api_header_timeout = HEADER_TIMEOUT;
        config.api_max_connections = MAX;
    })
    .await;
    let addr = harness
        .server()
        .api_addr()
        .expect("the harness's server has its API on");

    /// How long until the server closes `stream` (reading until end of stream), at most WAIT.
    async fn closed_after(stream: &mut TcpStream) -> Duration {
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("the server kept an idle API connection open for {WAIT:?}"),
            }
        }
    }

    // Connected, silent: closed at the header timeout, not before.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let waited = closed_after(&mut idle).await;
    assert!(
        waited >= HEADER_TIMEOUT - Duration::from_millis(200),
        "closed after {waited:?}, before the {HEADER_TIMEOUT:?} header timeout"
    );

    // A header sent a line at a time, each well within the timeout, is still closed at it.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickle = async {
        for n in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow
                .write_all(format!("x-slow-{n}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            assert!(n < 100, "the server kept reading a trickled header");
        }
    };
    tokio::time::timeout(WAIT, trickle)
        .await
        .expect("the trickled header is cut off");

    // The cap: MAX idle connections hold every slot, and one more is closed at once.
    let mut held = Vec::new();
    for _ in 0..MAX {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Give the accept loop time to take them all before the extra one arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let waited = closed_after(&mut extra).await;
    assert!(
        waited < HEADER_TIMEOUT / 2,
        "a connection past the cap waited {waited:?} to be closed"
    );

    // Once the held ones time out, the API answers again.
    for stream in &mut held {
        closed_after(stream).await;
    }
    still_serving(&harness, "after-api-flood").await;
}
