//! A deterministic simulation of one run: the server's [`Run`] machine wired to a model of
//! the agent (its journal, its plugin, its report streams) over a simulated connection, on a
//! virtual clock, under a seeded history of faults — streams dropped, the connection cut and
//! mended, disk writes failing, the server and the agent restarted (losing all they had not
//! made durable), cancels, and time jumping ahead. proptest runs thousands of such histories
//! and checks the guarantees after every step:
//!
//! - the agent starts the command at most once, whatever is resent;
//! - a `ResultAck` (on the stream or a report stream) implies the result is on the server's
//!   disk, or the run had ended (on disk) before the result came;
//! - a run shows at most one end, equal to what is on disk, and it never changes — across
//!   restarts too;
//! - an `undelivered` run never reached the agent and never does later;
//! - a result that reaches the server is recorded as the agent reported it (unless a disk
//!   failure made the server give it up as `lost`);
//! - once faults stop, every run ends.

use std::time::{Duration, Instant};

use ferry_lifecycle::{Effect, End, Input, Limits, Run, Start, Status};
use ferry_protocol::{Accepted, Command, CommandResult, Message, Outcome, ResultAck, ResultStats};
use proptest::prelude::*;

const ID: &str = "run-1";
const LIMITS: Limits = Limits {
    timeout: Duration::from_secs(5),
    result_grace: Duration::from_secs(2),
    result_wait: Duration::from_secs(30),
};
/// How long the plugin runs.
const PLUGIN: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone)]
enum Fault {
    Advance(u64),
    DropStream,
    Disconnect,
    Reconnect,
    FailWrites(u8),
    RestartServer,
    RestartAgent,
    Report,
    Cancel,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => (1u64..4_000).prop_map(Fault::Advance),
        1 => (20_000u64..60_000).prop_map(Fault::Advance),
        2 => Just(Fault::DropStream),
        2 => Just(Fault::Disconnect),
        3 => Just(Fault::Reconnect),
        1 => (1u8..4).prop_map(Fault::FailWrites),
        1 => Just(Fault::RestartServer),
        1 => Just(Fault::RestartAgent),
        2 => Just(Fault::Report),
        1 => Just(Fault::Cancel),
    ]
}

/// What the agent's journal holds for the command.
#[derive(Debug, Clone, Default)]
struct Journal {
    /// Received (durably, before `Accepted`).
    received: bool,
    /// The plugin runs until then.
    running_until: Option<Instant>,
    result: Option<CommandResult>,
    acked: bool,
    cancelled: bool,
}

struct World {
    now: Instant,
    // The server: its run's machine, or none once restored from a record that has ended (a
    // restored ended run is not driven; report streams are answered from the record).
    run: Option<Run>,
    /// The run's record on disk: the end, once durable.
    disk_end: Option<End>,
    /// When the run was first created (its record is durable before it is started).
    created_at: Instant,
    /// A write in flight: it lands, or fails, at the next settle.
    writing: Option<End>,
    fail_writes: u8,
    ever_failed: bool,
    /// Every end ever shown, across restarts.
    shown: Vec<End>,
    /// The server saw the agent's result while the run was not ended.
    result_seen: Option<CommandResult>,
    // The link.
    connected: bool,
    /// A stream is open between the two (its frames are delivered at once, in order).
    stream: bool,
    // The agent.
    journal: Journal,
    starts: u32,
}

impl World {
    fn new(now: Instant) -> World {
        World {
            now,
            run: Some(Run::new(
                ID,
                LIMITS,
                Start::New {
                    deliver_by: now + Duration::from_secs(20),
                },
            )),
            disk_end: None,
            created_at: now,
            writing: None,
            fail_writes: 0,
            ever_failed: false,
            shown: Vec::new(),
            result_seen: None,
            connected: true,
            stream: false,
            journal: Journal::default(),
            starts: 0,
        }
    }

    fn ended(&self) -> bool {
        self.run.as_ref().is_none_or(Run::is_ended)
    }

    fn on_stream(&self) -> bool {
        self.run.as_ref().is_some_and(Run::on_stream)
    }

    fn server(&mut self, input: Input) {
        let Some(run) = self.run.as_mut() else {
            if let Input::Reported(_) = input {
                // Answered from the record: the run ended (durably) before this came.
                assert!(self.disk_end.is_some());
                self.journal.acked = true;
            }
            return;
        };
        if let Input::Frame(Message::Result(r)) | Input::Reported(r) = &input
            && !run.is_ended()
        {
            self.result_seen.get_or_insert_with(|| r.clone());
        }
        run.handle(self.now, input);
        self.effects();
    }

    fn handle(&mut self, input: Input) {
        if let Some(run) = self.run.as_mut() {
            run.handle(self.now, input);
        }
    }

