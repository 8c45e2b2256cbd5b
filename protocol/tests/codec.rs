//! Property tests of the codec and framing: round trips, truncation, oversized frames and
//! garbage. Whatever the bytes, the answer is a message or a clean error, never a panic.

use std::pin::Pin;
use std::task::{Context, Poll};

use ferry_protocol::codec::{self, CodecError};
use ferry_protocol::frame::{self, FrameError, FrameReader};
use ferry_protocol::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..300)
}

fn range() -> impl Strategy<Value = VersionRange> {
    (any::<u32>(), any::<u32>()).prop_map(|(min, max)| VersionRange { min, max })
}

fn level() -> impl Strategy<Value = LogLevel> {
    prop_oneof![
        Just(LogLevel::Trace),
        Just(LogLevel::Debug),
        Just(LogLevel::Info),
        Just(LogLevel::Warn),
        Just(LogLevel::Error)
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Succeeded),
        text().prop_map(Outcome::InvalidInput),
        text().prop_map(Outcome::Denied),
        text().prop_map(Outcome::Failed),
        Just(Outcome::Cancelled),
        Just(Outcome::TimedOut),
        text().prop_map(Outcome::Crashed),
        text().prop_map(Outcome::UnknownTopic),
        text().prop_map(Outcome::Rejected),
    ]
}

fn reject_code() -> impl Strategy<Value = RejectCode> {
    prop_oneof![
        Just(RejectCode::UnsupportedVersion),
        Just(RejectCode::BadHello),
        Just(RejectCode::DuplicateAgent),
        Just(RejectCode::Unavailable)
    ]
}

fn metrics() -> impl Strategy<Value = HostMetrics> {
    (
        0.0f32..100.0,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(cpu_percent, mu, mt, du, dt, up)| HostMetrics {
            cpu_percent,
            memory_used_bytes: mu,
            memory_total_bytes: mt,
            disk_used_bytes: du,
            disk_total_bytes: dt,
            uptime_secs: up,
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![session_message(), plugin_message(), enroll_message()]
}

/// Enrollment and renewal.
fn enroll_message() -> impl Strategy<Value = Message> {
    let code = prop_oneof![
        Just(EnrollCode::UnknownToken),
        Just(EnrollCode::ExpiredToken),
        Just(EnrollCode::UsedToken),
        Just(EnrollCode::RevokedToken),
        Just(EnrollCode::IdTaken),
        Just(EnrollCode::AgentRevoked),
        Just(EnrollCode::BadRequest),
        Just(EnrollCode::Unavailable),
    ];
    prop_oneof![
        (text(), bytes(), text()).prop_map(|(token, csr, requested_id)| Message::Enroll(Enroll {
            token,
            csr,
            requested_id
        })),
        (
            text(),
            text(),
            text(),
            proptest::option::of(text()),
            any::<i64>()
        )
            .prop_map(
                |(agent_id, certificate_pem, ca_pem, plugin_key, not_after)| {
                    Message::Enrolled(Enrolled {
                        agent_id,
                        certificate_pem,
                        ca_pem,
                        plugin_key,
                        not_after,
                    })
                }
            ),
        (code, text())
            .prop_map(|(code, message)| Message::EnrollRefused(EnrollRefused { code, message })),
        bytes().prop_map(|csr| Message::Renew(Renew { csr })),
        (text(), any::<i64>()).prop_map(|(certificate_pem, not_after)| Message::Renewed(Renewed {
            certificate_pem,
            not_after
        })),
    ]
}

fn digest() -> impl Strategy<Value = package::Digest> {
    any::<[u8; 32]>().prop_map(package::Digest)
}

/// DataRequest/DataResponse and the plugin-distribution messages.
fn plugin_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), text())
            .prop_map(|(request, key)| Message::DataRequest(DataRequest { request, key })),
        text().prop_map(|id| Message::ResultAck(ResultAck { id })),
        (
            any::<u32>(),
            proptest::option::of(bytes()),
            proptest::option::of(text())
        )
            .prop_map(
                |(request, value, error)| Message::DataResponse(DataResponse {
                    request,
                    value,
                    error
                })
            ),
        vec(
            (
                text(),
                text(),
                digest(),
                bytes(),
                any::<u64>(),
                vec(text(), 0..3)
            ),
            0..3
        )
        .prop_map(|plugins| {
            Message::PluginAssign(PluginAssign {
                plugins: plugins
                    .into_iter()
                    .map(
                        |(name, version, digest, signature, size, topics)| AssignedPlugin {
                            name,
                            version,
                            digest,
                            signature,
                            size,
                            topics,
                        },
                    )
                    .collect(),
            })
        }),
        (
            vec(
                (text(), text(), digest(), proptest::option::of(text())),
                0..3
            ),
            vec(text(), 0..3)
        )
            .prop_map(|(plugins, topics)| {
                Message::PluginReport(PluginReport {
                    plugins: plugins
                        .into_iter()
                        .map(|(name, version, digest, failed)| PluginStatus {
                            name,
                            version,
                            digest,
                            state: failed.map_or(PluginState::Ready, PluginState::Failed),
                        })
                        .collect(),
                    topics,
                    read_only: Vec::new(),
                })
            }),
        digest().prop_map(|digest| Message::Fetch(Fetch { digest })),
        text().prop_map(|reason| Message::Leave(Leave { reason })),
        (any::<Option<u64>>(), proptest::option::of(text()))
            .prop_map(|(size, error)| Message::FetchReply(FetchReply { size, error })),
        bytes().prop_map(|bytes| Message::PackageChunk(PackageChunk { bytes })),
    ]
}

