//! The lifecycle machines, tested without I/O: scenario tests on a virtual clock, a
//! deterministic simulation of seeded faults checked against the guarantees. The layering rule
//! that keeps the crate free of transport and storage is checked with the others, in
//! `tests/e2e/layering.rs`.

mod command;
mod fanout;
mod fanout_sim;
mod fuzzing;
mod run;
mod session;
mod sim;
