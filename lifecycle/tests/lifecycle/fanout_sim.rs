//! A deterministic simulation of one fan-out: the [`Fanout`] machine wired to a model of its
//! driver (runs that end when the history says, in any status and any order, agents that
//! cannot be reached, a disk that holds the decisions, the runs and the end), on a virtual
//! clock, under a seeded history of faults — runs ending, their ends told late and out of
//! order, disk writes failing, the server restarted (losing all it had not made durable, a
//! write in flight landing or not), cancels, and time jumping ahead. proptest runs thousands
//! of such histories and checks after every step:
//!
//! - never more than `max_concurrency` runs in flight;
//! - no slot started once `max_errors` runs ended in error, or after a cancel;
//! - a slot decided not sent (on disk, shown or not) is never started, across restarts, and a
//!   slot is started at most once;
//! - each slot shows one end, and it never changes; a decision is shown only once on disk;
//! - once cancelled, every run in flight has been passed the cancel;
//! - the command ends exactly once, after every slot, only once its end is on disk, with the
//!   verdict its slots and the cancel make;
//! - once faults stop, the command ends.

use std::time::{Duration, Instant};

use ferry_lifecycle::Status;
use ferry_lifecycle::fanout::{Decision, Effect, Fanout, Input, Limits, Restored, Slot, Verdict};
use proptest::prelude::*;

/// How long a restored command waits for agents the restart cut off.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Setup {
    limits: Limits,
    /// Per slot: can its agent be sent the command?
    reachable: Vec<bool>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        proptest::collection::vec(prop::bool::weighted(0.85), 1..9),
        prop::option::of(1u32..4),
        prop::option::of(1u32..4),
        prop::option::of(1u64..30),
    )
        .prop_map(|(reachable, max_concurrency, max_errors, within)| Setup {
            limits: Limits {
                max_concurrency,
                max_errors,
                deliver_within: within.map(Duration::from_secs),
            },
            reachable,
        })
}

#[derive(Debug, Clone)]
enum Fault {
    Advance(u64),
    /// The write in flight lands on disk (or fails), with no time passing.
    Flush,
    /// The driver answers the start in progress.
    Answer,
    /// The run of the n-th slot in flight (modulo) ends with this status (on disk, shown by
    /// its own machine); the fan-out is told later.
    EndRun(usize, Status),
    /// The fan-out is told of the n-th run end not told yet (modulo).
    Tell(usize),
    FailWrites(u8),
    /// The write in flight, if any, landed on disk before the server went down.
    RestartServer {
        landed: bool,
    },
    Cancel,
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        6 => Just(Status::Succeeded),
        2 => Just(Status::Failed),
        1 => Just(Status::TimedOut),
        1 => Just(Status::Lost),
        1 => Just(Status::Crashed),
        1 => Just(Status::Cancelled),
        1 => Just(Status::Undelivered),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => (1u64..3_000).prop_map(Fault::Advance),
        1 => (5_000u64..20_000).prop_map(Fault::Advance),
        4 => Just(Fault::Flush),
        4 => Just(Fault::Answer),
        6 => (0usize..8, status()).prop_map(|(n, s)| Fault::EndRun(n, s)),
        6 => (0usize..8).prop_map(Fault::Tell),
        1 => (1u8..4).prop_map(Fault::FailWrites),
        1 => any::<bool>().prop_map(|landed| Fault::RestartServer { landed }),
        1 => Just(Fault::Cancel),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum RunDisk {
    Never,
    Started,
    Ended(Status),
}

#[derive(Debug, Clone)]
enum Write {
    Decision(Decision),
    End(Verdict),
}

struct World {
    now: Instant,
    setup: Setup,
    /// The server's machine; none once restored from a record that has ended (a restored
    /// ended command is shown as recorded, not driven).
    fanout: Option<Fanout>,
    // The disk.
    decisions: Vec<Option<Status>>,
    runs: Vec<RunDisk>,
    end: Option<Verdict>,
    /// A write in flight: it lands, or fails, when the history says (`Flush`) or as time passes.
    writing: Option<Write>,
    fail_writes: u8,
    /// A start the driver has not answered yet.
    starting: Option<usize>,
    // This incarnation of the server (lost on restart).
    /// Run ends on disk the machine has not been told of yet.
    untold: Vec<(usize, Status)>,
    /// Runs the machine knows have ended.
    told: Vec<bool>,
    cancelled: bool,
    cancel_passed: Vec<bool>,
    grace_until: Option<Instant>,
    // What was shown, across restarts.
    shown: Vec<Option<Status>>,
    starts: Vec<u32>,
    shown_end: Vec<Verdict>,
}

impl World {
    fn new(now: Instant, setup: Setup) -> World {
        let n = setup.reachable.len();
        let fanout = Fanout::new(now, setup.limits, vec![Slot::Unsent; n]);
        let mut world = World {
            now,
            setup,
            fanout: Some(fanout),
            decisions: vec![None; n],
            runs: vec![RunDisk::Never; n],
            end: None,
            writing: None,
            fail_writes: 0,
            starting: None,
            untold: Vec::new(),
            told: vec![false; n],
            cancelled: false,
            cancel_passed: vec![false; n],
            grace_until: None,
            shown: vec![None; n],
            starts: vec![0; n],
            shown_end: Vec::new(),
        };
        world.effects();
        world
    }

