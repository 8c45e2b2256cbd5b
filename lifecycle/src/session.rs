//! The control session between an agent and the server, both ends, as state machines with no
//! I/O.
//!
//! One connection carries one session, whose phases are the same on both ends:
//! [`Phase::Handshake`] (Hello, then Welcome or Reject) → [`Phase::Established`] (heartbeats,
//! plugin assignments, renewals; command and report streams are served) → [`Phase::Leaving`]
//! (a decommissioning agent's `Leave` on its way to the record) → [`Phase::Closed`]. A session
//! never goes back; the agent's next connection is a new [`AgentSession`].
//!
//! The drivers (`server/src/transport/accept.rs`, `agent/src/session/connection.rs`) keep TLS, enrolment, the
//! registry's storage, plugin deployment, renewals and metrics; they feed each frame read from
//! the control stream, each read or write failure, the registry's decision and the timers in,
//! and carry out the effects. Every frame either end sends on the control stream goes through
//! its machine too ([`ServerInput::Send`], [`AgentInput::Send`]), so what may be sent in which
//! phase is decided here once.
//!
//! What holds by construction:
//! - **The allowlist and the phase are checked once, here.** A frame the peer may not send on
//!   a control stream ([`Message::check_allowed`]), a first frame other than `Hello`, a second
//!   `Hello`: each ends the session with a `Reject` (before Welcome) or a protocol-error close.
//!   A frame the phase does not allow is never sent: outside [`Phase::Established`] only the
//!   machine's own handshake and leaving frames go out.
//! - **Established only after a valid Hello and the registry's yes.** The server asks the
//!   registry to register ([`ServerEffect::Register`]) only for a `Hello` whose protocol range
//!   meets its own, and sends `Welcome` only on [`ServerInput::Registered`] `Ok`; another
//!   installation of the identity that the registry refuses gets `Reject` `DuplicateAgent` with
//!   a retry after the heartbeat grace. The agent counts as established only once it has read
//!   `Welcome`: the TLS handshake completes on its side before the server has checked its
//!   certificate.
//! - **A handshake is bounded; an agent gives up a silent server.** A handshake has one
//!   deadline for all its steps, so a peer cannot take the timeout once per step. The agent
//!   closes a session whose server has given no sign of life for its grace and connects again;
//!   time the agent itself did not run (a check that comes more than [`LATE`] late) is not
//!   held against the server.
//! - **A silent agent is not cut off.** Once established, the server's end has no liveness
//!   timer. An agent that has sent no heartbeat for the grace is shown unresponsive by the
//!   registry, which then lets another installation of its identity take over (closing this
//!   connection); a connection that is truly dead ends with the transport's idle timeout.
//!   Closing at the grace would make an agent that is only slow for a moment (a loaded host,
//!   a long garbage collection) lose the commands it is running.
//! - **A session ends once.** Every way out (refused, closed for a breach, lost, said goodbye,
//!   stopped, decommissioned) leaves [`Phase::Closed`] with one reason, and the server's
//!   registration is undone exactly when it was made.
//!
//! Inputs and effects in full. `ServerSession` takes: the control stream opened, frames, bad
//! frames, the stream ended or lost, the registry's decision, a leave recorded, frames the driver
//! wants sent, stop, timeout; it asks to send, finish, close with a code and reason, register or
//! unregister, mark established, take a heartbeat, a plugin report or a renewal, record a leave,
//! log. `AgentSession` takes: connected, frames, read failures, lost, the transport heard from the
//! server, frames to send, stop, decommission, timeout; it asks to send, finish, close, mark
//! established, beat (a heartbeat is due), deliver a server frame, log, and ends with a `Retry`:
//! never, backoff (reset after an established session), or the server's `retry_after`.
//!
//! `may_send(peer, phase, message)` is the one table of what goes out when. The server refuses a
//! Hello it cannot speak, or one the registry turns down, with `Reject` and then a `REJECTED`
//! close, and records a `Leave` before it closes. The agent counts as connected only on Welcome,
//! beats at the server's interval (at least `MIN_HEARTBEAT`), counts the transport's datagrams as
//! signs of life, and on decommission waits `LEAVE_WAIT` for the server's close.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use ferry_protocol::{
    Bye, Hello, Leave, Limits as SessionLimits, LogLevel, Message, Peer, Reject, RejectCode,
    StreamKind, VersionRange, Welcome, close, version,
};

