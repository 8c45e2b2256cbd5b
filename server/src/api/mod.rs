//! The operator API: HTTP/JSON, bound to loopback by default.
//!
//! Every route but `/v1/health` needs `Authorization: Bearer <token>` with a token whose scope
//! covers the route's ([`crate::storage::tokens`]; the scheme is case-insensitive): no token, or
//! one the server does not know, is 401 with `WWW-Authenticate: Bearer`; a token whose scope is
//! too small is 403. Unknown or revoked tokens are counted and logged with their source address
//! (`refused.rs`; the connection loop in `http.rs` adds it to each request as `ConnectInfo`).
//! Errors are `{"error": {"code", "message"}}`, axum's own refusals included (`normalize`).
//!
//! The routes are one table, [`routes`]: the router is built from it, the guard takes each
//! route's scope and audit action from it, and a test checks it against the OpenAPI document
//! served at `/v1/openapi.json` (`openapi.json` here), so the three cannot drift apart. Every
//! request that changes something is recorded in the audit log with its result.
//!
//! Each route of the table has a method, a path, a scope and an action. Each route with a scope
//! gets the `guard` middleware: 401 without a known token, 403 when the token's scope does not
//! cover the route's, then the handler, then, for every method but GET, an audit entry. Errors
//! carry their code in a response extension for the audit log. `tests.rs` checks that
//! `openapi.json` lists exactly the table's routes with their scopes (`x-ferry-scope`) and actions
//! (`operationId`) and that its example requests deserialize into the handlers' types; the e2e test
//! `tests/e2e/api.rs` calls every documented route over HTTP with no token, a wrong one, each
//! scope, and admin.
//!
//! The scopes and their routes, each scope covering the one before it:
//! - none: `GET /v1/health`.
//! - read: every other `GET` but API tokens, join tokens and the audit log: agents, commands and
//!   their events, plugins, data keys, `openapi.json`, `whoami`.
//! - run: also `POST /v1/commands`, `POST /v1/commands/{id}/cancel`, `PUT` and `DELETE
//!   /v1/data/{key}`.
//! - admin: also plugin push, delete, assign, rollback and unassign; agent labels, revoke and
//!   unrevoke; `/v1/api-tokens`, `/v1/join-tokens`, `GET /v1/audit`.

mod admin;
mod agents;
mod commands;
mod data;
mod http;
mod join_tokens;
mod plugins;
mod refused;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use ferry_api::{ErrorBody, ErrorDetail, Health};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::domain::ServerData;
use crate::domain::commands::Commands;
use crate::domain::plugins::PluginRegistry;
use crate::storage::audit::{AuditEntry, AuditLog};
use crate::storage::enrollment::Enrollment;
use crate::storage::overrides::Overrides;
use crate::storage::tokens::{ApiToken, Scope, TokenStore};
use crate::transport::Agents;

pub(crate) use http::{Limits, serve};
pub(crate) use refused::RefusedTokens;

/// The OpenAPI document, served as is.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// What the operator API's handlers need, as the composition root wires it.
pub(crate) struct ApiState {
    pub(crate) config: ServerConfig,
    pub(crate) registry: Arc<Agents>,
    /// Commands as operators sent them, with every agent's run.
    pub(crate) commands: Arc<Commands>,
    pub(crate) plugins: Arc<PluginRegistry>,
    pub(crate) tokens: Arc<TokenStore>,
    /// Every operator action.
    pub(crate) audit: Arc<AuditLog>,
    /// Operators' labels and revocations of agents.
    pub(crate) overrides: Arc<Overrides>,
    /// Join tokens.
    pub(crate) enrollment: Arc<Enrollment>,
    pub(crate) data: ServerData,
    /// Where handlers start work that outlives a request; shutdown waits for it.
    pub(crate) tasks: TaskTracker,
    pub(crate) stop: CancellationToken,
    /// Requests with a token the server does not know: counted for `/v1/health`, and logged.
    pub(crate) refused_tokens: RefusedTokens,
}

#[derive(Clone)]
struct Api {
    state: Arc<ApiState>,
}

/// One route: what the router serves, the scope it needs and its name in the audit log (the
/// OpenAPI `operationId`).
pub(crate) struct Route {
    /// Read by the OpenAPI test; the router has it in `router`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    /// `None`: no token needed.
    pub(crate) scope: Option<Scope>,
    pub(crate) action: &'static str,
    router: MethodRouter<Api>,
}

