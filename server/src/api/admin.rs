//! Who am I, API tokens, and the audit log.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_api::{AuditQuery, CreateApiToken, NewApiToken};

use super::{Api, Caller, JsonBody, QueryParams, body, error, noted, query};
use crate::storage::tokens::TokenError;

pub(super) async fn whoami(Extension(Caller(token)): Extension<Caller>) -> Response {
    Json(token).into_response()
}

fn token_error(e: TokenError) -> Response {
    let (status, code) = match &e {
        TokenError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid-request"),
        TokenError::NotFound(_) => (StatusCode::NOT_FOUND, "unknown-token"),
        TokenError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        TokenError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    error(status, code, e.to_string())
}

pub(super) async fn list_tokens(State(api): State<Api>) -> Response {
    Json(api.state.tokens.list()).into_response()
}

pub(super) async fn create_token(
    State(api): State<Api>,
    Extension(Caller(caller)): Extension<Caller>,
    request: JsonBody<CreateApiToken>,
) -> Response {
    let request = match body(request) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let state = api.state.clone();
    let created = tokio::task::spawn_blocking(move || {
        state
            .tokens
            .create(&request.name, request.scope, &caller.name)
    })
    .await;
    match created {
        Ok(Ok((record, token))) => {
            let note = format!("{} ({}, scope {})", record.id, record.name, record.scope);
            let out = NewApiToken { record, token };
            noted((StatusCode::CREATED, Json(out)), note)
        }
        Ok(Err(e)) => token_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

pub(super) async fn revoke_token(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let state = api.state.clone();
    let revoked = tokio::task::spawn_blocking(move || state.tokens.revoke(&id)).await;
    match revoked {
        Ok(Ok(record)) => {
            let note = format!("{} ({})", record.id, record.name);
            noted(Json(record), note)
        }
        Ok(Err(e)) => token_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// Entries in a page of `GET /v1/audit` when the caller names no `limit`.
const AUDIT_PAGE: usize = 100;
/// The most entries in one page: with entries bounded (`storage::audit`), a page is at most
/// about 1.5 MB.
const MAX_AUDIT_PAGE: usize = 1_000;

pub(super) async fn audit(State(api): State<Api>, params: QueryParams<AuditQuery>) -> Response {
    let params = match query(params) {
        Ok(params) => params,
        Err(e) => return e.into_response(),
    };
    let limit = params.limit.unwrap_or(AUDIT_PAGE).min(MAX_AUDIT_PAGE);
    let state = api.state.clone();
    match tokio::task::spawn_blocking(move || state.audit.recent(limit, params.before)).await {
        Ok(Ok(entries)) => Json(entries).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "storage", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}
