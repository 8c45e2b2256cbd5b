//! The control session's machines, both ends: scenarios on a virtual clock, then a
//! deterministic simulation that wires agents and the server together over a faulty network.

use std::time::{Duration, Instant};

use ferry_lifecycle::session::{LEAVE_WAIT, MIN_HEARTBEAT};
use ferry_lifecycle::{
    AgentEffect, AgentEnd, AgentInput, AgentSession, AgentSettings, Phase, Retry, ServerEffect,
    ServerInput, ServerSession, ServerSettings,
};
use ferry_protocol::{
    Bye, Health, Heartbeat, Hello, HostMetrics, Limits, Message, PluginAssign, Reject, RejectCode,
    SUPPORTED, VersionRange, Welcome, close,
};

mod sim;

const SERVER: ServerSettings = ServerSettings {
    supported: SUPPORTED,
    handshake_timeout: Duration::from_secs(10),
    heartbeat_interval: Duration::from_secs(5),
    heartbeat_grace: Duration::from_secs(15),
    max_frame_bytes: 1 << 20,
    max_concurrent_commands: 8,
};

const AGENT: AgentSettings = AgentSettings {
    connect_timeout: Duration::from_secs(10),
    server_grace: Duration::from_secs(20),
};

struct Clock(Instant);

impl Clock {
    fn at(&self, secs: f64) -> Instant {
        self.0 + Duration::from_secs_f64(secs)
    }
}

fn hello_with(protocol: VersionRange, instance: &str) -> Hello {
    Hello {
        protocol,
        agent_version: "test".into(),
        labels: Default::default(),
        wit_versions: vec![],
        topics: vec![],
        read_only: vec![],
        cached_plugins: vec![],
        instance: Some(instance.into()),
    }
}

fn hello() -> Message {
    Message::Hello(hello_with(SUPPORTED, "i-1"))
}

fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat {
        metrics: HostMetrics::default(),
        running_commands: 0,
        sent_at: String::new(),
        health: Health::Ok,
        runtimes: vec![],
    })
}

fn welcome(interval_ms: u64) -> Message {
    Message::Welcome(Welcome {
        session: "1".into(),
        protocol: 1,
        heartbeat_interval_ms: interval_ms,
        features: vec![],
        limits: Limits {
            max_frame_bytes: 1 << 20,
            max_concurrent_commands: 8,
        },
    })
}

fn server_effects(s: &mut ServerSession) -> Vec<ServerEffect> {
    std::iter::from_fn(|| s.poll()).collect()
}

fn agent_effects(a: &mut AgentSession) -> Vec<AgentEffect> {
    std::iter::from_fn(|| a.poll()).collect()
}

fn close_of(effects: &[ServerEffect]) -> Option<(u32, &str)> {
    effects.iter().find_map(|e| match e {
        ServerEffect::Close { code, reason } => Some((*code, reason.as_str())),
        _ => None,
    })
}

fn reject_of(effects: &[ServerEffect]) -> Option<&Reject> {
    effects.iter().find_map(|e| match e {
        ServerEffect::Send(Message::Reject(r)) => Some(r),
        _ => None,
    })
}

/// A server session past Welcome at `t`.
fn established_server(clock: &Clock, t: f64) -> ServerSession {
    let mut s = ServerSession::new(clock.at(t), SERVER, 7);
    s.handle(clock.at(t), ServerInput::ControlOpened);
    s.handle(clock.at(t), ServerInput::Frame(hello()));
    assert!(matches!(
        server_effects(&mut s).as_slice(),
        [ServerEffect::Register(_)]
    ));
    assert_eq!(s.phase(), Phase::Handshake);
    s.handle(clock.at(t), ServerInput::Registered(Ok(())));
    let effects = server_effects(&mut s);
    assert!(
        matches!(
            effects.as_slice(),
            [ServerEffect::Send(Message::Welcome(w)), ServerEffect::Established] if w.session == "7"
        ),
        "{effects:?}"
    );
    assert_eq!(s.phase(), Phase::Established);
    s
}

