//! The streams agents open: a fetch stream (first frame `Fetch`, see `fetch.rs`) or a report
//! stream (first frame `Result`), on which an agent delivers again the results the server has
//! not acknowledged — after its connection broke during a command, or after either side
//! restarted. Each result is recorded (durably) and answered with `ResultAck`, after which the
//! agent forgets it. A result for a command that already ended is acknowledged and dropped:
//! a command ends once.
//!
//! Each result on a report stream is handed to its run's driver and answered with `ResultAck` once
//! the driver says it is on disk, or the stream is reset, so the agent keeps it, when it is not. A
//! result for another agent's command is ignored.

use std::sync::Arc;

use ferry_protocol::{
    AgentId, CommandResult, FrameReader, Message, Peer, ResultAck, StreamKind, close, write_frame,
};

use super::Shared;

/// Serves one stream the agent opened, by its first frame. A stream that does not start with
/// one whole `Fetch` or `Result` within the handshake timeout is a protocol breach (an agent
/// sends it as soon as it opens the stream) and closes the agent's connection: otherwise an
/// agent could hold its stream slots with silent or garbage streams for ever.
pub(crate) async fn serve_agent_stream(
    state: Arc<Shared>,
    agent: AgentId,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let timeout = state.config.handshake_timeout;
    let mut recv = FrameReader::new(recv, state.config.max_frame_bytes);
    let why = match tokio::time::timeout(timeout, recv.next()).await {
        Ok(Ok(Some(Message::Fetch(fetch)))) => {
            return crate::transport::fetch::serve(state, agent, send, fetch).await;
        }
        Ok(Ok(Some(Message::Result(result)))) => {
            return report(state, agent, connection, send, recv, result).await;
        }
        // Named as the fetch stream it would be: the allowlist's words for what may start one.
        Ok(Ok(Some(other))) => match other.check_allowed(Peer::Agent, StreamKind::Fetch) {
            Err(e) => format!("{e} (or Result, on a report stream)"),
            Ok(()) => unreachable!("only Fetch is allowed there, and it was served above"),
        },
        Ok(Ok(None)) => "fetch stream ended before Fetch".into(),
        Ok(Err(e)) => format!("on a fetch stream: {e}"),
        Err(_) => format!("no Fetch within {timeout:?} of opening a fetch stream"),
    };
    breach(&agent, &connection, &why);
}

fn breach(agent: &AgentId, connection: &quinn::Connection, why: &str) {
    tracing::warn!(%agent, "closing the connection for a breach on a stream it opened: {why}");
    connection.close(close::PROTOCOL_ERROR.into(), why.as_bytes());
}

async fn report(
    state: Arc<Shared>,
    agent: AgentId,
    connection: quinn::Connection,
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
            None => match tokio::time::timeout(state.config.handshake_timeout, recv.next()).await {
                Ok(Ok(Some(message))) => {
                    if let Err(e) = message.check_allowed(Peer::Agent, StreamKind::Report) {
                        return breach(&agent, &connection, &e.to_string());
                    }
                    match message {
                        Message::Result(result) => result,
                        _ => unreachable!("check_allowed admits only Result"),
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    return breach(&agent, &connection, &format!("on a report stream: {e}"));
                }
                Err(_) => {
                    return breach(
                        &agent,
                        &connection,
                        "no next Result or end within the handshake timeout on a report stream",
                    );
                }
            },
        };
        let id = result.id.clone();
        match state.runs.get(&id) {
            Some(entry) if entry.view().agent == agent.as_str() => {
                // Acknowledged only once the run's driver says it is on disk; otherwise the
                // stream is reset and the agent keeps the result for its next report stream.
                if !entry.report(result).await {
                    tracing::warn!(%agent, command = %id, "could not record a reported result now; the agent keeps it and delivers it again");
                    let _ = send.reset(close::NORMAL.into());
                    let _ = recv.get_mut().stop(close::NORMAL.into());
                    return;
                }
                recorded += 1;
                tracing::info!(%agent, command = %id, "result delivered on a report stream");
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
