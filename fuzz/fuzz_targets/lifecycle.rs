//! The command lifecycle's machines (`ferry_lifecycle::run::Run`, the server's side, and
//! `ferry_lifecycle::command::Execution`, the agent's) driven by arbitrary inputs: the bytes
//! decode into inputs with times (frames with right and wrong ids, every message kind,
//! results with any outcome, failed writes, losses, cancels, stops, timeouts before, at and
//! after the deadline), and an oracle checks every effect against the guarantees the
//! machines' module docs list. The generator and the oracle live in
//! `ferry_lifecycle::fuzzing`, which `cargo test` runs too (`lifecycle/tests/lifecycle/fuzzing.rs`),
//! so an input found here replays there as `fuzzing::check(&bytes)`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_lifecycle::fuzzing::check(data));
