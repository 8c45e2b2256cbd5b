//! The fan-out scheduler of one operator command sent to many agents, as a state machine with
//! no I/O.
//!
//! A command has one slot per agent, in sending order. The machine goes through them one at a
//! time, as fleet operators know it from SSM: it asks the driver to start a slot's run
//! ([`Effect::Start`]; the driver creates the [`Run`](crate::run::Run) and its task), and
//! hears back when each run has ended ([`Input::RunEnded`]). Slots it will never send are
//! *decided* not sent: written durably first ([`Effect::RecordNotSent`]), shown only once on
//! disk ([`Effect::NotSent`]). When every slot has ended or been decided, the command's end is
//! recorded ([`Effect::RecordEnd`]) and shown once on disk ([`Effect::Ended`]).
//! [`Fanout::poll_timeout`] says when a failed write is due again.
//!
//! What holds here by construction, whatever order the inputs come in:
//! - **At most `max_concurrency` runs in flight.** A slot is started only while fewer runs
//!   than that are in flight, counting the runs a restarted server resumed.
//! - **No send once `max_errors` runs ended in error** (ran and did not succeed: see
//!   [`Status::is_error`]). The slots left are decided `undelivered`, with the reason.
//! - **Cancel stops the sending and the running.** The slots left are decided `cancelled`;
//!   every run in flight, or started later by an answer already on its way, is passed the
//!   cancel ([`Effect::CancelRun`]).
//! - **A decision is durable before it is shown, and final.** A slot decided not sent is never
//!   started, by this machine or by one restored from the same disk (the driver restores it as
//!   [`Slot::NotSent`]). A write that fails is written again after [`WRITE_RETRY`]; the
//!   decision is shown only once it is on disk.
//! - **The command ends once, after every slot, and only once its end is durable.** Its
//!   [`Verdict`] is `cancelled` if an operator cancelled it, `succeeded` if every agent
//!   succeeded, `failed` otherwise.
//! - **Restore after a restart.** A machine made from what is on disk
//!   ([`Fanout::restore`]) never starts a slot that was decided or sent before: runs that were
//!   sent are resumed by their own drivers and count as in flight, ended ones count towards
//!   `max_errors`; agents not sent it yet may be waited for until `grace_until`, since the
//!   restart cut them off.
//!
//! Inputs in full: a slot's run was started, or its agent is unreachable; a run ended, with its
//! status; a decision's or the end's write finished (ok or error); cancel; timeout. When it asks
//! for a slot's run it gives the delivery deadline and whether an agent that is not connected may
//! be waited for (`deliver_within`, or the restart grace of a restored command). The driver is
//! `drive` in `server/src/domain/commands.rs`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::status::Status;

/// How long the machine waits before it writes again a decision or an end that the disk
/// refused (a full or failing disk): nothing is shown meanwhile.
pub const WRITE_RETRY: Duration = Duration::from_secs(1);

/// The limits an operator set on one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// At most this many runs in flight at once; all at once when `None`.
    pub max_concurrency: Option<u32>,
    /// Stop sending once this many runs ended in error; never when `None`.
    pub max_errors: Option<u32>,
    /// How long a run may wait for its agent to connect before it is `undelivered`; not at
    /// all when `None` (the agent must be connected when its turn comes).
    pub deliver_within: Option<Duration>,
}

/// Where a slot is when its machine is made: a new command's slots are all
/// [`Slot::Unsent`], but for one sent before the machine existed; a restored command's come
/// from the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Neither sent nor decided.
    Unsent,
    /// Decided not sent (on disk) with this status.
    NotSent(Status),
    /// Sent: its run is in flight, driven elsewhere, and will end with [`Input::RunEnded`].
    Running,
    /// Its run ended (on disk) with this final status.
    Ended(Status),
}

/// What a restored command brings from the disk besides its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Until when an agent not connected may be waited for, whatever `deliver_within` says:
    /// the restart cut the agents off, and they are reconnecting.
    pub grace_until: Instant,
    /// The most runs in flight at once before the restart.
    pub peak: u32,
    /// The command was cancelled.
    pub cancelled: bool,
}

