//! The lifecycle machines driven by arbitrary bytes, with an oracle of what must hold for any
//! input sequence: shared by the fuzz target (`fuzz/fuzz_targets/lifecycle.rs`) and by
//! `cargo test` (`tests/lifecycle/fuzzing.rs`), so a property written once is checked by both,
//! and an input the fuzzer finds replays as an ordinary test.
//!
//! [`check_run`] and [`check_execution`] read the bytes through a [`Bytes`] cursor as a
//! sequence of inputs with the times they happen at, feed them to a [`Run`] or an
//! [`Execution`], drain the effects after every input, and hand every input and effect to a
//! [`RunOracle`] or [`ExecutionOracle`], which panics with a message naming the broken
//! guarantee. Once the bytes run out, the machine's outstanding requests are answered and its
//! timeouts fired until it ends, which it must.
//!
//! The decoding leans towards progress: a zero byte picks the input that moves the machine
//! along its happy path (the connection comes, the `Command` is sent, the result comes and is
//! recorded), so an all-zero input is a complete run, and the fuzzer mutates from there into
//! wrong ids, every message kind, failed writes, losses, cancels, stops and timeouts before,
//! at and after [`Run::poll_timeout`]. The server's [`run::Effect::Send`] and
//! [`run::Effect::Record`] are answered by the very next input, as the server's driver does
//! (it awaits both before it reads anything else); everything else, on both sides, comes in
//! any order, and answers to requests never made are fed too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ferry_protocol::{
    Accepted, AssignedPlugin, Bye, Cancel, Command, CommandResult, DataRequest, DataResponse,
    EnrollCode, EnrollRefused, Fetch, FetchReply, Heartbeat, Hello, HostMetrics, Leave, Log,
    LogLevel, Message, Outcome, PackageChunk, Peer, PluginAssign, PluginReport, Progress, Reject,
    RejectCode, Renew, Renewed, ResultAck, ResultStats, StreamKind, VersionRange, Welcome, close,
    digest::Digest,
};

use crate::command::{self, ACK_TIMEOUT, Execution, FIRST_FRAME_TIMEOUT, Loss, Receipt};
use crate::run::{self, End, Limits, RECORD_RETRY, RETRY_PAUSE, Run, Start};
use crate::status::Status;

/// The id of the command both machines are about; [`OTHER_IDS`] are the wrong ones.
pub const ID: &str = "c-1";
const OTHER_IDS: [&str; 2] = ["c-2", ""];

