//! The server's side of one agent's run of a command, as a state machine with no I/O.
//!
//! A driver feeds it [`Input`]s (the agent's connection appeared, the stream opened or broke,
//! frames from the agent, results from a report stream, write completions, cancel requests,
//! timeouts) with the time they happened, and carries out the [`Effect`]s it asks for (open a
//! stream and send the `Command`, write a frame, record the run, show an event or the end).
//! [`Run::poll_timeout`] says when it next needs [`Input::Timeout`].
//!
//! What holds here by construction, whatever order the inputs come in:
//! - **`ResultAck` only after the result is durable.** A result moves the run to recording;
//!   the ack (on the stream, or to a report stream) is an effect of [`Input::Recorded`] `Ok`
//!   only. A failed write resets the stream instead, so the agent keeps the result and
//!   delivers it again. Once a run has ended (its end on disk), a result delivered after it
//!   is acknowledged and dropped: the run ended once, and the agent may forget it.
//! - **One end state, shown once and never changed.** Every end (with a result or without:
//!   undelivered, lost, timed out, cancelled) is recorded first and shown only once the record
//!   is on disk ([`Effect::Ended`]); nothing is handled after it. An `undelivered` run was never
//!   sent, and never will be: a restarted server finds it ended.
//! - **Frames name the stream's run.** An `Accepted` or `Result` whose id is not this run's is
//!   a protocol error on the stream, like a message the agent may not send there.
//! - **A resent run waits for its answer.** After a break the same id goes out again and the
//!   agent answers from its journal; the run then waits at least `result_grace` for that
//!   answer, however long ago it was first sent, and gives up on the agent only
//!   `timeout + result_grace + result_wait` after the first send.
//!
//! Inputs in full: the agent's connection appeared; the `Command` was sent or not; frames from the
//! agent; the stream ended; a result from a report stream; a write finished (ok or error); cancel;
//! timeout. Effects: send (open a stream and write the `Command`, always under the same id), write
//! a frame, answer a data request, finish or reset the stream, show accepted/progress/log, record
//! an end, acknowledge or refuse a report stream, and show the end, which is always the last
//! effect. The machine checks the allowlist itself; the driver (`server/src/transport/dispatch.rs`)
//! decides nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ferry_protocol::{
    Cancel, CommandResult, DataRequest, LogLevel, Message, Peer, ResultAck, StreamKind, close,
};

use crate::status::Status;

/// How long a run waits before it tries the agent's connection again after an attempt that
/// failed at once (a dead connection the registry has not dropped yet), so it does not spin.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a run waits before it asks for a result again after its record could not be
/// written (a full or failing disk): the agent keeps the result meanwhile.
pub const RECORD_RETRY: Duration = Duration::from_secs(1);

/// The limits one run lives by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The command's timeout on the agent.
    pub timeout: Duration,
    /// How long past it the server waits for the result on a live stream: the agent stops the
    /// plugin at the timeout and needs a moment to report.
    pub result_grace: Duration,
    /// How long, beyond `timeout + result_grace`, the server waits for an agent whose
    /// connection broke after it was sent the command to come back with the result.
    pub result_wait: Duration,
}

/// Where a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Never sent: it may wait for its agent's connection until `deliver_by`.
    New {
        /// When it is `undelivered` if it was not sent by then.
        deliver_by: Instant,
    },
    /// Sent before (by an earlier run of the server) at `sent_at`: the same id goes out again.
    Resumed {
        /// When it was first sent.
        sent_at: Instant,
    },
}

/// Something that happened to the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The agent has a live connection: the driver has it at hand, and sends on
    /// [`Effect::Send`].
    Connected,
    /// The driver opened a stream and wrote the whole `Command` on it.
    Sent,
    /// The driver could not open a stream: nothing reached the agent.
    NotSent(String),
    /// A frame from the agent on the run's stream.
    Frame(Message),
    /// Bytes on the run's stream that are not a frame (malformed, too large, stalled).
    BadFrame(String),
    /// The run's stream broke, or ended without a result, after the `Command` was (perhaps
    /// partly) written: the agent may have it.
    StreamEnded(String),
    /// The agent delivered the result on a report stream; answered by [`Effect::AckReport`]
    /// or [`Effect::RefuseReport`].
    Reported(CommandResult),
    /// The record asked for by [`Effect::Record`] is on disk, or could not be written.
    Recorded(Result<(), String>),
    /// An operator cancelled the command.
    Cancel,
    /// [`Run::poll_timeout`] has passed.
    Timeout,
}