/// The shortest heartbeat interval an agent keeps, whatever the server asks: a misconfigured
/// server must not make its fleet flood it.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// How late a liveness check may come before it is taken as a sign that this process, not
/// the peer, was not running (a runtime blocked by other work, a paused VM): the peer's frames
/// may be waiting unread, so the check is put off by a heartbeat interval instead of closing a
/// session whose peer did nothing wrong.
pub const LATE: Duration = Duration::from_millis(250);
/// How long a decommissioning agent waits for the server to close the connection once its
/// `Leave` is sent: the server closes it once the leave is recorded, and the agent deletes its
/// keys only after that.
pub const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// Where a session is. Both ends go through the same phases, in this order, skipping any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Hello, then Welcome or Reject.
    Handshake,
    /// Welcomed: heartbeats flow, command and report streams are served.
    Established,
    /// The agent is leaving for good: its `Leave` is being recorded (server) or waits for the
    /// server's close (agent).
    Leaving,
    /// Over: nothing more is sent or handled.
    Closed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Handshake => "handshake",
            Phase::Established => "established",
            Phase::Leaving => "leaving",
            Phase::Closed => "closed",
        })
    }
}

/// Whether `message` may be sent on the control stream by `from` in `phase`: the one table both
/// machines send by, and the simulation checks against.
pub fn may_send(from: Peer, phase: Phase, message: &Message) -> bool {
    if message.check_allowed(from, StreamKind::Control).is_err() {
        return false;
    }
    match (from, phase) {
        (Peer::Server, Phase::Handshake) => {
            matches!(message, Message::Welcome(_) | Message::Reject(_))
        }
        (Peer::Server, Phase::Established) => matches!(
            message,
            Message::PluginAssign(_)
                | Message::Renewed(_)
                | Message::EnrollRefused(_)
                | Message::Bye(_)
        ),
        (Peer::Agent, Phase::Handshake) => matches!(message, Message::Hello(_)),
        (Peer::Agent, Phase::Established) => matches!(
            message,
            Message::Heartbeat(_)
                | Message::PluginReport(_)
                | Message::Renew(_)
                | Message::Bye(_)
                | Message::Leave(_)
        ),
        (_, Phase::Leaving | Phase::Closed) => false,
    }
}

/// How a session ended, for the driver's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// An intended end (the agent said goodbye, left, or finished its control stream), as
    /// opposed to a failure, a breach or a refusal.
    pub clean: bool,
    /// Why.
    pub reason: String,
}

/// The server's settings for its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    /// The protocol versions the server speaks.
    pub supported: VersionRange,
    /// One deadline for the whole handshake: QUIC and TLS, the control stream, Hello.
    pub handshake_timeout: Duration,
    /// How often agents are asked to send a heartbeat (sent in Welcome).
    pub heartbeat_interval: Duration,
    /// How long an agent may go without a heartbeat before it is shown unresponsive and
    /// another installation of its identity may take its place; also the retry a refused
    /// second installation is told.
    pub heartbeat_grace: Duration,
    /// The frame size limit, sent in Welcome.
    pub max_frame_bytes: u32,
    /// How many commands an agent may run at once, sent in Welcome.
    pub max_concurrent_commands: u32,
}

/// Something that happened to the server's end of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerInput {
    /// The agent opened its control stream.
    ControlOpened,
    /// A whole frame from the agent on the control stream.
    Frame(Message),
    /// Bytes on the control stream that are not a frame (malformed, too large, stalled inside
    /// a frame).
    BadFrame(String),
    /// The agent finished its control stream.
    ControlEnded,
    /// The control stream or the connection broke, or a write on it failed; the reason as the
    /// log should say it.
    Lost(String),
    /// The registry's answer to [`ServerEffect::Register`]: `Err` with why when it refuses
    /// another installation of an identity that is connected and answering.
    Registered(Result<(), String>),
    /// The leave asked for by [`ServerEffect::RecordLeave`] is recorded (or could not be: the
    /// driver logs that, and the agent is let go either way).
    LeaveRecorded,
    /// The driver has a frame for the agent (plugins, a renewal's answer); it is sent only if
    /// the phase allows it.
    Send(Message),
    /// The server is shutting down.
    Stop(String),
    /// [`ServerSession::poll_timeout`] has passed.
    Timeout,
}