/// Something that happened to the command.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The run of this slot, asked for by [`Effect::Start`], is created and on its way.
    Started(usize),
    /// The agent of this slot, asked for by [`Effect::Start`], cannot be sent the command
    /// (an invalid or revoked id, or not connected when it may not be waited for): why.
    Unreachable(usize, String),
    /// The run of this slot has ended, with this final status, as its end was shown.
    RunEnded(usize, Status),
    /// The decision asked for by [`Effect::RecordNotSent`] is on disk, or could not be
    /// written.
    NotSentRecorded(Result<(), String>),
    /// The end asked for by [`Effect::RecordEnd`] is on disk, or could not be written.
    EndRecorded(Result<(), String>),
    /// An operator cancelled the command.
    Cancel,
    /// [`Fanout::poll_timeout`] has passed.
    Timeout,
}

/// Slots decided not sent, with one status and one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The slots, in sending order.
    pub slots: Vec<usize>,
    /// `undelivered` or `cancelled`.
    pub status: Status,
    /// Why they are not sent, for the operator.
    pub why: String,
}

/// How a command ended as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every agent succeeded.
    Succeeded,
    /// At least one agent did not succeed, and nobody cancelled the command.
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl Verdict {
    /// The verdict of a command whose slots ended with `statuses`.
    pub fn of(cancelled: bool, statuses: impl IntoIterator<Item = Status>) -> Verdict {
        if cancelled {
            Verdict::Cancelled
        } else if statuses.into_iter().all(|s| s == Status::Succeeded) {
            Verdict::Succeeded
        } else {
            Verdict::Failed
        }
    }
}

/// What the command needs done.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Check the agent of `slot` and start its run, then answer [`Input::Started`] or
    /// [`Input::Unreachable`]. The run waits for its agent's connection until `deliver_by`;
    /// unless `may_wait`, an agent not connected now is unreachable.
    Start {
        /// The slot.
        slot: usize,
        /// The run's delivery deadline.
        deliver_by: Instant,
        /// Whether an agent not connected now may be waited for.
        may_wait: bool,
    },
    /// Pass the operator's cancel to the run of this slot.
    CancelRun(usize),
    /// Write this decision durably, then answer [`Input::NotSentRecorded`]. Until then it is
    /// shown nowhere.
    RecordNotSent(Decision),
    /// The decision is on disk: show these slots as ended, not sent.
    NotSent(Decision),
    /// Write durably that the command ended so, then answer [`Input::EndRecorded`].
    RecordEnd(Verdict),
    /// The command has ended, as recorded: show it. Always the last effect.
    Ended(Verdict),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unsent,
    /// [`Effect::Start`] is out.
    Starting,
    /// In a decision being written.
    Deciding,
    NotSent(Status),
    Running,
    Ended(Status),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Going through the slots in order; waits while `max_concurrency` runs are in flight,
    /// and, past the last slot, for the runs still in flight.
    Sending,
    /// [`Effect::Start`] is out for this slot; the driver answers.
    Starting(usize),
    /// A decision is being written; `retry_at`: the last write failed, it is due again then.
    Deciding {
        decision: Decision,
        retry_at: Option<Instant>,
    },
    /// The end is being written.
    Ending {
        verdict: Verdict,
        retry_at: Option<Instant>,
    },
    /// Ended: nothing more happens.
    Ended,
}

/// The fan-out of one command to its agents.
#[derive(Debug)]
pub struct Fanout {
    limits: Limits,
    slots: Vec<State>,
    /// Every slot before it is started, decided or ended.
    next: usize,
    phase: Phase,
    in_flight: u32,
    peak: u32,
    errors: u32,
    cancelled: bool,
    grace_until: Option<Instant>,
    effects: VecDeque<Effect>,
}