fn route<H, T>(
    method: Method,
    path: &'static str,
    scope: Option<Scope>,
    action: &'static str,
    handler: H,
) -> Route
where
    H: axum::handler::Handler<T, Api>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a routable method");
    Route {
        method,
        path,
        scope,
        action,
        router: on(filter, handler),
    }
}

/// Every route of the API.
pub(crate) fn routes(plugin_limit: usize) -> Vec<Route> {
    use Method as M;
    use Scope::{Admin, Read, Run};
    let mut push = route(
        M::POST,
        "/v1/plugins",
        Some(Admin),
        "plugin.push",
        plugins::push,
    );
    push.router = push
        .router
        .layer(axum::extract::DefaultBodyLimit::max(plugin_limit));
    vec![
        route(M::GET, "/v1/health", None, "health", health),
        route(M::GET, "/v1/openapi.json", Some(Read), "openapi", openapi),
        route(M::GET, "/v1/whoami", Some(Read), "whoami", admin::whoami),
        route(M::GET, "/v1/agents", Some(Read), "agent.list", agents::list),
        route(
            M::GET,
            "/v1/agents/{id}",
            Some(Read),
            "agent.show",
            agents::show,
        ),
        route(
            M::POST,
            "/v1/agents/{id}/labels",
            Some(Admin),
            "agent.labels",
            agents::labels,
        ),
        route(
            M::POST,
            "/v1/agents/{id}/revoke",
            Some(Admin),
            "agent.revoke",
            agents::revoke,
        ),
        route(
            M::POST,
            "/v1/agents/{id}/unrevoke",
            Some(Admin),
            "agent.unrevoke",
            agents::unrevoke,
        ),
        route(
            M::POST,
            "/v1/commands",
            Some(Run),
            "command.create",
            commands::create,
        ),
        route(
            M::GET,
            "/v1/commands",
            Some(Read),
            "command.list",
            commands::list,
        ),
        route(
            M::GET,
            "/v1/commands/{id}",
            Some(Read),
            "command.show",
            commands::show,
        ),
        route(
            M::GET,
            "/v1/commands/{id}/events",
            Some(Read),
            "command.events",
            commands::events,
        ),
        route(
            M::POST,
            "/v1/commands/{id}/cancel",
            Some(Run),
            "command.cancel",
            commands::cancel,
        ),
        route(M::GET, "/v1/data", Some(Read), "data.list", data::list),
        route(M::PUT, "/v1/data/{key}", Some(Run), "data.put", data::put),
        route(
            M::DELETE,
            "/v1/data/{key}",
            Some(Run),
            "data.delete",
            data::delete,
        ),
        push,
        route(
            M::GET,
            "/v1/plugins",
            Some(Read),
            "plugin.list",
            plugins::list,
        ),
        route(
            M::GET,
            "/v1/plugins/{name}",
            Some(Read),
            "plugin.show",
            plugins::show,
        ),
        route(
            M::DELETE,
            "/v1/plugins/{name}",
            Some(Admin),
            "plugin.delete",
            plugins::delete,
        ),
        route(
            M::POST,
            "/v1/plugins/{name}/assign",
            Some(Admin),
            "plugin.assign",
            plugins::assign,
        ),
        route(
            M::POST,
            "/v1/plugins/{name}/rollback",
            Some(Admin),
            "plugin.rollback",
            plugins::rollback,
        ),
        route(
            M::POST,
            "/v1/plugins/{name}/unassign",
            Some(Admin),
            "plugin.unassign",
            plugins::unassign,
        ),
        route(
            M::GET,
            "/v1/api-tokens",
            Some(Admin),
            "api-token.list",
            admin::list_tokens,
        ),
        route(
            M::POST,
            "/v1/api-tokens",
            Some(Admin),
            "api-token.create",
            admin::create_token,
        ),
        route(
            M::DELETE,
            "/v1/api-tokens/{id}",
            Some(Admin),
            "api-token.revoke",
            admin::revoke_token,
        ),
        route(M::GET, "/v1/audit", Some(Admin), "audit.list", admin::audit),
        route(
            M::GET,
            "/v1/join-tokens",
            Some(Admin),
            "join-token.list",
            join_tokens::list,
        ),
        route(
            M::POST,
            "/v1/join-tokens",
            Some(Admin),
            "join-token.create",
            join_tokens::create,
        ),
        route(
            M::DELETE,
            "/v1/join-tokens/{id}",
            Some(Admin),
            "join-token.revoke",
            join_tokens::revoke,
        ),
    ]
}

