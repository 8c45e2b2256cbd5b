//! The operator API: HTTP/JSON, bearer-token authenticated, bound to loopback by default.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /v1/health | liveness, no token needed |
//! | GET | /v1/agents | every known agent |
//! | GET | /v1/agents/{id} | one agent |
//! | POST | /v1/commands | send a command to an agent |
//! | GET | /v1/commands | the newest commands (`?limit=N`) |
//! | GET | /v1/commands/{id} | one command |
//! | GET | /v1/commands/{id}/events | its events as server-sent events, from the start, until it ends |
//! | POST | /v1/commands/{id}/cancel | ask the agent to stop it |
//! | GET | /v1/data | the keys of the data plugins may ask for, with sizes |
//! | PUT | /v1/data/{key} | supply data (the request body, as is) for plugins to ask for |
//! | DELETE | /v1/data/{key} | withdraw it |
//! | POST | /v1/plugins | push a plugin package (body: the package's CBOR encoding) |
//! | GET | /v1/plugins | every plugin, its versions and assignment |
//! | GET | /v1/plugins/{name} | one plugin, its assignment history and which agent has what |
//! | POST | /v1/plugins/{name}/assign | assign a version (`{"version", "to"}`) |
//! | POST | /v1/plugins/{name}/rollback | go back to the previous assignment |
//! | POST | /v1/plugins/{name}/unassign | stop serving it anywhere |

mod plugins;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use ferry_protocol::AgentId;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use crate::commands::CommandEvent;
use crate::server::{CommandRequest, ServerState, SubmitError, submit};

#[derive(Clone)]
struct Api {
    state: Arc<ServerState>,
    token: Arc<str>,
}

pub(crate) fn router(state: Arc<ServerState>, token: String) -> Router {
    // A payload may be as large as a frame allows, and base64 in JSON makes it a third larger.
    let body_limit = (state.config.max_frame_bytes as usize).saturating_mul(2);
    let plugin_limit = usize::try_from(state.config.max_plugin_bytes).unwrap_or(usize::MAX);
    let api = Api {
        state,
        token: token.into(),
    };
    let authed = Router::new()
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(show_agent))
        .route("/v1/commands", post(create_command).get(list_commands))
        .route("/v1/commands/{id}", get(show_command))
        .route("/v1/commands/{id}/events", get(command_events))
        .route("/v1/commands/{id}/cancel", post(cancel_command))
        .route(
            "/v1/plugins",
            post(plugins::push)
                .layer(axum::extract::DefaultBodyLimit::max(plugin_limit))
                .get(plugins::list),
        )
        .route("/v1/plugins/{name}", get(plugins::show))
        .route("/v1/plugins/{name}/assign", post(plugins::assign))
        .route("/v1/plugins/{name}/rollback", post(plugins::rollback))
        .route("/v1/plugins/{name}/unassign", post(plugins::unassign))
        .route("/v1/data", get(list_data))
        .route(
            "/v1/data/{key}",
            axum::routing::put(put_data).delete(delete_data),
        )
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit));
    Router::new()
        .route("/v1/health", get(health))
        .merge(authed)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint; see /v1/health",
            )
        })
        .with_state(api)
}

/// An API error; its body is `{"error": {"code": "...", "message": "..."}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    api_error(status, code, message).into_response()
}

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

