//! Sending a command to an agent: one bidirectional stream per command, opened by the server.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use ferry_protocol::{
    AgentId, Cancel, Command, DataRequest, DataResponse, FrameError, FrameReader, Message, Peer,
    ResultAck, StreamKind, write_frame,
};
use tokio::time::Instant;

use crate::commands::{CommandEntry, CommandStatus};
use crate::server::ServerState;

/// How long past a command's own timeout the server waits for the agent's result before it
/// gives up on it: the agent ends the plugin at the timeout and needs a moment to report.
pub const RESULT_GRACE: Duration = Duration::from_secs(10);

/// Where a command's `DataRequest`s are answered from: the data the command carried, then the
/// data an operator supplied to the server.
pub(crate) struct DataSources {
    pub(crate) command: BTreeMap<String, Vec<u8>>,
    pub(crate) server: Arc<ServerState>,
}

/// How many DataRequests one command may make; past it, requests are refused, so a plugin in a
/// loop cannot keep the server busy.
pub const MAX_DATA_REQUESTS: u32 = 10_000;

impl DataSources {
    fn answer(&self, request: DataRequest, served: &mut u32) -> DataResponse {
        *served += 1;
        let (value, error) = if *served > MAX_DATA_REQUESTS {
            (
                None,
                Some(format!(
                    "this command has made more than {MAX_DATA_REQUESTS} data requests"
                )),
            )
        } else if let Some(value) = self.command.get(&request.key) {
            (Some(value.clone()), None)
        } else if let Some(value) = self.server.data.read().get(&request.key) {
            (Some(value.to_vec()), None)
        } else {
            (
                None,
                Some(format!(
                    "no data under '{}': neither the command nor the server has it; send it with the command (`ferry run --data {}=…`) or supply it to the server (PUT /v1/data/{})",
                    request.key, request.key, request.key
                )),
            )
        };
        DataResponse {
            request: request.request,
            value,
            error,
        }
    }
}

/// One agent's run of a command, from the wait for its agent to the recorded end.
pub(crate) struct Dispatch {
    pub(crate) state: Arc<ServerState>,
    pub(crate) entry: Arc<CommandEntry>,
    pub(crate) agent: AgentId,
    pub(crate) command: Command,
    pub(crate) data: BTreeMap<String, Vec<u8>>,
    /// Until when it may wait for the agent to connect before it was ever sent.
    pub(crate) deliver_by: Instant,
    /// It was sent before the server restarted: the same id goes out again, and the agent's
    /// journal answers it without running it twice.
    pub(crate) sent_before: bool,
}

/// How one attempt over one connection ended.
enum Attempt {
    /// The command has its end state.
    Ended,
    /// The command could not be sent on this connection (it never reached the agent).
    NotSent(String),
    /// The connection broke after the command was sent.
    Lost(String),
}

/// Runs one agent's copy of a command until it has ended, recording everything in its entry
/// and, where a restart must not lose it, on disk. When the agent is not connected the
/// command waits for it (until the delivery deadline when it was never sent); when the
/// connection breaks after sending, it waits for the agent to come back and sends the same
/// command id again, which the agent answers from its journal (with the result, or by
/// carrying on with the run) instead of running it twice.
pub(crate) async fn run(d: Dispatch) {
    let stop = d.state.stop.clone();
    tokio::select! {
        _ = dispatch(d) => {}
        // Everything a restart needs is on disk: the restarted server sends it again.
        _ = stop.cancelled() => {}
    }
}

