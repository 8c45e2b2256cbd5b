//! Running commands: each arrives on its own stream, runs in a fresh plugin instance, and
//! streams its progress, logs and result back on that stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::{
    Accepted, CommandResult, DataRequest, DataResponse, FrameError, FrameReader, Log, LogLevel,
    Message, Outcome, Peer, Progress, ResultStats, StreamKind, close, write_frame,
};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::host::{self, CommandEvents, InvokeError, Invoked};
use crate::routes::Routes;

/// How long the server has to send the Command frame after opening a stream.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress and log events buffered per command before further ones are counted and dropped,
/// so a plugin that logs in a tight loop cannot exhaust the agent's memory.
const EVENT_BUFFER: usize = 1024;

/// What the executor needs from the agent.
pub(crate) struct Executor {
    pub(crate) routes: Arc<Routes>,
    /// Set (with the reason) once a command that asked to remove the agent has sent its
    /// result; the connection loop carries the removal out.
    pub(crate) decommission: tokio::sync::watch::Sender<Option<String>>,
    pub(crate) max_frame: u32,
    pub(crate) running: AtomicU32,
}

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
        let id = command.id.clone();
        let span = tracing::info_span!("command", %id, topic = %command.topic);

        if write_frame(
            &mut send,
            &Message::Accepted(Accepted { id: id.clone() }),
            self.max_frame,
        )
        .await
        .is_err()
        {
            tracing::warn!(parent: &span, "server went away before the command was accepted");
            return;
        }
        let deadline = command
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let plugin = match self.routes.resolve(&command.topic, deadline).await {
            Ok(plugin) => plugin,
            Err(why) => {
                let outcome = Outcome::UnknownTopic(why);
                self.finish(&mut send, id, outcome, Vec::new(), ResultStats::default())
                    .await;
                return;
            }
        };

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
            topic: command.topic,
            payload: command.payload,
            content_type: command.content_type,
            deadline,
        };

        self.running.fetch_add(1, Ordering::Relaxed);
        let max_frame = self.max_frame;
        let invoke = plugin.invoke(invocation, events.clone());
        tokio::pin!(invoke);
        let mut recv_open = true;
        let invoked: Invoked = loop {
            tokio::select! {
                invoked = &mut invoke => break invoked,
                Some(message) = rx.recv() => {
                    if let Err(e) = write_frame(&mut send, &message, max_frame).await {
                        // The result cannot reach the server either; stop the plugin.
                        tracing::warn!(parent: &span, error = %e, "lost the command stream; cancelling the plugin");
                        events.cancelled.store(true, Ordering::Relaxed);
                    }
                }
                frame = recv.next(), if recv_open => {
                    match frame {
                        Ok(Some(Message::DataResponse(response))) => {
                            if let Some(answer) = events.pending.lock().remove(&response.request) {
                                let _ = answer.send(response);
                            }
                        }
                        Ok(Some(Message::Cancel(cancel))) => {
                            tracing::info!(parent: &span, reason = %cancel.reason, "cancel requested");
                            events.cancelled.store(true, Ordering::Relaxed);
                        }
                        Ok(Some(other)) => {
                            let e = other.check_allowed(Peer::Server, StreamKind::Command).err();
                            tracing::warn!(parent: &span, kind = other.kind(), ?e, "ignoring an unexpected frame on a command stream");
                        }
                        Ok(None) => recv_open = false,
                        Err(FrameError::Io(e)) => {
                            // The server reset its side: nobody waits for this command any more.
                            tracing::info!(parent: &span, error = %e, "server abandoned the command; cancelling it");
                            events.cancelled.store(true, Ordering::Relaxed);
                            recv_open = false;
                        }
                        Err(e) => {
                            tracing::warn!(parent: &span, error = %e, "malformed frame on a command stream; cancelling it");
                            events.cancelled.store(true, Ordering::Relaxed);
                            recv_open = false;
                        }
                    }
                }
            }
        };
        self.running.fetch_sub(1, Ordering::Relaxed);

        // Everything the plugin said goes out before its result.
        while let Ok(message) = rx.try_recv() {
            if write_frame(&mut send, &message, max_frame).await.is_err() {
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
            let _ = write_frame(&mut send, &note, max_frame).await;
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
        tracing::info!(parent: &span, outcome = outcome.name(), duration_us = stats.duration_us, "command ended");
        let succeeded = outcome.is_success();
        self.finish(&mut send, id, outcome, payload, stats).await;
        // Only a command that succeeded removes the agent, and only once its result is out.
        let decommission = events.decommission.lock().take();
        if let Some(reason) = decommission
            && succeeded
        {
            // The server must have the result before it hears that the agent leaves.
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
            tracing::warn!(parent: &span, %reason, "the agent is being removed");
            self.decommission.send_replace(Some(reason));
        }
    }

    async fn finish(
        &self,
        send: &mut quinn::SendStream,
        id: String,
        outcome: Outcome,
        payload: Vec<u8>,
        stats: ResultStats,
    ) {
        let result = CommandResult {
            id,
            outcome,
            payload,
            stats,
        };
        let result = match write_frame(send, &Message::Result(result.clone()), self.max_frame).await
        {
            Err(FrameError::TooLarge { len, max }) => {
                // A result too large to send must still end the command, with the reason.
                let outcome = Outcome::Failed(format!(
                    "the plugin's result has {len} bytes, more than the frame limit of {max} bytes"
                ));
                let small = CommandResult {
                    outcome,
                    payload: Vec::new(),
                    ..result
                };
                write_frame(send, &Message::Result(small), self.max_frame).await
            }
            other => other,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not send the result; the connection is gone");
            return;
        }
        let _ = send.finish();
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