/// What the server's end of a session needs done.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEffect {
    /// Write this frame on the control stream.
    Send(Message),
    /// Finish the control stream and give what was written a moment (bounded) to leave before
    /// what follows, so that a `Reject` is not overtaken by the close.
    Finish,
    /// Close the connection with this application code and reason. Always followed by nothing
    /// but [`ServerEffect::Unregister`] and log lines.
    Close {
        /// A `ferry_protocol::close` code.
        code: u32,
        /// Why, for the peer.
        reason: String,
    },
    /// Register the agent with the registry (checking for another installation of its
    /// identity in the same step), then answer [`ServerInput::Registered`].
    Register(Box<Hello>),
    /// Undo the registration: the session is over.
    Unregister,
    /// Welcome is out: the session is established. Serve the agent's command and report
    /// streams, send its plugins, and bound a frame begun on the control stream.
    Established,
    /// A heartbeat from the agent, for the registry.
    Heartbeat(Box<ferry_protocol::Heartbeat>),
    /// A plugin report from the agent, for the plugin view and the registry's topics.
    PluginReport(ferry_protocol::PluginReport),
    /// A certificate renewal request: answer with [`ServerInput::Send`].
    Renew(ferry_protocol::Renew),
    /// The agent leaves for good: record it (durably, so its certificate is refused from now
    /// on), then answer [`ServerInput::LeaveRecorded`]. The connection is closed only then,
    /// because the agent deletes its keys once it is closed.
    RecordLeave(String),
    /// A line for the server's log.
    Log(LogLevel, String),
}

#[derive(Debug, Clone, PartialEq)]
enum ServerState {
    /// No control stream yet.
    AwaitingControl,
    /// The control stream is open; Hello has not come.
    AwaitingHello,
    /// Hello is valid; the registry decides.
    Registering {
        protocol: u32,
    },
    /// Welcomed. No liveness timer: see the module's "A silent agent is not cut off".
    Established,
    /// A `Leave` is being recorded.
    Leaving,
    Closed,
}

/// The server's end of one agent's control session.
#[derive(Debug)]
pub struct ServerSession {
    settings: ServerSettings,
    session: u64,
    deadline: Instant,
    state: ServerState,
    registered: bool,
    ending: Option<Ending>,
    effects: VecDeque<ServerEffect>,
}

impl ServerSession {
    /// A session of a connection that arrived at `arrived` (its handshake deadline runs from
    /// then), numbered `session`.
    pub fn new(arrived: Instant, settings: ServerSettings, session: u64) -> ServerSession {
        ServerSession {
            settings,
            session,
            deadline: arrived + settings.handshake_timeout,
            state: ServerState::AwaitingControl,
            registered: false,
            ending: None,
            effects: VecDeque::new(),
        }
    }

    /// The session's number, sent in Welcome.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The phase the session is in.
    pub fn phase(&self) -> Phase {
        match self.state {
            ServerState::AwaitingControl
            | ServerState::AwaitingHello
            | ServerState::Registering { .. } => Phase::Handshake,
            ServerState::Established => Phase::Established,
            ServerState::Leaving => Phase::Leaving,
            ServerState::Closed => Phase::Closed,
        }
    }

    /// Whether the driver should be waiting for the agent's control stream.
    pub fn wants_control(&self) -> bool {
        self.state == ServerState::AwaitingControl
    }

    /// Whether the driver should read frames from the control stream.
    pub fn reading(&self) -> bool {
        matches!(
            self.state,
            ServerState::AwaitingHello | ServerState::Established
        )
    }

