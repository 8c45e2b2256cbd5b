//! The agent's side of one command, input by input, on a virtual clock.

use std::time::{Duration, Instant};

use ferry_lifecycle::command::{
    ACK_TIMEOUT, Effect, Execution, FIRST_FRAME_TIMEOUT, Input, Loss, Receipt,
};
use ferry_protocol::{
    Accepted, Cancel, Command, CommandResult, DataRequest, DataResponse, Log, LogLevel, Message,
    Outcome, Progress, ResultAck, ResultStats, close,
};

const ID: &str = "c-1";

fn command(id: &str) -> Command {
    Command {
        id: id.into(),
        topic: "echo".into(),
        payload: b"hi".to_vec(),
        content_type: String::new(),
        timeout_ms: Some(5_000),
        idempotency_key: None,
    }
}

fn result(id: &str, outcome: Outcome) -> CommandResult {
    CommandResult {
        id: id.into(),
        outcome,
        payload: b"done".to_vec(),
        stats: ResultStats::default(),
    }
}

fn drain(machine: &mut Execution) -> Vec<Effect> {
    std::iter::from_fn(|| machine.poll())
        .filter(|e| !matches!(e, Effect::Log(..)))
        .collect()
}

/// A machine that has received its command and started the plugin.
fn running(now: Instant) -> Execution {
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command(ID))));
    machine.handle(now, Input::Receipt(Ok(Receipt::New)));
    drain(&mut machine);
    machine
}

/// The plugin ends with a success.
fn succeed(machine: &mut Execution, now: Instant) {
    machine.handle(
        now,
        Input::Finished {
            result: result(ID, Outcome::Succeeded),
            dropped: 0,
        },
    );
}

/// The one effect that ends a command.
fn done(acked: bool, kept: bool) -> Vec<Effect> {
    vec![Effect::Done { acked, kept }]
}

fn progress(percent: u8) -> Message {
    Message::Progress(Progress {
        percent,
        message: format!("{percent}%"),
    })
}

fn ack(id: &str) -> Input {
    Input::Frame(Message::ResultAck(ResultAck { id: id.into() }))
}

#[test]
fn accepted_leaves_at_once_and_the_plugin_starts_only_once_the_receipt_is_durable() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command(ID))));
    let effects = drain(&mut machine);
    assert!(matches!(&effects[0], Effect::Frame(Message::Accepted(a)) if a.id == ID));
    assert!(matches!(&effects[1], Effect::Receive(c) if c.id == ID));
    assert_eq!(effects.len(), 2);
    // Nothing the plugin could say counts before it runs.
    machine.handle(now, Input::Event(progress(10)));
    assert!(drain(&mut machine).is_empty());
    machine.handle(now, Input::Receipt(Ok(Receipt::New)));
    assert_eq!(drain(&mut machine), vec![Effect::Run]);
}

#[test]
fn the_result_goes_out_while_it_is_journaled_and_the_ack_is_recorded_only_after() {
    let now = Instant::now();
    let mut machine = running(now);
    machine.handle(now, Input::Event(progress(50)));
    succeed(&mut machine, now);
    let effects = drain(&mut machine);
    assert_eq!(effects[0], Effect::Frame(progress(50)));
    assert!(matches!(&effects[1], Effect::Frame(Message::Result(r)) if r.id == ID));
    assert!(matches!(&effects[2], Effect::Journal(r) if r.id == ID));
    assert_eq!(effects[3], Effect::Finish);
    machine.handle(now, ack(ID));
    assert!(
        drain(&mut machine).is_empty(),
        "an acknowledgement is recorded only once the result is journaled"
    );
    machine.handle(now, Input::Journaled(Ok(())));
    assert_eq!(drain(&mut machine), done(true, true));
    assert!(machine.is_done());
}