/// A cursor over arbitrary bytes; it reads zeros once they run out.
pub struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, at: 0 }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    /// A span of time: none, milliseconds, tenths of seconds or seconds (up to 255 s, past
    /// every limit the machines are given here).
    pub fn span(&mut self) -> Duration {
        let b = self.byte();
        let n = u64::from(b >> 2);
        match b & 3 {
            0 => Duration::ZERO,
            1 => Duration::from_millis(n),
            2 => Duration::from_millis(100 * n),
            _ => Duration::from_secs(u64::from(b)),
        }
    }

    /// The right id, mostly; a wrong one otherwise.
    pub fn id(&mut self) -> String {
        match self.below(8) {
            6 => OTHER_IDS[0].into(),
            7 => OTHER_IDS[1].into(),
            _ => ID.into(),
        }
    }

    /// A short string.
    pub fn text(&mut self) -> String {
        ["", "x", "why", "ünïcode"][self.below(4)].into()
    }

    /// Any outcome, `Succeeded` first.
    pub fn outcome(&mut self) -> Outcome {
        match self.below(9) {
            0 => Outcome::Succeeded,
            1 => Outcome::InvalidInput(self.text()),
            2 => Outcome::Denied(self.text()),
            3 => Outcome::Failed(self.text()),
            4 => Outcome::Cancelled,
            5 => Outcome::TimedOut,
            6 => Outcome::Crashed(self.text()),
            7 => Outcome::UnknownTopic(self.text()),
            _ => Outcome::Rejected(self.text()),
        }
    }

    /// A result under `id`, with any outcome.
    pub fn result_for(&mut self, id: String) -> CommandResult {
        CommandResult {
            id,
            outcome: self.outcome(),
            payload: vec![0; self.below(3)],
            stats: ResultStats {
                duration_us: u64::from(self.byte()),
                fuel: None,
                peak_memory_bytes: 0,
            },
        }
    }

    /// A result under the right id or a wrong one.
    pub fn result(&mut self) -> CommandResult {
        let id = self.id();
        self.result_for(id)
    }

    /// The `Command` of this id or a wrong one.
    pub fn command(&mut self) -> Command {
        Command {
            id: self.id(),
            topic: "echo".into(),
            payload: vec![1; self.below(3)],
            content_type: "application/json".into(),
            timeout_ms: [Some(5_000), None, Some(0)][self.below(3)],
            idempotency_key: (self.below(2) == 1).then(|| "k".to_string()),
        }
    }

    /// A data request number: few of them, so answers meet requests.
    pub fn request(&mut self) -> u32 {
        self.below(4) as u32
    }

    /// One of the messages the agent may send on a command stream, `Result` first.
    pub fn agent_message(&mut self) -> Message {
        match self.below(5) {
            0 => Message::Result(self.result()),
            1 => Message::Accepted(Accepted { id: self.id() }),
            2 => Message::Progress(Progress {
                percent: self.byte(),
                message: self.text(),
            }),
            3 => Message::Log(Log {
                level: self.level(),
                message: self.text(),
            }),
            _ => Message::DataRequest(DataRequest {
                request: self.request(),
                key: self.text(),
            }),
        }
    }

    /// One of the messages the server may send on a command stream, `Command` first.
    pub fn server_message(&mut self) -> Message {
        match self.below(4) {
            0 => Message::Command(self.command()),
            1 => Message::ResultAck(ResultAck { id: self.id() }),
            2 => Message::DataResponse(DataResponse {
                request: self.request(),
                value: (self.below(2) == 1).then(|| vec![7]),
                error: (self.below(2) == 1).then(|| "no".to_string()),
            }),
            _ => Message::Cancel(Cancel {
                reason: self.text(),
            }),
        }
    }

    fn level(&mut self) -> LogLevel {
        [
            LogLevel::Trace,
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
        ][self.below(5)]
    }

    /// Any message of the 25 kinds, whoever may send it wherever.
    pub fn any_message(&mut self) -> Message {
        let digest = Digest([self.byte(); 32]);
        let range = VersionRange { min: 1, max: 1 };
        match self.below(25) {
            0 => Message::Hello(Hello {
                protocol: range,
                agent_version: self.text(),
                labels: BTreeMap::new(),
                wit_versions: Vec::new(),
                topics: Vec::new(),
                read_only: Vec::new(),
                cached_plugins: Vec::new(),
                instance: None,
            }),
            1 => Message::Welcome(Welcome {
                session: self.text(),
                protocol: 1,
                heartbeat_interval_ms: 5_000,
                features: Vec::new(),
                limits: ferry_protocol::Limits {
                    max_frame_bytes: 1 << 20,
                    max_concurrent_commands: 1,
                },
            }),
            2 => Message::Reject(Reject {
                code: RejectCode::DuplicateAgent,
                message: self.text(),
                retry_after_ms: None,
                redirect: None,
                server_protocol: None,
                agent_protocol: None,
            }),
            3 => Message::Heartbeat(Heartbeat {
                metrics: HostMetrics::default(),
                running_commands: 1,
                sent_at: String::new(),
                health: Default::default(),
                runtimes: Vec::new(),
            }),
            4 => Message::Bye(Bye {
                reason: self.text(),
            }),
            5 => Message::PluginAssign(PluginAssign {
                plugins: vec![AssignedPlugin {
                    name: "echo".into(),
                    version: "0.1.0".into(),
                    digest,
                    signature: Vec::new(),
                    size: 1,
                    topics: vec!["echo".into()],
                }],
            }),
            6 => Message::PluginReport(PluginReport {
                plugins: Vec::new(),
                topics: Vec::new(),
                read_only: Vec::new(),
            }),
            7 => Message::Leave(Leave {
                reason: self.text(),
            }),
            8 => Message::Fetch(Fetch { digest }),
            9 => Message::FetchReply(FetchReply {
                size: Some(1),
                error: None,
            }),
            10 => Message::PackageChunk(PackageChunk { bytes: vec![1] }),
            11 => Message::Enroll(ferry_protocol::Enroll {
                token: self.text(),
                csr: Vec::new(),
                requested_id: self.text(),
            }),
            12 => Message::Enrolled(ferry_protocol::Enrolled {
                agent_id: self.text(),
                certificate_pem: String::new(),
                ca_pem: String::new(),
                plugin_key: None,
                not_after: 0,
            }),
            13 => Message::EnrollRefused(EnrollRefused {
                code: EnrollCode::BadRequest,
                message: self.text(),
            }),
            14 => Message::Renew(Renew { csr: Vec::new() }),
            15 => Message::Renewed(Renewed {
                certificate_pem: String::new(),
                not_after: 0,
            }),
            16..=20 => self.agent_message(),
            _ => self.server_message(),
        }
    }

    /// How a side of a stream went away.
    pub fn loss(&mut self) -> Loss {
        match self.below(3) {
            0 => Loss::Lost(self.text()),
            1 => Loss::Reset,
            _ => Loss::Finished,
        }
    }

    /// When a timeout fires: at the machine's deadline, before it (a wake-up for nothing),
    /// or after it (a late driver). Never before `now`: time does not go back.
    pub fn timeout_at(&mut self, now: Instant, deadline: Option<Instant>) -> Instant {
        let Some(deadline) = deadline else {
            return now + self.span();
        };
        match self.below(3) {
            0 => now.max(deadline),
            1 => now.max(deadline.checked_sub(self.span()).unwrap_or(deadline)),
            _ => now.max(deadline + self.span() + Duration::from_millis(1)),
        }
    }
}

/// Whether an input answers a request, answers nothing (a stray), or is neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Answer,
    Stray,
}

#[derive(Debug, Default)]
struct ServerStream {
    open: bool,
    finished: bool,
    cancel_sent: bool,
}

/// What must hold of a [`Run`]'s effects, whatever its inputs. Call [`RunOracle::input`]
/// before handing the machine an input, [`RunOracle::effect`] for each effect it then hands
/// out, and [`RunOracle::settled`] once it has none left.
#[derive(Debug)]
pub struct RunOracle {
    limits: Limits,
    now: Instant,
    input: Option<run::Input>,
    kind: Kind,
    /// The `Connected` was given while the machine did not want it.
    unwanted: bool,
    effects: Vec<run::Effect>,
    send_outstanding: bool,
    /// The first time the `Command` may have reached the agent.
    first_sent: Option<Instant>,
    /// The latest complete send.
    last_sent: Option<Instant>,
    stream: ServerStream,
    retry_not_before: Option<Instant>,
    record_outstanding: Option<End>,
    /// The end whose record was answered `Ok`: on disk.
    durable: Option<End>,
    /// An end the server decided itself (no result): it stands.
    own_end: Option<End>,
    ended: Option<End>,
    cancelled: bool,
    accepted_shown: bool,
    /// Results of this id that inputs delivered.
    results: Vec<CommandResult>,
    /// Reports not answered yet, by id.
    reports: BTreeMap<String, u32>,
    protocol_error: bool,
}

impl RunOracle {
    /// An oracle for a run made with `limits` and `start` at `now`.
    pub fn new(limits: Limits, start: Start, now: Instant) -> RunOracle {
        let first_sent = match start {
            Start::New { .. } => None,
            Start::Resumed { sent_at } => Some(sent_at),
        };
        RunOracle {
            limits,
            now,
            input: None,
            kind: Kind::Plain,
            unwanted: false,
            effects: Vec::new(),
            send_outstanding: false,
            first_sent,
            last_sent: None,
            stream: ServerStream::default(),
            retry_not_before: None,
            record_outstanding: None,
            durable: None,
            own_end: None,
            ended: None,
            cancelled: false,
            accepted_shown: false,
            results: Vec::new(),
            reports: BTreeMap::new(),
            protocol_error: false,
        }
    }

