//! Mutual TLS: only agents with a certificate from the server's CA get in.

use std::sync::Arc;
use std::time::Duration;

use ferry_agent::{Agent, ConnectionStatus};
use ferry_protocol::pki::{CertificateAuthority, write_file};
use ferry_protocol::tls::{self, ALPN, Identity, TransportSettings};
use ferry_protocol::{AgentId, FrameReader, Hello, Message, SUPPORTED, write_frame};
use ferry_tests::{Harness, WAIT, eventually};

/// Connects like an agent would and returns how the server answered Hello.
async fn hello_with(
    client: quinn::ClientConfig,
    server: std::net::SocketAddr,
) -> Result<Message, String> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(client, server, "localhost")
        .unwrap()
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let attempt = async {
        let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let hello = Hello {
            protocol: SUPPORTED,
            agent_version: "test".into(),
            labels: Default::default(),
            wit_versions: vec![],
            topics: vec![],
            read_only: Vec::new(),
            cached_plugins: vec![],
            instance: None,
        };
        write_frame(&mut send, &Message::Hello(hello), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        FrameReader::new(recv, 1 << 20)
            .next()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "stream ended".to_string())
    };
    let result = tokio::time::timeout(WAIT, attempt)
        .await
        .expect("the server answers in time");
    // The TLS alert, when there was one, is in the close reason.
    result.map_err(|e| match connection.close_reason() {
        Some(reason) => reason.to_string(),
        None => e,
    })
}

fn client_with_identity(identity: Identity, harness: &Harness) -> quinn::ClientConfig {
    let roots = tls::roots_from_pem_file(&harness.pki().ca_cert_path()).unwrap();
    tls::client_config(identity, roots, &TransportSettings::default()).unwrap()
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    let harness = Harness::start().await;
    let stranger_ca = CertificateAuthority::generate("some other CA").unwrap();
    let issued = stranger_ca
        .issue_agent(
            &AgentId::new("intruder").unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let identity =
        Identity::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
    let err = hello_with(
        client_with_identity(identity, &harness),
        harness.config.listen,
    )
    .await
    .expect_err("the server must refuse a certificate it did not issue");
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown"),
        "TLS refusal says why: {err}"
    );
    assert!(
        harness.server().agents().is_empty(),
        "the intruder was never registered"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    let harness = Harness::start().await;
    let roots = tls::roots_from_pem_file(&harness.pki().ca_cert_path()).unwrap();
    let mut tls_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls_config.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls_config).unwrap(),
    ));
    // The handshake itself completes (a new agent must be able to reach enrollment), but a
    // `ferry/1` connection without a certificate is closed before any handler runs.
    let err = hello_with(client, harness.config.listen)
        .await
        .expect_err("the server must refuse a client without a certificate");
    assert!(
        err.contains("no client certificate") && err.contains("ferry agent --join"),
        "the refusal says why and what to do: {err}"
    );
    assert!(harness.server().agents().is_empty());
}

#[tokio::test]
async fn an_agent_with_a_foreign_certificate_reports_why_it_cannot_connect() {
    let harness = Harness::start().await;
    let mut config = harness.agent_config("lost-sheep");
    let stranger_ca = CertificateAuthority::generate("some other CA").unwrap();
    let issued = stranger_ca
        .issue_agent(
            &AgentId::new("lost-sheep").unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    config.cert = harness.path("foreign.pem");
    config.key = harness.path("foreign.key");
    write_file(&config.cert, issued.cert_pem.as_bytes(), false).unwrap();
    write_file(&config.key, issued.key_pem.as_bytes(), true).unwrap();
    let agent = Agent::start(config).await.unwrap();
    eventually("the agent gives up this attempt with a reason", || {
        matches!(agent.status(), ConnectionStatus::Disconnected { .. })
    })
    .await;
    let ConnectionStatus::Disconnected { reason, .. } = agent.status() else {
        unreachable!()
    };
    assert!(
        reason.contains("UnknownIssuer") || reason.contains("unknown"),
        "{reason}"
    );
    assert!(harness.server().agents().is_empty());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_the_ca_lets_the_agent_in_under_its_certificate_id() {
    let harness = Harness::start().await;
    let pki = harness.pki();
    let (cert, key) = pki.ensure_agent(&AgentId::new("genuine").unwrap()).unwrap();
    let identity = Identity::from_pem_files(&cert, &key).unwrap();
    let answer = hello_with(
        client_with_identity(identity, &harness),
        harness.config.listen,
    )
    .await
    .unwrap();
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    eventually("the agent is registered under its certificate's id", || {
        harness.server().agents().iter().any(|a| a.id == "genuine")
    })
    .await;
}