    fn effects(&mut self) {
        while let Some(effect) = self.run.as_mut().and_then(Run::poll) {
            match effect {
                Effect::Send => {
                    if self.connected {
                        self.stream = true;
                        self.handle(Input::Sent);
                        self.agent_receives();
                    } else {
                        self.handle(Input::NotSent("no connection".into()));
                    }
                }
                Effect::Frame(Message::ResultAck(ResultAck { id })) => {
                    assert_eq!(id, ID);
                    self.assert_durable_result("ResultAck on the stream");
                    if self.stream {
                        self.journal.acked = true;
                    }
                }
                Effect::Frame(Message::Cancel(_)) => {
                    if self.stream && self.journal.running_until.is_some() {
                        self.journal.cancelled = true;
                    }
                }
                Effect::Frame(other) => panic!("unexpected frame {other:?}"),
                Effect::Reset(_) => self.stream = false,
                Effect::Finish => {}
                Effect::Record(end) => {
                    assert!(self.writing.is_none(), "one write at a time");
                    self.writing = Some(end);
                }
                Effect::AckReport(id) => {
                    assert_eq!(id, ID);
                    // The result is on disk, or the run ended (on disk) before it came.
                    let end = self
                        .disk_end
                        .as_ref()
                        .expect("ResultAck before the run's end is on disk");
                    if self.shown.is_empty() {
                        assert!(
                            end.result.is_some(),
                            "acknowledged, yet the disk holds {end:?}"
                        );
                    }
                    self.journal.acked = true;
                }
                Effect::RefuseReport(_) => {}
                Effect::Ended(end) => {
                    assert_eq!(
                        self.disk_end.as_ref(),
                        Some(&end),
                        "an end is shown only as recorded"
                    );
                    if let Some(first) = self.shown.first() {
                        assert_eq!(first, &end, "an end never changes");
                    }
                    self.shown.push(end.clone());
                    assert_eq!(self.shown.len(), 1, "a run ends once: {:?}", self.shown);
                    if end.status == Status::Undelivered {
                        assert!(!self.journal.received, "undelivered, yet the agent has it");
                    }
                }
                Effect::Accepted
                | Effect::Progress(..)
                | Effect::Log(..)
                | Effect::AnswerData(_) => {}
            }
        }
    }

    fn assert_durable_result(&self, what: &str) {
        let end = self
            .disk_end
            .as_ref()
            .unwrap_or_else(|| panic!("{what} before the result is on disk"));
        assert!(end.result.is_some(), "{what}, yet the disk holds {end:?}");
    }

    /// The agent gets the Command on the new stream and answers from its journal.
    fn agent_receives(&mut self) {
        let command = Command {
            id: ID.into(),
            topic: "t".into(),
            payload: Vec::new(),
            content_type: String::new(),
            timeout_ms: Some(LIMITS.timeout.as_millis() as u64),
            idempotency_key: None,
        };
        if !self.journal.received {
            // Journaled durably before Accepted, then the plugin starts.
            self.journal.received = true;
            self.journal.running_until = Some(self.now + PLUGIN);
            self.starts += 1;
            assert_eq!(
                self.starts, 1,
                "the agent started command {} twice",
                command.id
            );
        }
        self.agent_says(Message::Accepted(Accepted { id: ID.into() }));
        // A result it has (acknowledged or not) answers the resend at once.
        if let Some(result) = self.journal.result.clone() {
            self.agent_says(Message::Result(result));
        }
    }

    fn agent_says(&mut self, message: Message) {
        if self.stream && self.on_stream() {
            self.server(Input::Frame(message));
        }
    }

    fn agent_finishes(&mut self) {
        let Some(until) = self.journal.running_until else {
            return;
        };
        if self.now < until && !self.journal.cancelled {
            return;
        }
        let outcome = if self.journal.cancelled {
            Outcome::Cancelled
        } else {
            Outcome::Succeeded
        };
        self.journal.running_until = None;
        self.journal.result = Some(CommandResult {
            id: ID.into(),
            outcome,
            payload: b"done".to_vec(),
            stats: ResultStats::default(),
        });
        if let Some(result) = self.journal.result.clone() {
            self.agent_says(Message::Result(result));
        }
    }

    fn report(&mut self) {
        if self.connected
            && let Some(result) = self.journal.result.clone()
            && !self.journal.acked
        {
            self.server(Input::Reported(result));
        }
    }