    fn slots(&self) -> usize {
        self.runs.len()
    }

    fn ended(&self) -> bool {
        self.fanout.as_ref().is_none_or(Fanout::is_ended)
    }

    /// Runs in flight as the server counts them: started, and not known to have ended.
    fn in_flight(&self) -> usize {
        (0..self.slots())
            .filter(|&i| self.runs[i] != RunDisk::Never && !self.told[i])
            .count()
    }

    fn known_errors(&self) -> u32 {
        (0..self.slots())
            .filter(|&i| matches!(self.runs[i], RunDisk::Ended(s) if self.told[i] && s.is_error()))
            .count() as u32
    }

    fn handle(&mut self, input: Input) {
        if let Some(fanout) = self.fanout.as_mut() {
            fanout.handle(self.now, input);
        }
        self.effects();
    }

    fn effects(&mut self) {
        while let Some(effect) = self.fanout.as_mut().and_then(Fanout::poll) {
            match effect {
                Effect::Start {
                    slot,
                    deliver_by,
                    may_wait,
                } => self.start(slot, deliver_by, may_wait),
                Effect::CancelRun(slot) => {
                    // Its run may have ended already, unknown to the machine yet.
                    assert!(
                        self.runs[slot] != RunDisk::Never && !self.told[slot],
                        "cancel for a run not in flight"
                    );
                    self.cancel_passed[slot] = true;
                }
                Effect::RecordNotSent(decision) => {
                    assert!(self.writing.is_none(), "one write at a time");
                    assert!(!decision.slots.is_empty());
                    for &slot in &decision.slots {
                        assert_eq!(self.runs[slot], RunDisk::Never, "deciding a slot sent");
                        assert_eq!(self.decisions[slot], None, "deciding a slot decided");
                    }
                    self.writing = Some(Write::Decision(decision));
                }
                Effect::NotSent(decision) => {
                    for &slot in &decision.slots {
                        assert_eq!(
                            self.decisions[slot],
                            Some(decision.status),
                            "a decision shown before it is on disk"
                        );
                        self.show(slot, decision.status);
                    }
                    match decision.status {
                        Status::Cancelled => assert!(self.cancelled, "cancelled, by nobody"),
                        Status::Undelivered => {}
                        other => panic!("decided {other:?}"),
                    }
                }
                Effect::RecordEnd(verdict) => {
                    assert!(self.writing.is_none(), "one write at a time");
                    for slot in 0..self.slots() {
                        let done = self.decisions[slot].is_some()
                            || matches!(self.runs[slot], RunDisk::Ended(_)) && self.told[slot];
                        assert!(done, "the command ends before slot {slot}: {:?}", self.runs);
                    }
                    self.writing = Some(Write::End(verdict));
                }
                Effect::Ended(verdict) => {
                    assert_eq!(self.end, Some(verdict), "an end shown before it is on disk");
                    self.show_end(verdict);
                }
            }
        }
    }

    fn start(&mut self, slot: usize, deliver_by: Instant, may_wait: bool) {
        let limits = self.setup.limits;
        assert!(!self.cancelled, "slot {slot} started after the cancel");
        assert_eq!(
            self.decisions[slot], None,
            "slot {slot} was decided not sent"
        );
        assert_eq!(self.shown[slot], None, "slot {slot} has ended");
        assert_eq!(self.runs[slot], RunDisk::Never, "slot {slot} started twice");
        if let Some(max) = limits.max_concurrency {
            assert!(self.in_flight() < max as usize, "over max_concurrency");
        }
        if let Some(max) = limits.max_errors {
            assert!(self.known_errors() < max, "sent past max_errors");
        }
        let grace = self.grace_until.filter(|until| self.now < *until);
        assert_eq!(may_wait, limits.deliver_within.is_some() || grace.is_some());
        assert!(deliver_by >= self.now + limits.deliver_within.unwrap_or_default());
        assert!(grace.is_none_or(|until| deliver_by >= until));
        assert_eq!(self.starting, None, "one start at a time");
        self.starting = Some(slot);
    }