async fn dispatch(d: Dispatch) {
    if !d.sent_before && !d.state.persist_run(&d.entry, true).await {
        d.entry.finish_without_result(
            CommandStatus::Undelivered,
            "not sent: the server could not record the command on disk; see the server's log"
                .into(),
        );
        return;
    }
    let timeout = Duration::from_millis(d.command.timeout_ms.unwrap_or(0));
    let result_wait = d.state.config.result_wait;
    let mut sent_at: Option<Instant> = d.sent_before.then(Instant::now);
    let mut cancel_requested = false;
    let mut last_loss = String::new();
    let sources = DataSources {
        command: d.data.clone(),
        server: d.state.clone(),
    };
    loop {
        let until = match sent_at {
            None => d.deliver_by,
            Some(at) => at + timeout + RESULT_GRACE + result_wait,
        };
        let connection = tokio::select! {
            found = d.state.registry.wait_connection(&d.agent, until) => found,
            _ = d.entry.cancelled(), if !cancel_requested => {
                cancel_requested = true;
                if sent_at.is_none() {
                    d.entry.finish_without_result(CommandStatus::Cancelled, "cancelled before it reached the agent".into());
                    d.state.persist_run(&d.entry, true).await;
                    return;
                }
                continue;
            }
        };
        let Some((_, connection)) = connection else {
            let (status, why) = match sent_at {
                None => (
                    CommandStatus::Undelivered,
                    format!(
                        "agent '{}' did not connect before the command's delivery deadline",
                        d.agent
                    ),
                ),
                Some(_) => (
                    CommandStatus::Lost,
                    format!(
                        "the connection to the agent was lost ({last_loss}) and the agent did not come back with the result within the command's timeout plus {:?}",
                        RESULT_GRACE + result_wait
                    ),
                ),
            };
            d.entry.finish_without_result(status, why);
            d.state.persist_run(&d.entry, true).await;
            return;
        };
        let give_up_at = sent_at.unwrap_or_else(Instant::now) + timeout + RESULT_GRACE;
        match attempt(&d, connection, &sources, give_up_at, cancel_requested).await {
            Attempt::Ended => {
                d.state.persist_run(&d.entry, true).await;
                return;
            }
            Attempt::NotSent(why) if sent_at.is_none() => {
                if Instant::now() >= d.deliver_by {
                    d.entry.finish_without_result(
                        CommandStatus::Undelivered,
                        format!("not sent: {why}"),
                    );
                    d.state.persist_run(&d.entry, true).await;
                    return;
                }
                tracing::info!(command = %d.command.id, agent = %d.agent, "not sent yet ({why}); waiting for the agent");
                // The connection is going away; wait for the registry to drop it or the agent
                // to come back, without spinning on a dead connection.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Attempt::NotSent(why) | Attempt::Lost(why) => {
                sent_at.get_or_insert_with(Instant::now);
                tracing::info!(command = %d.command.id, agent = %d.agent, "connection lost during the command ({why}); waiting for the agent to come back");
                d.entry.log(
                    ferry_protocol::LogLevel::Warn,
                    format!("the connection to the agent was lost ({why}); waiting for it to come back with the result"),
                );
                last_loss = why;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Sends the command over `connection` and follows it until its result, a breach, the give-up
/// time, or the connection's end.
async fn attempt(
    d: &Dispatch,
    connection: quinn::Connection,
    data: &DataSources,
    give_up_at: Instant,
    cancel_requested: bool,
) -> Attempt {
    let max_frame = d.state.config.max_frame_bytes;
    let entry = &d.entry;
    let (mut send, recv) = match tokio::time::timeout_at(give_up_at, connection.open_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            return Attempt::NotSent(format!("could not open a stream to the agent: {e}"));
        }
        Err(_) => {
            entry.finish_without_result(
                CommandStatus::Undelivered,
                "the agent did not take the command before its timeout: it is running as many commands as it allows".into(),
            );
            return Attempt::Ended;
        }
    };
    if let Err(e) = write_frame(&mut send, &Message::Command(d.command.clone()), max_frame).await {
        return Attempt::NotSent(format!("could not send the command: {e}"));
    }

    let mut recv = FrameReader::new(recv, max_frame);
    let mut cancel_sent = false;
    if cancel_requested {
        cancel_sent = true;
        let cancel = Message::Cancel(Cancel {
            reason: "cancelled by the operator".into(),
        });
        let _ = write_frame(&mut send, &cancel, max_frame).await;
    }
    let mut data_served = 0u32;
    loop {
        tokio::select! {
            frame = recv.next() => {
                match frame {
                    Ok(Some(message)) => {
                        if let Err(e) = message.check_allowed(Peer::Agent, StreamKind::Command) {
                            tracing::warn!(error = %e, "agent broke the protocol on a command stream");
                            let _ = recv.get_mut().stop(ferry_protocol::close::PROTOCOL_ERROR.into());
                            entry.finish_without_result(CommandStatus::Lost, format!("protocol error from the agent: {e}"));
                            return Attempt::Ended;
                        }
                        match message {
                            Message::Accepted(_) => {
                                if entry.accepted() {
                                    d.state.persist_run(entry, false).await;
                                }
                            }
                            Message::Progress(p) => entry.progress(p.percent, p.message),
                            Message::Log(l) => entry.log(l.level, l.message),
                            Message::Result(result) => {
                                let id = d.command.id.clone();
                                record_result(&d.state, entry, result).await;
                                let ack = Message::ResultAck(ResultAck { id });
                                let _ = write_frame(&mut send, &ack, max_frame).await;
                                let _ = send.finish();
                                return Attempt::Ended;
                            }
                            Message::DataRequest(request) => {
                                let response = Message::DataResponse(data.answer(request, &mut data_served));
                                if let Err(e) = write_frame(&mut send, &response, max_frame).await {
                                    tracing::debug!(error = %e, "could not answer a data request; the result will tell");
                                }
                            }
                            _ => unreachable!("check_allowed admits only agent command-stream messages"),
                        }
                    }
                    Ok(None) => {
                        return Attempt::Lost("the agent closed the command stream without a result".into());
                    }
                    Err(FrameError::Io(e)) => {
                        return Attempt::Lost(e.to_string());
                    }
                    Err(e) => {
                        let _ = recv.get_mut().stop(ferry_protocol::close::PROTOCOL_ERROR.into());
                        entry.finish_without_result(CommandStatus::Lost, format!("protocol error from the agent: {e}"));
                        return Attempt::Ended;
                    }
                }
            }
            _ = entry.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                let cancel = Message::Cancel(Cancel { reason: "cancelled by the operator".into() });
                if let Err(e) = write_frame(&mut send, &cancel, max_frame).await {
                    tracing::debug!(error = %e, "could not send Cancel; the result will tell");
                }
            }
            _ = tokio::time::sleep_until(give_up_at) => {
                let _ = send.reset(ferry_protocol::close::NORMAL.into());
                let timeout = Duration::from_millis(d.command.timeout_ms.unwrap_or(0));
                entry.finish_without_result(
                    CommandStatus::TimedOut,
                    format!("no result from the agent within the command's timeout ({timeout:?}) plus {RESULT_GRACE:?}"),
                );
                return Attempt::Ended;
            }
        }
    }
}

/// Records a result the agent sent (on its command stream or a report stream) where a restart
/// cannot lose it; true if it ended the command, false if the command had already ended.
pub(crate) async fn record_result(
    state: &ServerState,
    entry: &CommandEntry,
    result: ferry_protocol::CommandResult,
) -> bool {
    if !entry.finish_with_result(result) {
        return false;
    }
    state.persist_run(entry, true).await;
    true
}