    /// Whether the machine asked for a stream and has not been answered.
    pub fn send_outstanding(&self) -> bool {
        self.send_outstanding
    }

    /// Whether the machine asked for a record and has not been answered.
    pub fn record_outstanding(&self) -> bool {
        self.record_outstanding.is_some()
    }

    /// Whether [`run::Effect::Ended`] came out.
    pub fn ended(&self) -> Option<&End> {
        self.ended.as_ref()
    }

    /// `input` is about to be handed to `run` at `now`.
    pub fn input(&mut self, now: Instant, input: &run::Input, run: &Run) {
        assert!(now >= self.now, "the driver's clock went back");
        self.now = now;
        self.effects.clear();
        self.kind = Kind::Plain;
        self.protocol_error = false;
        self.unwanted = matches!(input, run::Input::Connected) && !run.wants_connection(now);
        let open = self.stream.open && !self.stream.finished;
        match input {
            run::Input::Connected | run::Input::Cancel => {
                if matches!(input, run::Input::Cancel) {
                    self.cancelled = true;
                }
            }
            run::Input::Sent => {
                if self.answer_send() {
                    self.first_sent.get_or_insert(now);
                    self.last_sent = Some(now);
                    self.stream = ServerStream {
                        open: true,
                        ..ServerStream::default()
                    };
                }
            }
            run::Input::NotSent(_) => {
                if self.answer_send() {
                    self.retry_not_before = Some(now + RETRY_PAUSE);
                }
            }
            run::Input::StreamEnded(_) => {
                if self.answer_send() || open {
                    self.kind = Kind::Answer;
                    self.first_sent.get_or_insert(now);
                    self.stream.open = false;
                    self.retry_not_before = Some(now + RETRY_PAUSE);
                } else {
                    self.kind = Kind::Stray;
                }
            }
            run::Input::Timeout => {
                if self.send_outstanding {
                    // The driver's own answer when no stream slot came by the deadline.
                    self.send_outstanding = false;
                }
            }
            run::Input::Recorded(outcome) => match self.record_outstanding.take() {
                Some(end) => {
                    self.kind = Kind::Answer;
                    match outcome {
                        Ok(()) => self.durable = Some(end),
                        Err(_) if end.result.is_some() => {
                            self.first_sent.get_or_insert(now);
                            self.retry_not_before = Some(now + RECORD_RETRY);
                        }
                        Err(_) => {}
                    }
                }
                None => self.kind = Kind::Stray,
            },
            run::Input::Frame(message) => {
                if !open || self.ended.is_some() {
                    self.kind = Kind::Stray;
                } else {
                    self.protocol_error = match message {
                        _ if message
                            .check_allowed(Peer::Agent, StreamKind::Command)
                            .is_err() =>
                        {
                            true
                        }
                        Message::Accepted(a) => a.id != ID,
                        Message::Result(r) => r.id != ID,
                        _ => false,
                    };
                    if let Message::Result(r) = message
                        && r.id == ID
                    {
                        self.results.push(r.clone());
                    }
                }
            }
            run::Input::BadFrame(_) => {
                if open && self.ended.is_none() {
                    self.protocol_error = true;
                } else {
                    self.kind = Kind::Stray;
                }
            }
            run::Input::Reported(result) => {
                *self.reports.entry(result.id.clone()).or_default() += 1;
                if result.id == ID {
                    self.results.push(result.clone());
                }
            }
        }
        self.input = Some(input.clone());
    }

    fn answer_send(&mut self) -> bool {
        let answered = std::mem::take(&mut self.send_outstanding);
        self.kind = if answered { Kind::Answer } else { Kind::Stray };
        answered
    }

    fn input_is(&self, f: impl Fn(&run::Input) -> bool) -> bool {
        self.input.as_ref().is_some_and(f)
    }