    /// The driver answers the start in progress: the agent's run is created, or the agent
    /// cannot be reached.
    fn answer(&mut self) {
        let Some(slot) = self.starting.take() else {
            return;
        };
        if self.setup.reachable[slot] {
            // Asking an unreachable agent again after a restart sends nothing; this does.
            self.starts[slot] += 1;
            // Its run is recorded before it is sent: from here on it survives a restart.
            self.runs[slot] = RunDisk::Started;
            self.handle(Input::Started(slot));
        } else {
            self.handle(Input::Unreachable(slot, "not connected".into()));
        }
    }

    fn show(&mut self, slot: usize, status: Status) {
        if let Some(first) = self.shown[slot] {
            panic!("slot {slot} ended twice: {first:?}, then {status:?}");
        }
        self.shown[slot] = Some(status);
    }

    fn show_end(&mut self, verdict: Verdict) {
        assert!(
            self.shown_end.is_empty(),
            "the command ended twice: {:?}, {verdict:?}",
            self.shown_end
        );
        self.shown_end.push(verdict);
        let statuses: Vec<Status> = self
            .shown
            .iter()
            .map(|s| s.expect("the command ended before a slot"))
            .collect();
        match verdict {
            Verdict::Succeeded => assert!(statuses.iter().all(|s| *s == Status::Succeeded)),
            Verdict::Failed => assert!(statuses.iter().any(|s| *s != Status::Succeeded)),
            Verdict::Cancelled => {}
        }
    }

    /// The write in flight, if any, lands on disk, or fails.
    fn flush(&mut self) {
        let Some(write) = self.writing.take() else {
            return;
        };
        let outcome = if self.fail_writes > 0 {
            self.fail_writes -= 1;
            Err("injected disk failure".to_string())
        } else {
            self.land(write.clone());
            Ok(())
        };
        match write {
            Write::Decision(_) => self.handle(Input::NotSentRecorded(outcome)),
            Write::End(_) => self.handle(Input::EndRecorded(outcome)),
        }
    }

