//! Enrollment: join tokens through the API, `ferry agent --join`'s exchange with a pinned CA,
//! refusals, the server choosing the id, renewal on the live connection, and revocation.

use std::path::Path;
use std::time::Duration;

use ferry_agent::enroll::{self, IdentityFiles, JoinError, JoinOptions, Joined};
use ferry_agent::{Agent, AgentConfig, ConnectionStatus};
use ferry_protocol::pki::{self, CertificateAuthority};
use ferry_protocol::tls::{self, TransportSettings};
use ferry_protocol::{
    AgentId, Enroll, EnrollCode, FrameReader, Message, SUPPORTED, close, write_frame,
};
use ferry_server::{RunRequest, RunStatus};
use ferry_tests::{Harness, WAIT, eventually};
use reqwest::Method;
use serde_json::{Value, json};

async fn api(harness: &Harness, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", harness.api_url()))
        .bearer_auth(harness.server().api_token());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Makes a join token through the API; returns its answer (token, id, CA fingerprint…).
async fn token(harness: &Harness, body: Value) -> Value {
    let (status, out) = api(harness, Method::POST, "/v1/join-tokens", Some(body)).await;
    assert_eq!(status, 201, "{out}");
    out
}

fn options(harness: &Harness, created: &Value, name: &str, data_dir: &Path) -> JoinOptions {
    JoinOptions {
        server: harness.config.listen.to_string(),
        server_name: "localhost".into(),
        token: created["token"].as_str().unwrap().to_string(),
        ca_fingerprint: created["ca_fingerprint"].as_str().unwrap().to_string(),
        name: Some(name.to_string()),
        data_dir: data_dir.to_path_buf(),
        timeout: WAIT,
    }
}

/// The configuration of an agent that enrolled into `data_dir`.
fn enrolled_config(harness: &Harness, name: &str) -> AgentConfig {
    let mut config = harness.agent_config(name);
    IdentityFiles::in_data_dir(&config.data_dir).apply(&mut config);
    config
}

fn data_dir(harness: &Harness, name: &str) -> std::path::PathBuf {
    harness.path(&format!("agent-{name}"))
}

async fn token_state(harness: &Harness, id: &str) -> Value {
    let (status, list) = api(harness, Method::GET, "/v1/join-tokens", None).await;
    assert_eq!(status, 200);
    list.as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .expect("the token is listed")
}

#[tokio::test]
async fn an_agent_joins_with_a_token_runs_commands_and_carries_the_tokens_labels() {
    let harness = Harness::start().await;
    let created = token(
        &harness,
        json!({"labels": {"site": "lab", "tier": "edge"}, "ttl": "1h", "uses": 1}),
    )
    .await;
    assert_eq!(
        created["ca_fingerprint"],
        pki::fingerprint(
            &pki::first_cert_der(
                &std::fs::read_to_string(harness.server().ca_cert_path()).unwrap()
            )
            .unwrap()
        )
    );
    let dir = data_dir(&harness, "joiner");
    let joined = enroll::join(&options(&harness, &created, "joiner", &dir))
        .await
        .expect("the agent enrolls");
    assert_eq!(joined, Joined::Enrolled(AgentId::new("joiner").unwrap()));
    let files = IdentityFiles::in_data_dir(&dir);
    assert!(files.exists() && files.plugin_key.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    let cert_pem = std::fs::read_to_string(&files.cert).unwrap();
    let der = pki::first_cert_der(&cert_pem).unwrap();
    let lifetime = pki::cert_not_after(&der).unwrap() - time::OffsetDateTime::now_utc();
    assert!(
        lifetime <= time::Duration::hours(24) && lifetime > time::Duration::hours(23),
        "a 24 h certificate by default: {lifetime}"
    );

    let agent = Agent::start(enrolled_config(&harness, "joiner"))
        .await
        .expect("the enrolled agent starts");
    assert_eq!(agent.id().as_str(), "joiner");
    agent.wait_connected(WAIT).await.expect("it connects");
    let result = harness.run("joiner", "echo", b"{\"hi\":1}", None).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");

    let (_, found) = api(&harness, Method::GET, "/v1/agents?selector=site=lab", None).await;
    let ids: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["joiner"], "the token's labels select the agent");
    let listed = token_state(&harness, created["id"].as_str().unwrap()).await;
    assert_eq!(listed["state"], "used");
    assert_eq!(listed["enrolled"], json!(["joiner"]));
    assert!(
        listed.get("token").is_none(),
        "a listing never shows the token"
    );

    // Joining again on the enrolled data directory keeps the identity; the used-up token is
    // not even sent.
    let again = enroll::join(&options(&harness, &created, "joiner", &dir))
        .await
        .unwrap();
    assert_eq!(again, Joined::AlreadyEnrolled);
    assert_eq!(std::fs::read_to_string(&files.cert).unwrap(), cert_pem);
    agent.shutdown().await;
}

async fn refused(harness: &Harness, created: &Value, name: &str) -> (EnrollCode, String) {
    let dir = data_dir(harness, name);
    let err = enroll::join(&options(harness, created, name, &dir))
        .await
        .expect_err("the server must refuse");
    assert!(
        !IdentityFiles::in_data_dir(&dir).cert.exists(),
        "no certificate is written"
    );
    assert!(
        harness
            .server()
            .agent(&AgentId::new(name).unwrap())
            .is_none(),
        "nothing is registered"
    );
    match err {
        JoinError::Refused { code, message } => {
            assert!(
                err_text(code, &message).contains("ferry token create"),
                "the refusal says what to do: {message}"
            );
            (code, message)
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

fn err_text(code: EnrollCode, message: &str) -> String {
    format!("{code:?}: {message}")
}

#[tokio::test]
async fn used_expired_unknown_and_revoked_tokens_are_refused_clearly() {
    let harness = Harness::start().await;

    let once = token(&harness, json!({})).await;
    enroll::join(&options(
        &harness,
        &once,
        "first",
        &data_dir(&harness, "first"),
    ))
    .await
    .expect("the first use works");
    let (code, message) = refused(&harness, &once, "second").await;
    assert_eq!(code, EnrollCode::UsedToken);
    assert!(message.contains("used up"), "{message}");

    let short = token(&harness, json!({"ttl": "1s"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, message) = refused(&harness, &short, "late").await;
    assert_eq!(code, EnrollCode::ExpiredToken);
    assert!(message.contains("expired"), "{message}");

    let mut unknown = token(&harness, json!({})).await;
    unknown["token"] = json!("ferry_jt_0123456789abcdef");
    let (code, message) = refused(&harness, &unknown, "stranger").await;
    assert_eq!(code, EnrollCode::UnknownToken);
    assert!(message.contains("does not know"), "{message}");

    let revoked = token(&harness, json!({"uses": 5})).await;
    let (status, out) = api(
        &harness,
        Method::DELETE,
        &format!("/v1/join-tokens/{}", revoked["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!((status, out["state"].as_str()), (200, Some("revoked")));
    let (code, message) = refused(&harness, &revoked, "too-late").await;
    assert_eq!(code, EnrollCode::RevokedToken);
    assert!(message.contains("revoked"), "{message}");

    let (status, out) = api(
        &harness,
        Method::POST,
        "/v1/join-tokens",
        Some(json!({"uses": 0})),
    )
    .await;
    assert_eq!(status, 400, "{out}");
}

#[tokio::test]
async fn a_wrong_ca_fingerprint_is_refused_by_the_agent_before_it_sends_the_token() {
    let harness = Harness::start().await;
    let created = token(&harness, json!({})).await;
    let mut wrong = created.clone();
    let other = CertificateAuthority::generate("another CA").unwrap();
    wrong["ca_fingerprint"] = json!(other.fingerprint());
    let dir = data_dir(&harness, "careful");
    let err = enroll::join(&options(&harness, &wrong, "careful", &dir))
        .await
        .expect_err("the agent must refuse a server whose CA is not the pinned one");
    let text = err.to_string();
    assert!(
        matches!(err, JoinError::Connect(_)) && text.contains("pinned fingerprint"),
        "{text}"
    );
    assert!(!IdentityFiles::in_data_dir(&dir).exists());
    let listed = token_state(&harness, created["id"].as_str().unwrap()).await;
    assert_eq!(
        listed["state"], "active",
        "the token never reached the server"
    );
    // A malformed fingerprint is refused before any connection.
    let mut garbled = created.clone();
    garbled["ca_fingerprint"] = json!("abc");
    let err = enroll::join(&options(&harness, &garbled, "careful", &dir))
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Invalid(_)), "{err}");
    // The right fingerprint, and the same token, work.
    enroll::join(&options(&harness, &created, "careful", &dir))
        .await
        .expect("the pinned CA is accepted");
}

/// Sends one `Enroll` over a pinned enrollment connection and returns the answer.
async fn enroll_raw(harness: &Harness, fingerprint: &str, request: Enroll) -> Message {
    let client = tls::enroll_client_config(fingerprint, &TransportSettings::default()).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(client, harness.config.listen, "localhost")
        .unwrap()
        .await
        .expect("the pinned server is accepted");
    let (mut send, recv) = connection.open_bi().await.unwrap();
    write_frame(&mut send, &Message::Enroll(request), 1 << 20)
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, FrameReader::new(recv, 1 << 20).next())
        .await
        .expect("answered in time")
        .unwrap()
        .expect("an answer");
    connection.close(close::NORMAL.into(), b"done");
    answer
}

#[tokio::test]
async fn the_server_names_the_certificate_whatever_the_csr_asks_for() {
    let harness = Harness::start().await;
    let created = token(&harness, json!({"uses": 3})).await;
    let fingerprint = created["ca_fingerprint"].as_str().unwrap();
    let (key, csr) = pki::new_agent_key_and_csr(&AgentId::new("victim").unwrap()).unwrap();
    let answer = enroll_raw(
        &harness,
        fingerprint,
        Enroll {
            token: created["token"].as_str().unwrap().into(),
            csr,
            requested_id: "sneaky".into(),
        },
    )
    .await;
    let Message::Enrolled(enrolled) = answer else {
        panic!("expected Enrolled, got {answer:?}")
    };
    assert_eq!(enrolled.agent_id, "sneaky");
    let der = pki::first_cert_der(&enrolled.certificate_pem).unwrap();
    assert_eq!(
        ferry_protocol::identity::agent_id_from_cert(&der)
            .unwrap()
            .as_str(),
        "sneaky",
        "the CSR's SAN for 'victim' is ignored"
    );
    assert_eq!(
        pki::cert_public_key(&der).unwrap(),
        pki::key_public_key(&key).unwrap()
    );

    // The same id for another key is taken; a garbled CSR is refused; neither uses the token.
    let (_, csr) = pki::new_agent_key_and_csr(&AgentId::new("sneaky").unwrap()).unwrap();
    let answer = enroll_raw(
        &harness,
        fingerprint,
        Enroll {
            token: created["token"].as_str().unwrap().into(),
            csr,
            requested_id: "sneaky".into(),
        },
    )
    .await;
    let Message::EnrollRefused(refusal) = answer else {
        panic!("expected a refusal, got {answer:?}")
    };
    assert_eq!(refusal.code, EnrollCode::IdTaken, "{}", refusal.message);
    assert!(refusal.message.contains("--name"), "{}", refusal.message);
    let answer = enroll_raw(
        &harness,
        fingerprint,
        Enroll {
            token: created["token"].as_str().unwrap().into(),
            csr: b"not a csr".to_vec(),
            requested_id: "garbled".into(),
        },
    )
    .await;
    assert!(
        matches!(&answer, Message::EnrollRefused(r) if r.code == EnrollCode::BadRequest),
        "{answer:?}"
    );
    let listed = token_state(&harness, created["id"].as_str().unwrap()).await;
    assert_eq!(listed["enrolled"], json!(["sneaky"]));
}

#[tokio::test]
async fn a_connection_without_a_certificate_reaches_nothing_but_enrollment() {
    let harness = Harness::start().await;
    let fingerprint = harness.server().ca_fingerprint();
    // An enrollment connection that sends a Hello instead is cut off by name.
    let client = tls::enroll_client_config(&fingerprint, &TransportSettings::default()).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(client, harness.config.listen, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, recv) = connection.open_bi().await.unwrap();
    let hello = Message::Hello(ferry_protocol::Hello {
        protocol: SUPPORTED,
        agent_version: "test".into(),
        labels: Default::default(),
        wit_versions: vec![],
        topics: vec![],
        read_only: Vec::new(),
        cached_plugins: vec![],
        instance: None,
    });
    write_frame(&mut send, &hello, 1 << 20).await.unwrap();
    let answer = tokio::time::timeout(WAIT, FrameReader::new(recv, 1 << 20).next())
        .await
        .expect("the server reacts in time");
    assert!(answer.is_err() || matches!(answer, Ok(None)), "{answer:?}");
    let reason = connection.close_reason().expect("closed").to_string();
    assert!(
        reason.contains("Hello") && reason.contains("enroll"),
        "{reason}"
    );
    assert!(harness.server().agents().is_empty());
}

#[tokio::test]
async fn the_certificate_is_renewed_on_the_live_connection_without_dropping_commands() {
    let harness = Harness::start_with(|c| c.agent_cert_ttl = Duration::from_secs(12)).await;
    let created = token(&harness, json!({})).await;
    let dir = data_dir(&harness, "renewer");
    enroll::join(&options(&harness, &created, "renewer", &dir))
        .await
        .unwrap();
    let files = IdentityFiles::in_data_dir(&dir);
    let first = std::fs::read_to_string(&files.cert).unwrap();
    let first_not_after = pki::cert_not_after(&pki::first_cert_der(&first).unwrap()).unwrap();
    // Only the fixture this test runs, from the shared compile cache: the certificate lives
    // 12 s, and compiling the built-ins in a debug build on a loaded machine can take longer.
    let mut config = enrolled_config(&harness, "renewer");
    config.builtins = false;
    config.cache_dir = Some(harness.path("components"));
    let agent = Agent::start(config).await.unwrap();
    let session = agent.wait_connected(WAIT).await.unwrap();

    // Runs until cancelled: across the renewal, at about 8 s.
    let command = harness
        .server()
        .submit(RunRequest {
            agent: AgentId::new("renewer").unwrap(),
            topic: "fault.cancel".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            timeout: Some(Duration::from_secs(120)),
            idempotency_key: None,
            data: Default::default(),
            deliver_within: None,
        })
        .await
        .unwrap();
    eventually("the command runs", || {
        command.view().status == RunStatus::Running
    })
    .await;
    eventually("the certificate file is renewed", || {
        std::fs::read_to_string(&files.cert).is_ok_and(|now| now != first)
    })
    .await;
    let renewed = std::fs::read_to_string(&files.cert).unwrap();
    let renewed_not_after = pki::cert_not_after(&pki::first_cert_der(&renewed).unwrap()).unwrap();
    assert!(renewed_not_after > first_not_after);
    assert_eq!(
        agent.status(),
        ConnectionStatus::Connected {
            session: session.clone()
        },
        "the connection was kept"
    );
    command.request_cancel();
    let view = tokio::time::timeout(WAIT, command.wait()).await.unwrap();
    assert_eq!(view.status, RunStatus::Cancelled, "{view:?}");
    assert_eq!(
        agent.status(),
        ConnectionStatus::Connected { session },
        "the command ended on the same connection"
    );

    // Once the first certificate has expired, a new connection must present a renewed one.
    let wait = first_not_after - time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    if wait.is_positive() {
        tokio::time::sleep(wait.try_into().unwrap()).await;
    }
    let mut harness = harness;
    harness.restart_server().await;
    agent
        .wait_connected(WAIT)
        .await
        .expect("the agent reconnects with its renewed certificate");
    let result = harness.run("renewer", "fault.nap", b"10", None).await;
    assert_eq!(result.status, RunStatus::Succeeded, "{result:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_revoked_agent_is_cut_off_now_refused_at_its_handshake_and_cannot_enroll_again() {
    let harness = Harness::start().await;
    let created = token(&harness, json!({"uses": 2})).await;
    let dir = data_dir(&harness, "outcast");
    enroll::join(&options(&harness, &created, "outcast", &dir))
        .await
        .unwrap();
    let agent = Agent::start(enrolled_config(&harness, "outcast"))
        .await
        .unwrap();
    agent.wait_connected(WAIT).await.unwrap();
    let (status, out) = api(
        &harness,
        Method::POST,
        "/v1/agents/outcast/revoke",
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    eventually("the live connection is closed", || {
        matches!(agent.status(), ConnectionStatus::Disconnected { ref reason, .. } if reason.contains("revoked"))
    })
    .await;
    // Reconnection attempts keep being refused.
    let mut status = agent.watch_status();
    let refused_again = async {
        loop {
            status.changed().await.unwrap();
            if let ConnectionStatus::Disconnected { reason, .. } = &*status.borrow() {
                break reason.clone();
            }
        }
    };
    let reason = tokio::time::timeout(WAIT, refused_again).await.unwrap();
    assert!(reason.contains("revoked"), "{reason}");
    agent.shutdown().await;
    // Its id cannot be enrolled again, with another key, while it is revoked.
    let other = data_dir(&harness, "outcast-again");
    let err = enroll::join(&options(&harness, &created, "outcast", &other))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            JoinError::Refused {
                code: EnrollCode::AgentRevoked,
                ..
            }
        ),
        "{err}"
    );
}