    /// The machine handed out `effect`.
    pub fn effect(&mut self, effect: &run::Effect) {
        use run::Effect as E;
        self.effects.push(effect.clone());
        if self.ended.is_some() {
            assert!(
                matches!(effect, E::AckReport(_) | E::RefuseReport(_)),
                "run: {effect:?} after the run ended: only a report stream's answer may follow Ended"
            );
        }
        let open = self.stream.open && !self.stream.finished;
        match effect {
            E::Send => {
                assert!(
                    self.input_is(|i| matches!(i, run::Input::Connected)),
                    "run: Send not in answer to Connected (after {:?})",
                    self.input
                );
                assert!(
                    !self.send_outstanding,
                    "run: Send while another Send is unanswered"
                );
                assert!(
                    self.own_end.is_none(),
                    "run: Send after the server decided the run's end ({:?}): that end stands",
                    self.own_end
                );
                assert!(
                    self.record_outstanding.is_none() && self.durable.is_none(),
                    "run: Send while an end is recorded or on disk"
                );
                if let Some(at) = self.retry_not_before {
                    assert!(
                        self.now >= at,
                        "run: Send again at {:?}, before the pause after a failure passed ({at:?})",
                        self.now
                    );
                }
                self.send_outstanding = true;
            }
            E::Frame(message) => {
                assert!(open, "run: frame {message:?} with no open stream");
                match message {
                    Message::ResultAck(ack) => {
                        assert_eq!(ack.id, ID, "run: ResultAck for another command");
                        let durable = self.durable.as_ref().and_then(|e| e.result.as_ref());
                        assert!(
                            durable.is_some_and(|r| r.id == ID),
                            "run: ResultAck on the stream before its result is on disk (disk: {:?})",
                            self.durable
                        );
                    }
                    Message::Cancel(_) => {
                        assert!(self.cancelled, "run: Cancel frame with no cancel asked for");
                        assert!(
                            !self.stream.cancel_sent,
                            "run: Cancel sent twice on one stream"
                        );
                        self.stream.cancel_sent = true;
                    }
                    other => panic!("run: the server sent {} on a command stream", other.kind()),
                }
            }
            E::AnswerData(request) => {
                assert!(open, "run: a data answer with no open stream");
                assert!(
                    self.input_is(
                        |i| matches!(i, run::Input::Frame(Message::DataRequest(r)) if r == request)
                    ),
                    "run: AnswerData({request:?}) not in answer to that request"
                );
            }
            E::Finish => {
                assert!(open, "run: Finish with no open stream");
                self.stream.finished = true;
            }
            E::Reset(_) => {
                assert!(
                    self.stream.open,
                    "run: Reset with no stream (after {:?})",
                    self.input
                );
                self.stream.open = false;
            }
            E::Accepted => {
                assert!(!self.accepted_shown, "run: Accepted shown twice");
                assert!(
                    self.input_is(
                        |i| matches!(i, run::Input::Frame(Message::Accepted(a)) if a.id == ID)
                    ),
                    "run: Accepted shown without the agent's Accepted"
                );
                self.accepted_shown = true;
            }
            E::Progress(percent, _) => {
                assert!(*percent <= 100, "run: progress {percent}% shown");
            }
            E::Log(..) => {}
            E::Record(end) => self.record(end),
            E::AckReport(id) => {
                self.answer_report(id);
                assert_eq!(
                    id, ID,
                    "run: a report of command {id:?} acknowledged by the run of {ID}: that result is not on disk"
                );
                assert!(
                    self.durable.is_some(),
                    "run: a report acknowledged before the run's end is on disk"
                );
            }
            E::RefuseReport(id) => {
                self.answer_report(id);
                assert!(
                    id != ID || self.input_is(|i| matches!(i, run::Input::Recorded(Err(_)))),
                    "run: the report of its own result refused, though no write failed"
                );
            }
            E::Ended(end) => {
                assert!(
                    self.input_is(|i| matches!(i, run::Input::Recorded(Ok(()))))
                        && self.kind == Kind::Answer,
                    "run: Ended not in answer to a successful record"
                );
                assert_eq!(
                    self.durable.as_ref(),
                    Some(end),
                    "run: Ended differs from the end on disk"
                );
                self.ended = Some(end.clone());
            }
        }
    }

    fn answer_report(&mut self, id: &str) {
        let waiting = self.reports.get_mut(id);
        assert!(
            waiting.as_ref().is_some_and(|n| **n > 0),
            "run: a report of {id:?} answered that was never delivered, or twice"
        );
        *waiting.expect("checked") -= 1;
    }

    fn record(&mut self, end: &End) {
        assert!(
            self.record_outstanding.is_none(),
            "run: Record while another Record is unanswered"
        );
        assert!(
            self.durable.is_none(),
            "run: Record after an end is on disk: a run ends once"
        );
        if let Some(own) = &self.own_end {
            assert_eq!(own, end, "run: the server's own end changed");
        }
        match &end.result {
            Some(result) => {
                assert_eq!(result.id, ID, "run: recorded another command's result");
                assert_eq!(
                    end.status,
                    Status::from_outcome(&result.outcome),
                    "run: the status does not match the outcome"
                );
                assert!(
                    self.results.contains(result),
                    "run: recorded a result no input delivered"
                );
            }
            None => {
                assert!(
                    end.detail.is_some(),
                    "run: an end without a result says why"
                );
                let now = self.now;
                let l = self.limits;
                match end.status {
                    Status::Undelivered => assert!(
                        self.first_sent.is_none(),
                        "run: undelivered, yet it may have reached the agent at {:?}",
                        self.first_sent
                    ),
                    Status::Cancelled => assert!(
                        self.cancelled && self.first_sent.is_none(),
                        "run: cancelled without a result, yet not asked to or already sent"
                    ),
                    Status::TimedOut => {
                        let first = self.first_sent.expect("run: timed out, never sent");
                        assert!(
                            now >= first + l.timeout + l.result_grace,
                            "run: timed out {:?} after the first send, before its timeout and grace",
                            now - first
                        );
                        if let Some(last) = self.last_sent {
                            assert!(
                                now >= last + l.result_grace,
                                "run: timed out {:?} after a resend, before its grace",
                                now - last
                            );
                        }
                    }
                    Status::Lost => {
                        let first = self.first_sent.expect("run: lost, never sent");
                        let protocol = end
                            .detail
                            .as_deref()
                            .is_some_and(|d| d.starts_with("protocol error"));
                        if self.own_end.is_none() {
                            assert_eq!(
                                protocol, self.protocol_error,
                                "run: a protocol error must end the run lost, and only it"
                            );
                        }
                        assert!(
                            protocol || now >= first + l.timeout + l.result_grace,
                            "run: lost {:?} after the first send, before its timeout and grace",
                            now - first
                        );
                    }
                    other => panic!("run: {other:?} without a result"),
                }
                self.own_end = Some(end.clone());
            }
        }
        self.record_outstanding = Some(end.clone());
    }

    /// `run` has handed out every effect of the last input.
    pub fn settled(&mut self, run: &Run) {
        if self.kind == Kind::Answer && self.input_is(|i| matches!(i, run::Input::Recorded(Ok(()))))
        {
            assert!(
                self.ended.is_some(),
                "run: an end on disk is not shown at once"
            );
        }
        assert_eq!(
            run.is_ended(),
            self.ended.is_some(),
            "run: is_ended disagrees"
        );
        if self.kind == Kind::Stray || self.unwanted {
            assert!(
                self.effects.is_empty(),
                "run: {:?} answered nothing, yet the machine did {:?}",
                self.input,
                self.effects
            );
        }
        if self.protocol_error {
            assert!(
                self.effects
                    .contains(&run::Effect::Reset(close::PROTOCOL_ERROR)),
                "run: {:?} is a protocol error, yet the stream was not reset: {:?}",
                self.input,
                self.effects
            );
        }
        if self.input_is(|i| matches!(i, run::Input::Timeout)) {
            assert!(
                run.poll_timeout().is_none_or(|t| t > self.now),
                "run: after a timeout at {:?}, it asks for one again at once",
                self.now
            );
        }
        let on_stream = self.stream.open && !self.stream.finished && self.ended.is_none();
        assert_eq!(
            run.on_stream(),
            on_stream,
            "run: on_stream disagrees with the stream's effects"
        );
        if self.cancelled && on_stream && self.record_outstanding.is_none() {
            assert!(
                self.stream.cancel_sent,
                "run: cancelled, yet its open stream carries no Cancel"
            );
        }
    }

