//! A deterministic simulation of one command: the server's [`Run`] machine and the agent's
//! [`Execution`] machines wired together over a simulated connection, with an in-memory
//! journal on each side (what is durable survives a restart, what is not is lost), a plugin
//! that takes time, on a virtual clock, under a seeded history of faults — streams dropped,
//! the connection cut and mended, the server's disk refusing writes, the server and the agent
//! restarted, cancels, and time jumping ahead. Messages travel in order, through queues, as
//! they would on a stream. proptest runs thousands of such histories and checks the
//! guarantees after every step:
//!
//! - the agent starts the command at most once, whatever is resent;
//! - a `ResultAck` (on the stream or a report stream) implies the result is on the server's
//!   disk, or the run had ended (on disk) before the result came;
//! - the agent forgets a result (records the acknowledgement) only once it is journaled;
//! - a run shows at most one end, equal to what is on disk, and it never changes — across
//!   restarts too;
//! - an `undelivered` run never reached the agent and never does later;
//! - a result that reaches the server is recorded as the agent reported it (unless a disk
//!   failure made the server give it up as `lost`);
//! - once faults stop, every run ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ferry_lifecycle::command::{self, Execution, Loss, Receipt};
use ferry_lifecycle::{Effect, End, Input, Limits, Run, Start, Status};
use ferry_protocol::{Command, CommandResult, Message, Outcome, ResultAck, ResultStats};
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

/// What the agent's journal holds durably.
#[derive(Debug, Clone, Default)]
struct Journal {
    /// The receipt (written before the plugin may start).
    received: bool,
    result: Option<CommandResult>,
    acked: bool,
}

/// A journal write queued by an execution; it lands, in order, at the next settle.
#[derive(Debug)]
enum Write {
    Accept(usize),
    Result(usize, CommandResult),
}

/// One agent-side execution, and the stream it came on (none once that stream is gone).
#[derive(Debug)]
struct Exec {
    machine: Execution,
    stream: Option<u64>,
    /// Waiting for the run under way ([`command::Effect::WaitFor`]).
    waiting: bool,
}

/// The plugin's one run.
#[derive(Debug)]
struct Plugin {
    exec: usize,
    until: Instant,
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
    /// The open stream between the two, if any.
    stream: Option<u64>,
    streams: u64,
    /// Inputs on their way to the server, in order.
    to_server: VecDeque<Input>,
    /// Inputs on their way to an agent execution, in order.
    to_agent: VecDeque<(usize, command::Input)>,
    // The agent.
    journal: Journal,
    writes: VecDeque<Write>,
    execs: Vec<Exec>,
    plugin: Option<Plugin>,
    /// The result of the run, once journaled (the in-flight table), for duplicates.
    announced: Option<CommandResult>,
    starts: u32,
    /// The seeded scheduler: which of the things that can happen next happens first
    /// (a message arriving, a write landing on either side).
    rng: u64,
}