/// An agent session past Welcome at `t`.
fn established_agent(clock: &Clock, t: f64, interval_ms: u64) -> AgentSession {
    let mut a = AgentSession::new(
        clock.at(t),
        AGENT,
        hello_with(SUPPORTED, "i-1"),
        "server".into(),
    );
    a.handle(clock.at(t), AgentInput::Connected);
    assert!(matches!(
        agent_effects(&mut a).as_slice(),
        [AgentEffect::Send(Message::Hello(_))]
    ));
    a.handle(clock.at(t), AgentInput::Frame(welcome(interval_ms)));
    let effects = agent_effects(&mut a);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, AgentEffect::Established(_))),
        "{effects:?}"
    );
    assert!(effects.contains(&AgentEffect::HeartbeatDue));
    assert_eq!(a.phase(), Phase::Established);
    a
}

#[test]
fn the_handshake_has_one_deadline_for_all_its_steps() {
    let clock = Clock(Instant::now());
    // No control stream: closed as a protocol error at the deadline, not before.
    let mut s = ServerSession::new(clock.at(0.0), SERVER, 1);
    assert_eq!(s.poll_timeout(), Some(clock.at(10.0)));
    s.handle(clock.at(9.9), ServerInput::Timeout);
    assert!(server_effects(&mut s).is_empty());
    s.handle(clock.at(10.0), ServerInput::Timeout);
    let effects = server_effects(&mut s);
    assert_eq!(
        close_of(&effects),
        Some((
            close::PROTOCOL_ERROR,
            "no control stream opened within the handshake timeout (10s)"
        ))
    );
    assert_eq!(s.phase(), Phase::Closed);
    assert!(
        !effects.contains(&ServerEffect::Unregister),
        "never registered"
    );

    // A control stream opened late does not restart the clock: Hello must still come by the
    // connection's deadline, and is refused with a Reject and a close that both say why.
    let mut s = ServerSession::new(clock.at(0.0), SERVER, 2);
    s.handle(clock.at(9.0), ServerInput::ControlOpened);
    assert_eq!(s.poll_timeout(), Some(clock.at(10.0)));
    s.handle(clock.at(10.0), ServerInput::Timeout);
    let effects = server_effects(&mut s);
    let reject = reject_of(&effects).expect("a Reject");
    assert_eq!(reject.code, RejectCode::BadHello);
    assert_eq!(
        close_of(&effects),
        Some((
            close::REJECTED,
            "rejected: no complete Hello within the handshake timeout (10s)"
        ))
    );
    // The Reject leaves before the close overtakes it.
    let finish = effects.iter().position(|e| *e == ServerEffect::Finish);
    let closing = effects
        .iter()
        .position(|e| matches!(e, ServerEffect::Close { .. }));
    assert!(finish.is_some() && finish < closing, "{effects:?}");
    assert!(!s.ending().unwrap().clean);

    // The agent's side: no Welcome within its connect timeout ends the attempt.
    let mut a = AgentSession::new(clock.at(0.0), AGENT, hello_with(SUPPORTED, "i"), "s".into());
    a.handle(clock.at(1.0), AgentInput::Connected);
    agent_effects(&mut a);
    assert_eq!(a.poll_timeout(), Some(clock.at(11.0)));
    a.handle(clock.at(11.0), AgentInput::Timeout);
    let end = AgentEnd::Failed("no Welcome within 10s".into());
    assert_eq!(agent_effects(&mut a), vec![AgentEffect::Ended(end.clone())]);
    assert_eq!(end.retry(), Retry::Backoff { reset: false });
}

