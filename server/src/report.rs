//! The streams agents open: a fetch stream (first frame `Fetch`, see `fetch.rs`) or a report
//! stream (first frame `Result`), on which an agent delivers again the results the server has
//! not acknowledged — after its connection broke during a command, or after either side
//! restarted. Each result is recorded (durably) and answered with `ResultAck`, after which the
//! agent forgets it. A result for a command that already ended is acknowledged and dropped:
//! a command ends once.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{
    AgentId, CommandResult, FrameReader, Message, Peer, ResultAck, StreamKind, close, write_frame,
};

use crate::server::ServerState;

/// How long an agent has to send the first frame of a stream it opened, and between results
/// on a report stream.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream the agent opened, by its first frame.
pub(crate) async fn serve_agent_stream(
    state: Arc<ServerState>,
    agent: AgentId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut recv = FrameReader::new(recv, state.config.max_frame_bytes);
    let why = match tokio::time::timeout(FRAME_TIMEOUT, recv.next()).await {
        Ok(Ok(Some(Message::Fetch(fetch)))) => {
            return crate::fetch::serve(state, agent, send, fetch).await;
        }
        Ok(Ok(Some(Message::Result(result)))) => {
            return report(state, agent, send, recv, result).await;
        }
        Ok(Ok(Some(other))) => format!(
            "agent sent `{}` first on a stream it opened, where only Fetch (a fetch stream) or Result (a report stream) may start one",
            other.kind()
        ),
        Ok(Ok(None)) => "the stream ended before its first frame".into(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no first frame in time".into(),
    };
    refuse(&agent, &mut send, &mut recv, &why);
}

fn refuse(
    agent: &AgentId,
    send: &mut quinn::SendStream,
    recv: &mut FrameReader<quinn::RecvStream>,
    why: &str,
) {
    tracing::warn!(%agent, "refusing a stream the agent opened: {why}");
    let _ = send.reset(close::PROTOCOL_ERROR.into());
    let _ = recv.get_mut().stop(close::PROTOCOL_ERROR.into());
}

async fn report(
    state: Arc<ServerState>,
    agent: AgentId,
    mut send: quinn::SendStream,
    mut recv: FrameReader<quinn::RecvStream>,
    first: CommandResult,
) {
    let max_frame = state.config.max_frame_bytes;
    let mut next = Some(first);
    let mut recorded = 0u32;
    loop {
        let result = match next.take() {
            Some(result) => result,
            None => match tokio::time::timeout(FRAME_TIMEOUT, recv.next()).await {
                Ok(Ok(Some(message))) => {
                    if let Err(e) = message.check_allowed(Peer::Agent, StreamKind::Report) {
                        return refuse(&agent, &mut send, &mut recv, &e.to_string());
                    }
                    match message {
                        Message::Result(result) => result,
                        _ => unreachable!("check_allowed admits only Result"),
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return refuse(&agent, &mut send, &mut recv, &e.to_string()),
                Err(_) => return refuse(&agent, &mut send, &mut recv, "no frame in time"),
            },
        };
        let id = result.id.clone();
        match state.commands.get(&id) {
            Some(entry) if entry.view().agent == agent.as_str() => {
                if crate::dispatch::record_result(&state, &entry, result).await {
                    recorded += 1;
                    tracing::info!(%agent, command = %id, "result delivered after a reconnection");
                }
            }
            Some(_) => {
                // Never record one agent's word about another agent's command.
                tracing::warn!(%agent, command = %id, "agent reported a result for another agent's command; ignored");
            }
            None => {
                tracing::info!(%agent, command = %id, "agent reported a result for a command this server does not know (forgotten or never recorded); acknowledged and dropped");
            }
        }
        let ack = Message::ResultAck(ResultAck { id });
        if write_frame(&mut send, &ack, max_frame).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    tracing::debug!(%agent, recorded, "report stream ended");
}
