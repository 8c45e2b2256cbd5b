//! Running commands: each arrives on its own stream, runs in a fresh plugin instance, and
//! streams its progress, logs and result back on that stream.
//!
//! A thin driver of `ferry_lifecycle::command::Execution`, one task per command stream. The tasks
//! are tracked, so stopping the agent cancels the running commands, journals their `cancelled`
//! results and waits for them. A lost connection does not stop a command: its result waits in the
//! journal, and the connection loop delivers unacknowledged results on a report stream at every new
//! session (and whenever a result could not be delivered on its own stream).
//!
//! The topic is resolved through `Routes`. Plugin events go through a bounded channel (1,024) and
//! are counted, not buffered without bound, when a plugin outpaces the connection. `Cancel` frames
//! and a reset stream set the cancel flag the plugin polls. A plugin's `request-data` becomes a
//! `DataRequest` frame on the same stream (never dropped: the plugin waits for room), and the
//! matching `DataResponse` is routed back by request number to the waiting host call. Frames ready
//! together leave in one write: the driver encodes every frame the machine queued in a row into one
//! buffer (the plugin's pending events taken together, up to 64), so a short command's `Progress`,
//! `Log` and `Result` go out as one write. Duplicates waiting for a run get its result once the
//! journal holds it, never before.
//!
//! Read-only topics (a manifest's `read_only`; the built-ins `echo`, `get_consumption_device` and
//! `get_consumption_orchestrator`): the executor answers the machine's receipt with `ReadOnly`
//! instead of writing it, and the machine journals no result. The agent reports these topics in
//! `Hello` and `PluginReport`, and the server then records such a command for one agent without an
//! idempotency key without waiting for its disk. No fsync on either side: the round trip is
//! transport and plugin. The cost, which the manifest's word makes harmless: a resend after a lost
//! connection may run it again, and a server crash may forget it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_lifecycle::command::{
    ACK_TIMEOUT, Effect, Execution, Input, Loss, Receipt, outcome_result,
};
use ferry_protocol::{
    Command, CommandResult, DataRequest, DataResponse, FrameError, FrameReader, Log, LogLevel,
    Message, Outcome, Progress, ResultStats, write_frame,
};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use crate::commands::journal::{Journal, Seen};
use crate::commands::routes::{Route, Routes};
use crate::host::{self, CommandEvents, Invoked, LoadedPlugin};

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
    pub(crate) decommission: watch::Sender<Option<String>>,
    pub(crate) max_frame: u32,
    pub(crate) running: AtomicU32,
}

/// A journal write on its way to disk.
type JournalWrite = std::pin::Pin<
    Box<dyn Future<Output = Result<(), crate::commands::journal::JournalError>> + Send>,
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

/// A command's stream to the server, for as long as it works. A lost connection does not stop
/// the command: its result is journaled and delivered on the next session's report stream.
struct Link {
    send: Option<quinn::SendStream>,
    recv: Option<FrameReader<quinn::RecvStream>>,
}

/// How a failed read or write on the command's stream went: the server's choice (a reset or
/// stop: it gave the command up), or the connection going away (the command goes on).
fn loss_of(error: &std::io::Error) -> Loss {
    if error.kind() == std::io::ErrorKind::ConnectionReset {
        Loss::Reset
    } else {
        Loss::Lost(error.to_string())
    }
}

/// What the plugin (or the run waited for) ends with: its result and the plugin's name.
type PluginRun<'a> =
    std::pin::Pin<Box<dyn Future<Output = (CommandResult, Option<String>)> + Send + 'a>>;

/// The driver's side of one command: what the machine's effects act on.
struct Drive<'a> {
    link: Link,
    /// Frames the machine queued together, written in one write.
    batch: Vec<u8>,
    /// The command, once its frame came (or from the journal).
    command: Option<Command>,
    /// The plugin, when it was loaded as the command came (the journal then records the
    /// command as running in the same write that accepts it).
    ready: Option<LoadedPlugin>,
    /// When the command arrived: its timeout runs from then.
    arrived: Instant,
    /// It came from the journal after a restart, not on a stream.
    resumed: bool,
    plugin: Option<PluginRun<'a>>,
    plugin_name: Option<String>,
    events: Option<Arc<StreamEvents>>,
    rx: Option<mpsc::Receiver<Message>>,
    journaling: Option<JournalWrite>,
    /// The result being journaled.
    result: Option<CommandResult>,
    /// This command's entry in the in-flight table, for duplicates that arrive while it runs.
    inflight: Option<Arc<watch::Sender<Option<CommandResult>>>>,
    /// Set once the machine is over: (acked, kept).
    done: Option<(bool, bool)>,
}