#[test]
fn events_ready_together_are_consecutive_frames_up_to_the_result() {
    let now = Instant::now();
    let mut machine = running(now);
    machine.handle(now, Input::Event(progress(10)));
    machine.handle(
        now,
        Input::Event(Message::Log(Log {
            level: LogLevel::Info,
            message: "working".into(),
        })),
    );
    machine.handle(
        now,
        Input::Finished {
            result: result(ID, Outcome::Succeeded),
            dropped: 3,
        },
    );
    let effects = drain(&mut machine);
    let frames = effects
        .iter()
        .take_while(|e| matches!(e, Effect::Frame(_)))
        .count();
    assert_eq!(
        frames, 4,
        "progress, log, the dropped note and the result: {effects:?}"
    );
    assert!(
        matches!(&effects[2], Effect::Frame(Message::Log(l)) if l.message.contains("3 progress/log events were dropped"))
    );
}

#[test]
fn a_command_seen_before_is_answered_from_the_journal_and_never_run() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command(ID))));
    drain(&mut machine);
    machine.handle(
        now,
        Input::Receipt(Ok(Receipt::Finished(result(ID, Outcome::Succeeded)))),
    );
    let effects = drain(&mut machine);
    assert!(!effects.contains(&Effect::Run));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Journal(_))));
    assert!(matches!(&effects[0], Effect::Frame(Message::Result(_))));
    machine.handle(now, ack(ID));
    assert_eq!(drain(&mut machine), done(true, true));
}

#[test]
fn a_duplicate_waits_for_the_run_under_way_and_journals_nothing_of_its_own() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command("c-2"))));
    drain(&mut machine);
    machine.handle(now, Input::Receipt(Ok(Receipt::Running(ID.into()))));
    assert_eq!(drain(&mut machine), vec![Effect::WaitFor(ID.into())]);
    succeed(&mut machine, now);
    let effects = drain(&mut machine);
    assert!(
        matches!(&effects[0], Effect::Frame(Message::Result(r)) if r.id == "c-2"),
        "the result goes out under the duplicate's id: {effects:?}"
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Journal(_))));
    machine.handle(now, ack("c-2"));
    assert_eq!(drain(&mut machine), done(true, false));
}

#[test]
fn a_journal_that_cannot_record_the_command_refuses_it_without_running_it() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command(ID))));
    drain(&mut machine);
    machine.handle(now, Input::Receipt(Err("disk full".into())));
    let effects = drain(&mut machine);
    assert!(!effects.contains(&Effect::Run));
    assert!(
        matches!(&effects[0], Effect::Frame(Message::Result(r)) if matches!(&r.outcome, Outcome::Rejected(why) if why.contains("disk full")))
    );
    machine.handle(now + ACK_TIMEOUT, Input::Timeout);
    assert_eq!(drain(&mut machine), done(false, false));
}

#[test]
fn a_stream_must_begin_with_its_command_in_time() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(
        now,
        Input::Frame(Message::Cancel(Cancel { reason: "x".into() })),
    );
    assert_eq!(
        drain(&mut machine),
        vec![
            Effect::Reset(close::PROTOCOL_ERROR),
            Effect::Done {
                acked: false,
                kept: false
            }
        ]
    );

    let mut machine = Execution::on_stream(now);
    assert_eq!(machine.poll_timeout(), Some(now + FIRST_FRAME_TIMEOUT));
    machine.handle(now + Duration::from_secs(1), Input::Timeout);
    assert!(drain(&mut machine).is_empty(), "not yet");
    machine.handle(now + FIRST_FRAME_TIMEOUT, Input::Timeout);
    assert_eq!(drain(&mut machine)[0], Effect::Reset(close::PROTOCOL_ERROR));
    assert!(machine.is_done());
}