fn session_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            range(),
            text(),
            btree_map(text(), text(), 0..4),
            vec(text(), 0..3),
            vec(text(), 0..3),
            vec(text(), 0..3),
            proptest::option::of(text())
        )
            .prop_map(
                |(
                    protocol,
                    agent_version,
                    labels,
                    wit_versions,
                    topics,
                    cached_plugins,
                    instance,
                )| {
                    Message::Hello(Hello {
                        protocol,
                        agent_version,
                        labels,
                        wit_versions,
                        topics,
                        read_only: Vec::new(),
                        cached_plugins,
                        instance,
                    })
                }
            ),
        (
            text(),
            any::<u32>(),
            any::<u64>(),
            vec(text(), 0..3),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(session, protocol, hb, features, max_frame_bytes, max_concurrent_commands)| {
                    Message::Welcome(Welcome {
                        session,
                        protocol,
                        heartbeat_interval_ms: hb,
                        features,
                        limits: Limits {
                            max_frame_bytes,
                            max_concurrent_commands,
                        },
                    })
                }
            ),
        (
            reject_code(),
            text(),
            any::<Option<u64>>(),
            proptest::option::of(text()),
            proptest::option::of(range())
        )
            .prop_map(
                |(code, message, retry_after_ms, redirect, server_protocol)| {
                    Message::Reject(Reject {
                        code,
                        message,
                        retry_after_ms,
                        redirect,
                        server_protocol,
                        agent_protocol: server_protocol,
                    })
                }
            ),
        (
            metrics(),
            any::<u32>(),
            text(),
            any::<bool>(),
            vec((text(), text(), any::<Option<u32>>(), any::<u32>()), 0..3)
        )
            .prop_map(|(metrics, running_commands, sent_at, ok, runtimes)| {
                Message::Heartbeat(Heartbeat {
                    metrics,
                    running_commands,
                    sent_at,
                    health: if ok { Health::Ok } else { Health::Degraded },
                    runtimes: runtimes
                        .into_iter()
                        .map(|(name, status, pid, restarts)| RuntimeState {
                            name,
                            status,
                            pid,
                            restarts,
                        })
                        .collect(),
                })
            }),
        text().prop_map(|reason| Message::Bye(Bye { reason })),
        (
            text(),
            text(),
            bytes(),
            text(),
            any::<Option<u64>>(),
            proptest::option::of(text())
        )
            .prop_map(
                |(id, topic, payload, content_type, timeout_ms, idempotency_key)| {
                    Message::Command(Command {
                        id,
                        topic,
                        payload,
                        content_type,
                        timeout_ms,
                        idempotency_key,
                    })
                }
            ),
        text().prop_map(|reason| Message::Cancel(Cancel { reason })),
        text().prop_map(|id| Message::Accepted(Accepted { id })),
        (any::<u8>(), text())
            .prop_map(|(percent, message)| Message::Progress(Progress { percent, message })),
        (level(), text()).prop_map(|(level, message)| Message::Log(Log { level, message })),
        (
            text(),
            outcome(),
            bytes(),
            any::<u64>(),
            any::<Option<u64>>(),
            any::<u64>()
        )
            .prop_map(
                |(id, outcome, payload, duration_us, fuel, peak_memory_bytes)| {
                    Message::Result(CommandResult {
                        id,
                        outcome,
                        payload,
                        stats: ResultStats {
                            duration_us,
                            fuel,
                            peak_memory_bytes,
                        },
                    })
                }
            ),
    ]
}