    /// The run has been driven to its end: everything asked was answered.
    pub fn finish(&self) {
        assert!(self.ended.is_some(), "run: never ended");
        let unanswered: Vec<_> = self.reports.iter().filter(|(_, n)| **n > 0).collect();
        assert!(
            unanswered.is_empty(),
            "run: report streams left unanswered: {unanswered:?}"
        );
    }
}

/// Decodes `data` as a run's limits, start and inputs, drives a [`Run`] with them and checks
/// every effect with a [`RunOracle`]; then drives it to its end. Returns the end.
pub fn check_run(data: &[u8]) -> End {
    let mut b = Bytes::new(data);
    let origin = Instant::now();
    let limits = Limits {
        timeout: Duration::from_secs(1 + b.below(30) as u64),
        result_grace: Duration::from_secs(b.below(5) as u64),
        result_wait: Duration::from_secs(b.below(61) as u64),
    };
    let (start, mut now) = match b.below(4) {
        3 => (Start::Resumed { sent_at: origin }, origin + b.span()),
        _ => (
            Start::New {
                deliver_by: origin + Duration::from_secs(1 + b.below(60) as u64),
            },
            origin,
        ),
    };
    let mut run = Run::new(ID, limits, start);
    let mut oracle = RunOracle::new(limits, start, now);
    assert!(run.poll().is_none(), "run: effects before any input");
    while !b.is_empty() {
        let (at, input) = run_input(&mut b, &run, &oracle, now);
        now = at;
        step_run(&mut run, &mut oracle, now, input);
    }
    // Drive it home: answer what is asked, then let its deadlines pass.
    for _ in 0..16 {
        if oracle.ended().is_some() {
            break;
        }
        let input = if oracle.send_outstanding() {
            run::Input::NotSent("the connection went away".into())
        } else if oracle.record_outstanding() {
            run::Input::Recorded(Ok(()))
        } else {
            let at = run
                .poll_timeout()
                .expect("run: not ended, yet it waits for no time");
            now = now.max(at);
            run::Input::Timeout
        };
        step_run(&mut run, &mut oracle, now, input);
    }
    oracle.finish();
    oracle.ended().expect("checked").clone()
}

fn step_run(run: &mut Run, oracle: &mut RunOracle, now: Instant, input: run::Input) {
    oracle.input(now, &input, run);
    run.handle(now, input);
    while let Some(effect) = run.poll() {
        oracle.effect(&effect);
    }
    oracle.settled(run);
}

fn run_input(b: &mut Bytes, run: &Run, oracle: &RunOracle, now: Instant) -> (Instant, run::Input) {
    if oracle.send_outstanding() {
        let now = now + b.span();
        return match b.below(4) {
            0 => (now, run::Input::Sent),
            1 => (now, run::Input::NotSent(b.text())),
            2 => (now, run::Input::StreamEnded(b.text())),
            _ => (
                now.max(run.poll_timeout().unwrap_or(now)),
                run::Input::Timeout,
            ),
        };
    }
    if oracle.record_outstanding() {
        let now = now + b.span();
        return match b.below(4) {
            3 => (now, run::Input::Recorded(Err(b.text()))),
            _ => (now, run::Input::Recorded(Ok(()))),
        };
    }
    let pick = b.byte();
    if pick < 128 {
        // Along the way: the connection when it is wanted, the agent's frames on a stream,
        // else the deadline.
        let now = now + b.span();
        if run.wants_connection(now) {
            return (now, run::Input::Connected);
        }
        if run.on_stream() {
            return (now, run::Input::Frame(b.agent_message()));
        }
        let at = b.timeout_at(now, run.poll_timeout());
        return (at, run::Input::Timeout);
    }
    let now = now + b.span();
    let input = match pick % 11 {
        0 => run::Input::Connected,
        1 => run::Input::Sent,
        2 => run::Input::NotSent(b.text()),
        3 => run::Input::Frame(b.agent_message()),
        4 => run::Input::Frame(b.any_message()),
        5 => run::Input::BadFrame(b.text()),
        6 => run::Input::StreamEnded(b.text()),
        7 => run::Input::Reported(b.result()),
        8 => run::Input::Recorded(if b.below(2) == 0 {
            Ok(())
        } else {
            Err(b.text())
        }),
        9 => run::Input::Cancel,
        _ => return (b.timeout_at(now, run.poll_timeout()), run::Input::Timeout),
    };
    (now, input)
}

/// What must hold of an [`Execution`]'s effects, whatever its inputs. Call
/// [`ExecutionOracle::input`] before handing the machine an input (and once, with none, for
/// what it does when made), [`ExecutionOracle::effect`] for each effect it then hands out,
/// and [`ExecutionOracle::settled`] once it has none left.
#[derive(Debug)]
pub struct ExecutionOracle {
    started: Instant,
    now: Instant,
    input: Option<command::Input>,
    kind: Kind,
    effects: Vec<command::Effect>,
    resumed: bool,
    command: Option<Command>,
    /// A refusal of the stream is due (no `Command` first).
    refuse: bool,
    send_open: bool,
    /// The sending side was finished: nothing more is written, though it may still fail.
    finished: bool,
    recv_open: bool,
    receive_outstanding: bool,
    receipt: Option<Receipt>,
    ran: bool,
    /// The plugin (or the run waited for) has not answered.
    run_outstanding: bool,
    waited_for: Option<String>,
    journal: Option<CommandResult>,
    journal_outstanding: bool,
    journaled_ok: bool,
    result_sent: Option<Instant>,
    /// A `ResultAck` of this command came after its `Result` went out.
    acked: bool,
    /// A `Cancel` was read from the server.
    cancel_read: bool,
    /// The agent is stopping while the plugin runs.
    stopping: bool,
    cancel_asked: bool,
    /// Data requests the plugin made, not answered.
    asked: BTreeSet<u32>,
    /// Data requests sent to the server, not answered.
    requested: BTreeSet<u32>,
    done: Option<(bool, bool)>,
}

