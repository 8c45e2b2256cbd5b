//! The fan-out machine, one scenario at a time, on a virtual clock.

use std::time::{Duration, Instant};

use ferry_lifecycle::Status;
use ferry_lifecycle::fanout::{
    Decision, Effect, Fanout, Input, Limits, Restored, Slot, Verdict, WRITE_RETRY,
};

struct Clock(Instant);

impl Clock {
    fn at(&self, secs: f64) -> Instant {
        self.0 + Duration::from_secs_f64(secs)
    }
}

fn effects(fanout: &mut Fanout) -> Vec<Effect> {
    std::iter::from_fn(|| fanout.poll()).collect()
}

fn limits(max_concurrency: Option<u32>, max_errors: Option<u32>) -> Limits {
    Limits {
        max_concurrency,
        max_errors,
        deliver_within: None,
    }
}

fn start(slot: usize, at: Instant) -> Effect {
    Effect::Start {
        slot,
        deliver_by: at,
        may_wait: false,
    }
}

fn unsent(n: usize) -> Vec<Slot> {
    vec![Slot::Unsent; n]
}

/// Answers every `Start` among `effects` with `Started`, and returns the slots started.
fn start_all(fanout: &mut Fanout, now: Instant, mut pending: Vec<Effect>) -> Vec<usize> {
    let mut started = Vec::new();
    while let Some(effect) = pending.pop() {
        if let Effect::Start { slot, .. } = effect {
            started.push(slot);
            fanout.handle(now, Input::Started(slot));
            pending.extend(effects(fanout));
        }
    }
    started.sort_unstable();
    started
}

#[test]
fn no_more_than_max_concurrency_runs_are_in_flight() {
    let clock = Clock(Instant::now());
    let mut fanout = Fanout::new(clock.at(0.0), limits(Some(2), None), unsent(5));
    assert_eq!(effects(&mut fanout), vec![start(0, clock.at(0.0))]);
    fanout.handle(clock.at(0.0), Input::Started(0));
    assert_eq!(effects(&mut fanout), vec![start(1, clock.at(0.0))]);
    fanout.handle(clock.at(0.0), Input::Started(1));
    assert_eq!(
        effects(&mut fanout),
        vec![],
        "two in flight: the third waits"
    );
    assert_eq!(fanout.in_flight(), 2);

    fanout.handle(clock.at(1.0), Input::RunEnded(1, Status::Succeeded));
    assert_eq!(effects(&mut fanout), vec![start(2, clock.at(1.0))]);
    fanout.handle(clock.at(1.0), Input::Started(2));
    for (t, slot) in [(2.0, 0), (3.0, 2)] {
        fanout.handle(clock.at(t), Input::RunEnded(slot, Status::Succeeded));
        let next = effects(&mut fanout);
        assert_eq!(start_all(&mut fanout, clock.at(t), next).len(), 1);
    }
    assert_eq!(fanout.in_flight(), 2);
    fanout.handle(clock.at(4.0), Input::RunEnded(3, Status::Succeeded));
    assert_eq!(effects(&mut fanout), vec![]);
    fanout.handle(clock.at(5.0), Input::RunEnded(4, Status::Succeeded));
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordEnd(Verdict::Succeeded)]
    );
    assert!(!fanout.is_ended(), "not ended before its end is on disk");
    fanout.handle(clock.at(5.0), Input::EndRecorded(Ok(())));
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::Ended(Verdict::Succeeded)]
    );
    assert!(fanout.is_ended());
    assert_eq!(fanout.peak(), 2);
}

#[test]
fn without_a_limit_every_agent_is_sent_it_at_once() {
    let clock = Clock(Instant::now());
    let mut fanout = Fanout::new(clock.at(0.0), limits(None, None), unsent(4));
    let first = effects(&mut fanout);
    assert_eq!(
        start_all(&mut fanout, clock.at(0.0), first),
        vec![0, 1, 2, 3]
    );
    assert_eq!(fanout.peak(), 4);
}