pub(crate) fn router(state: Arc<ApiState>) -> Router {
    // A payload may be as large as a frame allows, and base64 in JSON makes it a third larger.
    let body_limit = (state.config.max_frame_bytes as usize).saturating_mul(2);
    let plugin_limit = usize::try_from(state.config.max_plugin_bytes).unwrap_or(usize::MAX);
    let api = Api { state };
    let mut router = Router::new();
    for r in routes(plugin_limit) {
        // Inside the guard, so that the audit log records the error's code.
        let method_router = r.router.layer(middleware::from_fn(normalize));
        let method_router = match r.scope {
            Some(scope) => method_router.route_layer(middleware::from_fn_with_state(
                Guard {
                    api: api.clone(),
                    scope,
                    action: r.action,
                },
                guard,
            )),
            None => method_router,
        };
        // Routes on one path with different methods merge into one method router.
        router = router.route(r.path, method_router);
    }
    router
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint; GET /v1/openapi.json lists them",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(normalize))
        .with_state(api)
}

/// An API error; its body is `{"error": {"code": "...", "message": "..."}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The error code of a response, for the audit log.
#[derive(Clone, Copy)]
struct ErrorCode(&'static str);

/// What an action was done to, for the audit log (a handler adds it to its response).
#[derive(Clone)]
struct AuditNote(String);

/// The token of the request, for handlers that record who did something.
#[derive(Clone)]
struct Caller(ApiToken);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: bounded(&self.message),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

/// The most characters of one word (a run without spaces) an error message carries: messages
/// quote what the caller sent, and a 10 MB selector must not come back as a 20 MB error.
const WORD_MAX: usize = 100;

/// The most characters of an error message, for inputs quoted with spaces in them.
const MESSAGE_MAX: usize = 1_000;

/// `message` with every word longer than `WORD_MAX` characters cut to that with an ellipsis,
/// and the whole cut to `MESSAGE_MAX`. No message of the server's own has such a word; what
/// has one is a quoted input.
fn bounded(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_MAX + 8));
    let mut word = 0usize;
    let mut total = 0usize;
    for c in message.chars() {
        if total == MESSAGE_MAX {
            out.push('…');
            break;
        }
        if c.is_whitespace() {
            word = 0;
        } else {
            word += 1;
            if word == WORD_MAX + 1 {
                out.push('…');
                total += 1;
                continue;
            }
            if word > WORD_MAX {
                continue;
            }
        }
        out.push(c);
        total += 1;
    }
    out
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

/// A response with a note for the audit log.
fn noted(response: impl IntoResponse, note: impl Into<String>) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(AuditNote(note.into()));
    response
}

/// A JSON body or a JSON error saying what is wrong with it.
type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(body: JsonBody<T>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| rejection(e.status(), &e.body_text(), false))
}

/// A query string or a JSON error saying what is wrong with it.
type QueryParams<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(query: QueryParams<T>) -> Result<T, ApiError> {
    query
        .map(|axum::extract::Query(q)| q)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, "invalid-query", e.body_text()))
}

/// What axum answers when it refuses a request before a handler sees it (a body that is not
/// JSON or too large, a path parameter that is not UTF-8, a method the path lacks), in the
/// documented shape and with the documented status: a body that parses but does not fit the
/// request's type is 400, as the OpenAPI document says, not axum's 422.
fn rejection(status: StatusCode, text: &str, plugin_push: bool) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE if plugin_push => api_error(
            status,
            "too-large",
            "the plugin package is larger than this server accepts (its max_plugin_bytes); make the component smaller, or raise max_plugin_bytes in the server's configuration",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => api_error(
            status,
            "too-large",
            "the request body is larger than this server accepts (twice its max_frame_bytes); send a smaller payload or value, or raise max_frame_bytes in the server's configuration",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => api_error(
            status,
            "unsupported-media-type",
            "send the body as JSON, with `Content-Type: application/json`",
        ),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => api_error(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            format!("{text}; GET /v1/openapi.json documents each request"),
        ),
        StatusCode::METHOD_NOT_ALLOWED => api_error(
            status,
            "method-not-allowed",
            "this path does not take that method; its `Allow` header and GET /v1/openapi.json list the ones it does",
        ),
        _ => api_error(status, "error", text.to_string()),
    }
}