    /// How the session ended, once it is [`Phase::Closed`].
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.as_ref()
    }

    /// The next effect to carry out, in order.
    pub fn poll(&mut self) -> Option<ServerEffect> {
        self.effects.pop_front()
    }

    /// When the session next needs [`ServerInput::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ServerState::AwaitingControl | ServerState::AwaitingHello => Some(self.deadline),
            ServerState::Established
            | ServerState::Registering { .. }
            | ServerState::Leaving
            | ServerState::Closed => None,
        }
    }

    /// Handles one input that happened at `now`.
    pub fn handle(&mut self, now: Instant, input: ServerInput) {
        match (self.state.clone(), input) {
            (ServerState::Closed, _) => {}
            // Welcome and Reject are the machine's own.
            (_, ServerInput::Send(message))
                if may_send(Peer::Server, self.phase(), &message)
                    && !matches!(message, Message::Welcome(_) | Message::Reject(_)) =>
            {
                self.effects.push_back(ServerEffect::Send(message));
            }
            (_, ServerInput::Send(_)) => {}
            (_, ServerInput::Stop(reason)) => {
                if self.phase() == Phase::Established {
                    self.effects.push_back(ServerEffect::Send(Message::Bye(Bye {
                        reason: reason.clone(),
                    })));
                }
                self.close(close::SHUTDOWN, reason.clone(), false, reason);
            }
            (ServerState::AwaitingControl, ServerInput::ControlOpened) => {
                self.state = ServerState::AwaitingHello;
            }
            (ServerState::AwaitingControl, ServerInput::Timeout) if now >= self.deadline => {
                let why = format!(
                    "no control stream opened within the handshake timeout ({:?})",
                    self.settings.handshake_timeout
                );
                self.close(close::PROTOCOL_ERROR, why.clone(), false, why);
            }
            (ServerState::AwaitingControl, ServerInput::Lost(why)) => {
                self.closed(
                    false,
                    format!("closed before opening its control stream: {why}"),
                );
            }
            (ServerState::AwaitingHello, input) => self.before_hello(now, input),
            (ServerState::Registering { protocol }, ServerInput::Registered(decision)) => {
                self.registered(protocol, decision)
            }
            (ServerState::Registering { .. }, ServerInput::Lost(why)) => self.closed(false, why),
            (ServerState::Established, input) => self.established(input),
            (ServerState::Leaving, ServerInput::LeaveRecorded) => {
                self.close(
                    close::NORMAL,
                    "decommissioned".into(),
                    true,
                    "the agent left".into(),
                );
            }
            (ServerState::Leaving, ServerInput::Lost(why)) => self.closed(true, why),
            // Anything else is out of turn: a driver answering what was not asked, or a frame
            // after the session stopped reading. It changes nothing.
            _ => {}
        }
    }

    fn before_hello(&mut self, now: Instant, input: ServerInput) {
        let why = match input {
            ServerInput::Frame(Message::Hello(hello)) => return self.hello(now, hello),
            ServerInput::Frame(other) => format!("expected Hello, got {}", other.kind()),
            ServerInput::ControlEnded => "control stream ended before Hello".into(),
            ServerInput::BadFrame(why) | ServerInput::Lost(why) => why,
            ServerInput::Timeout if now >= self.deadline => format!(
                "no complete Hello within the handshake timeout ({:?})",
                self.settings.handshake_timeout
            ),
            _ => return,
        };
        self.refuse(Reject {
            code: RejectCode::BadHello,
            message: why,
            retry_after_ms: None,
            redirect: None,
            server_protocol: None,
            agent_protocol: None,
        });
    }

    fn hello(&mut self, _now: Instant, hello: Hello) {
        match version::negotiate(self.settings.supported, hello.protocol) {
            Ok(protocol) => {
                self.state = ServerState::Registering { protocol };
                self.effects
                    .push_back(ServerEffect::Register(Box::new(hello)));
            }
            Err(reject) => self.refuse(reject),
        }
    }

    fn registered(&mut self, protocol: u32, decision: Result<(), String>) {
        if let Err(why) = decision {
            let grace = self.settings.heartbeat_grace;
            return self.refuse(Reject {
                code: RejectCode::DuplicateAgent,
                message: why,
                // Try again once the other one may have gone quiet.
                retry_after_ms: Some(grace.as_millis().min(u128::from(u64::MAX)) as u64),
                redirect: None,
                server_protocol: None,
                agent_protocol: None,
            });
        }
        self.registered = true;
        let welcome = Welcome {
            session: format!("{:x}", self.session),
            protocol,
            heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u64,
            features: Vec::new(),
            limits: SessionLimits {
                max_frame_bytes: self.settings.max_frame_bytes,
                max_concurrent_commands: self.settings.max_concurrent_commands,
            },
        };
        self.effects
            .push_back(ServerEffect::Send(Message::Welcome(welcome)));
        self.state = ServerState::Established;
        self.effects.push_back(ServerEffect::Established);
    }

    fn established(&mut self, input: ServerInput) {
        match input {
            ServerInput::Frame(message) => {
                if let Err(e) = message.check_allowed(Peer::Agent, StreamKind::Control) {
                    let why = e.to_string();
                    return self.close(close::PROTOCOL_ERROR, why.clone(), false, why);
                }
                match message {
                    Message::Heartbeat(beat) => self
                        .effects
                        .push_back(ServerEffect::Heartbeat(Box::new(beat))),
                    Message::PluginReport(report) => {
                        self.effects.push_back(ServerEffect::PluginReport(report))
                    }
                    Message::Renew(renew) => self.effects.push_back(ServerEffect::Renew(renew)),
                    Message::Bye(bye) => {
                        self.effects.push_back(ServerEffect::Log(
                            LogLevel::Info,
                            format!("agent said goodbye: {}", bye.reason),
                        ));
                        self.closed(true, format!("said goodbye: {}", bye.reason));
                    }
                    Message::Leave(leave) => {
                        self.state = ServerState::Leaving;
                        self.effects
                            .push_back(ServerEffect::RecordLeave(leave.reason));
                    }
                    Message::Hello(_) => self.close(
                        close::PROTOCOL_ERROR,
                        "Hello sent twice".into(),
                        false,
                        "sent Hello twice".into(),
                    ),
                    // check_allowed admits only these from an agent on a control stream.
                    other => {
                        let why = format!("{} on a control stream", other.kind());
                        self.close(close::PROTOCOL_ERROR, why.clone(), false, why);
                    }
                }
            }
            ServerInput::BadFrame(why) => {
                self.close(close::PROTOCOL_ERROR, why.clone(), false, why)
            }
            ServerInput::ControlEnded => {
                self.closed(true, "the agent ended its control stream".into())
            }
            ServerInput::Lost(why) => self.closed(false, why),
            _ => {}
        }
    }

    /// Sends `reject`, then closes with its message as the reason, so that a peer that does
    /// not read the Reject (or whose stream is gone) still learns why.
    fn refuse(&mut self, reject: Reject) {
        let why = reject.message.clone();
        self.effects
            .push_back(ServerEffect::Send(Message::Reject(reject)));
        self.effects.push_back(ServerEffect::Finish);
        self.close(close::REJECTED, format!("rejected: {why}"), false, why);
    }

    fn close(&mut self, code: u32, reason: String, clean: bool, ending: String) {
        self.effects.push_back(ServerEffect::Close { code, reason });
        self.closed(clean, ending);
    }

    fn closed(&mut self, clean: bool, reason: String) {
        if self.registered {
            self.registered = false;
            self.effects.push_back(ServerEffect::Unregister);
        }
        self.state = ServerState::Closed;
        self.ending = Some(Ending { clean, reason });
    }
}