impl Drive<'_> {
    /// Writes the frames batched so far, in one write; says how the stream was lost if that
    /// failed (the stream is dropped then).
    async fn flush(&mut self) -> Option<Loss> {
        if self.batch.is_empty() {
            return None;
        }
        let written = match self.link.send.as_mut() {
            Some(send) => send.write_all(&self.batch).await,
            None => Ok(()),
        };
        self.batch.clear();
        match written {
            Ok(()) => None,
            Err(e) => {
                self.link.send = None;
                Some(loss_of(&std::io::Error::from(e)))
            }
        }
    }
}

impl Executor {
    /// Serves one command stream from its Command frame to its Result.
    pub(crate) async fn serve(self: Arc<Self>, send: quinn::SendStream, recv: quinn::RecvStream) {
        let link = Link {
            send: Some(send),
            recv: Some(FrameReader::new(recv, self.max_frame)),
        };
        let now = Instant::now();
        self.drive(Execution::on_stream(now), link, None, now).await;
    }

    /// Runs the commands the journal held, accepted but not started, when the agent stopped;
    /// their results go out on the next report stream.
    pub(crate) fn resume(self: &Arc<Self>, commands: Vec<(Command, Duration)>) {
        for (command, age) in commands {
            let arrived = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            tracing::info!(id = %command.id, topic = %command.topic, "running a command accepted before the agent restarted");
            let machine = Execution::resumed(command.id.clone());
            self.tasks.spawn(self.clone().drive(
                machine,
                Link {
                    send: None,
                    recv: None,
                },
                Some(command),
                arrived,
            ));
        }
    }

    /// Drives one command's machine ([`ferry_lifecycle::command`]) until it is over: turns
    /// the stream, the journal, the plugin and the agent's stop into inputs, and carries out
    /// its effects.
    async fn drive(
        self: Arc<Self>,
        mut machine: Execution,
        link: Link,
        command: Option<Command>,
        arrived: Instant,
    ) {
        let mut d = Drive {
            link,
            batch: Vec::new(),
            resumed: command.is_some(),
            command,
            ready: None,
            arrived,
            plugin: None,
            plugin_name: None,
            events: None,
            rx: None,
            journaling: None,
            result: None,
            inflight: None,
            done: None,
        };
        // Named once the Command frame is in (see Effect::Receive).
        let mut span = d
            .command
            .as_ref()
            .map_or_else(|| tracing::info_span!("command"), span_of);
        let mut stop_seen = false;
        loop {
            self.carry_out(&mut machine, &mut d, &mut span).await;
            if let Some((acked, kept)) = d.done {
                self.finish(&machine, acked, kept).await;
                return;
            }
            let timeout = machine.poll_timeout();
            let reading = machine.reading() && d.link.recv.is_some();
            let input = tokio::select! {
                ended = async { d.plugin.as_mut().expect("checked").await }, if d.plugin.is_some() => {
                    d.plugin = None;
                    // Everything the plugin said goes out before its result.
                    if let Some(rx) = d.rx.as_mut() {
                        while let Ok(message) = rx.try_recv() {
                            machine.handle(Instant::now(), Input::Event(message));
                        }
                    }
                    d.rx = None;
                    let (result, name) = ended;
                    d.plugin_name = name;
                    let dropped = d.events.as_ref().map_or(0, |e| e.dropped.load(Ordering::Relaxed));
                    Input::Finished { result, dropped }
                }
                Some(message) = async { d.rx.as_mut().expect("checked").recv().await }, if d.rx.is_some() => {
                    // What else the plugin said meanwhile goes with it, in one write.
                    machine.handle(Instant::now(), Input::Event(message));
                    let mut last = None;
                    if let Some(rx) = d.rx.as_mut() {
                        for _ in 0..64 {
                            let Ok(more) = rx.try_recv() else { break };
                            if let Some(before) = last.replace(more) {
                                machine.handle(Instant::now(), Input::Event(before));
                            }
                        }
                    }
                    match last {
                        Some(message) => Input::Event(message),
                        None => continue,
                    }
                }
                frame = async { d.link.recv.as_mut().expect("checked").next().await }, if reading => match frame {
                    Ok(Some(message)) => Input::Frame(message),
                    Ok(None) => Input::StreamEnded(Loss::Finished),
                    Err(FrameError::Io(e)) => Input::StreamEnded(loss_of(&e)),
                    Err(e) => Input::BadFrame(e.to_string()),
                },
                written = async { d.journaling.as_mut().expect("checked").await }, if d.journaling.is_some() => {
                    d.journaling = None;
                    // Duplicates waiting for this run get its result once the journal has
                    // it, so what they tell the server is never ahead of the journal.
                    if let (Some(done), Some(result)) = (&d.inflight, d.result.take()) {
                        done.send_replace(Some(result));
                    }
                    Input::Journaled(written.map_err(|e| e.to_string()))
                }
                _ = self.stop.cancelled(), if !stop_seen => {
                    stop_seen = true;
                    Input::Stop
                }
                _ = async { tokio::time::sleep_until(timeout.expect("checked").into()).await }, if timeout.is_some() => Input::Timeout,
            };
            machine.handle(Instant::now(), input);
        }
    }