#[test]
fn a_first_frame_other_than_hello_is_refused() {
    let clock = Clock(Instant::now());
    let mut s = ServerSession::new(clock.at(0.0), SERVER, 1);
    s.handle(clock.at(0.0), ServerInput::ControlOpened);
    s.handle(clock.at(0.1), ServerInput::Frame(heartbeat()));
    let effects = server_effects(&mut s);
    let reject = reject_of(&effects).expect("a Reject");
    assert_eq!(reject.code, RejectCode::BadHello);
    assert_eq!(reject.message, "expected Hello, got Heartbeat");
    assert_eq!(
        close_of(&effects),
        Some((close::REJECTED, "rejected: expected Hello, got Heartbeat"))
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, ServerEffect::Register(_) | ServerEffect::Established))
    );
    assert_eq!(s.phase(), Phase::Closed);

    // Garbage before Hello is refused the same way, saying what the reader found.
    let mut s = ServerSession::new(clock.at(0.0), SERVER, 2);
    s.handle(clock.at(0.0), ServerInput::ControlOpened);
    s.handle(
        clock.at(0.1),
        ServerInput::BadFrame("frame of 9 bytes exceeds the limit".into()),
    );
    let effects = server_effects(&mut s);
    assert_eq!(reject_of(&effects).unwrap().code, RejectCode::BadHello);

    // The agent's side: anything but Welcome or Reject answering Hello.
    let mut a = AgentSession::new(clock.at(0.0), AGENT, hello_with(SUPPORTED, "i"), "s".into());
    a.handle(clock.at(0.0), AgentInput::Connected);
    agent_effects(&mut a);
    a.handle(
        clock.at(0.1),
        AgentInput::Frame(Message::PluginAssign(PluginAssign { plugins: vec![] })),
    );
    assert_eq!(
        agent_effects(&mut a),
        vec![
            AgentEffect::Close {
                code: close::PROTOCOL_ERROR,
                reason: "expected Welcome".into()
            },
            AgentEffect::Ended(AgentEnd::Failed(
                "the server answered Hello with PluginAssign".into()
            ))
        ]
    );
}

#[test]
fn a_protocol_version_outside_the_servers_range_is_refused_with_both_ranges() {
    let clock = Clock(Instant::now());
    let future = VersionRange {
        min: SUPPORTED.max + 1,
        max: SUPPORTED.max + 2,
    };
    let mut s = ServerSession::new(clock.at(0.0), SERVER, 1);
    s.handle(clock.at(0.0), ServerInput::ControlOpened);
    s.handle(
        clock.at(0.0),
        ServerInput::Frame(Message::Hello(hello_with(future, "i"))),
    );
    let effects = server_effects(&mut s);
    let reject = reject_of(&effects).expect("a Reject").clone();
    assert_eq!(reject.code, RejectCode::UnsupportedVersion);
    assert_eq!(reject.server_protocol, Some(SUPPORTED));
    assert_eq!(reject.agent_protocol, Some(future));
    assert!(reject.message.contains("upgrade the server"), "{reject:?}");
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, ServerEffect::Register(_))),
        "a Hello that cannot be spoken to is not registered"
    );
    assert_eq!(close_of(&effects).unwrap().0, close::REJECTED);

    // The agent takes the Reject as a refusal and backs off (no retry_after given).
    let mut a = AgentSession::new(clock.at(0.0), AGENT, hello_with(future, "i"), "s".into());
    a.handle(clock.at(0.0), AgentInput::Connected);
    agent_effects(&mut a);
    a.handle(
        clock.at(0.1),
        AgentInput::Frame(Message::Reject(reject.clone())),
    );
    let end = AgentEnd::Rejected(reject);
    assert_eq!(agent_effects(&mut a), vec![AgentEffect::Ended(end.clone())]);
    assert_eq!(end.retry(), Retry::Backoff { reset: false });
    assert_eq!(a.phase(), Phase::Closed);
}