/// The agent's settings for its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentSettings {
    /// How long connecting may take, and then again how long the server may take to answer
    /// Hello.
    pub connect_timeout: Duration,
    /// How long the server may give no sign of life before the session is given up.
    pub server_grace: Duration,
}

/// Something that happened to the agent's end of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentInput {
    /// The connection is up and the control stream open.
    Connected,
    /// A whole frame from the server on the control stream.
    Frame(Message),
    /// Reading the control stream failed: malformed bytes, or the stream or connection broke
    /// (the driver gives the connection's close reason when it has one, since it says more).
    BadFrame(String),
    /// The server finished the control stream.
    ControlEnded,
    /// Something else broke (connecting, a write, the connection); the reason as the log
    /// should say it.
    Lost(String),
    /// The server showed it is alive below the control stream (its transport answered).
    Alive,
    /// The driver has a frame for the server (a heartbeat, a plugin report, a renewal); it is
    /// sent only if the phase allows it.
    Send(Message),
    /// The agent is stopping: say goodbye and close.
    Stop,
    /// The agent was decommissioned: tell the server it leaves for good (`reason`), and end
    /// once the server has closed the connection. Only an established session can leave;
    /// before that it is ignored, and the driver asks again on the next session.
    Decommission(String),
    /// [`AgentSession::poll_timeout`] has passed.
    Timeout,
}

