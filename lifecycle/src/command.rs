//! The agent's side of one command, as a state machine with no I/O.
//!
//! A driver feeds it [`Input`]s (frames from the server on the command's stream, the stream
//! ending or failing, the journal's answers, the plugin's events and its end, the agent's
//! stop, timeouts) with the time they happened, and carries out the [`Effect`]s it asks for
//! (write frames, journal the receipt and the result, start or cancel the plugin, answer its
//! data requests, record the server's acknowledgement). [`Execution::poll_timeout`] says when
//! it next needs [`Input::Timeout`].
//!
//! What holds here by construction, whatever order the inputs come in:
//! - **A command id runs at most once.** The plugin starts ([`Effect::Run`]) only once the
//!   journal has answered that the receipt is durable and the id (and its idempotency key)
//!   is new; a command seen before is answered from the journal ([`Receipt::Finished`]) or
//!   from the run under way ([`Effect::WaitFor`]), never run again. The one exception is
//!   asked for by a plugin's manifest: a read-only topic ([`Receipt::ReadOnly`]) skips the
//!   journal, and a command on it that is sent again may run again.
//! - **`Accepted` before the receipt is durable, the plugin after.** `Accepted` says the agent
//!   has the command, not that it ran it: it leaves at once, overlapping the receipt's fsync.
//! - **The result leaves while it is journaled; the acknowledgement is recorded only after.**
//!   The `Result` frame goes out with [`Effect::Journal`] beside it (the server's durable
//!   record is then the only fsync left on the path), and [`Effect::Done`] — which records
//!   the server's `ResultAck`, so the agent forgets the result — comes only once the journal
//!   answered. A result the server did not acknowledge stays for the next report stream.
//! - **Frames are checked once, here**: the first frame must be the `Command`; a frame the
//!   server may not send on a command stream, or a malformed one, cancels the plugin and
//!   stops reading; a `ResultAck` counts only for this command's id.
//! - **Frames ready together leave together**: every [`Effect::Frame`] the machine queues
//!   between two other effects may be written in one write.
//!
//! Inputs in full: frames from the server; a bad frame; the stream's receiving or sending side
//! ending (finished, reset by the server, or lost with the connection); the journal's receipt
//! (`Receipt::New`, `Finished(result)`, `Running(id)`, `ReadOnly`, or an error); the plugin's
//! events and its end; the result's journal write; the agent's stop; timeout. Effects: write a
//! frame; finish or reset the stream; receive (journal the receipt, claiming id and idempotency key
//! in one transaction); run the plugin; wait for the run under way; answer a data request; cancel
//! the plugin; journal the result; and done (acknowledged or not, kept in the journal or not),
//! always last.
//!
//! The `Command` must be the first frame and come within `FIRST_FRAME_TIMEOUT` (10 s). A data
//! request the server can no longer answer (its stream is gone) fails at once instead of waiting
//! for the deadline.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ferry_protocol::{
    Accepted, Command, CommandResult, DataResponse, LogLevel, Message, Outcome, Peer, ResultStats,
    StreamKind, close,
};

/// How long the server has to send the `Command` frame after opening a stream.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent waits for the server's `ResultAck` before it leaves the result to the
/// next report stream.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the journal answered about a command it was asked to receive ([`Effect::Receive`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Receipt {
    /// New: its receipt is durable, and it may run.
    New,
    /// Seen before, and finished with this result (under this command's id).
    Finished(CommandResult),
    /// Seen before (this id, or another with the same idempotency key), and running now as
    /// the given id.
    Running(String),
    /// Its topic is read-only (its plugin's manifest says so): it runs without the journal,
    /// neither its receipt nor its result is written, and a resend may run it again — which
    /// changes nothing, by the manifest's word.
    ReadOnly,
}

/// How a side of the command's stream went away.
#[derive(Debug, Clone, PartialEq)]
pub enum Loss {
    /// The server ended its sending side cleanly: nothing more will be read.
    Finished,
    /// The server reset or stopped the stream: it gave the command up.
    Reset,
    /// The connection went away: the command goes on, its result is delivered later.
    Lost(String),
}