/// Hands out its data in the given chunk sizes, to exercise reads that end mid-frame.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let size = this
            .chunks
            .get(this.next)
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        this.next += 1;
        let end = this
            .pos
            .saturating_add(size)
            .min(this.data.len())
            .min(this.pos + buf.remaining());
        buf.put_slice(&this.data[this.pos..end]);
        this.pos = end;
        Poll::Ready(Ok(()))
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(m in message()) {
        let bytes = codec::encode(&m).unwrap();
        prop_assert_eq!(codec::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn frames_round_trip_through_a_stream_cut_anywhere(
        ms in vec(message(), 1..6),
        chunks in vec(1usize..64, 0..200),
    ) {
        let mut data = Vec::new();
        for m in &ms {
            data.extend(frame::encode_frame(m, DEFAULT_MAX_FRAME).unwrap());
        }
        let mut reader = FrameReader::new(Chunked { data, pos: 0, chunks, next: 0 }, DEFAULT_MAX_FRAME);
        let got = block_on(async {
            let mut got = Vec::new();
            while let Some(m) = reader.next().await.unwrap() {
                got.push(m);
            }
            got
        });
        prop_assert_eq!(got, ms);
    }

    #[test]
    fn a_truncated_frame_is_incomplete_never_wrong(m in message(), cut in any::<prop::sample::Index>()) {
        let full = frame::encode_frame(&m, DEFAULT_MAX_FRAME).unwrap();
        let cut = cut.index(full.len());
        prop_assert!(frame::decode_frame(&full[..cut], DEFAULT_MAX_FRAME).unwrap().is_none());
        let mut reader = FrameReader::new(&full[..cut], DEFAULT_MAX_FRAME);
        let result = block_on(reader.next());
        if cut == 0 {
            prop_assert!(matches!(result, Ok(None)));
        } else {
            prop_assert!(matches!(result, Err(FrameError::Truncated { .. })), "{:?}", result);
        }
    }

    #[test]
    fn garbage_never_panics(data in vec(any::<u8>(), 0..512)) {
        let _ = codec::decode(&data);
        let _ = frame::decode_frame(&data, 1024);
        let mut reader = FrameReader::new(&data[..], 1024);
        block_on(async { while let Ok(Some(_)) = reader.next().await {} });
    }

    #[test]
    fn flipped_bytes_never_panic(m in message(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = codec::encode(&m).unwrap();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        let _ = codec::decode(&bytes);
    }
}

#[test]
fn an_oversized_length_is_refused_before_the_body_arrives() {
    // Only the header is there: a reader that allocated the announced size first would need
    // 4 GiB; this one must refuse at once.
    let header = u32::MAX.to_be_bytes();
    let mut reader = FrameReader::new(&header[..], DEFAULT_MAX_FRAME);
    match block_on(reader.next()) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, u64::from(u32::MAX));
            assert_eq!(max, DEFAULT_MAX_FRAME);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        frame::decode_frame(&header, 16),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn an_oversized_message_is_refused_when_sending() {
    let m = Message::Bye(Bye {
        reason: "x".repeat(100),
    });
    assert!(matches!(
        frame::encode_frame(&m, 50),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn trailing_bytes_after_a_message_are_an_error() {
    let mut bytes = codec::encode(&Message::Bye(Bye { reason: "r".into() })).unwrap();
    bytes.push(0);
    assert!(matches!(
        codec::decode(&bytes),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn an_unknown_message_kind_is_a_clean_error() {
    #[derive(serde::Serialize)]
    enum Future {
        Teleport { to: String },
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(&Future::Teleport { to: "mars".into() }, &mut bytes).unwrap();
    let err = codec::decode(&bytes).unwrap_err().to_string();
    assert!(err.contains("Teleport"), "{err}");
}

#[test]
fn deeply_nested_input_is_refused_without_overflowing_the_stack() {
    // 100k nested arrays: the decoder's recursion limit must stop it.
    let bytes = vec![0x81u8; 100_000];
    assert!(codec::decode(&bytes).is_err());
}

#[test]
fn payloads_are_cbor_byte_strings_not_arrays() {
    let m = Message::Command(Command {
        id: "c".into(),
        topic: "t".into(),
        payload: vec![200; 1000],
        content_type: "application/octet-stream".into(),
        timeout_ms: None,
        idempotency_key: None,
    });
    // A byte string costs 1000 bytes plus a small header; an array would cost 2 bytes per 200.
    let len = codec::encode(&m).unwrap().len();
    assert!(len < 1200, "{len} bytes");
}

#[test]
fn the_allowlist_names_the_breach() {
    let cmd = Message::Cancel(Cancel {
        reason: String::new(),
    });
    let err = cmd
        .check_allowed(Peer::Agent, StreamKind::Command)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "agent sent `Cancel` on a command stream, where only Accepted, Progress, Log, Result or DataRequest is allowed"
    );
    assert!(cmd.check_allowed(Peer::Server, StreamKind::Command).is_ok());
    let hello = Message::Hello(Hello {
        protocol: SUPPORTED,
        agent_version: String::new(),
        labels: Default::default(),
        wit_versions: vec![],
        topics: vec![],
        read_only: Vec::new(),
        cached_plugins: vec![],
        instance: None,
    });
    assert!(
        hello
            .check_allowed(Peer::Server, StreamKind::Control)
            .is_err()
    );
    assert!(
        hello
            .check_allowed(Peer::Agent, StreamKind::Command)
            .is_err()
    );
    let fetch = Message::Fetch(Fetch {
        digest: package::Digest([0; 32]),
    });
    assert!(fetch.check_allowed(Peer::Agent, StreamKind::Fetch).is_ok());
    assert!(
        fetch
            .check_allowed(Peer::Agent, StreamKind::Control)
            .is_err()
    );
    let assign = Message::PluginAssign(PluginAssign { plugins: vec![] });
    assert_eq!(
        assign
            .check_allowed(Peer::Agent, StreamKind::Control)
            .unwrap_err()
            .to_string(),
        "agent sent `PluginAssign` on a control stream, where only Hello, Heartbeat, Bye, PluginReport, Leave or Renew is allowed"
    );
    assert!(
        assign
            .check_allowed(Peer::Server, StreamKind::Control)
            .is_ok()
    );
    // Enrollment: a token only on an enroll stream, a renewal only on the control stream
    // (which exists only for an authenticated agent).
    let enroll = Message::Enroll(Enroll {
        token: String::new(),
        csr: vec![],
        requested_id: String::new(),
    });
    assert!(
        enroll
            .check_allowed(Peer::Agent, StreamKind::Enroll)
            .is_ok()
    );
    for stream in [StreamKind::Control, StreamKind::Command, StreamKind::Fetch] {
        assert!(enroll.check_allowed(Peer::Agent, stream).is_err());
    }
    let renew = Message::Renew(Renew { csr: vec![] });
    assert!(
        renew
            .check_allowed(Peer::Agent, StreamKind::Control)
            .is_ok()
    );
    assert!(
        renew
            .check_allowed(Peer::Agent, StreamKind::Enroll)
            .is_err()
    );
    assert!(
        renew
            .check_allowed(Peer::Server, StreamKind::Control)
            .is_err()
    );
}

/// One small whole frame, for the stall tests.
fn small_frame() -> Vec<u8> {
    frame::encode_frame(
        &Message::ResultAck(ResultAck { id: "c-1".into() }),
        DEFAULT_MAX_FRAME,
    )
    .unwrap()
}

/// A frame begun must arrive whole within the stall limit; a stream idle between frames is not
/// bounded, and the clock starts again with each frame.
#[tokio::test(start_paused = true)]
async fn a_stall_limit_bounds_half_a_frame_but_not_idleness() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    let limit = Duration::from_secs(2);
    let frame = small_frame();
    let (mut tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, DEFAULT_MAX_FRAME).with_stall_limit(limit);

    // Idle for ten limits: still waiting, no error.
    assert!(
        tokio::time::timeout(limit * 10, reader.next())
            .await
            .is_err()
    );
    // A whole frame, then half of the next one that never finishes.
    tx.write_all(&frame).await.unwrap();
    tx.write_all(&frame[..3]).await.unwrap();
    assert!(matches!(
        reader.next().await,
        Ok(Some(Message::ResultAck(_)))
    ));
    match tokio::time::timeout(limit * 10, reader.next()).await {
        Ok(Err(FrameError::Stalled { limit: l, got: 3 })) => assert_eq!(l, limit),
        other => panic!("expected a stall, got {other:?}"),
    }

    // Without a limit, the same half frame waits for ever.
    let (mut tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, DEFAULT_MAX_FRAME);
    tx.write_all(&frame[..3]).await.unwrap();
    assert!(
        tokio::time::timeout(limit * 10, reader.next())
            .await
            .is_err()
    );
}

/// A limit set on a reader in use (the server's control stream after Hello) times a frame
/// already begun from the moment it is set, not from when its bytes came: before that, another
/// bound (the handshake deadline) was the only one.
#[tokio::test(start_paused = true)]
async fn a_stall_limit_set_later_times_a_begun_frame_from_then() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    let limit = Duration::from_secs(2);
    let frame = small_frame();
    let (mut tx, rx) = tokio::io::duplex(1024);
    let mut reader = FrameReader::new(rx, DEFAULT_MAX_FRAME);
    tx.write_all(&frame[..3]).await.unwrap();
    // Ten limits pass with half a frame and no limit: nothing happens.
    assert!(
        tokio::time::timeout(limit * 10, reader.next())
            .await
            .is_err()
    );
    reader.set_stall_limit(limit);
    let set_at = tokio::time::Instant::now();
    match reader.next().await {
        Err(FrameError::Stalled { limit: l, got: 3 }) => assert_eq!(l, limit),
        other => panic!("expected a stall, got {other:?}"),
    }
    assert_eq!(tokio::time::Instant::now() - set_at, limit);
}