#[test]
fn sending_stops_once_max_errors_runs_failed_and_the_rest_is_undelivered_once_on_disk() {
    let clock = Clock(Instant::now());
    let mut fanout = Fanout::new(clock.at(0.0), limits(Some(1), Some(2)), unsent(5));
    let now = clock.at(0.0);
    assert_eq!(effects(&mut fanout), vec![start(0, now)]);
    fanout.handle(now, Input::Started(0));
    fanout.handle(clock.at(1.0), Input::RunEnded(0, Status::Failed));
    assert_eq!(effects(&mut fanout), vec![start(1, clock.at(1.0))]);
    fanout.handle(clock.at(1.0), Input::Started(1));
    // A cancelled or undelivered run is no error; a timed-out one is.
    fanout.handle(clock.at(2.0), Input::RunEnded(1, Status::TimedOut));
    let decision = Decision {
        slots: vec![2, 3, 4],
        status: Status::Undelivered,
        why: "not sent: 2 agents had failed, the most max_errors (2) allows".into(),
    };
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordNotSent(decision.clone())]
    );
    fanout.handle(clock.at(2.5), Input::NotSentRecorded(Ok(())));
    assert_eq!(
        effects(&mut fanout),
        vec![
            Effect::NotSent(decision),
            Effect::RecordEnd(Verdict::Failed)
        ]
    );
}

#[test]
fn undelivered_and_cancelled_runs_do_not_count_as_errors() {
    let clock = Clock(Instant::now());
    let now = clock.at(0.0);
    let mut fanout = Fanout::new(now, limits(Some(1), Some(1)), unsent(3));
    assert_eq!(effects(&mut fanout), vec![start(0, now)]);
    fanout.handle(now, Input::Started(0));
    fanout.handle(now, Input::RunEnded(0, Status::Undelivered));
    assert_eq!(effects(&mut fanout), vec![start(1, now)]);
    fanout.handle(now, Input::Started(1));
    fanout.handle(now, Input::RunEnded(1, Status::Cancelled));
    assert_eq!(effects(&mut fanout), vec![start(2, now)]);
    assert_eq!(fanout.errors(), 0);
}

#[test]
fn an_unreachable_agent_is_undelivered_once_on_disk_and_the_sending_goes_on() {
    let clock = Clock(Instant::now());
    let now = clock.at(0.0);
    let mut fanout = Fanout::new(now, limits(Some(1), Some(1)), unsent(2));
    assert_eq!(effects(&mut fanout), vec![start(0, now)]);
    let why = "not sent: agent 'a' is not connected".to_string();
    fanout.handle(now, Input::Unreachable(0, why.clone()));
    let decision = Decision {
        slots: vec![0],
        status: Status::Undelivered,
        why,
    };
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordNotSent(decision.clone())]
    );
    fanout.handle(now, Input::NotSentRecorded(Ok(())));
    // Not an error: the next agent is sent it, within max_errors 1.
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::NotSent(decision), start(1, now)]
    );
    assert_eq!(fanout.peak(), 0, "nothing ran yet");
}

#[test]
fn a_decision_the_disk_refused_is_written_again_and_shown_only_once_on_disk() {
    let clock = Clock(Instant::now());
    let mut fanout = Fanout::new(clock.at(0.0), limits(None, None), unsent(1));
    effects(&mut fanout);
    fanout.handle(clock.at(0.0), Input::Unreachable(0, "revoked".into()));
    let decision = Decision {
        slots: vec![0],
        status: Status::Undelivered,
        why: "revoked".into(),
    };
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordNotSent(decision.clone())]
    );
    fanout.handle(
        clock.at(0.1),
        Input::NotSentRecorded(Err("disk full".into())),
    );
    assert_eq!(effects(&mut fanout), vec![]);
    let retry = clock.at(0.1) + WRITE_RETRY;
    assert_eq!(fanout.poll_timeout(), Some(retry));
    fanout.handle(clock.at(0.5), Input::Timeout);
    assert_eq!(effects(&mut fanout), vec![], "not due yet");
    fanout.handle(retry, Input::Timeout);
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordNotSent(decision.clone())]
    );
    assert_eq!(fanout.poll_timeout(), None);
    fanout.handle(retry, Input::NotSentRecorded(Ok(())));
    assert_eq!(
        effects(&mut fanout),
        vec![
            Effect::NotSent(decision),
            Effect::RecordEnd(Verdict::Failed)
        ]
    );
}

