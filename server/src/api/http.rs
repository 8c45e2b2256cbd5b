//! Serving the operator API's HTTP/1 connections, with the limits axum's own `serve` lacks: a
//! connection has `api_header_timeout` to send each request's headers (hyper starts it at
//! connect and again whenever the connection goes idle after a response), and at most
//! `api_max_connections` are open at once. Without them, clients that connect and send nothing
//! hold a file descriptor each for ever, and enough of them stop the API and the server's own
//! files from opening.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How the API's connections are bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) max_connections: u32,
}

/// How long a stopping server lets a response in progress finish: an event stream never does,
/// and shutdown waits for every connection's task.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stop`; each connection is a task on `tasks`, and ends
/// once `stop` is cancelled (a response in progress gets `STOP_GRACE` to finish).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections as usize));
    let refused = AtomicU64::new(0);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a moment rather than spin.
                    tracing::warn!(error = %e, "the operator API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(stream);
            refuse(&refused, remote, limits.max_connections);
            continue;
        };
        // The remote address as axum's `ConnectInfo`, for what handlers log about a request
        // (axum's own `serve` would add it; this one serves with hyper directly).
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(request)
        });
        let stop = stop.clone();
        tasks.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(STOP_GRACE, connection.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%remote, error = %e, "operator API connection ended");
            }
            drop(permit);
        });
    }
}

/// Logs a refused connection: at 1, 2, 4, 8… refusals, so that a flood cannot flood the log.
fn refuse(refused: &AtomicU64, remote: SocketAddr, limit: u32) {
    let count = refused.fetch_add(1, Ordering::Relaxed) + 1;
    if count.is_power_of_two() {
        tracing::warn!(%remote, refused = count, limit,
            "closing an operator API connection: too many are open (api_max_connections)");
    }
}
