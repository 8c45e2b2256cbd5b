//! The operator API through real HTTP against a real server and agents on loopback: tokens and
//! scopes (401, 403), commands for many agents with their event stream, labels, revocation,
//! and the audit log.

use std::time::Duration;

use ferry_server::{AgentStatus, Scope};
use ferry_tests::{Harness, WAIT, eventually};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    pub(crate) fn new(harness: &Harness) -> Http {
        Http {
            client: reqwest::Client::new(),
            base: harness.api_url(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, Some(token), None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Reads a server-sent-event stream to its end: (event name, data).
    async fn events(&self, path: &str, token: &str) -> Vec<(String, Value)> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        let mut events = Vec::new();
        let read = async {
            while let Some(chunk) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let mut kind = String::new();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(k) = line.strip_prefix("event:") {
                            kind = k.trim().to_string();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if !data.is_empty() {
                        events.push((kind, serde_json::from_str(&data).unwrap()));
                    }
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("the event stream ends");
        events
    }
}

/// Fills `{param}`s in a documented path with a placeholder.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|part| {
            if part.starts_with('{') {
                "nobody"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_needs_a_valid_token_with_its_scope() {
    let harness = Harness::start().await;
    let http = Http::new(&harness);
    let admin = harness.server().api_token().to_string();
    let read = harness
        .server()
        .create_api_token("dashboard", Scope::Read)
        .unwrap();
    let run = harness.server().create_api_token("ci", Scope::Run).unwrap();

    let doc = http.get("/v1/openapi.json", &admin).await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let scope = op["x-ferry-scope"].as_str().unwrap();
            let url = concrete(path);
            if scope == "none" {
                let (status, _) = http.call(method.clone(), &url, None, None).await;
                assert_eq!(status, 200, "{method} {path} needs no token");
                continue;
            }
            for token in [None, Some("not-a-token"), Some("ferry_at_0000")] {
                let (status, body) = http.call(method.clone(), &url, token, None).await;
                assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
                assert_eq!(body["error"]["code"], "unauthorized", "{body}");
                assert!(body["error"]["message"].as_str().unwrap().len() > 20);
            }
            let needed: Scope = scope.parse().unwrap();
            for (token, has) in [(&read, Scope::Read), (&run, Scope::Run)] {
                let (status, body) = http.call(method.clone(), &url, Some(token), None).await;
                if has.covers(needed) {
                    assert!(
                        status != 401 && status != 403,
                        "{method} {path} with a {has} token: {status} {body}"
                    );
                } else {
                    assert_eq!(status, 403, "{method} {path} with a {has} token: {body}");
                    assert_eq!(body["error"]["code"], "forbidden");
                    let message = body["error"]["message"].as_str().unwrap();
                    assert!(message.contains(scope), "{message}");
                }
            }
            // The router serves every documented route: whatever the placeholder gets, it is
            // the route's own answer, not "no such endpoint" or "method not allowed".
            let (status, body) = http.call(method.clone(), &url, Some(&admin), None).await;
            assert!(
                status != 405 && body["error"]["code"] != "not-found",
                "{method} {path} is documented but not served: {status} {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} routes checked");

    let (status, body) = http
        .call(Method::GET, "/v1/nothing", Some(&admin), None)
        .await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not-found")));
}

#[tokio::test]
async fn a_command_for_a_selector_streams_every_agents_events_and_ends_with_a_summary() {
    let harness = Harness::start().await;
    let mut agents = Vec::new();
    for (id, env) in [("web-1", "prod"), ("web-2", "prod"), ("lab-1", "dev")] {
        let mut config = harness.agent_config(id);
        config.labels.insert("env".into(), env.into());
        let agent = ferry_agent::Agent::start(config).await.unwrap();
        agent.wait_connected(WAIT).await.unwrap();
        agents.push(agent);
    }
    let http = Http::new(&harness);
    let ci = harness.server().create_api_token("ci", Scope::Run).unwrap();

    let (status, created) = http
        .call(
            Method::POST,
            "/v1/commands",
            Some(&ci),
            Some(json!({"topic": "echo", "selector": "env=prod", "payload": {"n": 1}})),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["created_by"], "ci");
    assert_eq!(created["summary"]["total"], 2);

    let events = http.events(&format!("/v1/commands/{id}/events"), &ci).await;
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["summary"]["succeeded"], 2);
    for agent in ["web-1", "web-2"] {
        let kinds: Vec<&str> = events
            .iter()
            .filter(|(_, e)| e["agent"] == agent)
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(kinds.first(), Some(&"dispatched"), "{agent}: {kinds:?}");
        assert!(
            kinds.contains(&"accepted") && kinds.contains(&"progress"),
            "{kinds:?}"
        );
        assert_eq!(kinds.last(), Some(&"finished"), "{agent}: {kinds:?}");
    }
    assert!(events.iter().all(|(_, e)| e["agent"] != "lab-1"));

    let shown = http.get(&format!("/v1/commands/{id}"), &ci).await;
    let results = shown["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for result in results {
        assert_eq!(result["status"], "succeeded");
        assert_eq!(result["payload"], json!({"n": 1}));
    }

    // A list of agents, one of them unknown: it is undelivered, not an error for the others.
    let (status, created) = http
        .call(
            Method::POST,
            "/v1/commands",
            Some(&ci),
            Some(json!({"topic": "fault.fail", "agents": ["lab-1", "ghost"]})),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let other = created["id"].as_str().unwrap().to_string();
    http.events(&format!("/v1/commands/{other}/events"), &ci)
        .await;
    let shown = http.get(&format!("/v1/commands/{other}"), &ci).await;
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["summary"]["failed"], 1);
    assert_eq!(shown["summary"]["undelivered"], 1);
    let ghost = &shown["results"][1];
    assert!(
        ghost["detail"].as_str().unwrap().contains("not connected"),
        "{ghost}"
    );

    // Filters.
    let list = http.get("/v1/commands?topic=echo", &ci).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(
        list[0].get("results").is_none(),
        "listings leave results out"
    );
    let list = http.get("/v1/commands?agent=lab-1", &ci).await;
    assert_eq!(list[0]["id"], other);
    let list = http.get("/v1/commands?status=succeeded&limit=5", &ci).await;
    assert_eq!(list[0]["id"], id);
    let (status, body) = http
        .call(Method::GET, "/v1/commands?status=sideways", Some(&ci), None)
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid-query"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("timed-out") && message.contains("crashed"),
        "{message}"
    );
    // A status only runs have selects the commands with such a run: none ended so here.
    let list = http.get("/v1/commands?status=timed-out", &ci).await;
    assert_eq!(list, json!([]));
    let list = http.get("/v1/commands?status=succeeded", &ci).await;
    assert!(!list.as_array().unwrap().is_empty());

    // Requests that cannot be satisfied say why.
    for (body, code) in [
        (
            json!({"topic": "echo", "selector": "env=nowhere"}),
            "no-matching-agents",
        ),
        (
            json!({"topic": "echo", "agent": "ghost"}),
            "agent-not-connected",
        ),
        (
            json!({"topic": "echo", "agent": "web-1", "selector": "all"}),
            "invalid-request",
        ),
        (
            json!({"topic": "echo", "selector": "all", "max_errors": 0}),
            "invalid-request",
        ),
        (
            json!({"topic": "echo", "selector": "env"}),
            "invalid-selector",
        ),
    ] {
        let (status, answer) = http
            .call(Method::POST, "/v1/commands", Some(&ci), Some(body.clone()))
            .await;
        assert_eq!(answer["error"]["code"], code, "{body}: {status} {answer}");
    }
    let (status, body) = http
        .call(
            Method::POST,
            &format!("/v1/commands/{id}/cancel"),
            Some(&ci),
            None,
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("already-ended"))
    );
    drop(agents);
}

#[tokio::test]
async fn server_labels_steer_selectors_and_a_revoked_agent_stays_out() {
    let mut harness = Harness::start().await;
    let _a = harness.start_agent("edge-a").await;
    let _b = harness.start_agent("edge-b").await;
    let http = Http::new(&harness);
    let admin = harness.server().api_token().to_string();

    let (status, agent) = http
        .call(
            Method::POST,
            "/v1/agents/edge-a/labels",
            Some(&admin),
            Some(json!({"set": {"ring": "canary"}})),
        )
        .await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["labels"]["ring"], "canary");
    assert_eq!(agent["server_labels"], json!({"ring": "canary"}));
    let listed = http.get("/v1/agents?selector=ring%3Dcanary", &admin).await;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["edge-a"]);
    let (_, created) = http
        .call(
            Method::POST,
            "/v1/commands",
            Some(&admin),
            Some(json!({"topic": "echo", "selector": "ring=canary", "payload": 1})),
        )
        .await;
    assert_eq!(created["results"][0]["agent"], "edge-a");
    assert_eq!(created["summary"]["total"], 1);
    let (status, _) = http
        .call(
            Method::POST,
            "/v1/agents/edge-a/labels",
            Some(&admin),
            Some(json!({"set": {"bad key": "x"}})),
        )
        .await;
    assert_eq!(status, 400);

    let shown = http.get("/v1/agents/edge-b", &admin).await;
    assert_eq!(shown["status"], "online");
    assert!(shown["plugins"].is_array(), "{shown}");

    // Revoked: disconnected now, refused when it comes back, also after a server restart.
    let (status, body) = http
        .call(
            Method::POST,
            "/v1/agents/edge-b/revoke",
            Some(&admin),
            Some(json!({"reason": "lost laptop"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["reason"], "lost laptop");
    let id = "edge-b".parse().unwrap();
    eventually("the revoked agent is disconnected", || {
        harness
            .server()
            .agent(&id)
            .is_some_and(|a| a.status == AgentStatus::Offline)
    })
    .await;
    // It keeps retrying (reconnect_min is 50 ms); none of its attempts gets in.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        harness.server().agent(&id).unwrap().status,
        AgentStatus::Offline
    );
    let (_, created) = http
        .call(
            Method::POST,
            "/v1/commands",
            Some(&admin),
            Some(json!({"topic": "echo", "selector": "all"})),
        )
        .await;
    assert_eq!(
        created["summary"]["total"], 1,
        "revoked agents are never selected: {created}"
    );

    harness.restart_server().await;
    let http = Http::new(&harness);
    let a = "edge-a".parse().unwrap();
    eventually("edge-a is back", || harness.server().agent(&a).is_some()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Known from before the restart (the server keeps the agents it has seen), but refused
    // before it is registered as connected.
    let known = harness
        .server()
        .agent(&id)
        .expect("known from before the restart");
    assert_eq!(known.status, AgentStatus::Offline, "{known:?}");
    assert!(
        known.connected_since.is_none(),
        "a revoked agent is refused before it is registered: {known:?}"
    );
    let (status, _) = http
        .call(
            Method::POST,
            "/v1/agents/edge-b/unrevoke",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    eventually("the readmitted agent reconnects", || {
        harness
            .server()
            .agent(&id)
            .is_some_and(|a| a.status == AgentStatus::Online)
    })
    .await;
    // Labels persist across the restart too.
    let shown = http.get("/v1/agents/edge-a", &admin).await;
    assert_eq!(shown["labels"]["ring"], "canary");
}

#[tokio::test]
async fn tokens_are_managed_by_admins_and_every_change_is_audited() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("audited").await;
    let http = Http::new(&harness);
    let admin = harness.server().api_token().to_string();

    let (status, created) = http
        .call(
            Method::POST,
            "/v1/api-tokens",
            Some(&admin),
            Some(json!({"name": "pipeline", "scope": "run"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let token_id = created["id"].as_str().unwrap().to_string();
    let me = http.get("/v1/whoami", &token).await;
    assert_eq!(
        (me["name"].as_str(), me["scope"].as_str()),
        (Some("pipeline"), Some("run"))
    );
    let list = http.get("/v1/api-tokens", &admin).await;
    let text = list.to_string();
    assert!(
        text.contains("pipeline") && !text.contains(&token),
        "{text}"
    );
    assert!(!text.contains("sha256"), "{text}");

    let (status, _) = http
        .call(
            Method::POST,
            "/v1/commands",
            Some(&token),
            Some(json!({"topic": "echo", "agent": "audited", "payload": "hi"})),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = http
        .call(
            Method::POST,
            "/v1/plugins/echo/unassign",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = http
        .call(Method::GET, "/v1/audit", Some(&token), None)
        .await;
    assert_eq!(status, 403, "reading the audit log needs admin");

    let (status, _) = http
        .call(
            Method::DELETE,
            &format!("/v1/api-tokens/{token_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = http
        .call(Method::GET, "/v1/whoami", Some(&token), None)
        .await;
    assert_eq!(status, 401, "a revoked token stops working at once");
    let (status, body) = http
        .call(
            Method::DELETE,
            "/v1/api-tokens/operator",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");

    let audit = http.get("/v1/audit?limit=10", &admin).await;
    let entries: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["token_name"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("operator", "api-token.revoke", "conflict"),
        ("operator", "api-token.revoke", "ok"),
        ("pipeline", "plugin.unassign", "forbidden"),
        ("pipeline", "command.create", "ok"),
        ("operator", "api-token.create", "ok"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(entries, expected, "newest first: {audit:#}");
    let create = &audit[3];
    assert!(
        create["detail"]
            .as_str()
            .unwrap()
            .contains("echo to audited"),
        "{create}"
    );
    assert!(
        !audit.to_string().contains(&token),
        "the audit log never holds a token"
    );
    // Reads are not audited, and the log pages back by sequence number.
    let seq = audit[1]["seq"].as_u64().unwrap();
    let older = http
        .get(&format!("/v1/audit?before={seq}&limit=1"), &admin)
        .await;
    assert_eq!(older[0]["action"], "plugin.unassign");
}

/// Asserts an answer is the documented error shape with `status`, and gives its message.
fn documented_error(what: &str, status: u16, expected: u16, text: &str) -> String {
    assert_eq!(status, expected, "{what}: {text}");
    let body: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{what}: not a JSON error body ({e}): {text:.300}"));
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !code.is_empty() && !message.is_empty(),
        "{what}: {text:.300}"
    );
    assert!(
        text.len() < 2_000,
        "{what}: the error echoes its input: {} bytes",
        text.len()
    );
    message.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_the_documented_shape_and_status() {
    let harness = Harness::start_with(|config| {
        config.max_frame_bytes = 64 * 1024;
        config.max_plugin_bytes = 64 * 1024;
    })
    .await;
    let base = harness.api_url();
    let token = harness.server().api_token().to_string();
    let client = reqwest::Client::new();
    let send = |method: Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(&token)
    };
    let answer = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    };

    // A package cut short says so, not ciborium's debug text.
    let (status, text) = answer(send(Method::POST, "/v1/plugins").body(vec![0xa3, 0x66])).await;
    let message = documented_error("push of a cut package", status, 400, &text);
    assert!(
        !message.contains("Io(") && !message.contains("UnexpectedEof"),
        "{message}"
    );
    assert!(message.contains("end in the middle"), "{message}");
    let (status, text) = answer(send(Method::POST, "/v1/plugins").body(vec![0xff; 100])).await;
    documented_error("push of bytes that are not CBOR", status, 400, &text);
    // Over the body limits: axum's 413, in the shape.
    let (status, text) =
        answer(send(Method::POST, "/v1/plugins").body(vec![0u8; 128 * 1024])).await;
    let message = documented_error("push over max_plugin_bytes", status, 413, &text);
    assert!(message.contains("max_plugin_bytes"), "{message}");
    let big = json!({"topic": "echo", "agent": "a", "payload": "x".repeat(256 * 1024)});
    let (status, text) = answer(send(Method::POST, "/v1/commands").json(&big)).await;
    let message = documented_error("command over the body limit", status, 413, &text);
    assert!(message.contains("max_frame_bytes"), "{message}");
    // Bodies that are not JSON, or not the request's type: 400 (as documented, not 422), and
    // 415 without a JSON content type.
    for path in [
        "/v1/agents/a1/revoke",
        "/v1/plugins/p/rollback",
        "/v1/plugins/p/assign",
        "/v1/agents/a1/labels",
        "/v1/commands",
        "/v1/api-tokens",
        "/v1/join-tokens",
    ] {
        let (status, text) = answer(
            send(Method::POST, path)
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
        documented_error(&format!("{path} with broken JSON"), status, 400, &text);
        let (status, text) = answer(
            send(Method::POST, path)
                .header("content-type", "application/json")
                .body(r#"{"wait_ms":"soon","reason":7,"set":7,"topic":7,"name":7,"ttl":7,"to":7}"#),
        )
        .await;
        documented_error(&format!("{path} with mistyped JSON"), status, 400, &text);
    }
    let (status, text) = answer(send(Method::POST, "/v1/agents/a1/labels").body("{}")).await;
    let message = documented_error("labels without a content type", status, 415, &text);
    assert!(message.contains("application/json"), "{message}");
    // Path parameters that are not UTF-8, queries that do not parse, methods a path lacks.
    for path in [
        "/v1/agents/%FF%FE",
        "/v1/plugins/%C3%28/rollback",
        "/v1/commands/%FF",
        "/v1/data/%FF",
    ] {
        let method = if path.ends_with("rollback") {
            Method::POST
        } else {
            Method::GET
        };
        let method = if path.starts_with("/v1/data") {
            Method::DELETE
        } else {
            method
        };
        let (status, text) = answer(send(method, path)).await;
        documented_error(path, status, 400, &text);
    }
    let (status, text) = answer(send(Method::GET, "/v1/commands?limit=many")).await;
    documented_error("a query that does not parse", status, 400, &text);
    let (status, text) = answer(send(Method::PATCH, "/v1/agents")).await;
    documented_error("a method the path lacks", status, 405, &text);
    // Inputs are not echoed back whole.
    let selector = format!("env{}", "x".repeat(20_000));
    let (status, text) = answer(send(
        Method::GET,
        &format!("/v1/agents?selector={selector}"),
    ))
    .await;
    documented_error("a long selector", status, 400, &text);
    let spaced = "a b,".repeat(5_000);
    let (status, text) =
        answer(send(Method::POST, "/v1/plugins/p/assign").json(&json!({"to": spaced}))).await;
    documented_error("a long selector with spaces", status, 400, &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_case_insensitive_401_challenges_revoke_needs_json_and_labels_are_bounded() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("labelled").await;
    let base = harness.api_url();
    let token = harness.server().api_token().to_string();
    let client = reqwest::Client::new();

    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = client
            .get(format!("{base}/v1/whoami"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "scheme {scheme}");
    }
    for authorization in [None, Some("Bearer wrong"), Some("Basic dXNlcjpwdw==")] {
        let mut request = client.get(format!("{base}/v1/whoami"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            challenge.starts_with("Bearer"),
            "{authorization:?}: {challenge:?}"
        );
    }

    // A reason sent without a JSON content type is refused, not dropped, and nothing changes.
    let post = |path: &str| client.post(format!("{base}{path}")).bearer_auth(&token);
    let response = post("/v1/agents/labelled/revoke")
        .body(r#"{"reason":"lost laptop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let text = response.text().await.unwrap();
    assert!(text.contains("application/json"), "{text}");
    let response = post("/v1/agents/labelled/unrevoke").send().await.unwrap();
    assert_eq!(response.status(), 409, "the refused revoke revoked nothing");
    // No body at all is no reason; a JSON one is kept.
    let response = post("/v1/agents/ghost/revoke").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = post("/v1/agents/labelled/revoke")
        .json(&json!({"reason": "lost laptop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked"]["reason"], "lost laptop", "{body}");

    // At most 64 operator labels on one agent: refused with 400, whether in one request or
    // added to the ones it has.
    let labels = |range: std::ops::Range<usize>| -> serde_json::Map<String, Value> {
        range.map(|i| (format!("k{i}"), json!("v"))).collect()
    };
    let label = |set: serde_json::Map<String, Value>| {
        post("/v1/agents/labelled/labels")
            .json(&json!({"set": set}))
            .send()
    };
    let response = label(labels(0..65)).await.unwrap();
    assert_eq!(response.status(), 400);
    let response = label(labels(0..64)).await.unwrap();
    assert_eq!(response.status(), 200);
    let response = label(labels(64..65)).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too-many-labels", "{body}");
    let response = label(labels(0..1)).await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "setting a label it has adds nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_revoked_tokens_are_counted() {
    let harness = Harness::start().await;
    let http = Http::new(&harness);
    let refused = || async {
        let (status, health) = http.call(Method::GET, "/v1/health", None, None).await;
        assert_eq!(status, 200);
        health["refused_tokens"].as_u64().expect("a count")
    };
    assert_eq!(refused().await, 0);
    for _ in 0..3 {
        let (status, _) = http
            .call(Method::GET, "/v1/agents", Some("not-a-token"), None)
            .await;
        assert_eq!(status, 401);
    }
    let admin = harness.server().api_token().to_string();
    let (status, created) = http
        .call(
            Method::POST,
            "/v1/api-tokens",
            Some(&admin),
            Some(json!({"name": "leaver", "scope": "read"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["token"]
        .as_str()
        .expect("the new token")
        .to_string();
    let id = created["id"].as_str().expect("its id").to_string();
    let (status, _) = http
        .call(
            Method::DELETE,
            &format!("/v1/api-tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = http
        .call(Method::GET, "/v1/agents", Some(&secret), None)
        .await;
    assert_eq!(status, 401);
    // No token at all is a 401 too, but not a token the server refused.
    let (status, _) = http.call(Method::GET, "/v1/agents", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(refused().await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_keeps_its_newest_events_and_says_how_many_it_dropped() {
    let harness = Harness::start().await;
    let _agent = harness.start_agent("chatty").await;
    let http = Http::new(&harness);
    let admin = harness.server().api_token().to_string();
    let (status, created) = http
        .call(
            Method::POST,
            "/v1/commands",
            Some(&admin),
            Some(json!({"topic": "fault.print", "agent": "chatty"})),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let droppable = |events: &[(String, Value)]| {
        events
            .iter()
            .filter(|(k, _)| k == "log" || k == "progress")
            .count() as u64
    };
    // Followed live, every event arrives (the follower keeps up with the plugin).
    let live = http
        .events(&format!("/v1/commands/{id}/events"), &admin)
        .await;
    let logged = droppable(&live);
    assert!(
        logged > 1_000,
        "fault.print logs more than a command keeps: {logged}"
    );
    // Followed late, the newest 1,000 log and progress events, every other event, and one
    // `dropped` event where the rest were.
    let late = http
        .events(&format!("/v1/commands/{id}/events"), &admin)
        .await;
    assert_eq!(droppable(&late), 1_000);
    let kinds: Vec<&str> = late.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        &kinds[..3],
        ["dispatched", "accepted", "dropped"],
        "{:?}",
        &kinds[..5]
    );
    assert_eq!(&kinds[kinds.len() - 2..], ["finished", "done"]);
    let dropped = late
        .iter()
        .find(|(k, _)| k == "dropped")
        .map(|(_, v)| v["count"].as_u64().unwrap())
        .unwrap();
    assert_eq!(dropped + 1_000, logged, "the gap is the events dropped");
    let view = http.get(&format!("/v1/commands/{id}"), &admin).await;
    assert_eq!(view["events_dropped"], dropped, "{view}");
    assert_eq!(view["results"][0]["events_dropped"], dropped, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lowest_scope_cannot_grow_an_audit_entry_and_the_log_is_paged() {
    let harness = Harness::start().await;
    let http = Http::new(&harness);
    let admin = harness.server().api_token().to_string();
    let read = harness
        .server()
        .create_api_token("dashboard", Scope::Read)
        .unwrap();
    // A refused request is audited with its path: a long one is cut, not stored whole.
    let long = format!("/v1/commands/{}/cancel", "x".repeat(30_000));
    for _ in 0..5 {
        let (status, _) = http.call(Method::POST, &long, Some(&read), None).await;
        assert_eq!(status, 403);
    }
    let page = http.get("/v1/audit?limit=2", &admin).await;
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 2, "a page holds `limit` entries");
    for entry in page {
        let request = entry["request"].as_str().unwrap();
        assert!(request.chars().count() <= 257, "{} chars", request.len());
        assert!(request.starts_with("POST /v1/commands/xxx") && request.ends_with('…'));
    }
    // Older pages by `before`, with no entry twice and none skipped.
    let first = page[0]["seq"].as_u64().unwrap();
    let last = page[1]["seq"].as_u64().unwrap();
    assert_eq!(first, last + 1);
    let older = http
        .get(&format!("/v1/audit?limit=2&before={last}"), &admin)
        .await;
    assert_eq!(older[0]["seq"].as_u64(), Some(last - 1), "{older}");
    // The default page, and a limit past the most a page holds, answer.
    let all = http.get("/v1/audit", &admin).await;
    assert!(all.as_array().unwrap().len() >= 5);
    let all = http.get("/v1/audit?limit=1000000", &admin).await;
    assert!(all.as_array().unwrap().len() >= 5);
}
