//! Running commands: each arrives on its own stream, runs in a fresh plugin instance, and
//! streams its progress, logs and result back on that stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::{
    Accepted, Command, CommandResult, DataRequest, DataResponse, FrameError, FrameReader, Log,
    LogLevel, Message, Outcome, Peer, Progress, ResultStats, StreamKind, close, write_frame,
};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use crate::host::{self, CommandEvents, InvokeError, Invoked, LoadedPlugin};
use crate::journal::{Journal, Seen};
use crate::routes::{Route, Routes};

/// How long the server has to send the Command frame after opening a stream.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress and log events buffered per command before further ones are counted and dropped,
/// so a plugin that logs in a tight loop cannot exhaust the agent's memory.
const EVENT_BUFFER: usize = 1024;

/// What the executor needs from the agent.
pub(crate) struct Executor {
    pub(crate) routes: Arc<Routes>,
    pub(crate) journal: Arc<Journal>,
    /// The agent's stop: running commands are cancelled.
    pub(crate) stop: tokio_util::sync::CancellationToken,
    /// Every command task, so that stopping can wait for them.
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// Commands running now, with their result once it is there (for duplicates that arrive
    /// while the first copy runs).
    pub(crate) inflight:
        parking_lot::Mutex<HashMap<String, Arc<watch::Sender<Option<CommandResult>>>>>,
    /// Commands that asked to remove the agent, by id: carried out once the server
    /// acknowledged their result.
    pub(crate) pending_removal: parking_lot::Mutex<HashMap<String, String>>,
    /// Rung when a result could not be delivered on its own stream.
    pub(crate) replay_wanted: tokio::sync::Notify,
    /// Set (with the reason) once a command that asked to remove the agent has sent its
    /// result; the connection loop carries the removal out.
    pub(crate) decommission: tokio::sync::watch::Sender<Option<String>>,
    pub(crate) max_frame: u32,
    pub(crate) running: AtomicU32,
}

/// A journal write on its way to disk.
type JournalWrite = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), crate::journal::JournalError>> + Send>,
>;

/// Data requests waiting for the server's answer, by request number.
type PendingData = Arc<parking_lot::Mutex<HashMap<u32, oneshot::Sender<DataResponse>>>>;

/// Forwards a plugin's events to the stream writer and carries the cancel flag.
struct StreamEvents {
    tx: mpsc::Sender<Message>,
    cancelled: AtomicBool,
    dropped: AtomicU64,
    next_request: AtomicU32,
    pending: PendingData,
    /// The plugin asked to remove the agent, for this reason.
    decommission: parking_lot::Mutex<Option<String>>,
}

