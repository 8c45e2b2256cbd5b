//! `/v1/agents`: list (by selector and status), show (with plugins), labels, revoke.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_api::{
    Agent, AgentDetails, AgentPluginView, AgentsQuery, LabelsRequest, RevokeRequest, RevokedAgent,
    UnseenAgent,
};
use ferry_protocol::{AgentId, close};
use time::OffsetDateTime;

use super::{
    Api, ApiError, Caller, JsonBody, QueryParams, api_error, body, error, noted, optional_body,
    query,
};
use crate::domain::agents::AgentInfo;
use crate::domain::plugins::Selector;
use crate::storage::overrides::{LabelsError, MAX_LABELS, Revocation, check_label};

fn parse_id(id: &str) -> Result<AgentId, ApiError> {
    AgentId::new(id)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, "invalid-agent-id", e.to_string()))
}

fn unknown_agent(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown-agent",
        format!(
            "no agent '{id}' has connected since the server started; `ferry agents` lists the agents"
        ),
    )
}

/// Why a revoked agent's connection is closed, as the agent logs it.
const REVOKED: &str = "this agent was revoked by an operator";

/// An agent as the API shows it: what the registry knows, with `labels` the effective ones
/// (the agent's own, `agent_labels`, with the operator's, `server_labels`, merged over them)
/// and the revocation, if any.
fn agent_view(api: &Api, info: AgentInfo) -> Agent {
    let overrides = api.state.overrides.get(&info.id);
    let labels = api.state.overrides.effective_labels(&info.id, &info.labels);
    // Destructured so that a field the registry gains is a compile error here until the API
    // shows it or decides not to.
    let AgentInfo {
        id,
        status,
        labels: agent_labels,
        agent_version,
        topics,
        read_only_topics,
        wit_versions,
        remote_address,
        connected_since,
        last_heartbeat,
        metrics,
        running_commands,
        heartbeat,
        instance,
        duplicate,
    } = info;
    Agent {
        id,
        status,
        labels,
        agent_labels,
        server_labels: overrides.labels,
        revoked: overrides.revoked,
        agent_version,
        topics,
        read_only_topics,
        wit_versions,
        remote_address,
        connected_since,
        last_heartbeat,
        metrics,
        running_commands,
        heartbeat,
        instance,
        duplicate,
    }
}

pub(super) async fn list(State(api): State<Api>, params: QueryParams<AgentsQuery>) -> Response {
    let params = match query(params) {
        Ok(params) => params,
        Err(e) => return e.into_response(),
    };
    let selector: Selector = match params.selector.as_deref().unwrap_or("all").parse() {
        Ok(selector) => selector,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid-selector", e),
    };
    let agents: Vec<Agent> = api
        .state
        .registry
        .list()
        .into_iter()
        .map(|info| agent_view(&api, info))
        .filter(|a| selector.matches(&a.labels))
        .filter(|a| params.status.as_ref().is_none_or(|s| a.status.name() == s))
        .collect();
    Json(agents).into_response()
}

pub(super) async fn show(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let Some(info) = api.state.registry.get(&id) else {
        return unknown_agent(id.as_str());
    };
    // Plugin assignments select by the agent's own labels, as its connection does.
    let plugins: Vec<AgentPluginView> = api
        .state
        .plugins
        .list()
        .iter()
        .filter_map(|p| api.state.plugins.show(&p.name, std::slice::from_ref(&info)))
        .flat_map(|details| {
            let name = details.summary.name.clone();
            details.agents.into_iter().map(move |a| AgentPluginView {
                name: name.clone(),
                version: a.version,
                digest: a.digest,
                state: a.state,
                detail: a.detail,
                updated: a.updated,
            })
        })
        .collect();
    Json(AgentDetails {
        agent: agent_view(&api, info),
        plugins,
    })
    .into_response()
}

pub(super) async fn labels(
    State(api): State<Api>,
    Path(id): Path<String>,
    request: JsonBody<LabelsRequest>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let request = match body(request) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let Some(info) = api.state.registry.get(&id) else {
        return unknown_agent(id.as_str());
    };
    for (key, value) in &request.set {
        if let Err(e) = check_label(key, Some(value)) {
            return error(StatusCode::BAD_REQUEST, "invalid-label", e);
        }
    }
    let note = format!("{id}: set {:?}, removed {:?}", request.set, request.remove);
    match api
        .state
        .overrides
        .set_labels(id.as_str(), &request.set, &request.remove)
    {
        Ok(_) => noted(Json(agent_view(&api, info)), note),
        Err(LabelsError::TooMany(n)) => error(
            StatusCode::BAD_REQUEST,
            "too-many-labels",
            format!(
                "an agent carries at most {MAX_LABELS} operator labels, and this would give '{id}' {n}; remove some first (`ferry agent label {id} KEY-`)"
            ),
        ),
        Err(LabelsError::Storage(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "storage", e),
    }
}

pub(super) async fn revoke(
    State(api): State<Api>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: Bytes,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let reason = match optional_body::<RevokeRequest>(&headers, &request) {
        Ok(request) => request.reason,
        Err(e) => return e.into_response(),
    };
    let revocation = Revocation {
        at: OffsetDateTime::now_utc(),
        by: caller.name,
        reason,
    };
    if let Err(e) = api
        .state
        .overrides
        .update(id.as_str(), |o| o.revoked = Some(revocation.clone()))
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "storage", e);
    }
    let was_connected = api.state.registry.close(&id, close::REJECTED, REVOKED);
    // A handshake that passed its revocation check just before the revocation registers
    // within the handshake timeout; close such a connection too.
    // Weak: a server shutting down must not wait for this to let go of its database.
    let later = std::sync::Arc::downgrade(&api.state);
    let later_id = id.clone();
    let after = api.state.config.handshake_timeout + Duration::from_secs(1);
    let stop = api.state.stop.clone();
    api.state.tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(after) => {}
            // A stopping server closes every connection anyway; shutdown waits for this task.
            _ = stop.cancelled() => return,
        }
        if let Some(state) = later.upgrade()
            && state.overrides.revoked(later_id.as_str()).is_some()
        {
            state.registry.close(&later_id, close::REJECTED, REVOKED);
        }
    });
    tracing::warn!(agent = %id, by = %revocation.by, was_connected, "agent revoked");
    let out = match api.state.registry.get(&id) {
        Some(info) => RevokedAgent::Known(Box::new(agent_view(&api, info))),
        None => RevokedAgent::Unseen(UnseenAgent {
            id: id.to_string(),
            revoked: Some(revocation),
        }),
    };
    noted(Json(out), format!("{id} (connected: {was_connected})"))
}

pub(super) async fn unrevoke(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if api.state.overrides.revoked(id.as_str()).is_none() {
        return error(
            StatusCode::CONFLICT,
            "not-revoked",
            format!("agent '{id}' is not revoked"),
        );
    }
    if let Err(e) = api
        .state
        .overrides
        .update(id.as_str(), |o| o.revoked = None)
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "storage", e);
    }
    let out = match api.state.registry.get(&id) {
        Some(info) => RevokedAgent::Known(Box::new(agent_view(&api, info))),
        None => RevokedAgent::Unseen(UnseenAgent {
            id: id.to_string(),
            revoked: None,
        }),
    };
    noted(Json(out), id.to_string())
}