impl World {
    fn new(now: Instant, seed: u64) -> World {
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
            stream: None,
            streams: 0,
            to_server: VecDeque::new(),
            to_agent: VecDeque::new(),
            journal: Journal::default(),
            writes: VecDeque::new(),
            execs: Vec::new(),
            plugin: None,
            announced: None,
            starts: 0,
            rng: seed | 1,
        }
    }

    fn ended(&self) -> bool {
        self.run.as_ref().is_none_or(Run::is_ended)
    }

    fn on_stream(&self) -> bool {
        self.run.as_ref().is_some_and(Run::on_stream)
    }

    /// The execution on the open stream.
    fn exec_on_stream(&self) -> Option<usize> {
        let stream = self.stream?;
        self.execs.iter().position(|e| e.stream == Some(stream))
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
    }

    /// Closes the open stream; the agent's execution on it learns how.
    fn close_stream(&mut self, loss: Loss) {
        if let Some(exec) = self.exec_on_stream() {
            self.to_agent
                .push_back((exec, command::Input::StreamEnded(loss.clone())));
            if loss != Loss::Finished {
                self.to_agent
                    .push_back((exec, command::Input::SendFailed(loss)));
            }
            self.execs[exec].stream = None;
        }
        self.stream = None;
    }

    fn server_effects(&mut self) -> bool {
        let mut any = false;
        while let Some(effect) = self.run.as_mut().and_then(Run::poll) {
            any = true;
            match effect {
                Effect::Send => {
                    if self.connected {
                        if self.stream.is_some() {
                            self.close_stream(Loss::Lost("superseded".into()));
                        }
                        self.streams += 1;
                        self.stream = Some(self.streams);
                        self.server(Input::Sent);
                        self.execs.push(Exec {
                            machine: Execution::on_stream(self.now),
                            stream: self.stream,
                            waiting: false,
                        });
                        let command = Command {
                            id: ID.into(),
                            topic: "t".into(),
                            payload: Vec::new(),
                            content_type: String::new(),
                            timeout_ms: Some(LIMITS.timeout.as_millis() as u64),
                            idempotency_key: None,
                        };
                        self.to_agent.push_back((
                            self.execs.len() - 1,
                            command::Input::Frame(Message::Command(command)),
                        ));
                    } else {
                        self.server(Input::NotSent("no connection".into()));
                    }
                }
                Effect::Frame(message) => {
                    if let Message::ResultAck(ResultAck { id }) = &message {
                        assert_eq!(id, ID);
                        self.assert_durable_result("ResultAck on the stream");
                    }
                    if let Some(exec) = self.exec_on_stream() {
                        self.to_agent
                            .push_back((exec, command::Input::Frame(message)));
                    }
                }
                Effect::Reset(_) => self.close_stream(Loss::Reset),
                Effect::Finish => {
                    if let Some(exec) = self.exec_on_stream() {
                        self.to_agent
                            .push_back((exec, command::Input::StreamEnded(Loss::Finished)));
                    }
                }
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
        any
    }

    fn agent_effects(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.execs.len() {
            while let Some(effect) = self.execs[i].machine.poll() {
                any = true;
                self.agent_effect(i, effect);
            }
        }
        any
    }

    fn agent_effect(&mut self, i: usize, effect: command::Effect) {
        use command::Effect as E;
        let current = self.stream.is_some() && self.execs[i].stream == self.stream;
        match effect {
            E::Frame(message) => {
                if current && self.on_stream() {
                    self.to_server.push_back(Input::Frame(message));
                }
            }
            E::Finish | E::Log(..) | E::AnswerData(_) => {}
            E::Reset(_) => {
                if current {
                    self.execs[i].stream = None;
                    self.stream = None;
                    self.to_server
                        .push_back(Input::StreamEnded("the agent reset the stream".into()));
                }
            }
            E::Receive(command) => {
                assert_eq!(command.id, ID);
                self.writes.push_back(Write::Accept(i));
            }
            E::Run => {
                self.starts += 1;
                assert_eq!(self.starts, 1, "the agent started command {ID} twice");
                assert!(
                    self.journal.received,
                    "the plugin started before the receipt was durable"
                );
                self.plugin = Some(Plugin {
                    exec: i,
                    until: self.now + PLUGIN,
                    cancelled: false,
                });
            }
            E::WaitFor(original) => {
                assert_eq!(original, ID);
                match self.announced.clone() {
                    Some(result) => self
                        .to_agent
                        .push_back((i, command::Input::Finished { result, dropped: 0 })),
                    None => self.execs[i].waiting = true,
                }
            }
            E::CancelPlugin => {
                if let Some(plugin) = self.plugin.as_mut()
                    && plugin.exec == i
                {
                    plugin.cancelled = true;
                }
            }
            E::Journal(result) => self.writes.push_back(Write::Result(i, result)),
            E::Done { acked, kept } => {
                if acked && kept {
                    assert!(
                        self.journal.result.is_some(),
                        "the agent forgot a result that was never journaled"
                    );
                    self.journal.acked = true;
                }
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

    /// The agent's journal: writes land in order, atomically.
    fn agent_write(&mut self) -> bool {
        let Some(write) = self.writes.pop_front() else {
            return false;
        };
        match write {
            Write::Accept(exec) => {
                let receipt = if !self.journal.received {
                    self.journal.received = true;
                    Receipt::New
                } else if let Some(result) = &self.journal.result {
                    Receipt::Finished(result.clone())
                } else {
                    Receipt::Running(ID.into())
                };
                self.to_agent
                    .push_back((exec, command::Input::Receipt(Ok(receipt))));
            }
            Write::Result(exec, result) => {
                self.journal.result = Some(result.clone());
                // Duplicates waiting for this run get its result once it is journaled.
                self.announced = Some(result.clone());
                for (w, other) in self.execs.iter_mut().enumerate() {
                    if other.waiting {
                        other.waiting = false;
                        self.to_agent.push_back((
                            w,
                            command::Input::Finished {
                                result: result.clone(),
                                dropped: 0,
                            },
                        ));
                    }
                }
                // The answer is local: it does not wait behind messages on the stream.
                self.execs[exec]
                    .machine
                    .handle(self.now, command::Input::Journaled(Ok(())));
            }
        }
        true
    }

    fn plugin_finishes(&mut self) -> bool {
        let Some(plugin) = &self.plugin else {
            return false;
        };
        if self.now < plugin.until && !plugin.cancelled {
            return false;
        }
        let outcome = if plugin.cancelled {
            Outcome::Cancelled
        } else {
            Outcome::Succeeded
        };
        let exec = plugin.exec;
        self.plugin = None;
        self.to_agent.push_back((
            exec,
            command::Input::Finished {
                result: CommandResult {
                    id: ID.into(),
                    outcome,
                    payload: b"done".to_vec(),
                    stats: ResultStats::default(),
                },
                dropped: 0,
            },
        ));
        true
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
        for _ in 0..2_000 {
            if self.server_effects() || self.agent_effects() {
                continue;
            }
            // What is ready happens in an order the seed picks: messages each way (in order
            // on their stream), the agent's journal writes and the server's record landing.
            let ready = [
                !self.to_server.is_empty(),
                !self.to_agent.is_empty(),
                !self.writes.is_empty(),
                self.writing.is_some(),
            ];
            let count = ready.iter().filter(|r| **r).count();
            if count > 0 {
                let pick = (self.next_random() % count as u64) as usize;
                let which = ready
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| **r)
                    .nth(pick)
                    .map(|(i, _)| i);
                match which {
                    Some(0) => {
                        let input = self.to_server.pop_front().expect("ready");
                        self.server(input);
                    }
                    Some(1) => {
                        let (exec, input) = self.to_agent.pop_front().expect("ready");
                        self.execs[exec].machine.handle(self.now, input);
                    }
                    Some(2) => {
                        self.agent_write();
                    }
                    _ => self.land_server_write(),
                }
                continue;
            }
            if self.plugin_finishes() {
                continue;
            }
            if self
                .run
                .as_ref()
                .and_then(Run::poll_timeout)
                .is_some_and(|at| at <= self.now)
            {
                self.server(Input::Timeout);
                if self
                    .run
                    .as_ref()
                    .is_some_and(|r| r.poll_timeout().is_some_and(|at| at <= self.now))
                {
                    // Not due in the machine's eyes yet (a pause it holds itself): go on.
                } else {
                    continue;
                }
            }
            let now = self.now;
            if let Some(exec) = self
                .execs
                .iter()
                .position(|e| e.machine.poll_timeout().is_some_and(|at| at <= now))
            {
                self.execs[exec]
                    .machine
                    .handle(now, command::Input::Timeout);
                continue;
            }
            if self.connected && self.run.as_ref().is_some_and(|r| r.wants_connection(now)) {
                self.server(Input::Connected);
                continue;
            }
            if self.stream.is_some() && !self.on_stream() {
                // The server is done with the stream (its result recorded, or given up).
                self.close_stream(Loss::Finished);
                continue;
            }
            return;
        }
        panic!("the world did not settle: {:?} {:?}", self.run, self.execs);
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: deterministic for a seed, enough to shuffle.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The server's record write lands, or fails.
    fn land_server_write(&mut self) {
        let Some(end) = self.writing.take() else {
            return;
        };
        let outcome = if self.fail_writes > 0 {
            self.fail_writes -= 1;
            self.ever_failed = true;
            Err("injected disk failure".to_string())
        } else {
            self.disk_end = Some(end);
            Ok(())
        };
        self.server(Input::Recorded(outcome));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let server = self.run.as_ref().and_then(Run::poll_timeout);
        let agent = self
            .execs
            .iter()
            .filter_map(|e| e.machine.poll_timeout())
            .min();
        let plugin = self.plugin.as_ref().map(|p| p.until);
        [server, agent, plugin].into_iter().flatten().min()
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        // Step through every deadline on the way, in order.
        loop {
            match self.poll_timeout().filter(|at| *at > self.now) {
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
                if self.stream.is_some() {
                    self.close_stream(Loss::Lost("stream reset".into()));
                    self.server(Input::StreamEnded("stream reset".into()));
                }
            }
            Fault::Disconnect => {
                self.connected = false;
                if self.stream.is_some() {
                    self.close_stream(Loss::Lost("connection lost".into()));
                    self.server(Input::StreamEnded("connection lost".into()));
                }
            }
            Fault::Reconnect => self.connected = true,
            Fault::FailWrites(n) => self.fail_writes = *n,
            Fault::RestartServer => {
                // Only what is on disk survives: the run's record, and its end if durable.
                self.writing = None;
                self.to_server.clear();
                if self.stream.is_some() {
                    self.close_stream(Loss::Lost("server restarted".into()));
                }
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
                // What the journal had not written is lost; a command that was running when
                // the agent stopped is recorded crashed as it starts again, never run again.
                self.writes.clear();
                self.to_agent.clear();
                self.execs.clear();
                self.plugin = None;
                self.announced = None;
                if self.journal.received && self.journal.result.is_none() {
                    self.journal.result = Some(CommandResult {
                        id: ID.into(),
                        outcome: Outcome::Crashed("the agent stopped".into()),
                        payload: Vec::new(),
                        stats: ResultStats::default(),
                    });
                }
                if self.stream.take().is_some() {
                    self.to_server.clear();
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
fn play(seed: u64, history: &[Fault]) -> World {
    let mut world = World::new(Instant::now(), seed);
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
    fn every_history_keeps_the_guarantees(
        seed in any::<u64>(),
        history in proptest::collection::vec(fault(), 0..40),
    ) {
        let world = play(seed, &history);
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
        for seed in 0..16 {
            let world = play(seed, history);
            check_end(&world);
        }
    }
}