impl StreamEvents {
    fn send(&self, message: Message) {
        if self.tx.try_send(message).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl CommandEvents for StreamEvents {
    fn log(&self, level: host::LogLevel, message: String) {
        let level = match level {
            host::LogLevel::Trace => LogLevel::Trace,
            host::LogLevel::Debug => LogLevel::Debug,
            host::LogLevel::Info => LogLevel::Info,
            host::LogLevel::Warn => LogLevel::Warn,
            host::LogLevel::Error => LogLevel::Error,
        };
        self.send(Message::Log(Log { level, message }));
    }

    fn progress(&self, percent: u8, message: String) {
        self.send(Message::Progress(Progress {
            percent: percent.min(100),
            message,
        }));
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn request_data(&self, key: String) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.pending.lock().insert(request, answer);
        let tx = self.tx.clone();
        Box::pin(async move {
            // Unlike logs, a request is never dropped when the channel is full: the plugin waits.
            tx.send(Message::DataRequest(DataRequest { request, key }))
                .await
                .map_err(|_| "the command's stream to the server is closed".to_string())?;
            match answered.await {
                Ok(DataResponse {
                    value: Some(value), ..
                }) => Ok(value),
                Ok(DataResponse { error, .. }) => {
                    Err(error.unwrap_or_else(|| "the server sent neither data nor a reason".into()))
                }
                Err(_) => Err("the connection to the server ended before it answered".into()),
            }
        })
    }

    fn decommission(&self, reason: String) -> Result<(), String> {
        *self.decommission.lock() = Some(reason);
        Ok(())
    }
}

/// How long the agent waits for the server's `ResultAck` before it leaves the result to the
/// next report stream.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A command's stream to the server, for as long as it works. A lost connection does not stop
/// the command: its result is journaled and delivered on the next session's report stream.
struct Link {
    send: Option<quinn::SendStream>,
    recv: Option<FrameReader<quinn::RecvStream>>,
}

impl Link {
    fn detached() -> Link {
        Link {
            send: None,
            recv: None,
        }
    }

    /// Writes `message`; on failure the stream is dropped (the caller learns whether the
    /// server stopped it on purpose: then the command is cancelled).
    async fn write(&mut self, message: &Message, max_frame: u32) -> Result<(), FrameError> {
        let Some(send) = self.send.as_mut() else {
            return Ok(());
        };
        let written = write_frame(send, message, max_frame).await;
        if written.is_err() {
            self.send = None;
        }
        written
    }
}

/// Was this stream error the server's choice (a reset or stop: it gave the command up), as
/// opposed to the connection going away (the command goes on; its result will be delivered)?
fn server_gave_up(error: &FrameError) -> bool {
    matches!(error, FrameError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

impl Executor {
    /// Serves one command stream from its Command frame to its Result.
    pub(crate) async fn serve(
        self: Arc<Self>,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let mut recv = FrameReader::new(recv, self.max_frame);
        let command = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, recv.next()).await {
            Ok(Ok(Some(Message::Command(command)))) => command,
            other => {
                let why = match other {
                    Ok(Ok(Some(m))) => format!("expected Command, got {}", m.kind()),
                    Ok(Ok(None)) => "stream ended before the Command".into(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no Command in time".into(),
                };
                tracing::warn!("refusing a command stream: {why}");
                let _ = recv.get_mut().stop(close::PROTOCOL_ERROR.into());
                let _ = send.reset(close::PROTOCOL_ERROR.into());
                return;
            }
        };
        let link = Link {
            send: Some(send),
            recv: Some(recv),
        };
        self.execute(command, link, Instant::now()).await;
    }

    /// Runs the commands the journal held, accepted but not started, when the agent stopped;
    /// their results go out on the next report stream.
    pub(crate) fn resume(self: &Arc<Self>, commands: Vec<(Command, Duration)>) {
        for (command, age) in commands {
            let arrived = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            tracing::info!(id = %command.id, topic = %command.topic, "running a command accepted before the agent restarted");
            self.tasks
                .spawn(self.clone().execute_resumed(command, arrived));
        }
    }

    async fn execute_resumed(self: Arc<Self>, command: Command, arrived: Instant) {
        self.execute(command, Link::detached(), arrived).await;
        self.replay_wanted.notify_one();
    }

    async fn execute(&self, command: Command, mut link: Link, arrived: Instant) {
        let id = command.id.clone();
        let span = tracing::info_span!("command", %id, topic = %command.topic);
        let deadline = command
            .timeout_ms
            .map(|ms| arrived + Duration::from_millis(ms));
        let resumed = link.send.is_none();

        // In the common case the plugin is known at once, and the journal records the command
        // as running in the same write that accepts it.
        let ready = match self.routes.route(&command.topic) {
            Route::Ready(plugin) => Some(plugin),
            _ => None,
        };
        if !resumed {
            // `Accepted` leaves before the receipt is on disk: it says the agent has the
            // command, not that it ran it; the plugin starts only once the receipt is durable
            // (below), which is what keeps an id from running twice.
            if link.write(&accepted(&id), self.max_frame).await.is_err() {
                tracing::warn!(parent: &span, "server went away before the command was accepted; running it, its result will be delivered later");
            }
            let seen = self
                .journal
                .accept(&command, ready.as_ref().map(|p| p.name()))
                .await;
            match seen {
                Ok(Seen::New) => {}
                Ok(Seen::Finished(result)) => {
                    tracing::info!(parent: &span, "seen before: answering with the stored result");
                    self.deliver(&mut link, result, None, None).await;
                    return;
                }
                Ok(Seen::Running(original)) => {
                    let result = self.wait_for(&original, &id).await;
                    self.deliver(&mut link, result, None, None).await;
                    return;
                }
                Err(e) => {
                    tracing::error!(parent: &span, error = %e, "cannot journal a command; refusing it");
                    let outcome = Outcome::Rejected(format!(
                        "the agent cannot record the command in its journal, so it does not run it: {e}"
                    ));
                    let result = result_of(&id, outcome, Vec::new(), ResultStats::default());
                    self.send_unjournaled(&mut link, result).await;
                    return;
                }
            }
        }
        let (done_tx, _) = watch::channel(None);
        let done = Arc::new(done_tx);
        self.inflight.lock().insert(id.clone(), done.clone());

        let (result, plugin) = self
            .run(&command, ready, resumed, deadline, &mut link, &span)
            .await;
        // The result goes out while it is journaled (not after): the server's durable record
        // of it is the second and last fsync on a command's path.
        let journaled = self.journal.finished(&command, plugin.as_deref(), &result);
        done.send_replace(Some(result.clone()));
        self.deliver(&mut link, result, Some(&span), Some(Box::pin(journaled)))
            .await;
    }

    /// Resolves the plugin, records that it runs, runs it while relaying its events, and
    /// returns the result and the plugin's name.
    async fn run(
        &self,
        command: &Command,
        ready: Option<LoadedPlugin>,
        resumed: bool,
        deadline: Option<Instant>,
        link: &mut Link,
        span: &tracing::Span,
    ) -> (CommandResult, Option<String>) {
        let id = command.id.clone();
        let plugin = match ready {
            Some(plugin) if !resumed => plugin,
            _ => {
                let resolved = tokio::select! {
                    resolved = self.routes.resolve(&command.topic, deadline) => resolved,
                    _ = self.stop.cancelled() => {
                        return (result_of(&id, Outcome::Cancelled, Vec::new(), ResultStats::default()), None);
                    }
                };
                let resolved = match resolved {
                    Ok(plugin) => plugin,
                    Err(why) => {
                        let outcome = Outcome::UnknownTopic(why);
                        return (
                            result_of(&id, outcome, Vec::new(), ResultStats::default()),
                            None,
                        );
                    }
                };
                if let Err(e) = self.journal.running(command, resolved.name()).await {
                    let outcome = Outcome::Rejected(format!(
                        "the agent cannot record in its journal that the command starts, so it does not start it: {e}"
                    ));
                    return (
                        result_of(&id, outcome, Vec::new(), ResultStats::default()),
                        None,
                    );
                }
                resolved
            }
        };
        let name = plugin.name().to_string();
        if let Some(reason) = self.journal.quarantined(&name) {
            let outcome = Outcome::Rejected(reason);
            return (
                result_of(&id, outcome, Vec::new(), ResultStats::default()),
                Some(name),
            );
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return (
                result_of(&id, Outcome::TimedOut, Vec::new(), ResultStats::default()),
                Some(name),
            );
        }

        let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
        let events = Arc::new(StreamEvents {
            tx,
            cancelled: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            next_request: AtomicU32::new(1),
            pending: PendingData::default(),
            decommission: parking_lot::Mutex::new(None),
        });
        let invocation = host::Invocation {
            id: id.clone(),
            topic: command.topic.clone(),
            payload: command.payload.clone(),
            content_type: command.content_type.clone(),
            deadline,
        };

        self.running.fetch_add(1, Ordering::Relaxed);
        let max_frame = self.max_frame;
        let invoke = plugin.invoke(invocation, events.clone());
        tokio::pin!(invoke);
        let mut stopping = false;
        let invoked: Invoked = loop {
            let recv_open = link.recv.is_some();
            tokio::select! {
                invoked = &mut invoke => break invoked,
                _ = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    tracing::info!(parent: span, "the agent is stopping; cancelling the command");
                    events.cancelled.store(true, Ordering::Relaxed);
                }
                Some(message) = rx.recv() => {
                    if let Err(e) = link.write(&message, max_frame).await {
                        if server_gave_up(&e) {
                            tracing::info!(parent: span, error = %e, "server stopped the command stream; cancelling the plugin");
                            events.cancelled.store(true, Ordering::Relaxed);
                        } else {
                            tracing::warn!(parent: span, error = %e, "lost the command stream; the command goes on and its result will be delivered later");
                        }
                    }
                }
                frame = async { link.recv.as_mut().expect("checked").next().await }, if recv_open => {
                    match frame {
                        Ok(Some(Message::DataResponse(response))) => {
                            if let Some(answer) = events.pending.lock().remove(&response.request) {
                                let _ = answer.send(response);
                            }
                        }
                        Ok(Some(Message::Cancel(cancel))) => {
                            tracing::info!(parent: span, reason = %cancel.reason, "cancel requested");
                            events.cancelled.store(true, Ordering::Relaxed);
                        }
                        Ok(Some(other)) => {
                            let e = other.check_allowed(Peer::Server, StreamKind::Command).err();
                            tracing::warn!(parent: span, kind = other.kind(), ?e, "ignoring an unexpected frame on a command stream");
                        }
                        Ok(None) => link.recv = None,
                        Err(e) if server_gave_up(&e) => {
                            // The server reset its side: nobody waits for this command any more.
                            tracing::info!(parent: span, error = %e, "server abandoned the command; cancelling it");
                            events.cancelled.store(true, Ordering::Relaxed);
                            link.recv = None;
                        }
                        Err(FrameError::Io(e)) => {
                            tracing::warn!(parent: span, error = %e, "lost the command stream; the command goes on and its result will be delivered later");
                            link.recv = None;
                            link.send = None;
                        }
                        Err(e) => {
                            tracing::warn!(parent: span, error = %e, "malformed frame on a command stream; cancelling it");
                            events.cancelled.store(true, Ordering::Relaxed);
                            link.recv = None;
                        }
                    }
                }
            }
        };
        self.running.fetch_sub(1, Ordering::Relaxed);

        // Everything the plugin said goes out before its result.
        while let Ok(message) = rx.try_recv() {
            if link.write(&message, max_frame).await.is_err() {
                break;
            }
        }
        let dropped = events.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = Message::Log(Log {
                level: LogLevel::Warn,
                message: format!(
                    "{dropped} progress/log events were dropped: the plugin produced them faster than the connection carried them"
                ),
            });
            let _ = link.write(&note, max_frame).await;
        }
        let stats = ResultStats {
            duration_us: invoked.stats.duration.as_micros().min(u128::from(u64::MAX)) as u64,
            fuel: invoked.stats.fuel_consumed,
            peak_memory_bytes: invoked.stats.peak_memory_bytes,
        };
        let (outcome, payload) = match invoked.result {
            Ok(payload) => (Outcome::Succeeded, payload),
            Err(e) => (Outcome::from(e), Vec::new()),
        };
        tracing::info!(parent: span, outcome = outcome.name(), duration_us = stats.duration_us, "command ended");
        // Only a command that succeeded removes the agent, and only once its result is out.
        if outcome.is_success()
            && let Some(reason) = events.decommission.lock().take()
        {
            self.pending_removal.lock().insert(id.clone(), reason);
        }
        let result = result_of(&id, outcome, payload, stats);
        (fit(result, self.max_frame), Some(name))
    }

    /// Waits for the run of `original` (a duplicate's first copy) and returns its result under
    /// the duplicate's id.
    async fn wait_for(&self, original: &str, id: &str) -> CommandResult {
        let done = self.inflight.lock().get(original).map(|d| d.subscribe());
        let Some(mut done) = done else {
            // It ended between the journal's answer and now: the journal has its result
            // (journaled before the run leaves the in-flight table).
            if let Ok(Some(result)) = self.journal.result_of(original) {
                return CommandResult {
                    id: id.to_string(),
                    ..result
                };
            }
            let outcome = Outcome::Rejected(format!(
                "this command is already under way on the agent as {original}; its result is delivered under that id"
            ));
            return result_of(id, outcome, Vec::new(), ResultStats::default());
        };
        let result = done
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        match result {
            Some(result) => CommandResult {
                id: id.to_string(),
                ..result
            },
            None => result_of(
                id,
                Outcome::Rejected(format!("the run of {original} ended without a result")),
                Vec::new(),
                ResultStats::default(),
            ),
        }
    }

    /// Sends a result and waits for the server's `ResultAck`; without one the result stays in
    /// the journal for the next report stream. `journaled`: the result's journal write, queued
    /// before this was called, awaited before the acknowledgement is recorded (then the run
    /// leaves the in-flight table).
    async fn deliver(
        &self,
        link: &mut Link,
        result: CommandResult,
        span: Option<&tracing::Span>,
        journaled: Option<JournalWrite>,
    ) {
        let id = result.id.clone();
        let acked = self.send_and_wait_ack(link, result).await;
        if let Some(journaled) = journaled {
            if let Err(e) = journaled.await {
                tracing::error!(%id, error = %e, "cannot journal the result; it was sent, and is lost if the server did not take it");
            }
            self.inflight.lock().remove(&id);
        }
        if acked {
            if let Err(e) = self.journal.acked(&id).await {
                tracing::warn!(%id, error = %e, "cannot record the server's acknowledgement; the result will be delivered once more");
            }
        } else if link.send.is_some() || link.recv.is_some() || span.is_some() {
            tracing::info!(%id, "the server has not acknowledged the result yet; it will be delivered again on the next report stream");
            self.replay_wanted.notify_one();
        }
        if let Some(reason) = self.pending_removal.lock().remove(&id) {
            if acked {
                tracing::warn!(%reason, "the agent is being removed");
                self.decommission.send_replace(Some(reason));
            } else {
                tracing::warn!(%reason, "not removing the agent: the server did not acknowledge the command that asked for it");
            }
        }
    }

    /// Sends a result the journal does not hold (the journal failed): best effort.
    async fn send_unjournaled(&self, link: &mut Link, result: CommandResult) {
        let _ = self.send_and_wait_ack(link, result).await;
    }

    async fn send_and_wait_ack(&self, link: &mut Link, result: CommandResult) -> bool {
        let id = result.id.clone();
        if link
            .write(&Message::Result(result), self.max_frame)
            .await
            .is_err()
        {
            return false;
        }
        if let Some(send) = link.send.as_mut() {
            let _ = send.finish();
        }
        let Some(recv) = link.recv.as_mut() else {
            return false;
        };
        let wait = async {
            loop {
                match recv.next().await {
                    Ok(Some(Message::ResultAck(ack))) if ack.id == id => return true,
                    Ok(Some(Message::DataResponse(_) | Message::Cancel(_))) => continue,
                    Ok(Some(other)) => {
                        tracing::warn!(
                            kind = other.kind(),
                            "unexpected frame while waiting for ResultAck"
                        );
                        return false;
                    }
                    _ => return false,
                }
            }
        };
        tokio::time::timeout(ACK_TIMEOUT, wait)
            .await
            .unwrap_or(false)
    }

    /// Delivers the results the server has not acknowledged on a report stream of
    /// `connection`; returns how many were acknowledged.
    pub(crate) async fn replay(&self, connection: &quinn::Connection) -> Result<usize, String> {
        let results = self.journal.unacked().map_err(|e| e.to_string())?;
        // A result still being sent on its own command stream is not replayed beside it.
        let results: Vec<CommandResult> = {
            let inflight = self.inflight.lock();
            results
                .into_iter()
                .filter(|r| !inflight.contains_key(&r.id))
                .collect()
        };
        if results.is_empty() {
            return Ok(0);
        }
        let (mut send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| format!("cannot open a report stream: {e}"))?;
        let mut recv = FrameReader::new(recv, self.max_frame);
        let total = results.len();
        let mut acked = 0;
        for result in results {
            let id = result.id.clone();
            write_frame(&mut send, &Message::Result(result), self.max_frame)
                .await
                .map_err(|e| format!("report stream: {e}"))?;
            match tokio::time::timeout(ACK_TIMEOUT, recv.next()).await {
                Ok(Ok(Some(Message::ResultAck(ack)))) if ack.id == id => {
                    if let Err(e) = self.journal.acked(&id).await {
                        tracing::warn!(%id, error = %e, "cannot record an acknowledgement");
                    }
                    acked += 1;
                }
                Ok(Ok(Some(other))) => {
                    return Err(format!(
                        "report stream: expected ResultAck for {id}, got {}",
                        other.kind()
                    ));
                }
                Ok(Ok(None)) => return Err("the server closed the report stream".into()),
                Ok(Err(e)) => return Err(format!("report stream: {e}")),
                Err(_) => return Err(format!("no ResultAck for {id} in time")),
            }
        }
        let _ = send.finish();
        tracing::info!(
            delivered = acked,
            of = total,
            "delivered results the server had not acknowledged"
        );
        Ok(acked)
    }
}

fn accepted(id: &str) -> Message {
    Message::Accepted(Accepted { id: id.to_string() })
}

fn result_of(id: &str, outcome: Outcome, payload: Vec<u8>, stats: ResultStats) -> CommandResult {
    CommandResult {
        id: id.to_string(),
        outcome,
        payload,
        stats,
    }
}

/// A result too large for one frame still ends its command, with the reason.
fn fit(result: CommandResult, max_frame: u32) -> CommandResult {
    // Cheap bound first: the envelope (id, outcome, stats) is far below 4 KiB.
    let detail = result.outcome.detail().map_or(0, str::len);
    if result.payload.len() + detail + result.id.len() + 4096 <= max_frame as usize {
        return result;
    }
    let len = ferry_protocol::codec::encode(&Message::Result(result.clone()))
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if len + 4 <= max_frame as usize {
        return result;
    }
    CommandResult {
        outcome: Outcome::Failed(format!(
            "the plugin's result has {len} bytes, more than the frame limit of {max_frame} bytes"
        )),
        payload: Vec::new(),
        ..result
    }
}

/// The outcome an agent reports for a plugin's error; `ferry plugin test` reports the same.
impl From<InvokeError> for Outcome {
    fn from(error: InvokeError) -> Outcome {
        match error {
            InvokeError::InvalidInput(m) => Outcome::InvalidInput(m),
            InvokeError::Denied(m) => Outcome::Denied(m),
            InvokeError::Failed(m) => Outcome::Failed(m),
            InvokeError::Cancelled => Outcome::Cancelled,
            InvokeError::TimedOut => Outcome::TimedOut,
            InvokeError::Crashed(m) => Outcome::Crashed(m),
            InvokeError::Instantiate(m) => Outcome::Rejected(m),
        }
    }
}
