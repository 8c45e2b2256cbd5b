//! The OpenAPI document is true: it has exactly the router's routes, with their scopes and
//! audit actions, its example requests are accepted by the handlers' types, and each schema
//! names exactly the fields of the `ferry-api` type it documents.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{OPENAPI, routes};

fn document() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

#[test]
fn the_document_has_exactly_the_routers_routes_with_their_scopes_and_actions() {
    let doc = document();
    let mut documented = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            documented.insert(
                (method.to_uppercase(), path.clone()),
                (
                    op["operationId"].as_str().unwrap_or("").to_string(),
                    op["x-ferry-scope"].as_str().unwrap_or("").to_string(),
                ),
            );
        }
    }
    let served: BTreeMap<(String, String), (String, String)> = routes(1)
        .into_iter()
        .map(|r| {
            (
                (r.method.to_string(), r.path.to_string()),
                (
                    r.action.to_string(),
                    r.scope.map_or("none".to_string(), |s| s.to_string()),
                ),
            )
        })
        .collect();
    let missing: Vec<_> = served
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let extra: Vec<_> = documented
        .keys()
        .filter(|k| !served.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "served but not in openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "in openapi.json but not served: {extra:?}"
    );
    for (key, (action, scope)) in &served {
        assert_eq!(
            &documented[key],
            &(action.clone(), scope.clone()),
            "{key:?}: openapi.json's operationId and x-ferry-scope must be the route's action and scope"
        );
    }
    let actions: std::collections::HashSet<_> = served.values().map(|(a, _)| a).collect();
    assert_eq!(actions.len(), served.len(), "every action names one route");
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    let text = OPENAPI;
    for part in text.split("\"$ref\": \"#/").skip(1) {
        let pointer = format!("/{}", &part[..part.find('"').unwrap()]);
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
}

fn example(method: &str, path: &str) -> Value {
    let doc = document();
    doc["paths"][path][method]["requestBody"]["content"]["application/json"]["example"].clone()
}

/// `T` reads `example` and writes it back unchanged: the type and the document agree on every
/// field, and a client sending a `T` sends what the document shows.
fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(what: &str, example: Value) -> T {
    let typed: T = serde_json::from_value(example.clone())
        .unwrap_or_else(|e| panic!("{what}: the example does not read as its type: {e}"));
    let again = serde_json::to_value(&typed).expect("a request serializes");
    assert_eq!(
        again, example,
        "{what}: the type writes the example differently"
    );
    typed
}

#[test]
fn example_requests_are_accepted_and_read_back_unchanged() {
    let create: ferry_api::CreateCommand =
        round_trip("create command", example("post", "/v1/commands"));
    let request = super::commands::fleet_request(create, "ci".into())
        .ok()
        .expect("a valid request");
    assert_eq!(request.max_concurrency, Some(10));
    let _: ferry_api::LabelsRequest =
        round_trip("labels", example("post", "/v1/agents/{id}/labels"));
    let _: ferry_api::RevokeRequest =
        round_trip("revoke", example("post", "/v1/agents/{id}/revoke"));
    let _: ferry_api::CreateApiToken =
        round_trip("create API token", example("post", "/v1/api-tokens"));
    let join: ferry_api::CreateJoinToken =
        round_trip("create join token", example("post", "/v1/join-tokens"));
    assert_eq!(join.ttl, Some(std::time::Duration::from_secs(3600)));
    let _: ferry_api::AssignRequest =
        round_trip("assign", example("post", "/v1/plugins/{name}/assign"));
    let _: ferry_api::RollbackRequest =
        round_trip("rollback", example("post", "/v1/plugins/{name}/rollback"));
    // Every documented JSON request body has an example, so none escapes this test.
    let doc = document();
    let mut with_json_bodies = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if let Some(body) = op["requestBody"]["content"].get("application/json") {
                with_json_bodies += 1;
                assert!(
                    body.get("example").is_some(),
                    "{method} {path} has no example"
                );
            }
        }
    }
    assert_eq!(
        with_json_bodies, 7,
        "a new JSON body needs its example checked here"
    );
}

