//! `/v1/data`: data an operator supplies for plugins to ask for by key (`request-data`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_api::DataKey;

use super::{Api, error, noted};

pub(super) async fn list(State(api): State<Api>) -> Response {
    let data = api.state.data.read();
    let keys: Vec<DataKey> = data
        .iter()
        .map(|(key, value)| DataKey {
            key: key.clone(),
            bytes: value.len() as u64,
        })
        .collect();
    Json(keys).into_response()
}

pub(super) async fn put(
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
    noted(
        Json(DataKey {
            key: key.clone(),
            bytes: bytes as u64,
        }),
        format!("{key}: {bytes} bytes"),
    )
}

pub(super) async fn delete(State(api): State<Api>, Path(key): Path<String>) -> Response {
    match api.state.data.write().remove(&key) {
        Some(_) => noted(StatusCode::NO_CONTENT, key),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown-key",
            format!("no data under '{key}'"),
        ),
    }
}
