//! ferry's command lifecycle as state machines with no I/O (quinn-proto's shape): each takes
//! `handle(now, input)`, queues effects that [`poll`](run::Run::poll) hands out in order, and
//! says when it next needs the time ([`poll_timeout`](run::Run::poll_timeout)). The tokio code
//! in `ferry-server` and `ferry-agent` only drives them: it turns streams, the registry, the
//! journals, the disk and timers into inputs and carries the effects out. So the guarantees
//! live in one place, are checked by deterministic simulations (`tests/lifecycle/sim.rs`,
//! `fanout_sim.rs`: a virtual clock, seeded faults, thousands of histories per test run), and
//! cannot be broken by the order of statements in a driver.
//!
//! - [`status`]: the one list of run states and what derives from it.
//! - [`run`]: the server's side of one agent's run of a command.
//! - [`command`]: the agent's side of one command (receipt, plugin, result, acknowledgement).
//! - [`fanout`]: the fan-out scheduler of one command sent to many agents.
//! - `fuzzing`: arbitrary bytes as inputs to both command machines, and the oracle of what
//!   must hold for any of them; shared by the fuzz target and `cargo test`.
//! - [`session`]: the control session's phases, on the server's end and the agent's.

pub mod command;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod run;
pub mod session;
pub mod status;

pub use fanout::Fanout;
pub use run::{Effect, End, Input, Limits, Run, Start};
pub use session::{
    AgentEffect, AgentEnd, AgentInput, AgentSession, AgentSettings, Phase, Retry, ServerEffect,
    ServerInput, ServerSession, ServerSettings,
};
pub use status::{Bucket, Status};