impl Fanout {
    /// A new command's fan-out at `now`, its slots as given (all [`Slot::Unsent`], or one
    /// [`Slot::Running`] the driver sent before making the machine).
    pub fn new(now: Instant, limits: Limits, slots: Vec<Slot>) -> Fanout {
        Fanout::make(now, limits, slots, None)
    }

    /// The fan-out of a command restored from the disk after a restart, at `now`.
    pub fn restore(now: Instant, limits: Limits, slots: Vec<Slot>, restored: Restored) -> Fanout {
        Fanout::make(now, limits, slots, Some(restored))
    }

    fn make(now: Instant, limits: Limits, slots: Vec<Slot>, restored: Option<Restored>) -> Fanout {
        let slots: Vec<State> = slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Unsent => State::Unsent,
                Slot::NotSent(status) => State::NotSent(status),
                // A run is in flight until its final status is known.
                Slot::Running => State::Running,
                Slot::Ended(status) if !status.is_final() => State::Running,
                Slot::Ended(status) => State::Ended(status),
            })
            .collect();
        let in_flight = slots.iter().filter(|s| **s == State::Running).count() as u32;
        let errors = slots
            .iter()
            .filter(|s| matches!(s, State::Ended(status) if status.is_error()))
            .count() as u32;
        let mut fanout = Fanout {
            limits,
            slots,
            next: 0,
            phase: Phase::Sending,
            in_flight,
            peak: restored.map_or(0, |r| r.peak).max(in_flight),
            errors,
            cancelled: false,
            grace_until: restored.map(|r| r.grace_until),
            effects: VecDeque::new(),
        };
        if restored.is_some_and(|r| r.cancelled) {
            fanout.cancel();
        }
        fanout.step(now);
        fanout
    }

    /// The next effect to carry out, in order.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When the machine next needs [`Input::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Deciding { retry_at, .. } | Phase::Ending { retry_at, .. } => *retry_at,
            _ => None,
        }
    }

    /// True once the command has ended (its [`Effect::Ended`] may still be waiting in
    /// [`Fanout::poll`]).
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// How many runs are in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The most runs that were in flight at once.
    pub fn peak(&self) -> u32 {
        self.peak
    }

    /// How many runs ended in error.
    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// Whether an operator cancelled the command (before its end was decided).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Handles one input that happened at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.phase == Phase::Ended {
            return;
        }
        match input {
            Input::Started(slot) => {
                if self.phase != Phase::Starting(slot) {
                    return;
                }
                self.slots[slot] = State::Running;
                self.in_flight += 1;
                self.peak = self.peak.max(self.in_flight);
                if self.cancelled {
                    // The cancel came while the driver was starting it.
                    self.effects.push_back(Effect::CancelRun(slot));
                }
                self.phase = Phase::Sending;
                self.step(now);
            }
            Input::Unreachable(slot, why) => {
                if self.phase != Phase::Starting(slot) {
                    return;
                }
                self.decide(vec![slot], Status::Undelivered, why);
            }
            Input::RunEnded(slot, status) => {
                if !status.is_final() || self.slots.get(slot) != Some(&State::Running) {
                    return;
                }
                self.slots[slot] = State::Ended(status);
                self.in_flight -= 1;
                self.errors += u32::from(status.is_error());
                self.step(now);
            }
            Input::NotSentRecorded(outcome) => {
                let Phase::Deciding { decision, retry_at } = &mut self.phase else {
                    return;
                };
                if retry_at.is_some() {
                    // The write was given up on already; its retry is due.
                    return;
                }
                match outcome {
                    Ok(()) => {
                        let decision = decision.clone();
                        for &slot in &decision.slots {
                            self.slots[slot] = State::NotSent(decision.status);
                        }
                        self.effects.push_back(Effect::NotSent(decision));
                        self.phase = Phase::Sending;
                        self.step(now);
                    }
                    Err(_) => *retry_at = Some(now + WRITE_RETRY),
                }
            }
            Input::EndRecorded(outcome) => {
                let Phase::Ending { verdict, retry_at } = &mut self.phase else {
                    return;
                };
                if retry_at.is_some() {
                    return;
                }
                match outcome {
                    Ok(()) => {
                        let verdict = *verdict;
                        self.phase = Phase::Ended;
                        self.effects.push_back(Effect::Ended(verdict));
                    }
                    Err(_) => *retry_at = Some(now + WRITE_RETRY),
                }
            }
            Input::Cancel => {
                if !matches!(self.phase, Phase::Ending { .. }) {
                    self.cancel();
                    self.step(now);
                }
            }
            Input::Timeout => match &mut self.phase {
                Phase::Deciding { decision, retry_at } if retry_at.is_some_and(|at| now >= at) => {
                    *retry_at = None;
                    self.effects
                        .push_back(Effect::RecordNotSent(decision.clone()));
                }
                Phase::Ending { verdict, retry_at } if retry_at.is_some_and(|at| now >= at) => {
                    *retry_at = None;
                    self.effects.push_back(Effect::RecordEnd(*verdict));
                }
                _ => {}
            },
        }
    }

    fn cancel(&mut self) {
        if self.cancelled {
            return;
        }
        self.cancelled = true;
        for (slot, state) in self.slots.iter().enumerate() {
            if *state == State::Running {
                self.effects.push_back(Effect::CancelRun(slot));
            }
        }
    }

    /// Moves the sending on as far as it can go now.
    fn step(&mut self, now: Instant) {
        if self.phase != Phase::Sending {
            return;
        }
        while self
            .slots
            .get(self.next)
            .is_some_and(|s| *s != State::Unsent)
        {
            self.next += 1;
        }
        if self.next == self.slots.len() {
            if self.in_flight == 0 {
                self.end();
            }
            return;
        }
        if self.cancelled {
            return self.decide_rest(
                Status::Cancelled,
                "not sent: the command was cancelled first".into(),
            );
        }
        if let Some(max) = self.limits.max_errors
            && self.errors >= max
        {
            let errors = self.errors;
            return self.decide_rest(
                Status::Undelivered,
                format!("not sent: {errors} agents had failed, the most max_errors ({max}) allows"),
            );
        }
        if self
            .limits
            .max_concurrency
            .is_some_and(|max| self.in_flight >= max)
        {
            return;
        }
        let slot = self.next;
        let deliver_by = now + self.limits.deliver_within.unwrap_or_default();
        let grace = self.grace_until.filter(|until| now < *until);
        self.slots[slot] = State::Starting;
        self.phase = Phase::Starting(slot);
        self.effects.push_back(Effect::Start {
            slot,
            deliver_by: grace.map_or(deliver_by, |until| deliver_by.max(until)),
            may_wait: self.limits.deliver_within.is_some() || grace.is_some(),
        });
    }

    /// Decides every slot neither sent nor decided yet.
    fn decide_rest(&mut self, status: Status, why: String) {
        let rest = (self.next..self.slots.len())
            .filter(|&i| self.slots[i] == State::Unsent)
            .collect();
        self.decide(rest, status, why);
    }

    fn decide(&mut self, slots: Vec<usize>, status: Status, why: String) {
        for &slot in &slots {
            self.slots[slot] = State::Deciding;
        }
        let decision = Decision { slots, status, why };
        self.effects
            .push_back(Effect::RecordNotSent(decision.clone()));
        self.phase = Phase::Deciding {
            decision,
            retry_at: None,
        };
    }

    /// Every slot has ended or was decided: the command's end is written, shown once on disk.
    fn end(&mut self) {
        let statuses = self.slots.iter().map(|s| match s {
            State::NotSent(status) | State::Ended(status) => *status,
            _ => Status::Pending,
        });
        let verdict = Verdict::of(self.cancelled, statuses);
        self.effects.push_back(Effect::RecordEnd(verdict));
        self.phase = Phase::Ending {
            verdict,
            retry_at: None,
        };
    }
}
