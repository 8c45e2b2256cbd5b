//! `/v1/plugins`: push, list, show, assign, roll back, unassign.
//!
//! Push takes the package's CBOR encoding as the body, up to `max_plugin_bytes`. `DELETE
//! /v1/plugins/{name}` deletes a version or the whole plugin.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferry_api::{
    AssignOutcome, AssignRequest, DeleteOutcome, DeletePluginQuery, RollbackOutcome,
    RollbackRequest, UnassignOutcome,
};

use std::time::Duration;

use super::{Api, Caller, JsonBody, QueryParams, error, noted, optional_body, query};
use crate::domain::agents::AgentStatus;
use crate::domain::plugins::{AgentRollout, PluginError, Selector};

fn plugin_error(e: PluginError) -> Response {
    let (status, code) = match &e {
        PluginError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid-plugin"),
        PluginError::NotFound(_) => (StatusCode::NOT_FOUND, "unknown-plugin"),
        PluginError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        PluginError::Incompatible(_) => (StatusCode::CONFLICT, "incompatible-agent"),
        PluginError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    error(status, code, e.to_string())
}

pub(super) async fn push(State(api): State<Api>, body: Bytes) -> Response {
    let state = api.state.clone();
    // Validating a 20 MB component and writing it take a while: off the async workers.
    let pushed = tokio::task::spawn_blocking(move || state.plugins.push(&body)).await;
    match pushed {
        Ok(Ok(outcome)) => {
            let status = if outcome.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            tracing::info!(plugin = %outcome.package.name, version = %outcome.package.version, digest = %outcome.package.digest, created = outcome.created, "plugin pushed");
            let note = format!(
                "{}@{} {}",
                outcome.package.name, outcome.package.version, outcome.package.digest
            );
            noted((status, Json(outcome)), note)
        }
        Ok(Err(e)) => plugin_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("checking the plugin failed: {e}"),
        ),
    }
}

pub(super) async fn list(State(api): State<Api>) -> Response {
    Json(api.state.plugins.list()).into_response()
}

pub(super) async fn show(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let agents = api.state.registry.list();
    match api.state.plugins.show(&name, &agents) {
        Some(details) => Json(details).into_response(),
        None => plugin_error(PluginError::NotFound(format!(
            "no plugin named {name} was pushed to this server; `ferry plugin list` shows the plugins"
        ))),
    }
}

/// The most an API call waits for agents.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Waits for the connected agents the current assignment of `name` selects.
async fn rollout(api: &Api, name: &str, wait_ms: Option<u64>) -> Option<Vec<AgentRollout>> {
    let wait = Duration::from_millis(wait_ms?).min(MAX_WAIT);
    let plugins = api.state.plugins.list();
    let selector = plugins
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.assigned.as_ref())
        .map(|a| a.to.clone())?;
    let agents: Vec<String> = api
        .state
        .registry
        .list()
        .into_iter()
        .filter(|a| a.status != AgentStatus::Offline && selector.matches(&a.labels))
        .map(|a| a.id)
        .collect();
    Some(api.state.plugins.wait_settled(name, &agents, wait).await)
}

pub(super) async fn assign(
    State(api): State<Api>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody<AssignRequest>,
) -> Response {
    let body = match super::body(body) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let to: Selector = match body.to.parse() {
        Ok(to) => to,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid-selector", e),
    };
    let agents = api.state.registry.list();
    match api
        .state
        .plugins
        .assign(&name, body.version.as_deref(), to, &agents, &caller.name)
    {
        Ok(assignment) => {
            tracing::info!(plugin = %name, version = %assignment.version, to = %assignment.to, "plugin assigned");
            let agents = rollout(&api, &name, body.wait_ms).await;
            let note = format!("{name}@{} to {}", assignment.version, assignment.to);
            let out = AssignOutcome { assignment, agents };
            noted(Json(out), note)
        }
        Err(e) => plugin_error(e),
    }
}

pub(super) async fn rollback(
    State(api): State<Api>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match optional_body::<RollbackRequest>(&headers, &body) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    match api.state.plugins.rollback(&name, &caller.name) {
        Ok(current) => {
            tracing::info!(plugin = %name, now = ?current, "plugin rolled back");
            let agents = match current {
                Some(_) => rollout(&api, &name, body.wait_ms).await,
                None => None,
            };
            let note = match &current {
                Some(a) => format!("{name}: back to {} on {}", a.version, a.to),
                None => format!("{name}: back to unassigned"),
            };
            noted(
                Json(RollbackOutcome {
                    assigned: current,
                    agents,
                }),
                note,
            )
        }
        Err(e) => plugin_error(e),
    }
}

pub(super) async fn unassign(
    State(api): State<Api>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    match api.state.plugins.unassign(&name, &caller.name) {
        Ok(()) => noted(Json(UnassignOutcome { assigned: None }), name),
        Err(e) => plugin_error(e),
    }
}

pub(super) async fn delete(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: QueryParams<DeletePluginQuery>,
) -> Response {
    let params = match query(params) {
        Ok(params) => params,
        Err(e) => return e.into_response(),
    };
    match api.state.plugins.delete(&name, params.version.as_deref()) {
        Ok(versions) => {
            tracing::info!(plugin = %name, ?versions, "plugin deleted");
            let note = format!("{name} {}", versions.join(", "));
            noted(Json(DeleteOutcome { deleted: versions }), note)
        }
        Err(e) => plugin_error(e),
    }
}