#[test]
fn the_end_is_shown_only_once_on_disk() {
    let clock = Clock(Instant::now());
    let mut fanout = Fanout::new(clock.at(0.0), limits(None, None), vec![Slot::Running]);
    assert_eq!(effects(&mut fanout), vec![]);
    fanout.handle(clock.at(1.0), Input::RunEnded(0, Status::Succeeded));
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordEnd(Verdict::Succeeded)]
    );
    fanout.handle(clock.at(1.0), Input::EndRecorded(Err("io".into())));
    assert_eq!(effects(&mut fanout), vec![]);
    assert!(!fanout.is_ended());
    fanout.handle(clock.at(1.0) + WRITE_RETRY, Input::Timeout);
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordEnd(Verdict::Succeeded)]
    );
    // A cancel while the end is written changes nothing: the end is decided.
    fanout.handle(clock.at(2.5), Input::Cancel);
    assert_eq!(effects(&mut fanout), vec![]);
    fanout.handle(clock.at(3.0), Input::EndRecorded(Ok(())));
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::Ended(Verdict::Succeeded)]
    );
    // Nothing after the end.
    fanout.handle(clock.at(4.0), Input::EndRecorded(Ok(())));
    fanout.handle(clock.at(4.0), Input::Cancel);
    assert_eq!(effects(&mut fanout), vec![]);
}

#[test]
fn cancel_decides_the_unsent_cancelled_and_passes_on_to_the_runs() {
    let clock = Clock(Instant::now());
    let now = clock.at(0.0);
    let mut fanout = Fanout::new(now, limits(Some(2), None), unsent(4));
    let first = effects(&mut fanout);
    assert_eq!(start_all(&mut fanout, now, first), vec![0, 1]);
    fanout.handle(clock.at(1.0), Input::Cancel);
    let decision = Decision {
        slots: vec![2, 3],
        status: Status::Cancelled,
        why: "not sent: the command was cancelled first".into(),
    };
    assert_eq!(
        effects(&mut fanout),
        vec![
            Effect::CancelRun(0),
            Effect::CancelRun(1),
            Effect::RecordNotSent(decision.clone())
        ]
    );
    assert!(fanout.is_cancelled());
    fanout.handle(clock.at(1.0), Input::NotSentRecorded(Ok(())));
    assert_eq!(effects(&mut fanout), vec![Effect::NotSent(decision)]);
    fanout.handle(clock.at(1.5), Input::RunEnded(0, Status::Cancelled));
    fanout.handle(clock.at(1.5), Input::Cancel);
    assert_eq!(effects(&mut fanout), vec![], "a cancel is passed on once");
    fanout.handle(clock.at(2.0), Input::RunEnded(1, Status::Succeeded));
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordEnd(Verdict::Cancelled)]
    );
}

#[test]
fn a_run_started_while_the_cancel_came_is_passed_it() {
    let clock = Clock(Instant::now());
    let now = clock.at(0.0);
    let mut fanout = Fanout::new(now, limits(Some(1), None), unsent(2));
    assert_eq!(effects(&mut fanout), vec![start(0, now)]);
    fanout.handle(now, Input::Cancel);
    assert_eq!(effects(&mut fanout), vec![]);
    fanout.handle(now, Input::Started(0));
    let decision = Decision {
        slots: vec![1],
        status: Status::Cancelled,
        why: "not sent: the command was cancelled first".into(),
    };
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::CancelRun(0), Effect::RecordNotSent(decision)]
    );
}

#[test]
fn a_cancel_while_a_decision_is_written_decides_the_rest_after_it() {
    let clock = Clock(Instant::now());
    let now = clock.at(0.0);
    let mut fanout = Fanout::new(now, limits(Some(1), None), unsent(3));
    effects(&mut fanout);
    fanout.handle(now, Input::Unreachable(0, "offline".into()));
    effects(&mut fanout);
    fanout.handle(now, Input::Cancel);
    assert_eq!(effects(&mut fanout), vec![]);
    fanout.handle(now, Input::NotSentRecorded(Ok(())));
    let out = effects(&mut fanout);
    assert!(
        matches!(&out[0], Effect::NotSent(d) if d.slots == [0] && d.status == Status::Undelivered)
    );
    assert!(
        matches!(&out[1], Effect::RecordNotSent(d) if d.slots == [1, 2] && d.status == Status::Cancelled),
        "{out:?}"
    );
    fanout.handle(now, Input::NotSentRecorded(Ok(())));
    let out = effects(&mut fanout);
    assert_eq!(out.last(), Some(&Effect::RecordEnd(Verdict::Cancelled)));
}

#[test]
fn deliver_within_lets_runs_wait_for_their_agents() {
    let clock = Clock(Instant::now());
    let now = clock.at(3.0);
    let mut fanout = Fanout::new(
        now,
        Limits {
            max_concurrency: None,
            max_errors: None,
            deliver_within: Some(Duration::from_secs(30)),
        },
        unsent(1),
    );
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::Start {
            slot: 0,
            deliver_by: clock.at(33.0),
            may_wait: true
        }]
    );
}

