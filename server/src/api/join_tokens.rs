//! `/v1/join-tokens`: the tokens new agents enroll with (`ferry agent --join`).
//!
//! Create also answers the CA fingerprint and the agent port; list shows each token's state; revoke
//! ends one.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Api, Caller, JsonBody, body, error, noted};
use crate::storage::enrollment::{JoinToken, JoinTokenError};

fn token_error(e: JoinTokenError) -> Response {
    let (status, code) = match &e {
        JoinTokenError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid-request"),
        JoinTokenError::NotFound(_) => (StatusCode::NOT_FOUND, "unknown-token"),
        JoinTokenError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    error(status, code, e.to_string())
}

/// A token as listed: its record and its state now (`active`, `expired`, `used`, `revoked`).
fn token_json(token: &JoinToken) -> Value {
    let mut value = serde_json::to_value(token).expect("a join token serializes");
    value["state"] = json!(token.state(OffsetDateTime::now_utc()));
    value
}

pub(super) async fn list(State(api): State<Api>) -> Response {
    let list: Vec<Value> = api.state.enrollment.list().iter().map(token_json).collect();
    Json(list).into_response()
}

/// The body of `POST /v1/join-tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateJoinToken {
    /// Labels every agent enrolled with it gets on the server.
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    /// How long it is valid (`30m`, `1h`, `7d`); 1 h by default.
    #[serde(default, with = "humantime_serde")]
    pub(super) ttl: Option<Duration>,
    /// How many agents may enroll with it; 1 by default.
    pub(super) uses: Option<u32>,
}

pub(super) async fn create(
    State(api): State<Api>,
    Extension(Caller(caller)): Extension<Caller>,
    request: JsonBody<CreateJoinToken>,
) -> Response {
    let request = match body(request) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let state = api.state.clone();
    let created = tokio::task::spawn_blocking(move || {
        state.enrollment.create(
            request.labels,
            request.ttl.unwrap_or(Duration::from_secs(3600)),
            request.uses.unwrap_or(1),
            &caller.name,
        )
    })
    .await;
    match created {
        Ok(Ok((record, token))) => {
            let note = format!(
                "{} ({} uses until {}, labels {:?})",
                record.id, record.uses, record.expires_at, record.labels
            );
            let mut out = token_json(&record);
            out["token"] = json!(token);
            out["ca_fingerprint"] = json!(api.state.enrollment.ca_fingerprint());
            out["agent_port"] = json!(api.state.config.listen.port());
            noted((StatusCode::CREATED, Json(out)), note)
        }
        Ok(Err(e)) => token_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

pub(super) async fn revoke(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let state = api.state.clone();
    match tokio::task::spawn_blocking(move || state.enrollment.revoke(&id)).await {
        Ok(Ok(record)) => {
            let note = record.id.clone();
            noted(Json(token_json(&record)), note)
        }
        Ok(Err(e)) => token_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}
