//! The agent's plugin host against real components: one test binary with a module per
//! concern (wasmtime's `tests/all` pattern), so that wasmtime is linked once.
//!
//! - `capabilities`: the `metrics` and `kv` interfaces, denied without a grant and working
//!   with one.
//! - `process`: the `process` interface: granted programs only, output as log events, killed
//!   at a timeout or cancel.
//! - `sandbox`: a plugin reaches only what its grant (manifest ∩ policy) allows.

mod capabilities;
mod process;
mod sandbox;