    /// Lets time pass until `now + by`: writes land (or fail) and every deadline on the way
    /// passes, in order.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        for _ in 0..1_000 {
            if self.starting.is_some() {
                self.answer();
                continue;
            }
            if self.writing.is_some() {
                self.flush();
                continue;
            }
            if let Some(at) = self.poll_timeout().filter(|at| *at <= end) {
                self.now = self.now.max(at);
                self.handle(Input::Timeout);
                continue;
            }
            self.now = end;
            return;
        }
        panic!("time did not move on: {:?}", self.fanout);
    }

    fn land(&mut self, write: Write) {
        match write {
            Write::Decision(decision) => {
                for slot in decision.slots {
                    self.decisions[slot] = Some(decision.status);
                }
            }
            Write::End(verdict) => self.end = Some(verdict),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.fanout.as_ref().and_then(Fanout::poll_timeout)
    }

    fn end_run(&mut self, n: usize, status: Status) {
        let running: Vec<usize> = (0..self.slots())
            .filter(|&i| self.runs[i] == RunDisk::Started)
            .collect();
        if running.is_empty() {
            return;
        }
        let slot = running[n % running.len()];
        // The run's own machine records its end, then shows it.
        self.runs[slot] = RunDisk::Ended(status);
        self.show(slot, status);
        if self.fanout.is_some() {
            self.untold.push((slot, status));
        }
    }

    fn tell(&mut self, n: usize) {
        if self.untold.is_empty() {
            return;
        }
        let (slot, status) = self.untold.remove(n % self.untold.len());
        self.told[slot] = true;
        self.handle(Input::RunEnded(slot, status));
    }

    fn restart(&mut self, landed: bool) {
        if let Some(write) = self.writing.take()
            && landed
        {
            self.land(write);
        }
        self.untold.clear();
        // A start in progress had not recorded its run: nothing was sent.
        self.starting = None;
        self.cancelled = false;
        self.cancel_passed = vec![false; self.slots()];
        self.told = self
            .runs
            .iter()
            .map(|r| matches!(r, RunDisk::Ended(_)))
            .collect();
        if let Some(verdict) = self.end {
            // Restored as it ended: shown from the record, not driven.
            self.fanout = None;
            if self.shown_end.is_empty() {
                self.show_end(verdict);
            }
            assert_eq!(self.shown_end, vec![verdict], "the shown end changed");
            return;
        }
        for slot in 0..self.slots() {
            if let Some(status) = self.decisions[slot]
                && self.shown[slot].is_none()
            {
                // On disk, so the restored command shows it.
                self.show(slot, status);
            }
        }
        let slots = (0..self.slots())
            .map(|i| match (self.decisions[i], self.runs[i]) {
                (Some(status), _) => Slot::NotSent(status),
                (None, RunDisk::Never) => Slot::Unsent,
                (None, RunDisk::Started) => Slot::Running,
                (None, RunDisk::Ended(status)) => Slot::Ended(status),
            })
            .collect();
        let grace_until = self.now + GRACE;
        self.grace_until = Some(grace_until);
        self.fanout = Some(Fanout::restore(
            self.now,
            self.setup.limits,
            slots,
            Restored {
                grace_until,
                peak: 0,
                cancelled: false,
            },
        ));
        self.effects();
    }

    fn apply(&mut self, fault: &Fault) {
        match fault {
            Fault::Advance(ms) => self.advance(Duration::from_millis(*ms)),
            Fault::Flush => self.flush(),
            Fault::Answer => self.answer(),
            Fault::EndRun(n, status) => self.end_run(*n, *status),
            Fault::Tell(n) => self.tell(*n),
            Fault::FailWrites(n) => self.fail_writes = *n,
            Fault::RestartServer { landed } => self.restart(*landed),
            Fault::Cancel => {
                if !self.ended() {
                    self.cancelled = true;
                }
                self.handle(Input::Cancel);
            }
        }
        self.check();
    }

    /// What must hold between any two steps.
    fn check(&self) {
        let Some(fanout) = &self.fanout else {
            return;
        };
        assert_eq!(fanout.in_flight() as usize, self.in_flight());
        if let Some(max) = self.setup.limits.max_concurrency {
            assert!(self.in_flight() <= max as usize, "over max_concurrency");
        }
        if self.cancelled && !fanout.is_ended() {
            for slot in 0..self.slots() {
                if self.runs[slot] == RunDisk::Started {
                    assert!(
                        self.cancel_passed[slot],
                        "run {slot} was not passed the cancel"
                    );
                }
            }
        }
        for slot in 0..self.slots() {
            assert!(self.starts[slot] <= 1, "slot {slot} started twice");
            if let Some(status) = self.decisions[slot] {
                assert_eq!(self.runs[slot], RunDisk::Never);
                assert!(self.shown[slot].is_none_or(|s| s == status));
            }
        }
        if let Some(verdict) = self.shown_end.first() {
            assert_eq!(self.end, Some(*verdict));
            if *verdict == Verdict::Cancelled {
                assert!(self.cancelled, "cancelled, by nobody");
            }
        }
    }
}

/// Runs `history`, then heals the world (the disk works, every run ends and is told) and lets
/// time pass until the command has ended.
fn play(setup: Setup, history: &[Fault]) -> World {
    let mut world = World::new(Instant::now(), setup);
    world.check();
    for fault in history {
        world.apply(fault);
    }
    world.fail_writes = 0;
    for _ in 0..100 {
        if world.ended() {
            break;
        }
        for n in 0..world.slots() {
            world.apply(&Fault::EndRun(n, Status::Succeeded));
        }
        while !world.untold.is_empty() {
            world.apply(&Fault::Tell(0));
        }
        world.apply(&Fault::Advance(1_000));
    }
    assert!(
        world.ended(),
        "the command never ended once faults stopped: {:?}",
        world.fanout
    );
    assert_eq!(
        world.shown_end.len(),
        1,
        "the command ended, but was not shown so"
    );
    assert!(
        world.shown.iter().all(Option::is_some),
        "a slot never ended: {:?}",
        world.shown
    );
    world
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_fan_out_history_keeps_the_guarantees(
        setup in setup(),
        history in proptest::collection::vec(fault(), 0..40),
    ) {
        play(setup, &history);
    }
}

/// A decision on disk but not shown when the server went down stays: the restored command
/// shows it and never sends the slot.
#[test]
fn a_decision_that_landed_before_a_restart_stands() {
    let setup = Setup {
        limits: Limits {
            max_concurrency: Some(1),
            max_errors: Some(1),
            deliver_within: None,
        },
        reachable: vec![true, true, true],
    };
    use Fault::*;
    let world = play(
        setup,
        &[
            Answer,
            EndRun(0, Status::Failed),
            Tell(0),
            // The decision that slots 1 and 2 are not sent is being written.
            RestartServer { landed: true },
            Advance(100),
        ],
    );
    assert_eq!(world.starts, vec![1, 0, 0]);
    assert_eq!(world.shown[1], Some(Status::Undelivered));
    assert_eq!(world.shown_end, vec![Verdict::Failed]);
}