impl ExecutionOracle {
    /// An oracle for an execution made at `now`: on a stream, or `resumed` (no stream).
    pub fn new(now: Instant, resumed: bool) -> ExecutionOracle {
        ExecutionOracle {
            started: now,
            now,
            input: None,
            kind: Kind::Plain,
            effects: Vec::new(),
            resumed,
            command: None,
            refuse: false,
            send_open: !resumed,
            finished: false,
            recv_open: !resumed,
            receive_outstanding: false,
            receipt: None,
            ran: false,
            run_outstanding: false,
            waited_for: None,
            journal: None,
            journal_outstanding: false,
            journaled_ok: false,
            result_sent: None,
            acked: false,
            cancel_read: false,
            stopping: false,
            cancel_asked: false,
            asked: BTreeSet::new(),
            requested: BTreeSet::new(),
            done: None,
        }
    }

    /// The agent-side command is over.
    pub fn done(&self) -> Option<(bool, bool)> {
        self.done
    }

    fn awaiting(&self) -> bool {
        !self.resumed && self.command.is_none()
    }

    fn own_id(&self) -> Option<&str> {
        if self.resumed {
            Some(ID)
        } else {
            self.command.as_ref().map(|c| c.id.as_str())
        }
    }

    /// `input` is about to be handed to the machine at `now`.
    pub fn input(&mut self, now: Instant, input: &command::Input) {
        use command::Input as I;
        assert!(now >= self.now, "the driver's clock went back");
        self.now = now;
        self.effects.clear();
        self.kind = if self.done.is_some() {
            Kind::Stray
        } else {
            Kind::Plain
        };
        self.refuse = false;
        if self.done.is_some() {
            self.input = Some(input.clone());
            return;
        }
        match input {
            I::Frame(message) => {
                if !self.recv_open {
                    self.kind = Kind::Stray;
                } else if self.awaiting() {
                    match message {
                        Message::Command(c) => self.command = Some(c.clone()),
                        _ => self.refuse = true,
                    }
                } else if message
                    .check_allowed(Peer::Server, StreamKind::Command)
                    .is_err()
                {
                    self.bad_frame();
                } else {
                    match message {
                        Message::Cancel(_) => self.cancel_read = true,
                        Message::ResultAck(ack)
                            if self.result_sent.is_some()
                                && Some(ack.id.as_str()) == self.own_id() =>
                        {
                            self.acked = true;
                        }
                        _ => {}
                    }
                }
            }
            I::BadFrame(_) => {
                if self.awaiting() && self.recv_open {
                    self.refuse = true;
                } else if self.recv_open {
                    self.bad_frame();
                } else {
                    self.kind = Kind::Stray;
                }
            }
            I::StreamEnded(loss) => {
                if !self.recv_open {
                    self.kind = Kind::Stray;
                } else if self.awaiting() {
                    self.refuse = true;
                } else {
                    self.recv_open = false;
                    if matches!(loss, Loss::Lost(_)) {
                        self.send_open = false;
                    }
                }
            }
            I::SendFailed(loss) => {
                if !self.send_open {
                    self.kind = Kind::Stray;
                } else {
                    self.send_open = false;
                    if matches!(loss, Loss::Lost(_)) {
                        self.recv_open = false;
                    }
                }
            }
            I::Receipt(receipt) => {
                if std::mem::take(&mut self.receive_outstanding) {
                    self.kind = Kind::Answer;
                    self.receipt = receipt.as_ref().ok().cloned();
                } else {
                    self.kind = Kind::Stray;
                }
            }
            I::Event(message) => {
                if let Message::DataRequest(r) = message {
                    self.asked.insert(r.request);
                }
            }
            I::Finished { .. } => {
                self.kind = if std::mem::take(&mut self.run_outstanding) {
                    Kind::Answer
                } else {
                    Kind::Stray
                };
            }
            I::Journaled(outcome) => {
                if std::mem::take(&mut self.journal_outstanding) {
                    self.kind = Kind::Answer;
                    self.journaled_ok = outcome.is_ok();
                } else {
                    self.kind = Kind::Stray;
                }
            }
            // Before the plugin starts, a stop may leave the command to a restart (its receipt
            // is durable): only a running plugin must be asked to stop.
            I::Stop => self.stopping |= self.run_outstanding,
            I::Timeout => {}
        }
        self.input = Some(input.clone());
    }

    fn bad_frame(&mut self) {
        self.recv_open = false;
    }

    fn input_is(&self, f: impl Fn(&command::Input) -> bool) -> bool {
        self.input.as_ref().is_some_and(f)
    }

