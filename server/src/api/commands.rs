//! `/v1/commands`: create (for one agent, a list, a selector or all), list with filters, show,
//! follow as server-sent events, cancel.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ferry_api::{CommandEvent, CommandsQuery, CreateCommand};
use ferry_protocol::AgentId;
use futures::Stream;

use super::{Api, ApiError, Caller, JsonBody, QueryParams, api_error, body, error, noted, query};
use crate::domain::commands::SubmitError;
use crate::domain::commands::{
    self, CommandEntry, CommandRequest, ListFilter, StatusFilter, Target,
};
use crate::domain::plugins::Selector;

fn invalid(message: impl Into<String>) -> ApiError {
    api_error(StatusCode::BAD_REQUEST, "invalid-request", message)
}

fn agent_id(id: &str) -> Result<AgentId, ApiError> {
    AgentId::new(id)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, "invalid-agent-id", e.to_string()))
}

/// The request `create` describes, or the error response saying what is wrong.
pub(super) fn fleet_request(
    create: CreateCommand,
    created_by: String,
) -> Result<CommandRequest, ApiError> {
    let target = match (create.agent, create.agents, create.selector) {
        (Some(one), None, None) => Target::Agents(vec![agent_id(&one)?]),
        (None, Some(list), None) => Target::Agents(
            list.iter()
                .map(|id| agent_id(id))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        (None, None, Some(selector)) => Target::Selector(
            selector
                .parse::<Selector>()
                .map_err(|e| api_error(StatusCode::BAD_REQUEST, "invalid-selector", e))?,
        ),
        _ => {
            return Err(invalid(
                "say where with exactly one of agent, agents and selector (`all` for every agent)",
            ));
        }
    };
    let (payload, default_type) = match (create.payload, create.payload_text, create.payload_base64)
    {
        (Some(value), None, None) => (
            serde_json::to_vec(&value).expect("a JSON value serializes"),
            "application/json",
        ),
        (None, Some(text), None) => (text.into_bytes(), "text/plain"),
        (None, None, Some(b64)) => {
            match base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) {
                Ok(bytes) => (bytes, "application/octet-stream"),
                Err(e) => return Err(invalid(format!("payload_base64 is not base64: {e}"))),
            }
        }
        (None, None, None) => (Vec::new(), "application/octet-stream"),
        _ => {
            return Err(invalid(
                "give at most one of payload, payload_text and payload_base64",
            ));
        }
    };
    Ok(CommandRequest {
        target,
        topic: create.topic,
        payload,
        content_type: create
            .content_type
            .unwrap_or_else(|| default_type.to_string()),
        timeout: create.timeout_ms.map(Duration::from_millis),
        idempotency_key: create.idempotency_key,
        data: create
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
        max_concurrency: create.max_concurrency,
        max_errors: create.max_errors,
        deliver_within: create.deliver_within_ms.map(Duration::from_millis),
        created_by,
    })
}

pub(super) async fn create(
    State(api): State<Api>,
    Extension(Caller(caller)): Extension<Caller>,
    request: JsonBody<CreateCommand>,
) -> Response {
    let request = match body(request).and_then(|b| fleet_request(b, caller.name)) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let note = format!("{} to {}", request.topic, request.target);
    match commands::start(&api.state.commands, request).await {
        Ok((fleet, created)) => {
            let view = fleet.view(true);
            if !created {
                // The idempotency key was used before: the first command answers.
                let note = format!("{} (idempotency key seen before; not sent again)", view.id);
                return noted((StatusCode::OK, Json(view)), note);
            }
            let note = format!("{} ({note}, {} agents)", view.id, view.summary.total);
            noted((StatusCode::ACCEPTED, Json(view)), note)
        }
        Err(SubmitError::Storage(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-failed",
            format!("the server could not record the command, so it was not sent: {e}"),
        ),
        Err(SubmitError::NotConnected(e)) => {
            error(StatusCode::CONFLICT, "agent-not-connected", e.to_string())
        }
        Err(SubmitError::NoTargets(e)) => error(StatusCode::CONFLICT, "no-matching-agents", e),
        Err(SubmitError::Invalid(e)) => invalid(e).into_response(),
    }
}

pub(super) async fn list(State(api): State<Api>, params: QueryParams<CommandsQuery>) -> Response {
    let params = match query(params) {
        Ok(params) => params,
        Err(e) => return e.into_response(),
    };
    let status = match params.status.as_deref().map(StatusFilter::parse) {
        None => None,
        Some(Ok(status)) => Some(status),
        Some(Err(why)) => return error(StatusCode::BAD_REQUEST, "invalid-query", why),
    };
    let filter = ListFilter {
        status,
        topic: params.topic,
        agent: params.agent,
        limit: params.limit.unwrap_or(50).min(1000),
    };
    Json(api.state.commands.store.list(&filter)).into_response()
}

fn unknown_command(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown-command",
        format!(
            "no command '{id}' on this server (commands are kept in memory until the server restarts); `ferry commands` lists them"
        ),
    )
}

pub(super) async fn show(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.state.commands.store.get(&id) {
        Some(fleet) => Json(fleet.view(true)).into_response(),
        None => unknown_command(&id),
    }
}

pub(super) async fn cancel(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(fleet) = api.state.commands.store.get(&id) else {
        return unknown_command(&id);
    };
    if !fleet.request_cancel() {
        let view = fleet.view(false);
        return error(
            StatusCode::CONFLICT,
            "already-ended",
            format!("command '{id}' has already ended: \"{}\"", view.status),
        );
    }
    noted((StatusCode::ACCEPTED, Json(fleet.view(true))), id)
}

pub(super) async fn events(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(fleet) = api.state.commands.store.get(&id) else {
        return unknown_command(&id);
    };
    Sse::new(event_stream(fleet))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// Replays a command's events from the first and follows it until its `done` event. Events
/// are asked for by number: the command may drop log and progress events a slow follower has
/// not had yet, and then the follower gets a `dropped` event saying how many, in their place,
/// and goes on from the first event kept; `done` is never dropped, so the stream always ends.
fn event_stream(fleet: Arc<CommandEntry>) -> impl Stream<Item = Result<Event, Infallible>> {
    let rx = fleet.subscribe();
    futures::stream::unfold(
        (fleet, rx, 0usize, VecDeque::new(), false),
        |(fleet, mut rx, mut next, mut queue, mut done)| async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    done |= matches!(event, CommandEvent::Done { .. });
                    let sse = Event::default()
                        .event(event.kind())
                        .json_data(&event)
                        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
                    return Some((Ok(sse), (fleet, rx, next, queue, done)));
                }
                if done {
                    return None;
                }
                let since = fleet.events_after(next);
                if since.next == next {
                    if rx.changed().await.is_err() {
                        return None;
                    }
                    continue;
                }
                next = since.next;
                let mut events = since.events;
                if since.dropped > 0 {
                    // The command drops its oldest log and progress events, so the gap is
                    // just before the first of those it kept.
                    let at = events
                        .iter()
                        .position(|e| {
                            matches!(e, CommandEvent::Log { .. } | CommandEvent::Progress { .. })
                        })
                        .unwrap_or(events.len());
                    events.insert(
                        at,
                        CommandEvent::Dropped {
                            count: since.dropped as u64,
                        },
                    );
                }
                queue.extend(events);
            }
        },
    )
}
