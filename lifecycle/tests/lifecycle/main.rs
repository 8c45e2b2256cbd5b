//! The lifecycle machines, tested without I/O: scenario tests on a virtual clock, a
//! deterministic simulation of seeded faults checked against the guarantees, and the
//! layering rule that keeps the crate free of transport and storage.

mod command;
mod fanout;
mod fanout_sim;
mod fuzzing;
mod layering;
mod run;
mod session;
mod sim;