/// What the run needs done.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open a stream on the agent's connection and write the `Command` (the same id every
    /// time), then answer [`Input::Sent`], [`Input::NotSent`] or [`Input::StreamEnded`].
    Send,
    /// Write this frame on the run's stream.
    Frame(Message),
    /// Answer the agent's data request on the run's stream.
    AnswerData(DataRequest),
    /// Close the sending side of the run's stream after what was written.
    Finish,
    /// Reset the run's stream with this code and drop it; the run goes on without it.
    Reset(u32),
    /// Show watchers that the agent accepted the run (the first time only).
    Accepted,
    /// Show watchers the plugin's progress.
    Progress(u8, String),
    /// Show watchers a log line.
    Log(LogLevel, String),
    /// Write this end durably, then answer [`Input::Recorded`]. Until then it is shown
    /// nowhere.
    Record(End),
    /// The reported result of this id is on disk: answer the report stream with `ResultAck`.
    AckReport(String),
    /// The reported result of this id could not be recorded: reset the report stream, so the
    /// agent keeps it and delivers it again.
    RefuseReport(String),
    /// The run has ended, as recorded: show it. Always the last effect.
    Ended(End),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct End {
    /// The end state.
    pub status: Status,
    /// Why, when it did not succeed.
    pub detail: Option<String>,
    /// The agent's result, when the agent sent one.
    pub result: Option<CommandResult>,
}

impl End {
    fn without_result(status: Status, detail: String) -> End {
        End {
            status,
            detail: Some(detail),
            result: None,
        }
    }