/// Something that happened to the command.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A frame from the server on the command's stream.
    Frame(Message),
    /// Bytes on the stream that are not a frame (malformed, too large).
    BadFrame(String),
    /// The receiving side of the stream ended.
    StreamEnded(Loss),
    /// A write on the stream failed.
    SendFailed(Loss),
    /// The journal's answer to [`Effect::Receive`], or why it could not record the command.
    Receipt(Result<Receipt, String>),
    /// The plugin said something for the server: `Progress`, `Log` or `DataRequest`.
    Event(Message),
    /// The plugin (or the run waited for, [`Effect::WaitFor`]) ended with `result`; `dropped`
    /// events were dropped on the way because the plugin produced them too fast.
    Finished {
        /// The result, under this command's id.
        result: CommandResult,
        /// Progress and log events the plugin produced that were not relayed.
        dropped: u64,
    },
    /// The journal's answer to [`Effect::Journal`].
    Journaled(Result<(), String>),
    /// The agent is stopping.
    Stop,
    /// [`Execution::poll_timeout`] has passed.
    Timeout,
}

/// What the command needs done.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write this frame on the command's stream (frames queued one after another may go out in
    /// one write).
    Frame(Message),
    /// Close the sending side of the stream after what was written.
    Finish,
    /// Reset the stream with this code (both sides) and drop it.
    Reset(u32),
    /// Record the command's receipt in the journal, claiming its id and idempotency key in
    /// one step, and answer [`Input::Receipt`].
    Receive(Command),
    /// Start the plugin (resolving it first when it is not loaded), and answer
    /// [`Input::Finished`].
    Run,
    /// Wait for the run under way as this id and answer [`Input::Finished`] with its result,
    /// under this command's id.
    WaitFor(String),
    /// Pass the server's answer to the plugin's data request.
    AnswerData(DataResponse),
    /// Ask the plugin to stop (the server or the agent gave the command up).
    CancelPlugin,
    /// Queue the result's journal write and answer [`Input::Journaled`].
    Journal(CommandResult),
    /// The agent's own log: what happened to the command and why.
    Log(LogLevel, String),
    /// The command is over for this stream; always the last effect. `acked`: the server
    /// acknowledged the result (record it, so the result is forgotten). `kept`: the journal
    /// holds the result (so, unacknowledged, it goes out again on a report stream).
    Done {
        /// The server acknowledged the result.
        acked: bool,
        /// The journal holds the result.
        kept: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// A stream is open; its first frame must be the `Command`.
    AwaitingCommand { until: Instant },
    /// The receipt is being written.
    Receiving,
    /// The plugin runs, or the run of a duplicate is waited for.
    Running,
    /// The result is out; waiting for the server's `ResultAck` and for the journal.
    Delivering {
        /// Until when the acknowledgement may come.
        until: Instant,
        /// The server's answer: `Some(true)` acknowledged, `Some(false)` it will not come.
        acked: Option<bool>,
        /// The journal's write of the result is done (or none was needed).
        journaled: bool,
        /// The journal holds the result.
        kept: bool,
    },
    /// Over.
    Done,
}

/// The agent's side of one command.
#[derive(Debug)]
pub struct Execution {
    id: Option<String>,
    phase: Phase,
    /// The stream's sending side works.
    send_open: bool,
    /// The stream's receiving side is read.
    recv_open: bool,
    /// Data requests the plugin made that the server has not answered.
    pending_data: BTreeSet<u32>,
    cancelled: bool,
    /// The run under way that is waited for ([`Effect::WaitFor`]), instead of the plugin.
    waiting_for: Option<String>,
    /// A read-only topic's command: nothing of it is journaled.
    journal_free: bool,
    effects: VecDeque<Effect>,
}

impl Execution {
    /// A command stream the server just opened: its first frame must come by
    /// [`FIRST_FRAME_TIMEOUT`].
    pub fn on_stream(now: Instant) -> Execution {
        Execution {
            id: None,
            phase: Phase::AwaitingCommand {
                until: now + FIRST_FRAME_TIMEOUT,
            },
            send_open: true,
            recv_open: true,
            pending_data: BTreeSet::new(),
            cancelled: false,
            waiting_for: None,
            journal_free: false,
            effects: VecDeque::new(),
        }
    }

    /// A command the journal received before the agent restarted and that never started: it
    /// runs now, with no stream; its result goes out on a report stream.
    pub fn resumed(id: impl Into<String>) -> Execution {
        let mut execution = Execution {
            id: Some(id.into()),
            phase: Phase::Running,
            send_open: false,
            recv_open: false,
            pending_data: BTreeSet::new(),
            cancelled: false,
            waiting_for: None,
            journal_free: false,
            effects: VecDeque::new(),
        };
        execution.effects.push_back(Effect::Run);
        execution
    }

