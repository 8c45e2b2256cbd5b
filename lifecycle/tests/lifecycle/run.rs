//! The server's run machine, one scenario at a time, on a virtual clock.

use std::time::{Duration, Instant};

use ferry_lifecycle::run::{RECORD_RETRY, RETRY_PAUSE};
use ferry_lifecycle::{Effect, End, Input, Limits, Run, Start, Status};
use ferry_protocol::{Accepted, CommandResult, Message, Outcome, ResultAck, ResultStats, close};

const LIMITS: Limits = Limits {
    timeout: Duration::from_secs(5),
    result_grace: Duration::from_secs(10),
    result_wait: Duration::from_secs(600),
};

struct Clock(Instant);

impl Clock {
    fn at(&self, secs: f64) -> Instant {
        self.0 + Duration::from_secs_f64(secs)
    }
}

fn effects(run: &mut Run) -> Vec<Effect> {
    std::iter::from_fn(|| run.poll()).collect()
}

fn result(id: &str, outcome: Outcome) -> CommandResult {
    CommandResult {
        id: id.into(),
        outcome,
        payload: b"out".to_vec(),
        stats: ResultStats::default(),
    }
}

fn accepted(id: &str) -> Message {
    Message::Accepted(Accepted { id: id.into() })
}

fn ack(id: &str) -> Effect {
    Effect::Frame(Message::ResultAck(ResultAck { id: id.into() }))
}

/// A new run, sent and on its stream at `t`.
fn on_stream(clock: &Clock, t: f64) -> Run {
    let mut run = Run::new(
        "r1",
        LIMITS,
        Start::New {
            deliver_by: clock.at(t + 60.0),
        },
    );
    assert!(run.wants_connection(clock.at(t)));
    run.handle(clock.at(t), Input::Connected);
    assert_eq!(effects(&mut run), vec![Effect::Send]);
    run.handle(clock.at(t), Input::Sent);
    assert!(run.on_stream());
    run
}

fn recorded_end(effects: &[Effect]) -> Option<&End> {
    effects.iter().find_map(|e| match e {
        Effect::Record(end) => Some(end),
        _ => None,
    })
}

#[test]
fn a_result_is_acknowledged_only_once_it_is_recorded() {
    let clock = Clock(Instant::now());
    let mut run = on_stream(&clock, 0.0);
    run.handle(clock.at(0.1), Input::Frame(accepted("r1")));
    assert_eq!(effects(&mut run), vec![Effect::Accepted]);
    let reported = result("r1", Outcome::Succeeded);
    run.handle(
        clock.at(0.2),
        Input::Frame(Message::Result(reported.clone())),
    );
    let recording = effects(&mut run);
    assert_eq!(recording.len(), 1, "{recording:?}");
    let end = recorded_end(&recording)
        .expect("the result is recorded first")
        .clone();
    assert_eq!(end.status, Status::Succeeded);
    assert_eq!(end.result.as_ref(), Some(&reported));
    assert!(!run.is_ended());
    run.handle(clock.at(0.3), Input::Recorded(Ok(())));
    assert_eq!(
        effects(&mut run),
        vec![ack("r1"), Effect::Finish, Effect::Ended(end)]
    );
    assert!(run.is_ended());
}

#[test]
fn a_result_that_cannot_be_recorded_is_not_acknowledged_and_asked_for_again() {
    let clock = Clock(Instant::now());
    let mut run = on_stream(&clock, 0.0);
    let reported = result("r1", Outcome::Failed("no".into()));
    run.handle(
        clock.at(1.0),
        Input::Frame(Message::Result(reported.clone())),
    );
    effects(&mut run);
    run.handle(clock.at(1.1), Input::Recorded(Err("disk full".into())));
    let after = effects(&mut run);
    assert_eq!(after, vec![Effect::Reset(close::NORMAL)]);
    assert!(!run.is_ended() && !run.on_stream());
    // It pauses before asking again, so a failing disk is not hammered.
    assert!(!run.wants_connection(clock.at(1.1)));
    assert!(run.wants_connection(clock.at(1.1) + RECORD_RETRY));
    // Far past the first give-up time: a resend still gets its answer.
    let later = 1.1 + RECORD_RETRY.as_secs_f64() + 30.0;
    run.handle(clock.at(later), Input::Connected);
    assert_eq!(effects(&mut run), vec![Effect::Send]);
    run.handle(clock.at(later), Input::Sent);
    assert!(run.poll_timeout().unwrap() >= clock.at(later) + LIMITS.result_grace);
    run.handle(
        clock.at(later + 0.1),
        Input::Frame(Message::Result(reported.clone())),
    );
    assert!(recorded_end(&effects(&mut run)).is_some());
    run.handle(clock.at(later + 0.2), Input::Recorded(Ok(())));
    let done = effects(&mut run);
    assert!(done.contains(&ack("r1")), "{done:?}");
    assert_eq!(
        done.last(),
        Some(&Effect::Ended(End {
            status: Status::Failed,
            detail: Some("no".into()),
            result: Some(reported),
        }))
    );
}