#[test]
fn a_duplicate_installation_is_refused_and_told_to_retry_after_the_grace() {
    let clock = Clock(Instant::now());
    let mut s = ServerSession::new(clock.at(0.0), SERVER, 1);
    s.handle(clock.at(0.0), ServerInput::ControlOpened);
    s.handle(clock.at(0.0), ServerInput::Frame(hello()));
    server_effects(&mut s);
    // The registry decides; until it does, nothing is sent and no timer runs.
    assert_eq!(s.poll_timeout(), None);
    s.handle(
        clock.at(0.0),
        ServerInput::Registered(Err("agent 'a' is already connected".into())),
    );
    let effects = server_effects(&mut s);
    let reject = reject_of(&effects).expect("a Reject").clone();
    assert_eq!(reject.code, RejectCode::DuplicateAgent);
    assert_eq!(reject.retry_after_ms, Some(15_000));
    assert_eq!(
        close_of(&effects),
        Some((close::REJECTED, "rejected: agent 'a' is already connected"))
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, ServerEffect::Unregister | ServerEffect::Established)),
        "{effects:?}"
    );

    let end = AgentEnd::Rejected(reject);
    assert_eq!(end.retry(), Retry::After(Duration::from_secs(15)));
}

#[test]
fn frames_a_phase_does_not_allow_are_protocol_errors_and_never_sent() {
    let clock = Clock(Instant::now());
    // From the agent after Welcome: a server's message.
    let mut s = established_server(&clock, 0.0);
    s.handle(clock.at(1.0), ServerInput::Frame(welcome(1)));
    let effects = server_effects(&mut s);
    assert_eq!(
        close_of(&effects),
        Some((
            close::PROTOCOL_ERROR,
            "agent sent `Welcome` on a control stream, where only Hello, Heartbeat, Bye, PluginReport, Leave or Renew is allowed"
        ))
    );
    assert_eq!(effects.last(), Some(&ServerEffect::Unregister));
    assert_eq!(s.phase(), Phase::Closed);
    // And nothing after the close.
    s.handle(clock.at(1.1), ServerInput::Frame(heartbeat()));
    assert!(server_effects(&mut s).is_empty());

    // Hello once more.
    let mut s = established_server(&clock, 0.0);
    s.handle(clock.at(1.0), ServerInput::Frame(hello()));
    let effects = server_effects(&mut s);
    assert_eq!(
        close_of(&effects),
        Some((close::PROTOCOL_ERROR, "Hello sent twice"))
    );

    // A malformed frame after Welcome.
    let mut s = established_server(&clock, 0.0);
    s.handle(
        clock.at(1.0),
        ServerInput::BadFrame("stream ended inside a frame".into()),
    );
    assert_eq!(
        close_of(&server_effects(&mut s)),
        Some((close::PROTOCOL_ERROR, "stream ended inside a frame"))
    );

    // What the server's driver hands in goes out only when the phase allows it.
    let assign = Message::PluginAssign(PluginAssign { plugins: vec![] });
    let mut s = ServerSession::new(clock.at(0.0), SERVER, 1);
    s.handle(clock.at(0.0), ServerInput::ControlOpened);
    s.handle(clock.at(0.0), ServerInput::Send(assign.clone()));
    assert!(
        server_effects(&mut s).is_empty(),
        "PluginAssign before Welcome"
    );
    let mut s = established_server(&clock, 0.0);
    s.handle(clock.at(0.0), ServerInput::Send(welcome(1)));
    s.handle(clock.at(0.0), ServerInput::Send(heartbeat()));
    assert!(
        server_effects(&mut s).is_empty(),
        "Welcome again, or an agent's frame"
    );
    s.handle(clock.at(0.0), ServerInput::Send(assign.clone()));
    assert_eq!(server_effects(&mut s), vec![ServerEffect::Send(assign)]);

    // The agent's end: a heartbeat before Welcome is not sent; a frame only an agent may send,
    // from the server, is a protocol error.
    let mut a = AgentSession::new(clock.at(0.0), AGENT, hello_with(SUPPORTED, "i"), "s".into());
    a.handle(clock.at(0.0), AgentInput::Send(heartbeat()));
    a.handle(clock.at(0.0), AgentInput::Connected);
    a.handle(clock.at(0.0), AgentInput::Send(heartbeat()));
    assert!(matches!(
        agent_effects(&mut a).as_slice(),
        [AgentEffect::Send(Message::Hello(_))]
    ));
    let mut a = established_agent(&clock, 0.0, 1000);
    a.handle(clock.at(0.5), AgentInput::Frame(heartbeat()));
    let effects = agent_effects(&mut a);
    assert!(
        matches!(
            effects.as_slice(),
            [
                AgentEffect::Close { code: close::PROTOCOL_ERROR, .. },
                AgentEffect::Ended(AgentEnd::Lost(why))
            ] if why.starts_with("protocol error from the server: server sent `Heartbeat`")
        ),
        "{effects:?}"
    );
}