    fn with_result(result: CommandResult) -> End {
        End {
            status: Status::from_outcome(&result.outcome),
            detail: result.outcome.detail().map(str::to_string),
            result: Some(result),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No stream: waiting for the agent's connection (until a deadline), or for a pause to
    /// pass before trying it again.
    Waiting { retry_at: Option<Instant> },
    /// [`Effect::Send`] is out; the driver answers.
    Sending,
    /// The `Command` is on a stream; frames come.
    OnStream { accepted: bool },
    /// An end is being written ([`Effect::Record`]); `stream`: the result came on the run's
    /// stream, which is still open.
    Recording { end: End, stream: bool },
    /// Ended: nothing more happens.
    Ended,
}

/// The server's side of one agent's run.
#[derive(Debug)]
pub struct Run {
    id: String,
    limits: Limits,
    phase: Phase,
    /// When it was first sent (perhaps partly): from then on it may have run.
    sent_at: Option<Instant>,
    /// The latest send: the agent answers a resend from its journal within `result_grace`.
    resent_at: Option<Instant>,
    /// Until when the stream being opened ([`Phase::Sending`]) may take.
    opening_until: Instant,
    deliver_by: Instant,
    cancel_requested: bool,
    /// A Cancel frame is on the current stream.
    cancel_sent: bool,
    accepted_shown: bool,
    last_loss: Option<String>,
    /// Report streams waiting for the record in progress.
    reports_waiting: Vec<String>,
    effects: VecDeque<Effect>,
}

impl Run {
    /// A run of command id `id` (the id the agent knows it by).
    pub fn new(id: impl Into<String>, limits: Limits, start: Start) -> Run {
        let (sent_at, deliver_by) = match start {
            Start::New { deliver_by } => (None, deliver_by),
            Start::Resumed { sent_at } => (Some(sent_at), sent_at),
        };
        Run {
            id: id.into(),
            limits,
            phase: Phase::Waiting { retry_at: None },
            sent_at,
            resent_at: None,
            opening_until: deliver_by,
            deliver_by,
            cancel_requested: false,
            cancel_sent: false,
            accepted_shown: false,
            last_loss: None,
            reports_waiting: Vec::new(),
            effects: VecDeque::new(),
        }
    }

    /// The id the agent knows the run by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next effect to carry out, in order.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// True once the run has ended (its [`Effect::Ended`] may still be waiting in
    /// [`Run::poll`]).
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Whether the run wants the agent's connection now: the driver waits for it (until
    /// [`Run::poll_timeout`]) and then answers [`Input::Connected`].
    pub fn wants_connection(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Waiting { retry_at } if retry_at.is_none_or(|at| now >= at))
    }

    /// Whether a stream of the run is open (the driver reads frames from it).
    pub fn on_stream(&self) -> bool {
        matches!(
            self.phase,
            Phase::OnStream { .. } | Phase::Recording { stream: true, .. }
        )
    }

    /// When the run next needs [`Input::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { retry_at } => {
                let deadline = self.wait_deadline();
                Some(match retry_at {
                    Some(at) if *at < deadline => *at,
                    _ => deadline,
                })
            }
            Phase::Sending => Some(self.opening_until),
            Phase::OnStream { .. } => Some(self.give_up_at()),
            Phase::Recording { .. } | Phase::Ended => None,
        }
    }

    /// Until when a run with no stream waits for its agent.
    fn wait_deadline(&self) -> Instant {
        match self.sent_at {
            None => self.deliver_by,
            Some(sent) => {
                sent + self.limits.timeout + self.limits.result_grace + self.limits.result_wait
            }
        }
    }

    /// When a run on a stream stops waiting for its result: the command's timeout and grace
    /// from the first send, and never less than the grace after a resend, which the agent
    /// answers from its journal.
    fn give_up_at(&self) -> Instant {
        let grace = self.limits.result_grace;
        let first = self.sent_at.map(|at| at + self.limits.timeout + grace);
        let resent = self.resent_at.map(|at| at + grace);
        first.max(resent).unwrap_or(self.opening_until)
    }

    /// Handles one input that happened at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        // A pause that has passed is over, so `poll_timeout` moves on to the deadline.
        if let Phase::Waiting { retry_at } = &mut self.phase
            && retry_at.is_some_and(|at| now >= at)
        {
            *retry_at = None;
        }
        if self.phase == Phase::Ended {
            // A command ends once: a result delivered again is durable already, so a report
            // stream may be told so; anything else is dropped. Another command's result is
            // not this run's to acknowledge: its agent would forget a result never recorded.
            if let Input::Reported(result) = input {
                self.effects.push_back(if result.id == self.id {
                    Effect::AckReport(result.id)
                } else {
                    Effect::RefuseReport(result.id)
                });
            }
            return;
        }
        match input {
            Input::Connected => self.connected(now),
            Input::Sent => self.sent(now),
            Input::NotSent(why) => self.not_sent(now, why),
            Input::Frame(message) => self.frame(message),
            Input::BadFrame(why) => {
                if matches!(self.phase, Phase::OnStream { .. }) {
                    self.protocol_error(why);
                }
            }
            Input::StreamEnded(why) => self.stream_ended(now, why),
            Input::Reported(result) => self.reported(result),
            Input::Recorded(outcome) => self.recorded(now, outcome),
            Input::Cancel => self.cancel(),
            Input::Timeout => self.timeout(now),
        }
    }

    fn connected(&mut self, now: Instant) {
        if !self.wants_connection(now) {
            return;
        }
        self.phase = Phase::Sending;
        // Opening a stream may wait for a slot on the agent (it runs as many commands as it
        // allows); the command's timeout bounds that wait, as it bounds a result.
        let grace = self.limits.result_grace;
        self.opening_until = match self.sent_at {
            None => now + self.limits.timeout + grace,
            Some(_) => self.give_up_at().max(now + grace),
        };
        self.effects.push_back(Effect::Send);
    }

    fn sent(&mut self, now: Instant) {
        if self.phase != Phase::Sending {
            return;
        }
        match self.sent_at {
            None => self.sent_at = Some(now),
            Some(_) => self.resent_at = Some(now),
        }
        self.phase = Phase::OnStream { accepted: false };
        self.cancel_sent = false;
        if self.cancel_requested {
            self.send_cancel();
        }
    }

    fn not_sent(&mut self, now: Instant, why: String) {
        if self.phase != Phase::Sending {
            return;
        }
        if self.sent_at.is_none() && now >= self.deliver_by {
            return self.end(End::without_result(
                Status::Undelivered,
                format!("not sent: {why}"),
            ));
        }
        self.last_loss = Some(why);
        self.phase = Phase::Waiting {
            retry_at: Some(now + RETRY_PAUSE),
        };
    }

    fn stream_ended(&mut self, now: Instant, why: String) {
        match &self.phase {
            Phase::Sending | Phase::OnStream { .. } => {
                // From the first byte of the Command on, the agent may have it: from now on
                // the run is sent, and only the agent's word ends it.
                self.sent_at.get_or_insert(now);
                self.effects.push_back(Effect::Log(
                    LogLevel::Warn,
                    format!(
                        "the connection to the agent was lost ({why}); waiting for it to come back with the result"
                    ),
                ));
                self.last_loss = Some(why);
                self.phase = Phase::Waiting {
                    retry_at: Some(now + RETRY_PAUSE),
                };
            }
            Phase::Recording { end, stream: true } => {
                // The write goes on; the ack will go to a report stream or a resend.
                self.phase = Phase::Recording {
                    end: end.clone(),
                    stream: false,
                };
            }
            _ => {}
        }
    }

    fn protocol_error(&mut self, why: String) {
        self.effects.push_back(Effect::Reset(close::PROTOCOL_ERROR));
        self.end(End::without_result(
            Status::Lost,
            format!("protocol error from the agent: {why}"),
        ));
    }

    fn frame(&mut self, message: Message) {
        let Phase::OnStream { accepted } = self.phase else {
            // Frames after the result (while it is recorded) change nothing.
            return;
        };
        if let Err(e) = message.check_allowed(Peer::Agent, StreamKind::Command) {
            return self.protocol_error(e.to_string());
        }
        match message {
            Message::Accepted(a) if a.id != self.id => self.protocol_error(format!(
                "Accepted for command {} on the stream of command {}",
                a.id, self.id
            )),
            Message::Result(r) if r.id != self.id => self.protocol_error(format!(
                "Result for command {} on the stream of command {}",
                r.id, self.id
            )),
            Message::Accepted(_) => {
                if !accepted {
                    self.phase = Phase::OnStream { accepted: true };
                }
                if !self.accepted_shown {
                    self.accepted_shown = true;
                    self.effects.push_back(Effect::Accepted);
                }
            }
            Message::Progress(p) => self
                .effects
                .push_back(Effect::Progress(p.percent.min(100), p.message)),
            Message::Log(l) => self.effects.push_back(Effect::Log(l.level, l.message)),
            Message::DataRequest(request) => self.effects.push_back(Effect::AnswerData(request)),
            Message::Result(result) => {
                let end = End::with_result(result);
                self.effects.push_back(Effect::Record(end.clone()));
                self.phase = Phase::Recording { end, stream: true };
            }
            other => self.protocol_error(format!("{} on a command stream", other.kind())),
        }
    }

    fn reported(&mut self, result: CommandResult) {
        if result.id != self.id {
            self.effects.push_back(Effect::RefuseReport(result.id));
            return;
        }
        match &self.phase {
            Phase::Recording { .. } => self.reports_waiting.push(result.id),
            _ => {
                // A report supersedes whatever stream the run had: the agent has finished.
                if self.on_stream() {
                    self.effects.push_back(Effect::Finish);
                }
                self.reports_waiting.push(result.id.clone());
                let end = End::with_result(result);
                self.effects.push_back(Effect::Record(end.clone()));
                self.phase = Phase::Recording { end, stream: false };
            }
        }
    }

    fn recorded(&mut self, now: Instant, outcome: Result<(), String>) {
        let Phase::Recording { end, stream } = &self.phase else {
            return;
        };
        let (end, stream) = (end.clone(), *stream);
        match outcome {
            Ok(()) => {
                if stream {
                    self.effects
                        .push_back(Effect::Frame(Message::ResultAck(ResultAck {
                            id: self.id.clone(),
                        })));
                    self.effects.push_back(Effect::Finish);
                }
                for id in self.reports_waiting.drain(..) {
                    self.effects.push_back(Effect::AckReport(id));
                }
                self.phase = Phase::Ended;
                self.effects.push_back(Effect::Ended(end));
            }
            Err(why) => {
                for id in self.reports_waiting.drain(..) {
                    self.effects.push_back(Effect::RefuseReport(id));
                }
                if end.result.is_some() {
                    // The agent keeps an unacknowledged result: drop the stream, and ask for
                    // the result again (a resend of the same id) once the disk may have
                    // recovered.
                    if stream {
                        self.effects.push_back(Effect::Reset(close::NORMAL));
                    }
                    self.sent_at.get_or_insert(now);
                    self.last_loss = Some(format!("the server could not record the result: {why}"));
                    self.phase = Phase::Waiting {
                        retry_at: Some(now + RECORD_RETRY),
                    };
                } else {
                    // An end without a result is the server's own decision: it stands, and
                    // is written again until it is on disk, shown only then.
                    self.phase = Phase::Recording {
                        end: end.clone(),
                        stream: false,
                    };
                    self.effects.push_back(Effect::Record(end));
                }
            }
        }
    }

    fn send_cancel(&mut self) {
        self.cancel_sent = true;
        self.effects
            .push_back(Effect::Frame(Message::Cancel(Cancel {
                reason: "cancelled by the operator".into(),
            })));
    }

    fn cancel(&mut self) {
        if self.cancel_requested {
            return;
        }
        self.cancel_requested = true;
        match self.phase {
            Phase::Waiting { .. } if self.sent_at.is_none() => self.end(End::without_result(
                Status::Cancelled,
                "cancelled before it reached the agent".into(),
            )),
            Phase::OnStream { .. } if !self.cancel_sent => self.send_cancel(),
            // Passed on once the run is on a stream again.
            _ => {}
        }
    }

    fn timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting { .. } if now >= self.wait_deadline() => self.give_up(
                "the agent did not connect before the command's delivery deadline".into(),
                format!(
                    "the connection to the agent was lost ({}) and the agent did not come back with the result within the command's timeout plus {:?}",
                    self.last_loss.as_deref().unwrap_or("no reason given"),
                    self.limits.result_grace + self.limits.result_wait
                ),
            ),
            Phase::Sending if now >= self.opening_until => self.give_up(
                "the agent did not take the command before its timeout: it is running as many commands as it allows".into(),
                "the agent did not take the command again before its timeout".into(),
            ),
            Phase::OnStream { .. } if now >= self.give_up_at() => {
                self.effects.push_back(Effect::Reset(close::NORMAL));
                self.end(End::without_result(
                    Status::TimedOut,
                    format!(
                        "no result from the agent within the command's timeout ({:?}) plus {:?}",
                        self.limits.timeout, self.limits.result_grace
                    ),
                ));
            }
            _ => {}
        }
    }

    /// Stops waiting for the agent: a run never sent is `undelivered` (it never ran), one
    /// sent is `lost` (it may have).
    fn give_up(&mut self, never_sent: String, sent: String) {
        let end = match self.sent_at {
            None => End::without_result(Status::Undelivered, never_sent),
            Some(_) => End::without_result(Status::Lost, sent),
        };
        self.end(end);
    }

    /// Ends the run without a result: recorded first, shown once recorded.
    fn end(&mut self, end: End) {
        self.effects.push_back(Effect::Record(end.clone()));
        self.phase = Phase::Recording { end, stream: false };
    }
}
