//! The `ferry` binary and the crate's library, end to end: one test binary with a module per
//! concern, so that the workspace links wasmtime once here rather than once per file.
//!
//! - `commands`: `ferry dev`, then `ferry agents`, `ferry run`, `cancel`, `bench` through the
//!   operator API, with the config file `ferry dev` writes.
//! - `daemons`: `ferry server` and `ferry agent` as separate processes, killed and restarted;
//!   enrollment with `ferry token create` and `ferry agent --join`; `ferry agents revoke`.
//! - `languages`: the C, Go, JavaScript and Python examples and templates built, tested with
//!   their cases and run on a real agent (skipped loudly without a toolchain, failed in CI).
//! - `plugin`: `ferry plugin test` and `ferry plugin new`, with no server.

mod commands;
mod daemons;
mod languages;
mod plugin;