    /// The machine handed out `effect`.
    pub fn effect(&mut self, effect: &command::Effect) {
        use command::Effect as E;
        self.effects.push(effect.clone());
        assert!(
            self.done.is_none(),
            "command: {effect:?} after Done: Done is always last"
        );
        match effect {
            E::Frame(message) => {
                assert!(
                    self.send_open && !self.finished,
                    "command: frame {} while the stream's sending side is closed",
                    message.kind()
                );
                match message {
                    Message::Accepted(a) => {
                        assert!(
                            self.input_is(|i| matches!(i, command::Input::Frame(Message::Command(c)) if c.id == a.id)),
                            "command: Accepted not in answer to its Command"
                        );
                    }
                    Message::Progress(_) | Message::Log(_) => {
                        assert!(
                            self.input_is(|i| matches!(
                                i,
                                command::Input::Event(_) | command::Input::Finished { .. }
                            )),
                            "command: {} not from the plugin",
                            message.kind()
                        );
                    }
                    Message::DataRequest(r) => {
                        assert!(
                            self.input_is(|i| matches!(i, command::Input::Event(Message::DataRequest(e)) if e == r)),
                            "command: a data request the plugin did not make"
                        );
                        self.requested.insert(r.request);
                    }
                    Message::Result(r) => {
                        assert_eq!(
                            Some(r.id.as_str()),
                            self.own_id(),
                            "command: a Result under another id"
                        );
                        assert!(self.result_sent.is_none(), "command: two Results");
                        self.result_sent = Some(self.now);
                    }
                    other => panic!(
                        "command: the agent sent {} on a command stream",
                        other.kind()
                    ),
                }
            }
            E::Finish => {
                assert!(
                    self.send_open && !self.finished,
                    "command: Finish on a closed sending side"
                );
                self.finished = true;
            }
            E::Reset(_) => {
                self.send_open = false;
                self.recv_open = false;
            }
            E::Receive(c) => {
                assert!(
                    self.input_is(
                        |i| matches!(i, command::Input::Frame(Message::Command(f)) if f == c)
                    ),
                    "command: Receive not of the Command read"
                );
                assert!(
                    !self.receive_outstanding && self.receipt.is_none(),
                    "command: Receive twice"
                );
                self.receive_outstanding = true;
            }
            E::Run => {
                assert!(!self.ran, "command: the plugin started twice");
                assert!(
                    (self.resumed && self.input.is_none())
                        || (self.kind == Kind::Answer
                            && self.input_is(|i| matches!(
                                i,
                                command::Input::Receipt(Ok(Receipt::New | Receipt::ReadOnly))
                            ))),
                    "command: the plugin started without a new receipt (after {:?})",
                    self.input
                );
                assert!(
                    !self.cancel_read,
                    "command: the plugin started after the server cancelled the command"
                );
                self.ran = true;
                self.run_outstanding = true;
            }
            E::WaitFor(original) => {
                assert!(
                    self.kind == Kind::Answer
                        && self.input_is(|i| matches!(i, command::Input::Receipt(Ok(Receipt::Running(o))) if o == original)),
                    "command: WaitFor({original}) not in answer to a Running receipt"
                );
                self.waited_for = Some(original.clone());
                self.run_outstanding = true;
            }
            E::AnswerData(response) => {
                let r = response.request;
                if self.input_is(|i| matches!(i, command::Input::Frame(Message::DataResponse(d)) if d == response)) {
                    assert!(
                        self.requested.remove(&r),
                        "command: the server's answer to request {r} passed on, though it was not asked or answered already"
                    );
                } else {
                    assert!(
                        response.value.is_none() && response.error.is_some(),
                        "command: the agent made up data for request {r}"
                    );
                    assert!(
                        self.asked.contains(&r),
                        "command: request {r} answered, though the plugin did not ask it or it was answered"
                    );
                    self.requested.remove(&r);
                }
                self.asked.remove(&r);
            }
            E::CancelPlugin => {
                assert!(!self.cancel_asked, "command: CancelPlugin twice");
                self.cancel_asked = true;
            }
            E::Journal(result) => {
                assert!(
                    self.resumed || self.receipt == Some(Receipt::New),
                    "command: journaled the result of a {:?} receipt",
                    self.receipt
                );
                assert!(
                    self.waited_for.is_none(),
                    "command: journaled the result of a run it waited for"
                );
                assert!(self.journal.is_none(), "command: Journal twice");
                assert_eq!(
                    Some(result.id.as_str()),
                    self.own_id(),
                    "command: journaled a result under another id"
                );
                self.journal = Some(result.clone());
                self.journal_outstanding = true;
            }
            E::Log(..) => {}
            E::Done { acked, kept } => {
                if *acked {
                    assert!(
                        self.acked,
                        "command: Done acked without a ResultAck of its Result"
                    );
                }
                let journal_holds = (self.journal.is_some() && self.journaled_ok)
                    || matches!(self.receipt, Some(Receipt::Finished(_)))
                    || (self.waited_for.is_some() && self.waited_for.as_deref() == self.own_id());
                if *kept {
                    assert!(
                        journal_holds,
                        "command: Done says the journal keeps the result, yet it does not (journal write: {:?}, ok: {})",
                        self.journal.is_some(),
                        self.journaled_ok
                    );
                }
                assert!(
                    !self.journal_outstanding,
                    "command: Done before the journal answered"
                );
                assert!(
                    !self.run_outstanding && !self.receive_outstanding,
                    "command: Done with the plugin or the receipt still out"
                );
                assert!(
                    self.requested.is_empty(),
                    "command: Done with data requests {:?} unanswered to the plugin",
                    self.requested
                );
                if self.input_is(|i| matches!(i, command::Input::Timeout)) {
                    match self.result_sent {
                        None => assert!(
                            self.now >= self.started + FIRST_FRAME_TIMEOUT,
                            "command: refused for no Command in time, too early"
                        ),
                        Some(sent) => assert!(
                            self.now >= sent + ACK_TIMEOUT,
                            "command: stopped waiting for the ack too early"
                        ),
                    }
                }
                self.done = Some((*acked, *kept));
            }
        }
    }

    /// `machine` has handed out every effect of the last input.
    pub fn settled(&mut self, machine: &Execution) {
        assert_eq!(
            machine.is_done(),
            self.done.is_some(),
            "command: is_done disagrees with Done"
        );
        if self.done.is_none() {
            assert_eq!(
                machine.reading(),
                self.recv_open,
                "command: reading() disagrees with the stream's inputs"
            );
        }
        if self.command.is_some() {
            assert_eq!(
                machine.id(),
                self.own_id(),
                "command: id() is not the Command's"
            );
        }
        if self.kind == Kind::Stray {
            assert!(
                self.effects
                    .iter()
                    .all(|e| matches!(e, command::Effect::Log(..))),
                "command: {:?} answered nothing, yet the machine did {:?}",
                self.input,
                self.effects
            );
        }
        if self.refuse {
            assert!(
                self.effects
                    .contains(&command::Effect::Reset(close::PROTOCOL_ERROR))
                    && self.done == Some((false, false)),
                "command: a stream without a Command first is refused: {:?}",
                self.effects
            );
        }
        if (self.cancel_read || self.stopping) && self.run_outstanding && self.waited_for.is_none()
        {
            assert!(
                self.cancel_asked,
                "command: the plugin runs on after a cancel or a stop"
            );
        }
        if self.input_is(|i| matches!(i, command::Input::Timeout)) {
            assert!(
                machine.poll_timeout().is_none_or(|t| t > self.now),
                "command: after a timeout at {:?}, it asks for one again at once",
                self.now
            );
        }
    }
}