#[test]
fn a_silent_agent_is_kept_and_a_silent_server_given_up() {
    let clock = Clock(Instant::now());
    // Once established, the server's end has no liveness timer: an agent slow for a moment
    // keeps its session and its commands. The registry shows it unresponsive; the transport's
    // idle timeout ends a connection that is dead.
    let mut s = established_server(&clock, 0.0);
    assert_eq!(s.poll_timeout(), None);
    s.handle(clock.at(3600.0), ServerInput::Timeout);
    assert!(server_effects(&mut s).is_empty());
    assert_eq!(s.phase(), Phase::Established);
    s.handle(clock.at(3601.0), ServerInput::Frame(heartbeat()));
    assert!(matches!(
        server_effects(&mut s).as_slice(),
        [ServerEffect::Heartbeat(_)]
    ));
    s.handle(
        clock.at(3700.0),
        ServerInput::Lost("connection lost: timed out".into()),
    );
    let effects = server_effects(&mut s);
    assert_eq!(effects.last(), Some(&ServerEffect::Unregister));
    assert_eq!(s.phase(), Phase::Closed);

    // The agent beats at the server's interval (never faster than the floor) and gives up on
    // a server that shows no sign of life for its grace.
    let mut a = established_agent(&clock, 0.0, 1);
    assert_eq!(
        a.poll_timeout(),
        Some(clock.0 + MIN_HEARTBEAT),
        "a 1 ms interval is raised to the floor"
    );
    let mut a2 = established_agent(&clock, 0.0, 4000);
    let mut beats = 0;
    let mut t = clock.at(0.0);
    while a2.phase() == Phase::Established {
        t = a2.poll_timeout().unwrap();
        a2.handle(t, AgentInput::Timeout);
        for effect in agent_effects(&mut a2) {
            match effect {
                AgentEffect::HeartbeatDue => beats += 1,
                AgentEffect::Close { code, .. } => assert_eq!(code, close::NORMAL),
                AgentEffect::Ended(AgentEnd::Lost(why)) => {
                    assert_eq!(why, "no sign of life from the server within 20s")
                }
                other => panic!("{other:?}"),
            }
        }
        // A sign of life at 10 s keeps it 20 s more.
        if t == clock.at(8.0) {
            a2.handle(t + Duration::from_secs(2), AgentInput::Alive);
        }
    }
    assert_eq!(t, clock.at(30.0));
    assert_eq!(beats, 7, "at 4, 8, …, 28 s");
    a.handle(
        clock.at(0.1),
        AgentInput::Lost("connection lost: timed out".into()),
    );
    let end = AgentEnd::Lost("connection lost: timed out".into());
    assert_eq!(agent_effects(&mut a), vec![AgentEffect::Ended(end.clone())]);
    assert_eq!(end.retry(), Retry::Backoff { reset: true });
}

