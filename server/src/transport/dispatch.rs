//! Sending a command to an agent: one bidirectional stream per command, opened by the server.
//!
//! One task per agent's run, a thin driver of `ferry_lifecycle::Run`: it writes the run to disk,
//! then turns the registry (`wait_connection`), the run's stream, report streams (through the
//! entry's mailbox, `RunEntry::attach` and `report`), the disk and timers into the machine's
//! inputs, and carries out its effects. It decides nothing itself.
//!
//! What the machine decides: wait for the agent (until `deliver_within` when never sent); send
//! `Command`; pass `Cancel` on; answer `DataRequest`s (from the command's own data, then the
//! operator's, `PUT /v1/data/{key}`, at most `MAX_DATA_REQUESTS` per command); on `Result`, record
//! it durably and only then answer `ResultAck` and show the end. A failed write resets the stream
//! instead, and the same id is sent again a second later, which the agent answers from its journal.
//! When the connection breaks after sending (from the first byte of the `Command` on), it waits for
//! the agent to come back (the command's timeout plus `RESULT_GRACE` plus `result_wait`, 10 min by
//! default, counted from the first send, also across a server restart) and sends the same id again;
//! after a resend it waits at least `RESULT_GRACE` for the answer. Past that the run is `lost`; on
//! a live stream it gives up `RESULT_GRACE` after the command's timeout (`timed-out`). Every end is
//! recorded before it is shown. Every task ends at the server's stop without touching the records,
//! so a restart takes over.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use ferry_lifecycle::{Effect, Input, Limits, Run, Start};
use ferry_protocol::{
    Command, DataRequest, DataResponse, FrameError, FrameReader, Message, write_frame,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Agents;
use crate::domain::ServerData;
use crate::domain::ports::{CommandLog, Deliver, Delivery};
use crate::domain::records::RunRecord;
use crate::domain::runs::{RunEvent, RunStatus};

/// How long past a command's own timeout the server waits for the agent's result before it
/// gives up on it: the agent ends the plugin at the timeout and needs a moment to report.
pub const RESULT_GRACE: Duration = Duration::from_secs(10);

/// Where a command's `DataRequest`s are answered from: the data the command carried, then the
/// data an operator supplied to the server.
struct DataSources {
    command: BTreeMap<String, Vec<u8>>,
    server: ServerData,
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
        } else if let Some(value) = self.server.read().get(&request.key) {
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

/// The transport's side of commands: starts each agent's run on its own task, with the
/// handles a run needs (and not the whole server).
pub(crate) struct Dispatcher {
    pub(crate) agents: Arc<Agents>,
    pub(crate) log: Arc<dyn CommandLog>,
    pub(crate) data: ServerData,
    pub(crate) result_wait: Duration,
    pub(crate) max_frame_bytes: u32,
    pub(crate) tasks: TaskTracker,
    pub(crate) stop: CancellationToken,
}

impl Deliver for Arc<Dispatcher> {
    fn deliver(&self, delivery: Delivery) {
        self.tasks.spawn(run(self.clone(), delivery));
    }
}

/// Runs one agent's copy of a command until it has ended: a thin driver of
/// [`ferry_lifecycle::Run`], which decides everything (when to send, what a frame means, when
/// a result may be acknowledged, how the run ends); this task only turns the registry, the
/// stream, the disk, report streams and timers into its inputs and carries out its effects.
async fn run(dispatcher: Arc<Dispatcher>, d: Delivery) {
    let stop = dispatcher.stop.clone();
    let entry = d.entry.clone();
    tokio::select! {
        _ = drive(&dispatcher, d) => {}
        // Everything a restart needs is on disk: the restarted server sends it again.
        _ = stop.cancelled() => {}
    }
    entry.detach();
}

/// The run's stream while it has one.
struct Stream {
    send: quinn::SendStream,
    recv: FrameReader<quinn::RecvStream>,
}

async fn drive(state: &Dispatcher, d: Delivery) {
    let entry = &d.entry;
    let record = || RunRecord::new(entry.origin().clone(), entry.view());
    if !d.recorded
        && let Err(e) = state.log.save_run(&record(), true).await
    {
        tracing::error!(command = %d.command.id, error = %e, "cannot record a command's run");
        entry.finish_unrecorded(
            RunStatus::Undelivered,
            "not sent: the server could not record the command on disk; see the server's log"
                .into(),
        );
        return;
    }
    let limits = Limits {
        timeout: Duration::from_millis(d.command.timeout_ms.unwrap_or(0)),
        result_grace: RESULT_GRACE,
        result_wait: state.result_wait,
    };
    let start = match d.sent_at {
        Some(sent_at) => Start::Resumed {
            sent_at: sent_at.into_std(),
        },
        None => Start::New {
            deliver_by: d.deliver_by.into_std(),
        },
    };
    let mut run = Run::new(d.command.id.clone(), limits, start);
    let mut reports = entry.attach();
    let mut waiting_reports: Vec<(String, oneshot::Sender<bool>)> = Vec::new();
    let sources = DataSources {
        command: d.data.clone(),
        server: state.data.clone(),
    };
    let max_frame = state.max_frame_bytes;
    let mut connection: Option<quinn::Connection> = None;
    let mut stream: Option<Stream> = None;
    let mut finished: Option<RunEvent> = None;
    let mut data_served = 0u32;
    let now = || Instant::now().into_std();

    loop {
        while let Some(effect) = run.poll() {
            match effect {
                Effect::Send => {
                    let until = run
                        .poll_timeout()
                        .map_or_else(Instant::now, Instant::from_std);
                    let input = match connection.as_ref() {
                        None => Input::NotSent("the agent's connection went away".into()),
                        Some(connection) => {
                            match send(connection, &d.command, max_frame, until).await {
                                Ok(opened) => {
                                    stream = Some(opened);
                                    Input::Sent
                                }
                                Err(input) => input,
                            }
                        }
                    };
                    run.handle(now(), input);
                }
                Effect::Frame(message) => write_on(&mut stream, &message, max_frame).await,
                Effect::AnswerData(request) => {
                    let response = Message::DataResponse(sources.answer(request, &mut data_served));
                    write_on(&mut stream, &response, max_frame).await;
                }
                Effect::Finish => {
                    if let Some(s) = stream.as_mut() {
                        let _ = s.send.finish();
                    }
                }
                Effect::Reset(code) => {
                    if let Some(mut s) = stream.take() {
                        let _ = s.send.reset(code.into());
                        let _ = s.recv.get_mut().stop(code.into());
                    }
                }
                Effect::Accepted => {
                    if entry.accepted() {
                        // Not waited for: it is not durable, and the writer's queue keeps it
                        // ahead of the run's end. Waiting would hold the Result behind whatever
                        // durable commit is on the writer thread (another command's end).
                        let written = state.log.save_run(&record(), false);
                        let id = d.command.id.clone();
                        state.tasks.spawn(async move {
                            if let Err(e) = written.await {
                                tracing::error!(command = %id, error = %e, "cannot record a command's run");
                            }
                        });
                    }
                }
                Effect::Progress(percent, message) => entry.progress(percent, message),
                Effect::Log(level, message) => entry.log(level, message),
                Effect::Record(end) => {
                    let (view, event) = entry.ending(&end);
                    let record = RunRecord::new(entry.origin().clone(), view);
                    let written = state.log.save_run(&record, d.durable);
                    let written = if d.durable {
                        written.await
                    } else {
                        // A read-only topic's end is shown once queued (the queue keeps its
                        // order): a crash may forget it, as its manifest accepts.
                        let id = d.command.id.clone();
                        state.tasks.spawn(async move {
                            if let Err(e) = written.await {
                                tracing::warn!(command = %id, error = %e, "cannot record how a read-only topic's run ended");
                            }
                        });
                        Ok(())
                    };
                    if let Err(e) = &written {
                        tracing::error!(command = %d.command.id, error = %e, "cannot record how a run ended; it is not shown as ended until it is on disk");
                    }
                    finished = Some(event);
                    run.handle(now(), Input::Recorded(written.map_err(|e| e.to_string())));
                }
                Effect::AckReport(id) => answer_reports(&mut waiting_reports, &id, true),
                Effect::RefuseReport(id) => answer_reports(&mut waiting_reports, &id, false),
                Effect::Ended(_) => {
                    if let Some(event) = finished.take() {
                        entry.finish(event);
                    }
                }
            }
        }
        if run.is_ended() {
            // A report that arrived with the end already recorded is answered from it.
            while let Ok(report) = reports.try_recv() {
                let _ = report.recorded.send(true);
            }
            return;
        }
        // The machine says whether the run has a stream; one it left (ended, reset, given up
        // for a report) is dropped here.
        if !run.on_stream() {
            stream = None;
        }
        let deadline = run.poll_timeout().map(Instant::from_std);
        let wants_connection = run.wants_connection(now());
        tokio::select! {
            found = state.agents.wait_connection(&d.agent, deadline.unwrap_or_else(far_future)), if wants_connection => {
                match found {
                    Some((_, found)) => {
                        connection = Some(found);
                        run.handle(now(), Input::Connected);
                    }
                    None => run.handle(now(), Input::Timeout),
                }
            }
            frame = async { stream.as_mut().expect("checked").recv.next().await }, if stream.is_some() => {
                let input = match frame {
                    Ok(Some(message)) => Input::Frame(message),
                    Ok(None) => Input::StreamEnded("the agent closed the command stream without a result".into()),
                    Err(FrameError::Io(e)) => Input::StreamEnded(e.to_string()),
                    Err(e) => Input::BadFrame(e.to_string()),
                };
                run.handle(now(), input);
            }
            Some(report) = reports.recv() => {
                waiting_reports.push((report.result.id.clone(), report.recorded));
                run.handle(now(), Input::Reported(report.result));
            }
            _ = entry.cancelled() => run.handle(now(), Input::Cancel),
            _ = sleep_until_opt(deadline), if !wants_connection => run.handle(now(), Input::Timeout),
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes `message` on the run's stream, if it has one. A failed write is not acted on here:
/// the stream's reader sees the same failure and tells the machine.
async fn write_on(stream: &mut Option<Stream>, message: &Message, max_frame: u32) {
    if let Some(s) = stream.as_mut()
        && let Err(e) = write_frame(&mut s.send, message, max_frame).await
    {
        tracing::debug!(error = %e, kind = message.kind(), "could not write to a command stream; its reader will tell");
    }
}

/// Tells the report streams waiting on `id` whether its result is on disk.
fn answer_reports(waiting: &mut Vec<(String, oneshot::Sender<bool>)>, id: &str, recorded: bool) {
    let (answered, rest) = std::mem::take(waiting)
        .into_iter()
        .partition(|(waiting_id, _)| waiting_id == id);
    *waiting = rest;
    for (_, reply) in answered {
        let _ = reply.send(recorded);
    }
}

/// Opens a stream on `connection` and writes `command` on it, within `until`.
async fn send(
    connection: &quinn::Connection,
    command: &Command,
    max_frame: u32,
    until: Instant,
) -> Result<Stream, Input> {
    let (mut send, recv) = match tokio::time::timeout_at(until, connection.open_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            return Err(Input::NotSent(format!(
                "could not open a stream to the agent: {e}"
            )));
        }
        // Still waiting for a stream slot at the run's deadline: its timeout ends it.
        Err(_) => return Err(Input::Timeout),
    };
    if let Err(e) = write_frame(&mut send, &Message::Command(command.clone()), max_frame).await {
        // Part of it may have reached the agent: from here on the run counts as sent.
        return Err(Input::StreamEnded(format!(
            "could not send the command: {e}"
        )));
    }
    Ok(Stream {
        send,
        recv: FrameReader::new(recv, max_frame),
    })
}