    /// Carries out the machine's effects until it has none; frames queued together leave in
    /// one write.
    async fn carry_out<'a>(
        &'a self,
        machine: &mut Execution,
        d: &mut Drive<'a>,
        span: &mut tracing::Span,
    ) {
        loop {
            let Some(effect) = machine.poll() else {
                if let Some(loss) = d.flush().await {
                    machine.handle(Instant::now(), Input::SendFailed(loss));
                    continue;
                }
                return;
            };
            if let Effect::Frame(message) = &effect {
                if let Err(e) =
                    ferry_protocol::frame::encode_frame_into(message, self.max_frame, &mut d.batch)
                {
                    tracing::warn!(parent: &*span, kind = message.kind(), error = %e, "not sending a frame that cannot be encoded");
                }
                continue;
            }
            if let Some(loss) = d.flush().await {
                machine.handle(Instant::now(), Input::SendFailed(loss));
            }
            match effect {
                Effect::Frame(_) => unreachable!("batched above"),
                Effect::Finish => {
                    if let Some(send) = d.link.send.as_mut() {
                        let _ = send.finish();
                    }
                }
                Effect::Reset(code) => {
                    if let Some(mut send) = d.link.send.take() {
                        let _ = send.reset(code.into());
                    }
                    if let Some(mut recv) = d.link.recv.take() {
                        let _ = recv.get_mut().stop(code.into());
                    }
                }
                Effect::Receive(command) => {
                    *span = span_of(&command);
                    d.arrived = Instant::now();
                    d.ready = match self.routes.route(&command.topic) {
                        Route::Ready(plugin) => Some(plugin),
                        _ => None,
                    };
                    let receipt = match &d.ready {
                        // Its manifest says running it twice is harmless: no journal.
                        Some(plugin) if plugin.is_read_only(&command.topic) => {
                            Ok(Receipt::ReadOnly)
                        }
                        ready => self
                            .journal
                            .accept(&command, ready.as_ref().map(|p| p.name()))
                            .await
                            .map_err(|e| e.to_string())
                            .map(|seen| match seen {
                                Seen::New => Receipt::New,
                                Seen::Finished(result) => Receipt::Finished(result),
                                Seen::Running(original) => Receipt::Running(original),
                            }),
                    };
                    d.command = Some(command);
                    machine.handle(Instant::now(), Input::Receipt(receipt));
                }
                Effect::Run => {
                    let Some(command) = d.command.clone() else {
                        continue;
                    };
                    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
                    let events = Arc::new(StreamEvents {
                        tx,
                        cancelled: AtomicBool::new(false),
                        dropped: AtomicU64::new(0),
                        next_request: AtomicU32::new(1),
                        pending: PendingData::default(),
                        decommission: parking_lot::Mutex::new(None),
                    });
                    let (done, _) = watch::channel(None);
                    let done = Arc::new(done);
                    self.inflight
                        .lock()
                        .insert(command.id.clone(), done.clone());
                    d.inflight = Some(done);
                    let deadline = command
                        .timeout_ms
                        .map(|ms| d.arrived + Duration::from_millis(ms));
                    d.plugin = Some(Box::pin(self.run(
                        command,
                        d.ready.take(),
                        d.resumed,
                        deadline,
                        events.clone(),
                        span.clone(),
                    )));
                    d.events = Some(events);
                    d.rx = Some(rx);
                }
                Effect::WaitFor(original) => {
                    let id = machine.id().unwrap_or_default().to_string();
                    d.plugin = Some(Box::pin(async move {
                        (self.wait_for(&original, &id).await, None)
                    }));
                }
                Effect::AnswerData(response) => {
                    let answer = d
                        .events
                        .as_ref()
                        .and_then(|e| e.pending.lock().remove(&response.request));
                    if let Some(answer) = answer {
                        let _ = answer.send(response);
                    }
                }
                Effect::CancelPlugin => {
                    if let Some(events) = &d.events {
                        events.cancelled.store(true, Ordering::Relaxed);
                    }
                }
                Effect::Journal(result) => {
                    if let Some(command) = &d.command {
                        // Queued now, so it lands while the result travels to the server.
                        let written =
                            self.journal
                                .finished(command, d.plugin_name.as_deref(), &result);
                        d.journaling = Some(Box::pin(written));
                    }
                    d.result = Some(result);
                }
                Effect::Log(level, message) => log(span, level, &message),
                Effect::Done { acked, kept } => d.done = Some((acked, kept)),
            }
        }
    }

    /// The command is over on its stream: records the server's acknowledgement, or leaves the
    /// result to a report stream; carries out a removal the command asked for.
    async fn finish(&self, machine: &Execution, acked: bool, kept: bool) {
        let Some(id) = machine.id() else {
            return;
        };
        // Its result is journaled (the machine waits for that): duplicates and report
        // streams find it there from now on.
        self.inflight.lock().remove(id);
        if kept {
            if acked {
                if let Err(e) = self.journal.acked(id).await {
                    tracing::warn!(%id, error = %e, "cannot record the server's acknowledgement; the result will be delivered once more");
                }
            } else {
                self.replay_wanted.notify_one();
            }
        }
        if let Some(reason) = self.pending_removal.lock().remove(id) {
            if acked {
                tracing::warn!(%reason, "the agent is being removed");
                self.decommission.send_replace(Some(reason));
            } else {
                tracing::warn!(%reason, "not removing the agent: the server did not acknowledge the command that asked for it");
            }
        }
    }

    /// Resolves the plugin, records that it runs, runs it, and returns the result and the
    /// plugin's name. Its events go to the driver through `events`.
    async fn run(
        &self,
        command: Command,
        ready: Option<LoadedPlugin>,
        resumed: bool,
        deadline: Option<Instant>,
        events: Arc<StreamEvents>,
        span: tracing::Span,
    ) -> (CommandResult, Option<String>) {
        let id = command.id.clone();
        let plugin = match ready {
            Some(plugin) if !resumed => plugin,
            _ => {
                let resolved = tokio::select! {
                    resolved = self.routes.resolve(&command.topic, deadline) => resolved,
                    _ = self.stop.cancelled() => {
                        return (outcome_result(&id, Outcome::Cancelled), None);
                    }
                };
                let resolved = match resolved {
                    Ok(plugin) => plugin,
                    Err(why) => return (outcome_result(&id, Outcome::UnknownTopic(why)), None),
                };
                if let Err(e) = self.journal.running(&command, resolved.name()).await {
                    let outcome = Outcome::Rejected(format!(
                        "the agent cannot record in its journal that the command starts, so it does not start it: {e}"
                    ));
                    return (outcome_result(&id, outcome), None);
                }
                resolved
            }
        };
        let name = plugin.name().to_string();
        if let Some(reason) = self.journal.quarantined(&name) {
            return (outcome_result(&id, Outcome::Rejected(reason)), Some(name));
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return (outcome_result(&id, Outcome::TimedOut), Some(name));
        }
        let invocation = host::Invocation {
            id: id.clone(),
            topic: command.topic.clone(),
            payload: command.payload,
            content_type: command.content_type,
            deadline,
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        let invoked: Invoked = plugin.invoke(invocation, events.clone()).await;
        self.running.fetch_sub(1, Ordering::Relaxed);

        let stats = ResultStats {
            duration_us: invoked.stats.duration.as_micros().min(u128::from(u64::MAX)) as u64,
            fuel: invoked.stats.fuel_consumed,
            peak_memory_bytes: invoked.stats.peak_memory_bytes,
        };
        let (outcome, payload) = match invoked.result {
            Ok(payload) => (Outcome::Succeeded, payload),
            Err(e) => (Outcome::from(e), Vec::new()),
        };
        tracing::info!(parent: &span, outcome = outcome.name(), duration_us = stats.duration_us, "command ended");
        // Only a command that succeeded removes the agent, and only once its result is out.
        if outcome.is_success()
            && let Some(reason) = events.decommission.lock().take()
        {
            self.pending_removal.lock().insert(id.clone(), reason);
        }
        let result = CommandResult {
            id,
            outcome,
            payload,
            stats,
        };
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
            return outcome_result(id, outcome);
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
            None => outcome_result(
                id,
                Outcome::Rejected(format!("the run of {original} ended without a result")),
            ),
        }
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

/// The span of one command's logs.
fn span_of(command: &Command) -> tracing::Span {
    tracing::info_span!("command", id = %command.id, topic = %command.topic)
}

/// The machine's log line, in the command's span.
fn log(span: &tracing::Span, level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(parent: span, "{message}"),
        LogLevel::Warn => tracing::warn!(parent: span, "{message}"),
        LogLevel::Info => tracing::info!(parent: span, "{message}"),
        LogLevel::Debug => tracing::debug!(parent: span, "{message}"),
        LogLevel::Trace => tracing::trace!(parent: span, "{message}"),
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
