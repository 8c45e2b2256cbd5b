//! The fuzz target's generator and oracle (`ferry_lifecycle::fuzzing`), run by `cargo test`:
//! proptest feeds it random byte strings, the seeds the fuzz run starts from must reach what
//! they are named for, and the oracle must fail on effects that break a guarantee, or it
//! would pass anything.

use std::time::{Duration, Instant};

use ferry_lifecycle::command::{self, Execution, Receipt};
use ferry_lifecycle::fuzzing::{self, ExecutionOracle, ID, RunOracle};
use ferry_lifecycle::{Effect, End, Input, Limits, Run, Start, Status};
use ferry_protocol::{Command, CommandResult, Message, Outcome, ResultAck, ResultStats};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_keep_both_machines_to_their_guarantees(
        data in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        fuzzing::check(&data);
    }

    /// Mostly zeros, the bytes that move the machines along: random bytes alone rarely go
    /// deep (a resend after a failed write, the ack after the journal).
    #[test]
    fn bytes_near_the_happy_path_keep_them_too(
        data in proptest::collection::vec(prop_oneof![3 => Just(0u8), 1 => any::<u8>()], 0..120)
    ) {
        fuzzing::check(&data);
    }
}

#[test]
fn the_seeds_reach_what_they_are_named_for() {
    let seeds = fuzzing::seeds();
    let seed = |name: &str| &seeds.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(fuzzing::check_run(seed("happy")).status, Status::Succeeded);
    assert_eq!(fuzzing::check_execution(seed("happy")), (true, true));
    assert_eq!(
        fuzzing::check_run(seed("resumed")).status,
        Status::Succeeded
    );
    // Resumed after a restart: no stream to acknowledge it, so it waits in the journal.
    assert_eq!(fuzzing::check_execution(seed("resumed")), (false, true));
    for (_, data) in &seeds {
        fuzzing::check(data);
    }
}

const LIMITS: Limits = Limits {
    timeout: Duration::from_secs(5),
    result_grace: Duration::from_secs(2),
    result_wait: Duration::from_secs(30),
};

fn result() -> CommandResult {
    CommandResult {
        id: ID.into(),
        outcome: Outcome::Succeeded,
        payload: Vec::new(),
        stats: ResultStats::default(),
    }
}

/// A run on a stream, its oracle agreeing.
fn run_on_stream(now: Instant) -> (Run, RunOracle) {
    let start = Start::New {
        deliver_by: now + Duration::from_secs(10),
    };
    let mut run = Run::new(ID, LIMITS, start);
    let mut oracle = RunOracle::new(LIMITS, start, now);
    for input in [Input::Connected, Input::Sent] {
        oracle.input(now, &input, &run);
        run.handle(now, input);
        while let Some(effect) = run.poll() {
            oracle.effect(&effect);
        }
        oracle.settled(&run);
    }
    (run, oracle)
}

#[test]
#[should_panic(expected = "ResultAck on the stream before its result is on disk")]
fn the_oracle_catches_an_ack_before_the_record() {
    let now = Instant::now();
    let (run, mut oracle) = run_on_stream(now);
    let input = Input::Frame(Message::Result(result()));
    oracle.input(now, &input, &run);
    oracle.effect(&Effect::Frame(Message::ResultAck(ResultAck {
        id: ID.into(),
    })));
}

#[test]
#[should_panic(expected = "Ended differs from the end on disk")]
fn the_oracle_catches_an_end_shown_other_than_recorded() {
    let now = Instant::now();
    let (run, mut oracle) = run_on_stream(now);
    let input = Input::Frame(Message::Result(result()));
    oracle.input(now, &input, &run);
    let recorded = End {
        status: Status::Succeeded,
        detail: None,
        result: Some(result()),
    };
    oracle.effect(&Effect::Record(recorded.clone()));
    oracle.input(now, &Input::Recorded(Ok(())), &run);
    oracle.effect(&Effect::Ended(End {
        status: Status::Failed,
        ..recorded
    }));
}

#[test]
#[should_panic(expected = "the plugin started without a new receipt")]
fn the_oracle_catches_a_plugin_started_before_its_receipt() {
    let now = Instant::now();
    let mut machine = Execution::on_stream(now);
    let mut oracle = ExecutionOracle::new(now, false);
    let input = command::Input::Frame(Message::Command(Command {
        id: ID.into(),
        topic: "echo".into(),
        payload: Vec::new(),
        content_type: String::new(),
        timeout_ms: None,
        idempotency_key: None,
    }));
    oracle.input(now, &input);
    machine.handle(now, input);
    while let Some(effect) = machine.poll() {
        oracle.effect(&effect);
    }
    oracle.settled(&machine);
    // The journal has not answered: starting the plugin now could run the id twice.
    oracle.effect(&command::Effect::Run);
}

#[test]
#[should_panic(expected = "Done says the journal keeps the result, yet it does not")]
fn the_oracle_catches_a_result_said_kept_after_a_failed_journal_write() {
    let now = Instant::now();
    let mut oracle = ExecutionOracle::new(now, true);
    oracle.effect(&command::Effect::Run);
    oracle.input(
        now,
        &command::Input::Finished {
            result: result(),
            dropped: 0,
        },
    );
    oracle.effect(&command::Effect::Journal(result()));
    oracle.input(now, &command::Input::Journaled(Err("disk full".into())));
    oracle.effect(&command::Effect::Done {
        acked: false,
        kept: true,
    });
}

#[test]
#[should_panic(expected = "a Running receipt")]
fn the_oracle_catches_a_wait_for_a_run_never_named() {
    let now = Instant::now();
    let mut oracle = ExecutionOracle::new(now, false);
    oracle.input(now, &command::Input::Receipt(Ok(Receipt::New)));
    oracle.effect(&command::Effect::WaitFor("c-9".into()));
}