async fn require_token(State(api): State<Api>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), api.token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not valid for this server",
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>`; the token is in the server's data directory (operator.token)",
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> Response {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})).into_response()
}

async fn list_agents(State(api): State<Api>) -> Response {
    Json(api.state.registry.list()).into_response()
}

fn parse_agent_id(id: &str) -> Result<AgentId, ApiError> {
    AgentId::new(id)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, "invalid-agent-id", e.to_string()))
}

async fn show_agent(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let id = match parse_agent_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match api.state.registry.get(&id) {
        Some(agent) => Json(agent).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown-agent",
            format!("no agent '{id}' has ever connected"),
        ),
    }
}

/// The body of `POST /v1/commands`. Exactly one of `payload` (any JSON), `payload_text` or
/// `payload_base64` may be given; none means an empty payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCommand {
    agent: String,
    topic: String,
    payload: Option<serde_json::Value>,
    payload_text: Option<String>,
    payload_base64: Option<String>,
    content_type: Option<String>,
    timeout_ms: Option<u64>,
    idempotency_key: Option<String>,
    /// Data the plugin may ask for by key: a string is sent as its text, any other JSON value
    /// as JSON.
    data: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

async fn create_command(
    State(api): State<Api>,
    body: Result<Json<CreateCommand>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), "invalid-request", e.body_text()),
    };
    let agent = match parse_agent_id(&body.agent) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let (payload, default_type) = match (body.payload, body.payload_text, body.payload_base64) {
        (Some(value), None, None) => (
            serde_json::to_vec(&value).expect("a JSON value serializes"),
            "application/json",
        ),
        (None, Some(text), None) => (text.into_bytes(), "text/plain"),
        (None, None, Some(b64)) => {
            match base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) {
                Ok(bytes) => (bytes, "application/octet-stream"),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid-request",
                        format!("payload_base64 is not base64: {e}"),
                    );
                }
            }
        }
        (None, None, None) => (Vec::new(), "application/octet-stream"),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "give at most one of payload, payload_text and payload_base64",
            );
        }
    };
    let request = CommandRequest {
        agent,
        topic: body.topic,
        payload,
        content_type: body
            .content_type
            .unwrap_or_else(|| default_type.to_string()),
        timeout: body.timeout_ms.map(Duration::from_millis),
        idempotency_key: body.idempotency_key,
        data: body
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| {
                let bytes = match value {
                    serde_json::Value::String(text) => text.into_bytes(),
                    other => serde_json::to_vec(&other).expect("a JSON value serializes"),
                };
                (key, bytes)
            })
            .collect(),
    };
    match submit(&api.state, request) {
        Ok(entry) => (StatusCode::ACCEPTED, Json(entry.view())).into_response(),
        Err(SubmitError::NotConnected(e)) => {
            error(StatusCode::CONFLICT, "agent-not-connected", e.to_string())
        }
        Err(SubmitError::Invalid(e)) => error(StatusCode::BAD_REQUEST, "invalid-request", e),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list_commands(State(api): State<Api>, Query(query): Query<ListQuery>) -> Response {
    Json(
        api.state
            .commands
            .recent(query.limit.unwrap_or(50).min(1000)),
    )
    .into_response()
}

fn unknown_command(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown-command",
        format!(
            "no command '{id}' on this server (ended commands are kept in memory until the server restarts)"
        ),
    )
}

async fn show_command(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.state.commands.get(&id) {
        Some(entry) => Json(entry.view()).into_response(),
        None => unknown_command(&id),
    }
}

async fn cancel_command(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.state.commands.get(&id) {
        Some(entry) => {
            let view = entry.view();
            if view.status.is_final() {
                return error(
                    StatusCode::CONFLICT,
                    "already-ended",
                    format!("command '{id}' has already ended: {:?}", view.status),
                );
            }
            entry.request_cancel();
            (StatusCode::ACCEPTED, Json(view)).into_response()
        }
        None => unknown_command(&id),
    }
}

async fn command_events(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(entry) = api.state.commands.get(&id) else {
        return unknown_command(&id);
    };
    Sse::new(event_stream(entry))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// Replays a command's events from the first and follows it until its `finished` event.
fn event_stream(
    entry: Arc<crate::commands::CommandEntry>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let rx = entry.subscribe();
    futures::stream::unfold(
        (entry, rx, 0usize, std::collections::VecDeque::new(), false),
        |(entry, mut rx, mut next, mut queue, mut done)| async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    let finished = matches!(event, CommandEvent::Finished { .. });
                    let kind = match &event {
                        CommandEvent::Accepted { .. } => "accepted",
                        CommandEvent::Progress { .. } => "progress",
                        CommandEvent::Log { .. } => "log",
                        CommandEvent::Finished { .. } => "finished",
                    };
                    let sse = Event::default()
                        .event(kind)
                        .json_data(&event)
                        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
                    done |= finished;
                    return Some((Ok(sse), (entry, rx, next, queue, done)));
                }
                if done {
                    return None;
                }
                let fresh = entry.events_since(next);
                if fresh.is_empty() {
                    if rx.changed().await.is_err() {
                        return None;
                    }
                    continue;
                }
                next += fresh.len();
                queue.extend(fresh);
            }
        },
    )
}

async fn list_data(State(api): State<Api>) -> Response {
    let data = api.state.data.read();
    let keys: Vec<serde_json::Value> = data
        .iter()
        .map(|(key, value)| json!({"key": key, "bytes": value.len()}))
        .collect();
    Json(keys).into_response()
}

async fn put_data(
    State(api): State<Api>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if key.is_empty() || key.len() > 1024 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid-key",
            "a data key has 1 to 1024 bytes",
        );
    }
    let bytes = body.len();
    api.state
        .data
        .write()
        .insert(key.clone(), body.to_vec().into());
    Json(json!({"key": key, "bytes": bytes})).into_response()
}

async fn delete_data(State(api): State<Api>, Path(key): Path<String>) -> Response {
    match api.state.data.write().remove(&key) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown-key",
            format!("no data under '{key}'"),
        ),
    }
}