/// The properties a schema documents, with those of the schemas it builds on (`allOf`).
fn properties(doc: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let pointer = reference.trim_start_matches('#');
        return properties(doc, doc.pointer(pointer).expect("a resolvable $ref"));
    }
    let mut names: BTreeSet<String> = schema["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, _)| name.clone())
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        names.extend(properties(doc, part));
    }
    names
}

/// The fields `value` writes.
fn fields(value: impl serde::Serialize) -> BTreeSet<String> {
    match serde_json::to_value(value).expect("a value serializes") {
        Value::Object(map) => map.keys().cloned().collect(),
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn each_schema_names_exactly_the_fields_of_its_type() {
    use ferry_api::*;
    let at = time::OffsetDateTime::UNIX_EPOCH;
    let text = || Some("x".to_string());
    let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let output = RenderedPayload {
        payload: Some(Value::Null),
        payload_text: text(),
        payload_base64: text(),
    };
    let agent = Agent {
        id: "a".into(),
        status: AgentStatus::Online,
        labels: labels.clone(),
        agent_labels: labels.clone(),
        server_labels: labels.clone(),
        revoked: Some(Revocation {
            at,
            by: "ops".into(),
            reason: text(),
        }),
        agent_version: "1".into(),
        topics: vec![],
        read_only_topics: vec![],
        wit_versions: vec![],
        remote_address: text(),
        connected_since: Some(at),
        last_heartbeat: Some(at),
        metrics: Some(HostMetrics::default()),
        running_commands: 0,
        heartbeat: Some(HeartbeatView {
            agent_id: "a".into(),
            cpu_usage_percent: 0.0,
            memory_usage_gb: 0.0,
            memory_total_gb: 0.0,
            disk_usage_gb: 0.0,
            disk_total_gb: 0.0,
            uptime_s: 0,
            status: HeartbeatHealth::Ok,
            timestamp: "t".into(),
            runtimes: vec![],
        }),
        instance: text(),
        duplicate: Some(DuplicateSeen {
            remote_address: "r".into(),
            instance: "i".into(),
            at,
            refused: 1,
        }),
    };
    let plugin = AgentPluginView {
        name: "p".into(),
        version: text(),
        digest: Some(Digest([0; 32])),
        state: LoadState::Ready,
        detail: text(),
        updated: Some(at),
    };
    let result = AgentResult {
        agent: "a".into(),
        agent_command_id: text(),
        status: Status::Succeeded,
        progress: Some(100),
        detail: text(),
        output: output.clone(),
        stats: Some(ResultStats::default()),
        sent_at: Some(at),
        finished_at: Some(at),
        events_dropped: 0,
    };
    let command = CommandView {
        id: "c".into(),
        topic: "t".into(),
        target: "all".into(),
        status: CommandStatus::Succeeded,
        created_by: "ops".into(),
        created_at: at,
        finished_at: Some(at),
        max_concurrency: Some(1),
        max_errors: Some(1),
        peak_concurrency: 1,
        summary: Summary::default(),
        events_dropped: 0,
        results: Some(vec![result.clone()]),
    };
    let api_token = ApiToken {
        id: "t".into(),
        name: "ci".into(),
        scope: Scope::Run,
        created_at: at,
        created_by: text(),
    };
    let join_token = JoinTokenView {
        token: JoinToken {
            id: "j".into(),
            labels: labels.clone(),
            created_at: at,
            created_by: "ops".into(),
            expires_at: at,
            uses: 1,
            enrolled: vec![],
            revoked_at: Some(at),
        },
        state: JoinTokenState::Revoked,
    };
    let written: Vec<(&str, BTreeSet<String>)> = vec![
        (
            "Error",
            fields(ErrorBody {
                error: ErrorDetail {
                    code: "c".into(),
                    message: "m".into(),
                },
            }),
        ),
        ("Agent", fields(&agent)),
        (
            "AgentDetails",
            fields(AgentDetails {
                agent: agent.clone(),
                plugins: vec![plugin.clone()],
            }),
        ),
        (
            "LabelsRequest",
            fields(LabelsRequest {
                set: labels.clone(),
                remove: vec![],
            }),
        ),
        ("RevokeRequest", fields(RevokeRequest { reason: text() })),
        (
            "CreateCommand",
            fields(CreateCommand {
                topic: "t".into(),
                agent: text(),
                agents: Some(vec![]),
                selector: text(),
                payload: Some(Value::Null),
                payload_text: text(),
                payload_base64: text(),
                content_type: text(),
                timeout_ms: Some(1),
                idempotency_key: text(),
                data: Some(BTreeMap::new()),
                max_concurrency: Some(1),
                max_errors: Some(1),
                deliver_within_ms: Some(1),
            }),
        ),
        ("Summary", fields(Summary::default())),
        ("AgentResult", fields(&result)),
        ("Command", fields(&command)),
        (
            "AssignRequest",
            fields(AssignRequest {
                version: text(),
                to: "all".into(),
                wait_ms: Some(1),
            }),
        ),
        (
            "RollbackRequest",
            fields(RollbackRequest { wait_ms: Some(1) }),
        ),
        ("ApiToken", fields(&api_token)),
        (
            "NewApiToken",
            fields(NewApiToken {
                record: api_token.clone(),
                token: "ferry_at_x".into(),
            }),
        ),
        (
            "CreateApiToken",
            fields(CreateApiToken {
                name: "ci".into(),
                scope: Scope::Read,
            }),
        ),
        (
            "AuditEntry",
            fields(AuditEntry {
                seq: 1,
                at,
                token_id: "t".into(),
                token_name: "ci".into(),
                action: "a".into(),
                request: "r".into(),
                detail: text(),
                result: "ok".into(),
                status: 200,
            }),
        ),
        ("JoinToken", fields(&join_token)),
        (
            "NewJoinToken",
            fields(NewJoinToken {
                view: join_token.clone(),
                token: "ferry_jt_x".into(),
                ca_fingerprint: "f".into(),
                agent_port: 1,
            }),
        ),
        (
            "CreateJoinToken",
            fields(CreateJoinToken {
                labels,
                ttl: Some(std::time::Duration::from_secs(60)),
                uses: Some(1),
            }),
        ),
    ];
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for (name, written) in &written {
        let documented = properties(&doc, &schemas[*name]);
        assert_eq!(
            &documented, written,
            "components/schemas/{name} in openapi.json and the ferry-api type differ"
        );
    }
    let plugins = &schemas["AgentDetails"]["allOf"][1]["properties"]["plugins"]["items"];
    assert_eq!(
        properties(&doc, plugins),
        fields(&plugin),
        "AgentDetails' plugins in openapi.json and AgentPluginView differ"
    );
    // Every schema with fields is checked, so a new one cannot escape this test.
    let with_fields: BTreeSet<&str> = schemas
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, schema)| !properties(&doc, schema).is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    let checked: BTreeSet<&str> = written.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        with_fields, checked,
        "a schema with fields needs its type here"
    );
}

#[test]
fn error_messages_cut_long_words_and_long_messages() {
    let long = format!("the selector '{}' is not key=value", "x".repeat(10_000));
    let cut = super::bounded(&long);
    assert!(cut.starts_with("the selector '"), "{cut}");
    assert!(
        cut.ends_with("…' is not key=value") || cut.contains("…"),
        "{cut}"
    );
    assert!(cut.chars().count() < 150, "{cut}");
    let spaced = "a b ".repeat(10_000);
    assert!(super::bounded(&spaced).chars().count() <= 1_001);
    let plain = "send `Authorization: Bearer <token>`; it's in the data directory";
    assert_eq!(super::bounded(plain), plain);
}
