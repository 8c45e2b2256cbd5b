//! Sending a command to an agent: one bidirectional stream per command, opened by the server.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use ferry_protocol::{
    Cancel, Command, DataRequest, DataResponse, FrameError, FrameReader, Message, Peer, StreamKind,
    write_frame,
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

/// Runs one command over `connection` until it has ended, recording everything in `entry`.
pub(crate) async fn run(
    entry: Arc<CommandEntry>,
    connection: quinn::Connection,
    command: Command,
    data: DataSources,
    max_frame: u32,
) {
    let timeout = Duration::from_millis(command.timeout_ms.unwrap_or(0));
    let give_up_at = Instant::now() + timeout + RESULT_GRACE;
    let (mut send, recv) = match tokio::time::timeout_at(give_up_at, connection.open_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            entry.finish_without_result(
                CommandStatus::Undelivered,
                format!("could not open a stream to the agent: {e}"),
            );
            return;
        }
        Err(_) => {
            entry.finish_without_result(
                CommandStatus::Undelivered,
                "the agent did not take the command before its timeout: it is running as many commands as it allows".into(),
            );
            return;
        }
    };
    if let Err(e) = write_frame(&mut send, &Message::Command(command), max_frame).await {
        entry.finish_without_result(
            CommandStatus::Undelivered,
            format!("could not send the command: {e}"),
        );
        return;
    }

    let mut recv = FrameReader::new(recv, max_frame);
    let mut cancel_sent = false;
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
                            return;
                        }
                        match message {
                            Message::Accepted(_) => entry.accepted(),
                            Message::Progress(p) => entry.progress(p.percent, p.message),
                            Message::Log(l) => entry.log(l.level, l.message),
                            Message::Result(result) => {
                                entry.finish_with_result(result);
                                let _ = send.finish();
                                return;
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
                        entry.finish_without_result(CommandStatus::Lost, "the agent closed the command stream without a result".into());
                        return;
                    }
                    Err(FrameError::Io(e)) => {
                        entry.finish_without_result(CommandStatus::Lost, format!("connection to the agent lost before the result arrived: {e}"));
                        return;
                    }
                    Err(e) => {
                        let _ = recv.get_mut().stop(ferry_protocol::close::PROTOCOL_ERROR.into());
                        entry.finish_without_result(CommandStatus::Lost, format!("protocol error from the agent: {e}"));
                        return;
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
                entry.finish_without_result(
                    CommandStatus::TimedOut,
                    format!("no result from the agent within the command's timeout ({timeout:?}) plus {RESULT_GRACE:?}"),
                );
                return;
            }
        }
    }
}