#[test]
fn frames_for_another_command_are_a_protocol_error() {
    let clock = Clock(Instant::now());
    for frame in [
        accepted("r2"),
        Message::Result(result("r2", Outcome::Succeeded)),
    ] {
        let mut run = on_stream(&clock, 0.0);
        run.handle(clock.at(0.1), Input::Frame(frame));
        let out = effects(&mut run);
        assert_eq!(out[0], Effect::Reset(close::PROTOCOL_ERROR));
        let end = recorded_end(&out).expect("the run ends");
        assert_eq!(end.status, Status::Lost);
        assert!(
            end.detail.as_deref().unwrap().contains("r2"),
            "{:?}",
            end.detail
        );
        assert!(end.result.is_none());
    }
    // A message the agent may not send on a command stream, likewise.
    let mut run = on_stream(&clock, 0.0);
    run.handle(
        clock.at(0.1),
        Input::Frame(Message::ResultAck(ResultAck { id: "r1".into() })),
    );
    assert_eq!(effects(&mut run)[0], Effect::Reset(close::PROTOCOL_ERROR));
}

#[test]
fn undelivered_is_recorded_before_it_is_shown_and_is_never_sent_after() {
    let clock = Clock(Instant::now());
    let mut run = Run::new(
        "r1",
        LIMITS,
        Start::New {
            deliver_by: clock.at(2.0),
        },
    );
    assert_eq!(run.poll_timeout(), Some(clock.at(2.0)));
    run.handle(clock.at(2.0), Input::Timeout);
    let out = effects(&mut run);
    assert_eq!(recorded_end(&out).unwrap().status, Status::Undelivered);
    assert!(!out.iter().any(|e| matches!(e, Effect::Ended(_))));
    // The write fails: the decision stands and is written again, still not shown.
    run.handle(clock.at(2.1), Input::Recorded(Err("io".into())));
    let out = effects(&mut run);
    assert_eq!(recorded_end(&out).unwrap().status, Status::Undelivered);
    run.handle(clock.at(2.2), Input::Connected);
    assert!(
        effects(&mut run).is_empty(),
        "nothing is sent while recording"
    );
    run.handle(clock.at(2.3), Input::Recorded(Ok(())));
    assert!(
        matches!(effects(&mut run).as_slice(), [Effect::Ended(e)] if e.status == Status::Undelivered)
    );
    run.handle(clock.at(2.4), Input::Connected);
    run.handle(clock.at(2.4), Input::Timeout);
    assert!(effects(&mut run).is_empty());
}

#[test]
fn a_resumed_run_waits_for_the_agents_answer_however_long_ago_it_was_sent() {
    let clock = Clock(Instant::now());
    // Sent at 0, the server restarted, and the agent comes back at 25 s: past the command's
    // timeout plus grace (15 s), well within result_wait.
    let mut run = Run::new(
        "r1",
        LIMITS,
        Start::Resumed {
            sent_at: clock.at(0.0),
        },
    );
    assert!(run.poll_timeout().unwrap() >= clock.at(615.0));
    run.handle(clock.at(25.0), Input::Connected);
    assert_eq!(effects(&mut run), vec![Effect::Send]);
    run.handle(clock.at(25.0), Input::Sent);
    assert_eq!(run.poll_timeout(), Some(clock.at(35.0)));
    run.handle(clock.at(25.1), Input::Frame(accepted("r1")));
    run.handle(
        clock.at(25.1),
        Input::Frame(Message::Result(result("r1", Outcome::Succeeded))),
    );
    let out = effects(&mut run);
    assert_eq!(recorded_end(&out).unwrap().status, Status::Succeeded);
}

