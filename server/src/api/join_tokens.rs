//! `/v1/join-tokens`: the tokens new agents enroll with (`ferry agent --join`).
//!
//! Create also answers the CA fingerprint and the agent port; list shows each token's state; revoke
//! ends one.

use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_api::{CreateJoinToken, JoinTokenView, NewJoinToken};
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

/// A token as listed: its record and its state now.
fn token_view(token: JoinToken) -> JoinTokenView {
    let state = token.state(OffsetDateTime::now_utc());
    JoinTokenView { token, state }
}

pub(super) async fn list(State(api): State<Api>) -> Response {
    let list: Vec<JoinTokenView> = api
        .state
        .enrollment
        .list()
        .into_iter()
        .map(token_view)
        .collect();
    Json(list).into_response()
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
            let out = NewJoinToken {
                view: token_view(record),
                token,
                ca_fingerprint: api.state.enrollment.ca_fingerprint(),
                agent_port: api.state.config.listen.port(),
            };
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
            noted(Json(token_view(record)), note)
        }
        Ok(Err(e)) => token_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}