#[test]
fn a_restored_command_resumes_where_it_was() {
    let clock = Clock(Instant::now());
    let now = clock.at(0.0);
    let grace_until = clock.at(10.0);
    let slots = vec![
        Slot::Ended(Status::Failed),
        Slot::NotSent(Status::Undelivered),
        Slot::Running,
        Slot::Unsent,
        Slot::Unsent,
    ];
    let restored = Restored {
        grace_until,
        peak: 1,
        cancelled: false,
    };
    let mut fanout = Fanout::restore(now, limits(Some(1), Some(2)), slots, restored);
    // The resumed run holds the one place; the restored failure counts.
    assert_eq!(effects(&mut fanout), vec![]);
    assert_eq!((fanout.in_flight(), fanout.errors()), (1, 1));
    fanout.handle(clock.at(2.0), Input::RunEnded(2, Status::Succeeded));
    // An agent cut off by the restart is waited for until the grace ends.
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::Start {
            slot: 3,
            deliver_by: grace_until,
            may_wait: true
        }]
    );
    fanout.handle(clock.at(2.0), Input::Started(3));
    fanout.handle(clock.at(12.0), Input::RunEnded(3, Status::Succeeded));
    // Past the grace, deliver_within (none) rules again.
    assert_eq!(effects(&mut fanout), vec![start(4, clock.at(12.0))]);
}

#[test]
fn a_restored_command_with_every_slot_done_ends() {
    let clock = Clock(Instant::now());
    let restored = Restored {
        grace_until: clock.at(10.0),
        peak: 2,
        cancelled: false,
    };
    let slots = vec![
        Slot::Ended(Status::Succeeded),
        Slot::Ended(Status::Succeeded),
    ];
    let mut fanout = Fanout::restore(clock.at(0.0), limits(Some(1), None), slots, restored);
    assert_eq!(
        effects(&mut fanout),
        vec![Effect::RecordEnd(Verdict::Succeeded)]
    );
    assert_eq!(fanout.peak(), 2);
}

#[test]
fn a_restored_cancelled_command_cancels_its_runs_and_sends_nothing() {
    let clock = Clock(Instant::now());
    let restored = Restored {
        grace_until: clock.at(10.0),
        peak: 0,
        cancelled: true,
    };
    let slots = vec![Slot::Running, Slot::Unsent];
    let mut fanout = Fanout::restore(clock.at(0.0), limits(None, None), slots, restored);
    let out = effects(&mut fanout);
    assert_eq!(out[0], Effect::CancelRun(0));
    assert!(
        matches!(&out[1], Effect::RecordNotSent(d) if d.slots == [1] && d.status == Status::Cancelled)
    );
}

#[test]
fn inputs_out_of_turn_change_nothing() {
    let clock = Clock(Instant::now());
    let now = clock.at(0.0);
    let mut fanout = Fanout::new(now, limits(Some(1), Some(1)), unsent(3));
    assert_eq!(effects(&mut fanout), vec![start(0, now)]);
    // Another slot's answer, an end of a run never started, writes nobody asked for.
    fanout.handle(now, Input::Started(1));
    fanout.handle(now, Input::Unreachable(2, "x".into()));
    fanout.handle(now, Input::RunEnded(1, Status::Failed));
    fanout.handle(now, Input::RunEnded(9, Status::Failed));
    fanout.handle(now, Input::NotSentRecorded(Ok(())));
    fanout.handle(now, Input::EndRecorded(Ok(())));
    fanout.handle(now, Input::Timeout);
    assert_eq!(effects(&mut fanout), vec![]);
    assert_eq!((fanout.in_flight(), fanout.errors()), (0, 0));
    fanout.handle(now, Input::Started(0));
    // A run that has not ended is still in flight; one that ended ends once.
    fanout.handle(now, Input::RunEnded(0, Status::Running));
    assert_eq!(fanout.in_flight(), 1);
    fanout.handle(now, Input::RunEnded(0, Status::Succeeded));
    fanout.handle(now, Input::RunEnded(0, Status::Failed));
    assert_eq!((fanout.in_flight(), fanout.errors()), (0, 0));
    assert_eq!(effects(&mut fanout), vec![start(1, now)]);
}