#[test]
fn cancel_and_a_reset_stop_the_plugin_once_and_a_lost_connection_does_not() {
    let now = Instant::now();
    let mut machine = running(now);
    let cancel = || {
        Input::Frame(Message::Cancel(Cancel {
            reason: "operator".into(),
        }))
    };
    machine.handle(now, cancel());
    machine.handle(now, cancel());
    machine.handle(now, Input::StreamEnded(Loss::Reset));
    assert_eq!(drain(&mut machine), vec![Effect::CancelPlugin]);

    let mut machine = running(now);
    machine.handle(now, Input::StreamEnded(Loss::Lost("gone".into())));
    machine.handle(now, Input::Event(progress(20)));
    assert!(
        drain(&mut machine).is_empty(),
        "the command goes on, with nothing sent on a lost stream"
    );
    succeed(&mut machine, now);
    let effects = drain(&mut machine);
    assert!(matches!(&effects[..], [Effect::Journal(_)]), "{effects:?}");
    machine.handle(now, Input::Journaled(Ok(())));
    assert_eq!(
        drain(&mut machine),
        done(false, true),
        "unacknowledged: it goes out again on a report stream"
    );
}

#[test]
fn only_this_commands_ack_counts_and_a_missing_one_times_out() {
    let now = Instant::now();
    let mut machine = running(now);
    succeed(&mut machine, now);
    machine.handle(now, Input::Journaled(Ok(())));
    drain(&mut machine);
    machine.handle(now, ack("someone-else"));
    assert_eq!(drain(&mut machine), done(false, true));

    let mut machine = running(now);
    succeed(&mut machine, now);
    machine.handle(now, Input::Journaled(Ok(())));
    drain(&mut machine);
    assert_eq!(machine.poll_timeout(), Some(now + ACK_TIMEOUT));
    machine.handle(now + ACK_TIMEOUT, Input::Timeout);
    assert_eq!(drain(&mut machine), done(false, true));
}

#[test]
fn data_requests_are_answered_by_the_server_or_refused_when_it_cannot_answer() {
    let now = Instant::now();
    let mut machine = running(now);
    let request = |n| {
        Input::Event(Message::DataRequest(DataRequest {
            request: n,
            key: "k".into(),
        }))
    };
    machine.handle(now, request(1));
    machine.handle(now, request(2));
    assert_eq!(drain(&mut machine).len(), 2);
    let answer = DataResponse {
        request: 1,
        value: Some(b"v".to_vec()),
        error: None,
    };
    machine.handle(now, Input::Frame(Message::DataResponse(answer.clone())));
    // An answer to nothing asked is dropped.
    machine.handle(now, Input::Frame(Message::DataResponse(answer.clone())));
    assert_eq!(drain(&mut machine), vec![Effect::AnswerData(answer)]);
    machine.handle(now, Input::StreamEnded(Loss::Lost("gone".into())));
    let effects = drain(&mut machine);
    assert!(
        matches!(
            &effects[..],
            [Effect::AnswerData(DataResponse {
                request: 2,
                value: None,
                error: Some(_)
            })]
        ),
        "a request the server can no longer answer fails at once: {effects:?}"
    );
    machine.handle(now, request(3));
    assert!(matches!(
        &drain(&mut machine)[..],
        [Effect::AnswerData(DataResponse {
            request: 3,
            value: None,
            ..
        })]
    ));
}

#[test]
fn a_frame_the_server_may_not_send_cancels_the_command() {
    let now = Instant::now();
    let mut machine = running(now);
    machine.handle(
        now,
        // Only an agent sends Accepted.
        Input::Frame(Message::Accepted(Accepted { id: ID.into() })),
    );
    assert_eq!(drain(&mut machine), vec![Effect::CancelPlugin]);
    assert!(!machine.reading());
}

#[test]
fn a_command_given_up_while_its_receipt_is_written_never_starts() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command(ID))));
    drain(&mut machine);
    machine.handle(now, Input::StreamEnded(Loss::Reset));
    machine.handle(now, Input::Receipt(Ok(Receipt::New)));
    let effects = drain(&mut machine);
    assert!(!effects.contains(&Effect::Run), "{effects:?}");
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Journal(r) if r.outcome == Outcome::Cancelled))
    );
}