/// What the agent's end of a session needs done.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEffect {
    /// Write this frame on the control stream.
    Send(Message),
    /// Finish the control stream after what was written.
    Finish,
    /// Close the connection with this application code and reason.
    Close {
        /// A `ferry_protocol::close` code.
        code: u32,
        /// Why, for the server.
        reason: String,
    },
    /// The server welcomed the agent: serve command streams, deliver unacknowledged results,
    /// take plugin assignments.
    Established(Box<Welcome>),
    /// A heartbeat is due: build one and hand it back with [`AgentInput::Send`].
    HeartbeatDue,
    /// A frame from the server for the driver: `PluginAssign`, `Renewed`, `EnrollRefused`.
    Deliver(Message),
    /// A line for the agent's log.
    Log(LogLevel, String),
    /// The session is over; always the last effect.
    Ended(AgentEnd),
}

/// Why an agent's session ended, and so what comes next.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEnd {
    /// The agent is stopping.
    Stopped,
    /// The agent left the server for good.
    Decommissioned(String),
    /// A session was established and then ended.
    Lost(String),
    /// No session was established.
    Failed(String),
    /// The server refused the agent.
    Rejected(Reject),
}

/// When the agent connects again after a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not at all.
    Never,
    /// After the next backoff delay (randomized by the driver); `reset`: start the backoff
    /// again from its shortest delay, since a session was established.
    Backoff {
        /// Start again from the shortest delay.
        reset: bool,
    },
    /// After the delay the server asked for.
    After(Duration),
}

impl AgentEnd {
    /// When to connect again.
    pub fn retry(&self) -> Retry {
        match self {
            AgentEnd::Stopped | AgentEnd::Decommissioned(_) => Retry::Never,
            AgentEnd::Lost(_) => Retry::Backoff { reset: true },
            AgentEnd::Failed(_) => Retry::Backoff { reset: false },
            AgentEnd::Rejected(reject) => match reject.retry_after_ms {
                Some(ms) => Retry::After(Duration::from_millis(ms)),
                None => Retry::Backoff { reset: false },
            },
        }
    }

