//! The OpenAPI document is true: it has exactly the router's routes, with their scopes and
//! audit actions, and its example requests are accepted by the handlers' types.

use std::collections::BTreeMap;

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