#[test]
fn a_run_lost_mid_way_is_not_undelivered_and_waits_result_wait() {
    let clock = Clock(Instant::now());
    let mut run = Run::new(
        "r1",
        LIMITS,
        Start::New {
            deliver_by: clock.at(1.0),
        },
    );
    run.handle(clock.at(0.5), Input::Connected);
    effects(&mut run);
    // The write of the Command broke partway: the agent may have it.
    run.handle(clock.at(0.6), Input::StreamEnded("reset".into()));
    effects(&mut run);
    assert!(!run.wants_connection(clock.at(0.6)));
    assert!(run.wants_connection(clock.at(0.6) + RETRY_PAUSE));
    run.handle(clock.at(5.0), Input::Timeout);
    assert!(
        effects(&mut run).is_empty(),
        "past deliver_by, but it may have run"
    );
    let deadline = run.poll_timeout().unwrap();
    assert_eq!(deadline, clock.at(0.6) + Duration::from_secs(615));
    run.handle(deadline, Input::Timeout);
    assert_eq!(
        recorded_end(&effects(&mut run)).unwrap().status,
        Status::Lost
    );
}

#[test]
fn a_reported_result_is_acknowledged_to_its_report_stream_once_recorded() {
    let clock = Clock(Instant::now());
    let mut run = on_stream(&clock, 0.0);
    run.handle(clock.at(1.0), Input::StreamEnded("connection lost".into()));
    effects(&mut run);
    let reported = result("r1", Outcome::Succeeded);
    run.handle(clock.at(3.0), Input::Reported(reported.clone()));
    assert!(recorded_end(&effects(&mut run)).is_some());
    // A second copy arriving meanwhile waits for the same write.
    run.handle(clock.at(3.1), Input::Reported(reported.clone()));
    assert!(effects(&mut run).is_empty());
    run.handle(clock.at(3.2), Input::Recorded(Ok(())));
    let out = effects(&mut run);
    assert_eq!(
        out.iter()
            .filter(|e| **e == Effect::AckReport("r1".into()))
            .count(),
        2,
        "{out:?}"
    );
    // After the end, a further copy is acknowledged from the record.
    run.handle(clock.at(4.0), Input::Reported(reported));
    assert_eq!(effects(&mut run), vec![Effect::AckReport("r1".into())]);
}

#[test]
fn a_cancel_before_sending_ends_the_run_and_after_sending_reaches_the_agent() {
    let clock = Clock(Instant::now());
    let mut run = Run::new(
        "r1",
        LIMITS,
        Start::New {
            deliver_by: clock.at(60.0),
        },
    );
    run.handle(clock.at(0.0), Input::Cancel);
    assert_eq!(
        recorded_end(&effects(&mut run)).unwrap().status,
        Status::Cancelled
    );

    let mut run = on_stream(&clock, 0.0);
    run.handle(clock.at(0.5), Input::Cancel);
    let out = effects(&mut run);
    assert!(
        matches!(out.as_slice(), [Effect::Frame(Message::Cancel(_))]),
        "{out:?}"
    );
    // Lost and resent: the cancel goes out on the new stream too.
    run.handle(clock.at(1.0), Input::StreamEnded("gone".into()));
    effects(&mut run);
    run.handle(clock.at(2.0), Input::Connected);
    effects(&mut run);
    run.handle(clock.at(2.0), Input::Sent);
    assert!(matches!(
        effects(&mut run).as_slice(),
        [Effect::Frame(Message::Cancel(_))]
    ));
}

#[test]
fn a_live_stream_without_a_result_times_out_after_the_grace() {
    let clock = Clock(Instant::now());
    let mut run = on_stream(&clock, 0.0);
    assert_eq!(run.poll_timeout(), Some(clock.at(15.0)));
    run.handle(clock.at(14.9), Input::Timeout);
    assert!(effects(&mut run).is_empty());
    run.handle(clock.at(15.0), Input::Timeout);
    let out = effects(&mut run);
    assert_eq!(out[0], Effect::Reset(close::NORMAL));
    assert_eq!(recorded_end(&out).unwrap().status, Status::TimedOut);
}

/// Found by the fuzz oracle: an ended run acknowledged any report, whatever its id, so a
/// report stream that handed it another command's result (a driver that routes reports by
/// mistake) made that command's agent forget a result no one recorded.
#[test]
fn an_ended_run_acknowledges_only_its_own_result() {
    let clock = Clock(Instant::now());
    let mut run = on_stream(&clock, 0.0);
    run.handle(
        clock.at(1.0),
        Input::Frame(Message::Result(result("r1", Outcome::Succeeded))),
    );
    effects(&mut run);
    run.handle(clock.at(1.1), Input::Recorded(Ok(())));
    effects(&mut run);
    assert!(run.is_ended());
    run.handle(
        clock.at(2.0),
        Input::Reported(result("r2", Outcome::Succeeded)),
    );
    assert_eq!(effects(&mut run), vec![Effect::RefuseReport("r2".into())]);
}