    /// Lets everything that can happen at `now` happen.
    fn settle(&mut self) {
        for _ in 0..50 {
            self.agent_finishes();
            if let Some(end) = self.writing.take() {
                let outcome = if self.fail_writes > 0 {
                    self.fail_writes -= 1;
                    self.ever_failed = true;
                    Err("injected disk failure".to_string())
                } else {
                    self.disk_end = Some(end);
                    Ok(())
                };
                self.server(Input::Recorded(outcome));
                continue;
            }
            if self.poll_timeout().is_some_and(|at| at <= self.now) {
                self.server(Input::Timeout);
            }
            let now = self.now;
            if self.connected && self.run.as_ref().is_some_and(|r| r.wants_connection(now)) {
                self.server(Input::Connected);
                continue;
            }
            if !self.on_stream() {
                self.stream = false;
            }
            return;
        }
        panic!("the world did not settle: {:?}", self.run);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.run.as_ref().and_then(Run::poll_timeout)
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        // Step through every deadline on the way, in order.
        loop {
            let next = [self.poll_timeout(), self.journal.running_until]
                .into_iter()
                .flatten()
                .filter(|at| *at > self.now)
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = at;
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = end;
        self.settle();
    }

    fn apply(&mut self, fault: &Fault) {
        match fault {
            Fault::Advance(ms) => self.advance(Duration::from_millis(*ms)),
            Fault::DropStream => {
                if self.stream {
                    self.stream = false;
                    self.server(Input::StreamEnded("stream reset".into()));
                }
            }
            Fault::Disconnect => {
                self.connected = false;
                if self.stream {
                    self.stream = false;
                    self.server(Input::StreamEnded("connection lost".into()));
                }
            }
            Fault::Reconnect => self.connected = true,
            Fault::FailWrites(n) => self.fail_writes = *n,
            Fault::RestartServer => {
                // Only what is on disk survives: the run's record, and its end if durable.
                self.writing = None;
                self.stream = false;
                self.run = match self.disk_end {
                    Some(_) => None,
                    None => Some(Run::new(
                        ID,
                        LIMITS,
                        Start::Resumed {
                            sent_at: self.created_at,
                        },
                    )),
                };
            }
            Fault::RestartAgent => {
                self.stream = false;
                if self.journal.running_until.take().is_some() {
                    // Interrupted by the agent's own end: crashed, never run again.
                    self.journal.result = Some(CommandResult {
                        id: ID.into(),
                        outcome: Outcome::Crashed("the agent stopped".into()),
                        payload: Vec::new(),
                        stats: ResultStats::default(),
                    });
                }
                if self.on_stream() {
                    self.server(Input::StreamEnded("agent restarted".into()));
                }
            }
            Fault::Report => self.report(),
            Fault::Cancel => self.server(Input::Cancel),
        }
        self.settle();
    }
}

/// Runs `history`, then heals the world and lets time pass until the run has ended.
fn play(history: &[Fault]) -> World {
    let mut world = World::new(Instant::now());
    world.settle();
    for fault in history {
        world.apply(fault);
    }
    // Faults stop: the disk works, the link is up, the agent reports what it holds.
    world.fail_writes = 0;
    world.connected = true;
    for _ in 0..200 {
        if world.ended() {
            break;
        }
        world.apply(&Fault::Report);
        world.apply(&Fault::Advance(1_000));
    }
    assert!(
        world.ended(),
        "the run never ended once faults stopped: {:?}",
        world.run
    );
    world
}

fn check_end(world: &World) {
    let end = world
        .disk_end
        .as_ref()
        .expect("an ended run has its end on disk");
    if end.status == Status::Undelivered {
        assert!(!world.journal.received, "undelivered, yet the agent has it");
    }
    if let Some(seen) = &world.result_seen {
        match &end.result {
            Some(result) => assert_eq!(result, seen, "recorded otherwise than reported"),
            None => assert!(
                world.ever_failed && end.status == Status::Lost,
                "the server saw the agent's result {seen:?}, yet recorded {end:?}"
            ),
        }
    }
    assert!(world.starts <= 1);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_history_keeps_the_guarantees(history in proptest::collection::vec(fault(), 0..40)) {
        let world = play(&history);
        check_end(&world);
    }
}

/// The histories the first probes of ferry found breaking it, replayed as they were.
#[test]
fn known_histories() {
    use Fault::*;
    let histories: &[&[Fault]] = &[
        // The result was written while the server was down: the agent comes back long after
        // the command's timeout, within result_wait.
        &[
            Advance(100),
            Disconnect,
            Advance(2_000),
            RestartServer,
            Advance(25_000),
            Reconnect,
        ],
        // A disk that refuses the result: never acknowledged, asked for again, then recorded.
        &[Advance(100), FailWrites(2), Advance(2_000), Advance(3_000)],
        // Never delivered, then the server restarts and the agent connects.
        &[
            Disconnect,
            Advance(25_000),
            RestartServer,
            Reconnect,
            Advance(1_000),
        ],
        // The agent restarts mid-run: crashed, not run again.
        &[Advance(500), RestartAgent, Advance(5_000)],
    ];
    for history in histories {
        let world = play(history);
        check_end(&world);
    }
}
