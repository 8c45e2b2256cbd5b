//! Serves enrollment connections (ALPN `ferry-enroll/1`); what is checked and issued is
//! `storage/enrollment.rs`.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{
    EnrollCode, EnrollRefused, FrameReader, Message, Peer, StreamKind, close, write_frame,
};

use super::Shared;

/// How long an enrolling peer has to send its request.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one enrollment connection (ALPN `ferry-enroll/1`): one stream, one `Enroll`, one
/// answer, then the connection closes. Nothing else is reachable on it.
pub(crate) async fn serve(
    connection: quinn::Connection,
    shared: Arc<Shared>,
) -> Result<(), String> {
    let remote = connection.remote_address();
    let max_frame = shared.config.max_frame_bytes;
    let (mut send, recv) = match tokio::time::timeout(ENROLL_TIMEOUT, connection.accept_bi()).await
    {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return Err(format!("enrolling peer {remote} left: {e}")),
        Err(_) => {
            connection.close(close::PROTOCOL_ERROR.into(), b"no enroll request in time");
            return Err(format!("enrolling peer {remote} sent nothing in time"));
        }
    };
    let mut recv = FrameReader::new(recv, max_frame);
    let request = match tokio::time::timeout(ENROLL_TIMEOUT, recv.next()).await {
        Ok(Ok(Some(message))) => {
            if let Err(e) = message.check_allowed(Peer::Agent, StreamKind::Enroll) {
                connection.close(close::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                return Err(format!("enrolling peer {remote}: {e}"));
            }
            match message {
                Message::Enroll(request) => request,
                _ => unreachable!("check_allowed admits only Enroll"),
            }
        }
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(None)) => "the stream ended before the request".into(),
                _ => "no request in time".into(),
            };
            connection.close(close::PROTOCOL_ERROR.into(), why.as_bytes());
            return Err(format!("enrolling peer {remote}: {why}"));
        }
    };
    let worker = shared.clone();
    let answer = tokio::task::spawn_blocking(move || {
        worker
            .enrollment
            .enroll(&worker.overrides, |id| worker.registry.get(id), &request)
    })
    .await
    .unwrap_or_else(|e| {
        Err(EnrollRefused {
            code: EnrollCode::Unavailable,
            message: e.to_string(),
        })
    });
    let (message, outcome) = match answer {
        Ok(enrolled) => {
            let ok = Ok(());
            (Message::Enrolled(enrolled), ok)
        }
        Err(refusal) => {
            tracing::warn!(%remote, code = ?refusal.code, "enrollment refused: {}", refusal.message);
            let why = format!("enrollment refused: {}", refusal.message);
            (Message::EnrollRefused(refusal), Err(why))
        }
    };
    let _ = write_frame(&mut send, &message, max_frame).await;
    let _ = send.finish();
    // Let the answer leave before the close frame overtakes it; the agent closes first.
    let _ = tokio::time::timeout(ENROLL_TIMEOUT, connection.closed()).await;
    outcome
}
