//! Every input an operator API caller chooses is bounded, and a name may not carry a terminal
//! escape, a line break or a bidi override: a request past a bound is refused whole with 400
//! and a message naming the bound, before the server holds anything for it, and the server
//! keeps serving.

use ferry_tests::Harness;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::Http;

/// Asserts `body` is refused with 400 and a message holding `says`.
async fn refused(http: &Http, token: &str, path: &str, body: Value, says: &str) {
    let (status, error) = http.call(Method::POST, path, Some(token), Some(body)).await;
    assert_eq!(status, 400, "{path}: {error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(says),
        "{path}: expected {says:?} in {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_past_their_bounds_and_escapes_in_names_are_refused() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("bounded").await;
    let http = Http::new(&harness);
    let token = harness.server().api_token().to_string();
    let command = |extra: Value| {
        let mut body = json!({"topic": "echo", "agent": "bounded", "payload": "x"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };

    refused(
        &http,
        &token,
        "/v1/commands",
        command(json!({"topic": "x".repeat(129)})),
        "at most 128",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/commands",
        command(json!({"topic": "echo\u{1b}[2J"})),
        "U+001B",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/commands",
        command(json!({"topic": "echo\u{202e}"})),
        "U+202E",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/commands",
        command(json!({"content_type": "a\r\nb"})),
        "content type",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/commands",
        command(json!({"data": {"k\u{7}": "v"}})),
        "data key",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/commands",
        command(json!({"deliver_within_ms": u64::MAX})),
        "deliver_within",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/commands",
        command(json!({"timeout_ms": u64::MAX})),
        "timeout",
    )
    .await;
    let many: Vec<String> = (0..10_001).map(|i| format!("a{i}")).collect();
    refused(
        &http,
        &token,
        "/v1/commands",
        json!({"topic": "echo", "agents": many, "payload": "x"}),
        "10000",
    )
    .await;

    refused(
        &http,
        &token,
        "/v1/api-tokens",
        json!({"name": "server", "scope": "read"}),
        "server",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/api-tokens",
        json!({"name": "ci\u{1b}]0;owned\u{7}", "scope": "read"}),
        "name",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/join-tokens",
        json!({"ttl": "1ns"}),
        "a second",
    )
    .await;
    let labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    refused(
        &http,
        &token,
        "/v1/join-tokens",
        json!({"labels": labels}),
        "64 labels",
    )
    .await;
    refused(
        &http,
        &token,
        "/v1/join-tokens",
        json!({"labels": {"env": "prod\u{2066}"}}),
        "label",
    )
    .await;

    // Within the bounds, the same requests work.
    let (status, created) = http
        .call(
            Method::POST,
            "/v1/commands",
            Some(&token),
            Some(command(json!({}))),
        )
        .await;
    assert_eq!(status, 202, "{created}");
}