/// Puts an error response that is not already the API's own (axum's rejections answer in
/// plain text) into the documented shape; every other response passes as it is.
async fn normalize(request: Request, next: Next) -> Response {
    let plugin_push = request.method() == Method::POST && request.uri().path() == "/v1/plugins";
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<ErrorCode>().is_some()
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    // axum's rejection texts are a line; anything longer is cut by `bounded` anyway.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let mut out = rejection(status, &text, plugin_push).into_response();
    for name in [header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

#[derive(Clone)]
struct Guard {
    api: Api,
    scope: Scope,
    action: &'static str,
}

/// Authenticates, checks the scope, runs the handler and records what changed.
async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    let token = match presented {
        None => {
            return unauthorized(
                "Bearer",
                "send `Authorization: Bearer <token>`; the server's first admin token is in its data directory (operator.token)",
            );
        }
        Some(presented) => match guard.api.state.tokens.authenticate(presented) {
            Some(token) => token,
            None => {
                // Not audited (the audit log is of what tokens did, and a flood of these
                // would grow it), but counted and logged with where it came from.
                let remote = request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(remote)| *remote);
                guard
                    .api
                    .state
                    .refused_tokens
                    .record(remote, request.uri().path());
                return unauthorized(
                    r#"Bearer error="invalid_token""#,
                    "the bearer token is not valid for this server (unknown or revoked); ask an admin for one (`ferry api-token create`)",
                );
            }
        },
    };
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = if token.scope.covers(guard.scope) {
        request.extensions_mut().insert(Caller(token.clone()));
        next.run(request).await
    } else {
        error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the token '{}' has scope {}; {method} {path} ({}) needs {}: use a token with that scope (an admin makes one with `ferry api-token create --name NAME --scope {}`)",
                token.name, token.scope, guard.action, guard.scope, guard.scope
            ),
        )
    };
    if method != Method::GET && method != Method::HEAD {
        let status = response.status();
        let result = match response.extensions().get::<ErrorCode>() {
            Some(ErrorCode(code)) => (*code).to_string(),
            None if status.is_success() => "ok".to_string(),
            None => format!("http-{}", status.as_u16()),
        };
        let entry = AuditEntry {
            seq: 0,
            at: OffsetDateTime::now_utc(),
            token_id: token.id,
            token_name: token.name,
            action: guard.action.to_string(),
            request: format!("{method} {path}"),
            detail: response
                .extensions()
                .get::<AuditNote>()
                .map(|n| n.0.clone()),
            result,
            status: status.as_u16(),
        };
        let state = guard.api.state.clone();
        // The commit syncs to disk: off the async workers.
        match tokio::task::spawn_blocking(move || state.audit.record(entry)).await {
            Ok(Ok(entry)) => tracing::info!(
                seq = entry.seq,
                who = %entry.token_name,
                action = %entry.action,
                request = %entry.request,
                result = %entry.result,
                "operator action"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "an operator action could not be audited"),
            Err(e) => tracing::error!(error = %e, "an operator action could not be audited"),
        }
    }
    response
}

/// The token of an `Authorization` header's value: the scheme is case-insensitive (RFC 9110,
/// section 11.1), so `bearer x` is `Bearer x`.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A 401 with the `WWW-Authenticate` challenge that tells a client which scheme to use
/// (RFC 9110 requires one on every 401).
fn unauthorized(challenge: &'static str, message: &'static str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    response
}

/// A body a route lets the caller leave out (revoke's reason, rollback's wait): an empty body is
/// the default, and one that is sent must be JSON, as every other route's body is, so that a
/// reason sent as a form or without a content type is refused (415) rather than dropped.
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    headers: &axum::http::HeaderMap,
    bytes: &[u8],
) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json {
        return Err(rejection(StatusCode::UNSUPPORTED_MEDIA_TYPE, "", false));
    }
    body(Json::from_bytes(bytes))
}

async fn health(State(api): State<Api>) -> Response {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        refused_tokens: api.state.refused_tokens.total(),
    })
    .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