#[test]
fn a_clean_leave_ends_both_sides_closed() {
    let clock = Clock(Instant::now());
    // Stop: Bye, then the close; the server lets go of the agent's registration.
    let mut a = established_agent(&clock, 0.0, 1000);
    a.handle(clock.at(1.0), AgentInput::Stop);
    let effects = agent_effects(&mut a);
    assert_eq!(
        effects,
        vec![
            AgentEffect::Send(Message::Bye(Bye {
                reason: "agent stopping".into()
            })),
            AgentEffect::Finish,
            AgentEffect::Close {
                code: close::SHUTDOWN,
                reason: "agent stopping".into()
            },
            AgentEffect::Ended(AgentEnd::Stopped)
        ]
    );
    assert_eq!(AgentEnd::Stopped.retry(), Retry::Never);
    let mut s = established_server(&clock, 0.0);
    s.handle(
        clock.at(1.0),
        ServerInput::Frame(Message::Bye(Bye {
            reason: "agent stopping".into(),
        })),
    );
    let effects = server_effects(&mut s);
    assert_eq!(effects.last(), Some(&ServerEffect::Unregister));
    assert!(close_of(&effects).is_none(), "the agent closes it");
    assert_eq!(s.phase(), Phase::Closed);
    assert!(s.ending().unwrap().clean);

    // Decommission: Leave; the server records it and only then closes; the agent waits for
    // that close.
    let mut a = established_agent(&clock, 0.0, 1000);
    a.handle(clock.at(1.0), AgentInput::Decommission("retired".into()));
    let effects = agent_effects(&mut a);
    let Some(AgentEffect::Send(leave)) = effects.first().cloned() else {
        panic!("{effects:?}")
    };
    assert_eq!(a.phase(), Phase::Leaving);
    // A stop while leaving waits for the leave.
    a.handle(clock.at(1.5), AgentInput::Stop);
    assert!(agent_effects(&mut a).is_empty());
    let mut s = established_server(&clock, 0.0);
    s.handle(clock.at(1.0), ServerInput::Frame(leave));
    assert_eq!(
        server_effects(&mut s),
        vec![ServerEffect::RecordLeave("retired".into())]
    );
    assert_eq!(s.phase(), Phase::Leaving);
    assert_eq!(s.poll_timeout(), None);
    s.handle(clock.at(1.2), ServerInput::LeaveRecorded);
    assert_eq!(
        server_effects(&mut s),
        vec![
            ServerEffect::Close {
                code: close::NORMAL,
                reason: "decommissioned".into()
            },
            ServerEffect::Unregister
        ]
    );
    a.handle(
        clock.at(1.3),
        AgentInput::BadFrame("closed by peer: decommissioned".into()),
    );
    assert_eq!(
        agent_effects(&mut a),
        vec![
            AgentEffect::Close {
                code: close::NORMAL,
                reason: "agent decommissioned".into()
            },
            AgentEffect::Ended(AgentEnd::Decommissioned("retired".into()))
        ]
    );
    // A server that never closes: the agent goes anyway after LEAVE_WAIT.
    let mut a = established_agent(&clock, 0.0, 1000);
    a.handle(clock.at(1.0), AgentInput::Decommission("retired".into()));
    agent_effects(&mut a);
    assert_eq!(a.poll_timeout(), Some(clock.at(1.0) + LEAVE_WAIT));
    a.handle(clock.at(1.0) + LEAVE_WAIT, AgentInput::Timeout);
    assert_eq!(a.phase(), Phase::Closed);

    // A server shutting down says goodbye; the agent reconnects after a fresh backoff.
    let mut s = established_server(&clock, 0.0);
    s.handle(
        clock.at(2.0),
        ServerInput::Stop("server shutting down".into()),
    );
    let effects = server_effects(&mut s);
    let Some(ServerEffect::Send(bye)) = effects.first().cloned() else {
        panic!("{effects:?}")
    };
    assert_eq!(
        close_of(&effects),
        Some((close::SHUTDOWN, "server shutting down"))
    );
    let mut a = established_agent(&clock, 0.0, 1000);
    a.handle(clock.at(2.0), AgentInput::Frame(bye));
    let end = AgentEnd::Lost("the server said goodbye: server shutting down".into());
    assert_eq!(agent_effects(&mut a), vec![AgentEffect::Ended(end)]);
}