    /// Why, for a person.
    pub fn reason(&self) -> String {
        match self {
            AgentEnd::Stopped => "agent stopping".into(),
            AgentEnd::Decommissioned(reason) => format!("decommissioned: {reason}"),
            AgentEnd::Lost(reason) | AgentEnd::Failed(reason) => reason.clone(),
            AgentEnd::Rejected(reject) => format!("refused by the server: {}", reject.message),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum AgentState {
    /// Connecting (QUIC, TLS, the control stream) until `until`.
    Connecting {
        until: Instant,
    },
    /// Hello is out; Welcome is awaited until `until`.
    AwaitingWelcome {
        until: Instant,
    },
    Established {
        interval: Duration,
        next_beat: Instant,
        heard: Instant,
    },
    /// `Leave` is out; waiting for the server's close until `until`.
    Leaving {
        reason: String,
        until: Instant,
    },
    Closed,
}

/// The agent's end of one connection's control session.
#[derive(Debug)]
pub struct AgentSession {
    settings: AgentSettings,
    hello: Option<Hello>,
    /// The server, as log lines name it.
    server: String,
    state: AgentState,
    ending: Option<AgentEnd>,
    effects: VecDeque<AgentEffect>,
}

impl AgentSession {
    /// A session whose connection to `server` (a name for log lines) starts at `now`; `hello`
    /// is sent once it is connected.
    pub fn new(now: Instant, settings: AgentSettings, hello: Hello, server: String) -> Self {
        AgentSession {
            settings,
            hello: Some(hello),
            server,
            state: AgentState::Connecting {
                until: now + settings.connect_timeout,
            },
            ending: None,
            effects: VecDeque::new(),
        }
    }

    /// The phase the session is in.
    pub fn phase(&self) -> Phase {
        match self.state {
            AgentState::Connecting { .. } | AgentState::AwaitingWelcome { .. } => Phase::Handshake,
            AgentState::Established { .. } => Phase::Established,
            AgentState::Leaving { .. } => Phase::Leaving,
            AgentState::Closed => Phase::Closed,
        }
    }

    /// Whether the driver should read frames from the control stream.
    pub fn reading(&self) -> bool {
        matches!(
            self.state,
            AgentState::AwaitingWelcome { .. }
                | AgentState::Established { .. }
                | AgentState::Leaving { .. }
        )
    }

    /// How the session ended, once it is [`Phase::Closed`].
    pub fn ending(&self) -> Option<&AgentEnd> {
        self.ending.as_ref()
    }

    /// The next effect to carry out, in order.
    pub fn poll(&mut self) -> Option<AgentEffect> {
        self.effects.pop_front()
    }

    /// When the session next needs [`AgentInput::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            AgentState::Connecting { until }
            | AgentState::AwaitingWelcome { until }
            | AgentState::Leaving { until, .. } => Some(until),
            AgentState::Established {
                next_beat, heard, ..
            } => Some(next_beat.min(heard + self.settings.server_grace)),
            AgentState::Closed => None,
        }
    }

    /// Handles one input that happened at `now`.
    pub fn handle(&mut self, now: Instant, input: AgentInput) {
        match (self.state.clone(), input) {
            (AgentState::Closed, _) => {}
            // Hello, Bye and Leave are the machine's own; the driver's frames go out only
            // while the session is established.
            (AgentState::Established { .. }, AgentInput::Send(message))
                if matches!(
                    message,
                    Message::Heartbeat(_) | Message::PluginReport(_) | Message::Renew(_)
                ) && may_send(Peer::Agent, Phase::Established, &message) =>
            {
                self.effects.push_back(AgentEffect::Send(message));
            }
            (_, AgentInput::Send(_)) => {}
            (AgentState::Connecting { .. }, AgentInput::Connected) => {
                let hello = self.hello.take().expect("Hello is sent once");
                self.effects
                    .push_back(AgentEffect::Send(Message::Hello(hello)));
                self.state = AgentState::AwaitingWelcome {
                    until: now + self.settings.connect_timeout,
                };
            }
            (AgentState::Connecting { until }, AgentInput::Timeout) if now >= until => {
                let why = format!(
                    "no answer from {} within {:?}",
                    self.server, self.settings.connect_timeout
                );
                self.end(AgentEnd::Failed(why));
            }
            (AgentState::Connecting { .. }, AgentInput::Lost(why)) => {
                self.end(AgentEnd::Failed(why))
            }
            (
                AgentState::Connecting { .. } | AgentState::AwaitingWelcome { .. },
                AgentInput::Stop,
            ) => self.close(close::SHUTDOWN, "agent stopping", AgentEnd::Stopped),
            (AgentState::AwaitingWelcome { until }, input) => {
                self.awaiting_welcome(now, until, input)
            }
            (AgentState::Established { .. }, input) => self.established(now, input),
            (AgentState::Leaving { reason, until }, input) => match input {
                AgentInput::BadFrame(_) | AgentInput::ControlEnded | AgentInput::Lost(_) => self
                    .close(
                        close::NORMAL,
                        "agent decommissioned",
                        AgentEnd::Decommissioned(reason),
                    ),
                AgentInput::Timeout if now >= until => self.close(
                    close::NORMAL,
                    "agent decommissioned",
                    AgentEnd::Decommissioned(reason),
                ),
                // Frames after Leave change nothing; a stop waits for the leave to finish.
                _ => {}
            },
            _ => {}
        }
    }

    fn awaiting_welcome(&mut self, now: Instant, until: Instant, input: AgentInput) {
        match input {
            AgentInput::Frame(Message::Welcome(welcome)) => self.welcomed(now, welcome),
            AgentInput::Frame(Message::Reject(reject)) => self.end(AgentEnd::Rejected(reject)),
            AgentInput::Frame(other) => self.close(
                close::PROTOCOL_ERROR,
                "expected Welcome",
                AgentEnd::Failed(format!("the server answered Hello with {}", other.kind())),
            ),
            AgentInput::ControlEnded => self.end(AgentEnd::Failed(
                "the server closed the control stream without answering".into(),
            )),
            AgentInput::BadFrame(why) => self.end(AgentEnd::Failed(format!(
                "the server refused the connection: {why}"
            ))),
            AgentInput::Lost(why) => self.end(AgentEnd::Failed(why)),
            AgentInput::Timeout if now >= until => self.end(AgentEnd::Failed(format!(
                "no Welcome within {:?}",
                self.settings.connect_timeout
            ))),
            _ => {}
        }
    }

    fn welcomed(&mut self, now: Instant, welcome: Welcome) {
        let interval = Duration::from_millis(welcome.heartbeat_interval_ms).max(MIN_HEARTBEAT);
        self.effects.push_back(AgentEffect::Log(
            LogLevel::Info,
            format!(
                "connected to the server {} (session {})",
                self.server, welcome.session
            ),
        ));
        self.effects
            .push_back(AgentEffect::Established(Box::new(welcome)));
        // The first heartbeat goes out at once: it carries the metrics the server shows.
        self.effects.push_back(AgentEffect::HeartbeatDue);
        self.state = AgentState::Established {
            interval,
            next_beat: now + interval,
            heard: now,
        };
    }

    fn established(&mut self, now: Instant, input: AgentInput) {
        let AgentState::Established {
            interval,
            next_beat,
            heard,
        } = self.state
        else {
            return;
        };
        match input {
            AgentInput::Frame(message) => {
                if let Err(e) = message.check_allowed(Peer::Server, StreamKind::Control) {
                    return self.close(
                        close::PROTOCOL_ERROR,
                        &e.to_string(),
                        AgentEnd::Lost(format!("protocol error from the server: {e}")),
                    );
                }
                self.state = AgentState::Established {
                    interval,
                    next_beat,
                    heard: now,
                };
                match message {
                    Message::Bye(Bye { reason }) => {
                        self.end(AgentEnd::Lost(format!("the server said goodbye: {reason}")))
                    }
                    Message::PluginAssign(_) | Message::Renewed(_) | Message::EnrollRefused(_) => {
                        self.effects.push_back(AgentEffect::Deliver(message))
                    }
                    other => self.effects.push_back(AgentEffect::Log(
                        LogLevel::Warn,
                        format!("ignoring an unexpected control message: {}", other.kind()),
                    )),
                }
            }
            AgentInput::Alive => {
                self.state = AgentState::Established {
                    interval,
                    next_beat,
                    heard: now,
                };
            }
            AgentInput::BadFrame(why) => {
                self.end(AgentEnd::Lost(format!("control stream failed: {why}")))
            }
            AgentInput::ControlEnded => self.end(AgentEnd::Lost(
                "the server closed the control stream".into(),
            )),
            AgentInput::Lost(why) => self.end(AgentEnd::Lost(why)),
            AgentInput::Stop => {
                self.effects.push_back(AgentEffect::Send(Message::Bye(Bye {
                    reason: "agent stopping".into(),
                })));
                self.effects.push_back(AgentEffect::Finish);
                self.close(close::SHUTDOWN, "agent stopping", AgentEnd::Stopped);
            }
            AgentInput::Decommission(reason) => self.leave(now, reason),
            AgentInput::Timeout => {
                let grace = self.settings.server_grace;
                if now >= heard + grace {
                    if now.duration_since(heard + grace) > LATE {
                        // Late, so this process was not running: judge the server from now on,
                        // over a heartbeat interval.
                        self.state = AgentState::Established {
                            interval,
                            next_beat: next_beat.min(now),
                            heard: (now + interval).checked_sub(grace).unwrap_or(now),
                        };
                        return self.established(now, AgentInput::Timeout);
                    }
                    let why = format!("no sign of life from the server within {grace:?}");
                    return self.close(close::NORMAL, &why, AgentEnd::Lost(why.clone()));
                }
                if now >= next_beat {
                    // From when it fired, not from when it was due: a late beat does not
                    // bring the next one closer.
                    self.state = AgentState::Established {
                        interval,
                        next_beat: now + interval,
                        heard,
                    };
                    self.effects.push_back(AgentEffect::HeartbeatDue);
                }
            }
            AgentInput::Connected | AgentInput::Send(_) => {}
        }
    }

    fn leave(&mut self, now: Instant, reason: String) {
        self.effects
            .push_back(AgentEffect::Send(Message::Leave(Leave {
                reason: reason.clone(),
            })));
        self.effects.push_back(AgentEffect::Finish);
        self.state = AgentState::Leaving {
            reason,
            until: now + LEAVE_WAIT,
        };
    }

    fn close(&mut self, code: u32, reason: &str, end: AgentEnd) {
        self.effects.push_back(AgentEffect::Close {
            code,
            reason: reason.to_string(),
        });
        self.end(end);
    }

    fn end(&mut self, end: AgentEnd) {
        self.state = AgentState::Closed;
        self.ending = Some(end.clone());
        self.effects.push_back(AgentEffect::Ended(end));
    }
}