#[test]
fn a_resumed_command_runs_at_once_and_leaves_its_result_to_a_report_stream() {
    let now = Instant::now();
    let mut machine = Execution::resumed(ID);
    assert_eq!(drain(&mut machine), vec![Effect::Run]);
    succeed(&mut machine, now);
    assert!(matches!(&drain(&mut machine)[..], [Effect::Journal(_)]));
    machine.handle(now, Input::Journaled(Ok(())));
    assert_eq!(drain(&mut machine), done(false, true));
}

#[test]
fn a_read_only_topic_runs_at_once_and_journals_nothing() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command(ID))));
    drain(&mut machine);
    machine.handle(now, Input::Receipt(Ok(Receipt::ReadOnly)));
    assert_eq!(drain(&mut machine), vec![Effect::Run]);
    succeed(&mut machine, now);
    let effects = drain(&mut machine);
    assert!(
        matches!(
            &effects[..],
            [Effect::Frame(Message::Result(_)), Effect::Finish]
        ),
        "{effects:?}"
    );
    machine.handle(now, ack(ID));
    assert_eq!(
        drain(&mut machine),
        done(true, false),
        "acknowledged without waiting for a journal write, and nothing to record"
    );
}

/// Found by the fuzz oracle: a result whose journal write failed was reported `kept`, so the
/// driver would count on a report stream delivering from the journal a result it does not hold.
#[test]
fn a_result_the_journal_could_not_write_is_not_said_to_be_kept() {
    let now = Instant::now();
    let mut machine = running(now);
    succeed(&mut machine, now);
    assert!(
        drain(&mut machine)
            .iter()
            .any(|e| matches!(e, Effect::Journal(_)))
    );
    machine.handle(now, Input::Journaled(Err("disk full".into())));
    assert!(drain(&mut machine).is_empty());
    machine.handle(now + ACK_TIMEOUT, Input::Timeout);
    assert_eq!(drain(&mut machine), done(false, false));
}

/// Found by the fuzz oracle: a stored result was sent under the id it was stored with, which
/// for an idempotency key's earlier command is not this stream's, and the server ends a run
/// whose stream carries another id's `Result` as a protocol error.
#[test]
fn a_stored_result_is_sent_under_this_commands_id() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command(ID))));
    drain(&mut machine);
    machine.handle(
        now,
        Input::Receipt(Ok(Receipt::Finished(result("c-0", Outcome::Succeeded)))),
    );
    let sent = drain(&mut machine);
    assert!(
        sent.contains(&Effect::Frame(Message::Result(result(
            ID,
            Outcome::Succeeded
        )))),
        "{sent:?}"
    );
}

/// Found by the fuzz oracle: a `Cancel` read while the receipt was being written was dropped,
/// and the plugin then ran to its end; the server sends its `Cancel` once per stream.
#[test]
fn a_cancel_while_the_receipt_is_written_keeps_the_plugin_from_starting() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    machine.handle(now, Input::Frame(Message::Command(command(ID))));
    drain(&mut machine);
    machine.handle(
        now,
        Input::Frame(Message::Cancel(Cancel {
            reason: "operator".into(),
        })),
    );
    machine.handle(now, Input::Receipt(Ok(Receipt::New)));
    let out = drain(&mut machine);
    assert!(!out.contains(&Effect::Run), "{out:?}");
    assert!(
        out.contains(&Effect::Frame(Message::Result(CommandResult {
            payload: Vec::new(),
            ..result(ID, Outcome::Cancelled)
        }))),
        "{out:?}"
    );
}

/// Found by the fuzz oracle: bytes that are not a frame on a side no longer read (the server
/// had finished it) cancelled the running plugin.
#[test]
fn a_bad_frame_after_the_server_finished_its_side_changes_nothing() {
    let now = Instant::now();
    let mut machine = running(now);
    machine.handle(now, Input::StreamEnded(Loss::Finished));
    drain(&mut machine);
    machine.handle(now, Input::BadFrame("garbage".into()));
    assert_eq!(drain(&mut machine), vec![]);
}