/// Decodes `data` as an agent-side command's inputs, drives an [`Execution`] with them and
/// checks every effect with an [`ExecutionOracle`]; then drives it to `Done`. Returns Done's
/// `(acked, kept)`.
pub fn check_execution(data: &[u8]) -> (bool, bool) {
    let mut b = Bytes::new(data);
    let mut now = Instant::now();
    let resumed = b.below(8) == 7;
    let mut machine = if resumed {
        Execution::resumed(ID)
    } else {
        Execution::on_stream(now)
    };
    let mut oracle = ExecutionOracle::new(now, resumed);
    while let Some(effect) = machine.poll() {
        oracle.effect(&effect);
    }
    oracle.settled(&machine);
    while !b.is_empty() {
        let (at, input) = execution_input(&mut b, &machine, &oracle, now);
        now = at;
        step_execution(&mut machine, &mut oracle, now, input);
    }
    for _ in 0..16 {
        if oracle.done().is_some() {
            break;
        }
        let input = if oracle.awaiting() && oracle.recv_open {
            command::Input::StreamEnded(Loss::Lost("gone".into()))
        } else if oracle.receive_outstanding {
            command::Input::Receipt(Ok(Receipt::New))
        } else if oracle.run_outstanding {
            command::Input::Finished {
                result: command::outcome_result(ID, Outcome::Succeeded),
                dropped: 0,
            }
        } else if oracle.journal_outstanding {
            command::Input::Journaled(Ok(()))
        } else {
            let at = machine
                .poll_timeout()
                .expect("command: not done, yet it waits for no time and nothing is asked");
            now = now.max(at);
            command::Input::Timeout
        };
        step_execution(&mut machine, &mut oracle, now, input);
    }
    oracle.done().expect("command: never done")
}

fn step_execution(
    machine: &mut Execution,
    oracle: &mut ExecutionOracle,
    now: Instant,
    input: command::Input,
) {
    oracle.input(now, &input);
    machine.handle(now, input);
    while let Some(effect) = machine.poll() {
        oracle.effect(&effect);
    }
    oracle.settled(machine);
}

fn execution_input(
    b: &mut Bytes,
    machine: &Execution,
    oracle: &ExecutionOracle,
    now: Instant,
) -> (Instant, command::Input) {
    use command::Input as I;
    let pick = b.byte();
    let now = now + b.span();
    if pick < 128 {
        // Along the way: what the machine waits for next.
        let input = if oracle.awaiting() {
            I::Frame(Message::Command(b.command()))
        } else if oracle.receive_outstanding {
            I::Receipt(match b.below(6) {
                0 | 1 => Ok(Receipt::New),
                2 => Ok(Receipt::ReadOnly),
                3 => Ok(Receipt::Finished(b.result())),
                4 => Ok(Receipt::Running(b.id())),
                _ => Err(b.text()),
            })
        } else if oracle.run_outstanding {
            match b.below(4) {
                0 | 1 => I::Finished {
                    result: b.result(),
                    dropped: u64::from(b.below(3) as u8),
                },
                2 => I::Event(Message::DataRequest(DataRequest {
                    request: b.request(),
                    key: b.text(),
                })),
                _ => I::Event(b.agent_message()),
            }
        } else if oracle.journal_outstanding && b.below(2) == 0 {
            I::Journaled(if b.below(4) == 3 {
                Err(b.text())
            } else {
                Ok(())
            })
        } else if oracle.result_sent.is_some() && oracle.recv_open {
            I::Frame(Message::ResultAck(ResultAck { id: b.id() }))
        } else if let Some(&r) = oracle.requested.iter().next() {
            I::Frame(Message::DataResponse(DataResponse {
                request: r,
                value: Some(vec![1]),
                error: None,
            }))
        } else {
            return (b.timeout_at(now, machine.poll_timeout()), I::Timeout);
        };
        return (now, input);
    }
    let input = match pick % 11 {
        0 => I::Frame(b.server_message()),
        1 => I::Frame(b.any_message()),
        2 => I::BadFrame(b.text()),
        3 => I::StreamEnded(b.loss()),
        4 => I::SendFailed(b.loss()),
        5 => I::Receipt(match b.below(3) {
            0 => Ok(Receipt::New),
            1 => Ok(Receipt::ReadOnly),
            _ => Err(b.text()),
        }),
        6 => I::Event(b.any_message()),
        7 => I::Finished {
            result: b.result(),
            dropped: u64::from(b.byte()),
        },
        8 => I::Journaled(if b.below(2) == 0 {
            Ok(())
        } else {
            Err(b.text())
        }),
        9 => I::Stop,
        _ => return (b.timeout_at(now, machine.poll_timeout()), I::Timeout),
    };
    (now, input)
}

/// Both machines, each from the same bytes: what the fuzz target runs.
pub fn check(data: &[u8]) {
    check_run(data);
    check_execution(data);
}

/// Inputs to start fuzzing from, by name: all zeros, the happy path of both machines (a
/// complete run that succeeds, a command acknowledged and kept), a resumed run and execution,
/// and two mixes of arbitrary inputs (cancels, stops, timeouts, wrong ids) to mutate from.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("happy", vec![0; 48]),
        ("resumed", [vec![7, 0, 0, 3], vec![0; 40]].concat()),
        (
            "mixed-1",
            vec![
                3, 3, 3, 0, 0, 0, 0, 2, 0, 0, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0x0f, 0,
                0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        (
            "mixed-2",
            vec![
                0, 0, 0, 0, 0, 0, 0, 0, 137, 0, 0, 0, 0, 0, 0, 0, 141, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
    ]
}