    /// The command's id, once its `Command` frame came.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The next effect to carry out, in order.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Whether the driver should read frames from the stream.
    pub fn reading(&self) -> bool {
        self.recv_open && self.phase != Phase::Done
    }

    /// True once the command is over ([`Effect::Done`] may still wait in [`Execution::poll`]).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// When the command next needs [`Input::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingCommand { until } => Some(until),
            Phase::Delivering {
                until, acked: None, ..
            } => Some(until),
            _ => None,
        }
    }

    /// Handles one input that happened at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.phase == Phase::Done {
            return;
        }
        match input {
            Input::Frame(message) => self.frame(message),
            // Only a side that is read has bytes that are not a frame.
            Input::BadFrame(why) => {
                if self.recv_open {
                    self.bad_frame(why);
                }
            }
            Input::StreamEnded(loss) => self.stream_ended(loss),
            Input::SendFailed(loss) => self.send_failed(loss),
            Input::Receipt(receipt) => self.receipt(now, receipt),
            Input::Event(message) => self.event(message),
            Input::Finished { result, dropped } => self.finished(now, result, dropped),
            Input::Journaled(outcome) => self.journaled(outcome),
            Input::Stop => {
                if self.phase == Phase::Running {
                    self.log(
                        LogLevel::Info,
                        "the agent is stopping; cancelling the command",
                    );
                    self.cancel_plugin();
                }
            }
            Input::Timeout => self.timeout(now),
        }
    }

    fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.effects.push_back(Effect::Log(level, message.into()));
    }

    fn send(&mut self, message: Message) {
        if self.send_open {
            self.effects.push_back(Effect::Frame(message));
        }
    }

    fn cancel_plugin(&mut self) {
        if !self.cancelled {
            self.cancelled = true;
            self.effects.push_back(Effect::CancelPlugin);
        }
    }

    /// Refuses the stream before a command began: nothing was received, nothing runs.
    fn refuse_stream(&mut self, why: String) {
        self.log(LogLevel::Warn, format!("refusing a command stream: {why}"));
        self.effects.push_back(Effect::Reset(close::PROTOCOL_ERROR));
        self.send_open = false;
        self.recv_open = false;
        self.phase = Phase::Done;
        self.effects.push_back(Effect::Done {
            acked: false,
            kept: false,
        });
    }

    fn frame(&mut self, message: Message) {
        if !self.recv_open {
            return;
        }
        if let Phase::AwaitingCommand { .. } = self.phase {
            return match message {
                Message::Command(command) => self.command(command),
                other => self.refuse_stream(format!("expected Command, got {}", other.kind())),
            };
        }
        if let Err(e) = message.check_allowed(Peer::Server, StreamKind::Command) {
            return self.bad_frame(e.to_string());
        }
        match message {
            Message::DataResponse(response) => {
                if self.pending_data.remove(&response.request) {
                    self.effects.push_back(Effect::AnswerData(response));
                }
            }
            Message::Cancel(cancel) => {
                // While the receipt is written too: the plugin then never starts (the server
                // sends its Cancel once per stream, so one dropped here would be lost).
                if matches!(self.phase, Phase::Running | Phase::Receiving) {
                    self.log(
                        LogLevel::Info,
                        format!("cancel requested: {}", cancel.reason),
                    );
                    self.cancel_plugin();
                }
            }
            Message::ResultAck(ack) => match &mut self.phase {
                Phase::Delivering { acked, .. } if acked.is_none() => {
                    let ok = Some(ack.id.as_str()) == self.id.as_deref();
                    if !ok {
                        self.log(
                            LogLevel::Warn,
                            format!(
                                "ResultAck for command {} on the stream of command {}",
                                ack.id,
                                self.id.as_deref().unwrap_or("?")
                            ),
                        );
                    }
                    self.set_acked(ok);
                }
                _ => self.log(
                    LogLevel::Warn,
                    "ignoring a ResultAck before the result was sent",
                ),
            },
            other => self.log(
                LogLevel::Warn,
                format!(
                    "ignoring an unexpected {} on a command stream",
                    other.kind()
                ),
            ),
        }
    }

    fn command(&mut self, command: Command) {
        self.id = Some(command.id.clone());
        self.phase = Phase::Receiving;
        self.send(Message::Accepted(Accepted {
            id: command.id.clone(),
        }));
        self.effects.push_back(Effect::Receive(command));
    }

    fn bad_frame(&mut self, why: String) {
        if let Phase::AwaitingCommand { .. } = self.phase {
            return self.refuse_stream(why);
        }
        self.recv_open = false;
        self.fail_pending_data("the server sent a malformed frame on the command's stream");
        match self.phase {
            Phase::Running | Phase::Receiving => {
                self.log(
                    LogLevel::Warn,
                    format!("malformed frame on a command stream ({why}); cancelling it"),
                );
                self.cancel_plugin();
            }
            _ => self.log(
                LogLevel::Warn,
                format!("malformed frame on a command stream: {why}"),
            ),
        }
        self.no_ack();
    }

    fn stream_ended(&mut self, loss: Loss) {
        if !self.recv_open {
            return;
        }
        self.recv_open = false;
        if let Phase::AwaitingCommand { .. } = self.phase {
            return self.refuse_stream(match loss {
                Loss::Finished => "stream ended before the Command".into(),
                Loss::Reset => "stream reset before the Command".into(),
                Loss::Lost(why) => why,
            });
        }
        self.fail_pending_data("the command's stream to the server ended before it answered");
        match loss {
            Loss::Finished => {}
            Loss::Reset => self.server_gave_up(),
            Loss::Lost(why) => self.lost(why),
        }
        self.no_ack();
    }

    fn send_failed(&mut self, loss: Loss) {
        if !self.send_open {
            return;
        }
        self.send_open = false;
        match loss {
            Loss::Reset => self.server_gave_up(),
            Loss::Lost(why) => self.lost(why),
            Loss::Finished => {}
        }
        // Without a way to send, no request will be answered and no result acknowledged here.
        self.fail_pending_data("the command's stream to the server is closed");
        self.no_ack();
    }

    fn server_gave_up(&mut self) {
        if matches!(self.phase, Phase::Running | Phase::Receiving) {
            self.log(
                LogLevel::Info,
                "the server abandoned the command; cancelling it",
            );
            self.cancel_plugin();
        }
    }

    fn lost(&mut self, why: String) {
        self.recv_open = false;
        self.send_open = false;
        if matches!(self.phase, Phase::Running | Phase::Receiving) {
            self.log(
                LogLevel::Warn,
                format!(
                    "lost the command stream ({why}); the command goes on and its result will be delivered later"
                ),
            );
        }
    }

    /// While delivering: an acknowledgement can no longer come on this stream.
    fn no_ack(&mut self) {
        if let Phase::Delivering { acked: None, .. } = self.phase
            && !(self.send_open && self.recv_open)
        {
            self.set_acked(false);
        }
    }

    fn fail_pending_data(&mut self, why: &str) {
        for request in std::mem::take(&mut self.pending_data) {
            self.effects.push_back(Effect::AnswerData(DataResponse {
                request,
                value: None,
                error: Some(why.to_string()),
            }));
        }
    }

    fn receipt(&mut self, now: Instant, receipt: Result<Receipt, String>) {
        if self.phase != Phase::Receiving {
            return;
        }
        let id = self.id.clone().unwrap_or_default();
        match receipt {
            Ok(receipt @ (Receipt::New | Receipt::ReadOnly)) => {
                self.journal_free = receipt == Receipt::ReadOnly;
                self.phase = Phase::Running;
                if self.cancelled {
                    // Given up while the receipt was written: the plugin never starts, and
                    // the journal records that the command ended cancelled.
                    return self.finished(now, outcome_result(&id, Outcome::Cancelled), 0);
                }
                self.effects.push_back(Effect::Run);
            }
            Ok(Receipt::Finished(result)) => {
                self.log(
                    LogLevel::Info,
                    "seen before: answering with the stored result",
                );
                // Under this command's id, as a plugin's result is: one stored under another
                // id with the same idempotency key would be a protocol error to the server.
                let result = CommandResult { id, ..result };
                self.deliver(now, result, None, true);
            }
            Ok(Receipt::Running(original)) => {
                self.phase = Phase::Running;
                self.waiting_for = Some(original.clone());
                self.effects.push_back(Effect::WaitFor(original));
            }
            Err(why) => {
                self.log(
                    LogLevel::Error,
                    format!("cannot journal a command; refusing it: {why}"),
                );
                let outcome = Outcome::Rejected(format!(
                    "the agent cannot record the command in its journal, so it does not run it: {why}"
                ));
                self.deliver(now, outcome_result(&id, outcome), None, false);
            }
        }
    }

    fn event(&mut self, message: Message) {
        if self.phase != Phase::Running {
            return;
        }
        match message {
            Message::DataRequest(request) => {
                if self.send_open && self.recv_open {
                    self.pending_data.insert(request.request);
                    self.send(Message::DataRequest(request));
                } else {
                    self.effects.push_back(Effect::AnswerData(DataResponse {
                        request: request.request,
                        value: None,
                        error: Some("the command's stream to the server is closed".into()),
                    }));
                }
            }
            message @ (Message::Progress(_) | Message::Log(_)) => self.send(message),
            other => self.log(
                LogLevel::Warn,
                format!("a plugin event cannot be a {}", other.kind()),
            ),
        }
    }

    fn finished(&mut self, now: Instant, result: CommandResult, dropped: u64) {
        if self.phase != Phase::Running {
            return;
        }
        let result = CommandResult {
            id: self.id.clone().unwrap_or_default(),
            ..result
        };
        self.fail_pending_data("the command ended");
        if dropped > 0 {
            self.send(Message::Log(ferry_protocol::Log {
                level: LogLevel::Warn,
                message: format!(
                    "{dropped} progress/log events were dropped: the plugin produced them faster than the connection carried them"
                ),
            }));
        }
        match self.waiting_for.take() {
            // Another run's result: that run journals it. The journal holds it under this id
            // only when that run is this id's own (a resend while it ran).
            Some(original) => {
                let kept = Some(original.as_str()) == self.id.as_deref();
                self.deliver(now, result, None, kept);
            }
            None if self.journal_free => self.deliver(now, result, None, false),
            // The result goes out while it is journaled, not after.
            None => self.deliver(now, result.clone(), Some(result), true),
        }
    }

    /// Sends the result and waits for its acknowledgement. `journal`: the result to journal
    /// now (queued right after the frame, so the plugin's last events and the result leave in
    /// one write); `kept`: the journal holds the result.
    fn deliver(
        &mut self,
        now: Instant,
        result: CommandResult,
        journal: Option<CommandResult>,
        kept: bool,
    ) {
        self.send(Message::Result(result));
        let journaled = journal.is_none();
        if let Some(result) = journal {
            self.effects.push_back(Effect::Journal(result));
        }
        if self.send_open {
            self.effects.push_back(Effect::Finish);
        }
        self.phase = Phase::Delivering {
            until: now + ACK_TIMEOUT,
            acked: None,
            journaled,
            kept,
        };
        self.no_ack();
        self.settle();
    }

    fn journaled(&mut self, outcome: Result<(), String>) {
        if let Phase::Delivering {
            journaled, kept, ..
        } = &mut self.phase
        {
            *journaled = true;
            if let Err(why) = outcome {
                // Not in the journal, so no report stream can deliver it again: `Done` must
                // not say it is kept.
                *kept = false;
                self.log(
                    LogLevel::Error,
                    format!(
                        "cannot journal the result ({why}); it was sent, and is lost if the server did not take it"
                    ),
                );
            }
            self.settle();
        }
    }

    fn set_acked(&mut self, ok: bool) {
        if let Phase::Delivering { acked, .. } = &mut self.phase
            && acked.is_none()
        {
            *acked = Some(ok);
            self.settle();
        }
    }

    /// Ends the command once both the server's answer and the journal's are in.
    fn settle(&mut self) {
        if let Phase::Delivering {
            acked: Some(acked),
            journaled: true,
            kept,
            ..
        } = self.phase
        {
            if !acked && kept {
                self.log(
                    LogLevel::Info,
                    "the server has not acknowledged the result yet; it will be delivered again on the next report stream",
                );
            }
            self.phase = Phase::Done;
            self.effects.push_back(Effect::Done { acked, kept });
        }
    }

    fn timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingCommand { until } if now >= until => {
                self.refuse_stream("no Command in time".into())
            }
            Phase::Delivering {
                until, acked: None, ..
            } if now >= until => self.set_acked(false),
            _ => {}
        }
    }
}

/// A result with no payload: the agent's own answer, not the plugin's.
pub fn outcome_result(id: &str, outcome: Outcome) -> CommandResult {
    CommandResult {
        id: id.to_string(),
        outcome,
        payload: Vec::new(),
        stats: ResultStats::default(),
    }
}
