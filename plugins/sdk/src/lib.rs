//! Write [ferry](https://github.com/ferry-rs/ferry) plugins in Rust.
//!
//! A ferry plugin is a WebAssembly component for the world `ferry:plugin/plugin@0.1.0`
//! (`wit/0.1.0/plugin.wit` in the ferry repository). The agent creates a fresh instance of it
//! for every command it receives on one of the plugin's topics, calls its handler once, and
//! throws the instance away. This crate hides the generated bindings: write a function from a
//! [`Command`] to a result and name it in [`export!`].
//!
//! `ferry plugin new NAME` writes a project that uses this crate (a copy of it, since it is not
//! published) and builds as it is; `ferry plugin test` runs the result without a server.
//!
//! # Example
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "greet"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! ferry-plugin = { path = "vendor/ferry-plugin" }
//! serde = { version = "1", features = ["derive"] }
//!
//! [profile.release]
//! opt-level = "s"
//! lto = true
//! strip = true
//! panic = "abort"
//! ```
//!
//! `src/lib.rs`:
//!
//! ```no_run
//! use ferry_plugin::{Command, Error};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Request {
//!     name: String,
//!     #[serde(default = "one")]
//!     times: u32,
//! }
//!
//! fn one() -> u32 {
//!     1
//! }
//!
//! #[derive(Serialize)]
//! struct Reply {
//!     greeting: String,
//! }
//!
//! fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
//!     // A payload that does not fit `Request` ends the command as invalid-input, with serde's
//!     // message: "missing field `name`", "at `times`: invalid type: string, expected u32".
//!     let request: Request = cmd.decode()?;
//!     if request.times > 100 {
//!         return Err(Error::invalid_input("`times` must be at most 100"));
//!     }
//!     ferry_plugin::info!("command {}: greeting {}", cmd.id, request.name);
//!     let mut greeting = String::new();
//!     for i in 0..request.times {
//!         if ferry_plugin::cancelled() {
//!             return Err(Error::Cancelled);
//!         }
//!         greeting.push_str(&format!("hello, {}! ", request.name));
//!         ferry_plugin::progress((100 * (i + 1) / request.times) as u8, "greeting");
//!     }
//!     // JSON back for a JSON payload, CBOR for a CBOR one.
//!     ferry_plugin::respond(&cmd, &Reply { greeting: greeting.trim_end().to_string() })
//! }
//!
//! ferry_plugin::export!(fn handle);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`: the result,
//! `target/wasm32-wasip2/release/greet.wasm`, is the component to give the agent. Try it with
//! `ferry plugin test target/wasm32-wasip2/release/greet.wasm --topic greet --payload '{"name":"ferry"}'`.
//!
//! # The entry point
//!
//! `ferry_plugin::export!(fn handle)` exports a function `fn(Command) -> Result<R, Error>` as the
//! component's handler, where `R` is anything that turns into the result's bytes
//! (`Vec<u8>`, `String`, `&'static str`). [`respond`], [`to_json`] and [`to_cbor`] make those
//! bytes from a serde value. `ferry_plugin::export!(MyType)` does the same for a type that
//! implements [`Plugin`].
//!
//! `export!` is a `macro_rules!` macro rather than an attribute (`#[ferry_plugin::handler]`):
//! an attribute needs a proc-macro crate, which every plugin would compile (with `syn`) for
//! the sake of one line, and a plain function is as short to write and easy to unit-test.
//! Use it once per plugin, at the top level of the crate.
//!
//! # Payloads
//!
//! A payload is bytes with a content type. [`Command::decode`] picks the format by the content
//! type:
//!
//! | content type | decoded as |
//! |---|---|
//! | `application/json`, `…+json`, or none | JSON ([`Command::json`]) |
//! | `application/cbor`, `…+cbor` | CBOR ([`Command::cbor`]) |
//! | anything else | an `invalid-input` error naming the content type |
//!
//! A payload that is malformed or does not fit the type is an [`Error::InvalidInput`] whose
//! message says what is wrong and where (``at `items[2].count`: invalid type: string "x",
//! expected u32``), so returning it with `?` tells the operator what to fix. For text, use
//! [`Command::payload_str`]; for anything else, the bytes are in `cmd.payload`.
//!
//! # Features
//!
//! `json` (serde_json) and `cbor` (ciborium) are on by default. They cost nothing in the
//! component when unused (link-time optimisation drops them) but do cost build time; a plugin
//! that only handles raw bytes can turn them off with `default-features = false`.
//!
//! # What a plugin can do
//!
//! Only what the agent grants: the plugin's manifest asks for capabilities and the agent's
//! policy allows them. Files, environment variables and network destinations come through the
//! standard library (WASI) once granted; [`metrics`] (host and agent CPU, memory and disk, now
//! and over a period) and [`kv`] (a key-value store of the plugin's own that survives restarts)
//! answer with an error naming the capability until `metrics = true` or `kv = true` is granted,
//! and [`process`] starts only the programs listed in the grant's `programs`.
//! Nothing else: no arguments, no listening sockets. Standard output and standard error go to the command's log
//! (at info and warn); [`log`] and the [`info!`]-style macros are the better way, since they
//! carry a level. [`progress`] reports how far the command got, and a long-running plugin
//! should check [`cancelled`] now and then. A panic or any other trap ends the command as
//! crashed; the agent carries on. The agent also ends a plugin that passes the command's
//! deadline or its memory limit.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/0.1.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "ferry_plugin::bindings",
    });
}

#[cfg(any(feature = "json", feature = "cbor"))]
mod payload;

#[cfg(any(feature = "json", feature = "cbor"))]
pub use payload::respond;
#[cfg(feature = "cbor")]
pub use payload::to_cbor;
#[cfg(feature = "json")]
pub use payload::to_json;

use bindings::ferry::plugin::context;

/// Host and agent metrics, for plugins granted `metrics` (`metrics = true` under
/// `[capabilities]` in the manifest, and allowed by the agent's policy). Without the grant,
/// every function returns an `Err` saying how to grant it.
///
/// ```no_run
/// use ferry_plugin::{Error, metrics};
///
/// # fn f() -> Result<(), Error> {
/// let now = metrics::now().map_err(Error::failed)?;
/// let used = now.memory_used_bytes as f64 / now.memory_total_bytes as f64;
/// let last_hour = metrics::history(std::time::Duration::from_secs(3600)).map_err(Error::failed)?;
/// let peak = last_hour.iter().map(|s| s.cpu_percent).fold(0.0, f32::max);
/// ferry_plugin::info!("memory {:.0} % used; CPU peaked at {peak:.0} % this hour", used * 100.0);
/// # Ok(())
/// # }
/// ```
pub mod metrics {
    use crate::bindings::ferry::plugin::metrics as host;

    /// One measurement: `timestamp_ms` (since the Unix epoch), the host's `cpu_percent`
    /// (0 to 100), `memory_used_bytes`/`memory_total_bytes`, `disk_used_bytes`/`disk_total_bytes`
    /// (the volume holding the agent's data), and the agent process's `agent_cpu_percent` (as a
    /// share of the whole host) and `agent_memory_bytes`.
    pub use crate::bindings::ferry::plugin::metrics::Sample;

    /// A sample taken now.
    pub fn now() -> Result<Sample, String> {
        host::now()
    }

    /// The samples the agent recorded over the last `period` (whole seconds), oldest first.
    /// The agent records one every few seconds (5 s by default) and keeps a bounded history
    /// (24 hours by default); the list is empty right after the agent starts.
    pub fn history(period: std::time::Duration) -> Result<Vec<Sample>, String> {
        host::history(u32::try_from(period.as_secs()).unwrap_or(u32::MAX))
    }
}

/// A key-value store of the plugin's own on the agent, kept across commands and agent restarts,
/// for plugins granted `kv` (`kv = true` under `[capabilities]` in the manifest, and allowed by
/// the agent's policy). Without the grant, every function returns an `Err` saying how to grant
/// it.
///
/// Each plugin (by name) has a namespace of its own. Keys are non-empty UTF-8, at most
/// [`kv::MAX_KEY_BYTES`] bytes; values are bytes, at most [`kv::MAX_VALUE_BYTES`]. A write is
/// durable once `set` or `delete` returns.
///
/// ```no_run
/// use ferry_plugin::{Error, kv};
///
/// # fn f() -> Result<(), Error> {
/// let runs = match kv::get("runs").map_err(Error::failed)? {
///     Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
///     None => 0,
/// };
/// kv::set("runs", (runs + 1).to_string().as_bytes()).map_err(Error::failed)?;
/// for key in kv::list_keys("job/").map_err(Error::failed)? {
///     kv::delete(&key).map_err(Error::failed)?;
/// }
/// # Ok(())
/// # }
/// ```
pub mod kv {
    use crate::bindings::ferry::plugin::kv as host;

    /// The longest key the agent accepts, in bytes.
    pub const MAX_KEY_BYTES: usize = 1024;
    /// The largest value the agent accepts, in bytes (1 MiB).
    pub const MAX_VALUE_BYTES: usize = 1 << 20;

    /// The value stored under `key`, or `None`.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
        host::get(key)
    }

    /// Stores `value` under `key`, replacing any value it had.
    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        host::set(key, value)
    }

    /// Removes `key`; `true` when it was there.
    pub fn delete(key: &str) -> Result<bool, String> {
        host::delete(key)
    }

    /// The keys that start with `prefix` (every key for `""`), in byte order.
    pub fn list_keys(prefix: &str) -> Result<Vec<String>, String> {
        host::list_keys(prefix)
    }
}

/// Programs on the agent's host, for plugins granted them: each program's absolute path must be
/// listed in `programs` under `[capabilities]` in the manifest and allowed by the agent's
/// policy (`programs` under `[plugins.<name>.capabilities]`). A program that is not granted
/// gets an `Err` naming it and saying how to grant it. Paths are matched exactly: no `PATH`
/// search, no relative paths.
///
/// The program runs as the agent's user, in `/`, with empty standard input and only the
/// environment variables granted to the plugin. Each line of its standard output is logged at
/// info, of its standard error at warn; the [`Exit`](process::Exit) also carries the start of
/// its standard output (up to the agent's output limit, 64 KiB by default) and the last lines
/// of its standard error. It is killed, with its whole process group, when `timeout` passes,
/// when the command is cancelled (`exit.stopped` is then
/// [`StopReason::Cancelled`](process::StopReason); return [`Error::Cancelled`]) or at the
/// command's deadline.
///
/// ```no_run
/// use ferry_plugin::{Error, process};
/// use std::time::Duration;
///
/// # fn f() -> Result<(), Error> {
/// let exit = process::run("/usr/bin/df", &["-h", "/"], Some(Duration::from_secs(10)))
///     .map_err(Error::failed)?;
/// if exit.stopped == Some(process::StopReason::Cancelled) {
///     return Err(Error::Cancelled);
/// }
/// if !exit.success() {
///     return Err(Error::failed(format!("df failed: {}", exit.stderr_tail.join(" "))));
/// }
/// let report = String::from_utf8_lossy(&exit.stdout);
/// # let _ = report;
/// # Ok(())
/// # }
/// ```
pub mod process {
    use crate::bindings::ferry::plugin::process as host;

    /// How a program ended: its exit `code` (none when a signal ended it), the `signal` that
    /// ended it (9 when the agent killed it), whether and why the agent `stopped` it, the start
    /// of its `stdout` (and whether `stdout_truncated`), and the last lines of its stderr
    /// (`stderr_tail`).
    pub use crate::bindings::ferry::plugin::process::Exit;
    /// Why the agent stopped a program: `Timeout` (its timeout or the command's deadline) or
    /// `Cancelled` (the command was cancelled).
    pub use crate::bindings::ferry::plugin::process::StopReason;

    /// Runs `program` (an absolute path, exactly as granted) with `args`, and waits until it
    /// ends, `timeout` passes (whole milliseconds; `None` for the command's deadline only), or
    /// the command is cancelled. `Err` means it did not run: not granted, or it could not be
    /// started; a program that ran is `Ok` whatever its exit status.
    pub fn run(
        program: &str,
        args: &[impl AsRef<str>],
        timeout: Option<std::time::Duration>,
    ) -> Result<Exit, String> {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let timeout_ms = timeout.map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
        host::run(program, &args, timeout_ms)
    }

    /// What to run with [`run_with`]: program, arguments, standard input, added environment
    /// variables, working directory (inside a granted directory) and timeout.
    pub use crate::bindings::ferry::plugin::process::Request;

    /// Runs a program as [`run`] does, with the input, environment and working directory of
    /// `request`.
    pub fn run_with(request: &Request) -> Result<Exit, String> {
        host::run_with(request)
    }

    impl Exit {
        /// Whether it exited with code 0 by itself.
        pub fn success(&self) -> bool {
            self.code == Some(0) && self.stopped.is_none()
        }
    }
}

/// Supervised runtimes on the agent's host: create, start, stop, restart, delete, and their
/// consumption. Granted with `runtimes = true` (manifest and policy); a runtime's command must
/// also be granted in `programs`.
///
/// ```no_run
/// use ferry_plugin::runtimes::{self, ProcessSpec, RestartPolicy, Spec, Workload};
/// # fn demo() -> Result<(), String> {
/// let spec = Spec {
///     workload: Workload::Process(ProcessSpec {
///         command: "/usr/bin/python3".into(),
///         args: vec!["-m".into(), "http.server".into(), "8080".into()],
///         env: vec![],
///         cwd: Some("/srv/www".into()),
///     }),
///     restart: RestartPolicy::OnFailure,
///     port: Some(8080),
/// };
/// let info = runtimes::create("web", &spec, true)?;
/// # let _ = info;
/// # Ok(())
/// # }
/// ```
pub mod runtimes {
    use crate::bindings::ferry::plugin::runtimes as host;
    pub use crate::bindings::ferry::plugin::runtimes::{
        ComponentSpec, Info, ProcessSpec, RestartPolicy, Sample, Spec, Status, Workload,
    };

    /// Creates a runtime, started at once when `start`; fails if the name is taken.
    pub fn create(name: &str, spec: &Spec, start: bool) -> Result<Info, String> {
        host::create(name, spec, start)
    }

    /// Starts a runtime that is not running.
    pub fn start(name: &str) -> Result<Info, String> {
        host::start(name)
    }

    /// Stops a runtime (SIGTERM to its process group, SIGKILL after a grace period).
    pub fn stop(name: &str) -> Result<Info, String> {
        host::stop(name)
    }

    /// Stops and starts a runtime again.
    pub fn restart(name: &str) -> Result<Info, String> {
        host::restart(name)
    }

    /// Stops a runtime and forgets it.
    pub fn delete(name: &str) -> Result<(), String> {
        host::delete(name)
    }

    /// One runtime.
    pub fn get(name: &str) -> Result<Info, String> {
        host::get(name)
    }

    /// Every runtime on the agent, by name.
    pub fn all() -> Result<Vec<Info>, String> {
        host::all()
    }

    /// A runtime's samples over the last `period`, oldest first.
    pub fn consumption(name: &str, period: std::time::Duration) -> Result<Vec<Sample>, String> {
        host::consumption(name, u32::try_from(period.as_secs()).unwrap_or(u32::MAX))
    }
}

/// The agent itself. Granted with `decommission = true` (manifest and policy).
pub mod agent {
    /// Removes the agent for good once this command's result has reached the server: it
    /// leaves the server (which refuses its certificate from then on), stops its runtimes,
    /// deletes its state as configured, and exits.
    pub fn decommission(reason: &str) -> Result<(), String> {
        crate::bindings::ferry::plugin::agent::decommission(reason)
    }
}

/// The level of a log message, from `Trace` to `Error`.
pub use bindings::ferry::plugin::context::Level;
/// One command, as the operator sent it: `id`, `topic`, `payload` bytes and `content_type`.
pub use bindings::ferry::plugin::types::Command;
/// Why a command did not succeed; see the constructors ([`Error::invalid_input`], …).
pub use bindings::ferry::plugin::types::Error;

/// A plugin as a type: handle one command. The same as a function given to
/// `export!(fn …)`; use whichever reads better.
///
/// There is no `self`: every command runs in a fresh instance, so there is no state to keep
/// between commands.
pub trait Plugin {
    /// Handles `cmd` and returns the result's payload, or why the command failed.
    fn handle(cmd: Command) -> Result<Vec<u8>, Error>;
}

/// Exports the plugin's handler. Use it once, at the top level of the crate, in one of two
/// forms:
///
/// - `ferry_plugin::export!(fn handle);` for a function
///   `fn handle(cmd: Command) -> Result<R, Error>` where `R: Into<Vec<u8>>` (`Vec<u8>`,
///   `String`, `&'static str`, …); `handle` may be a path (`export!(fn handlers::main)`);
/// - `ferry_plugin::export!(MyPlugin);` for a type that implements [`Plugin`].
#[macro_export]
macro_rules! export {
    (fn $handler:path) => {
        const _: () = {
            struct FerryPluginHandler;
            impl $crate::bindings::exports::ferry::plugin::handler::Guest for FerryPluginHandler {
                fn handle(
                    cmd: $crate::Command,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::Error> {
                    ::core::result::Result::map($handler(cmd), ::core::convert::Into::into)
                }
            }
    $crate::bindings::__export_plugin_world!(FerryPluginHandler with_types_in $crate::bindings);
        };
    };
    ($ty:ident) => {
        const _: () = {
            impl $crate::bindings::exports::ferry::plugin::handler::Guest for $ty {
                fn handle(
                    cmd: $crate::Command,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::Error> {
                    <$ty as $crate::Plugin>::handle(cmd)
                }
            }
    $crate::bindings::__export_plugin_world!($ty with_types_in $crate::bindings);
        };
    };
}

impl Error {
    /// The payload is malformed or misses something; say which field and what was expected.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// The command asks for something this plugin may not do.
    pub fn denied(message: impl Into<String>) -> Self {
        Error::Denied(message.into())
    }

    /// The command was valid but could not be carried out.
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }
}

impl Command {
    /// The payload as UTF-8 text, or an `invalid-input` error saying it is not.
    pub fn payload_str(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| Error::invalid_input(format!("the payload is not UTF-8 text: {e}")))
    }

    /// Whether the payload is declared as JSON: `application/json`, or any `+json` type,
    /// with or without parameters such as `charset`.
    pub fn is_json(&self) -> bool {
        media_type_is(&self.content_type, "application/json", "+json")
    }

    /// Whether the payload is declared as CBOR: `application/cbor`, or any `+cbor` type.
    pub fn is_cbor(&self) -> bool {
        media_type_is(&self.content_type, "application/cbor", "+cbor")
    }
}

/// Whether `content_type`, without its parameters, is `exact` or ends with `suffix`
/// (`+json`), ignoring ASCII case as media types do.
fn media_type_is(content_type: &str, exact: &str, suffix: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(exact)
        || essence
            .get(essence.len().saturating_sub(suffix.len())..)
            .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
}

/// Adds a line to the command's log, which the agent streams to the operator.
pub fn log(level: Level, message: &str) {
    context::log(level, message);
}

/// Reports progress: `percent` from 0 to 100 and a short description of the current step.
pub fn progress(percent: u8, message: &str) {
    context::progress(percent.min(100), message);
}

/// Whether the command has been cancelled. Check it in long loops and return
/// [`Error::Cancelled`] when it turns true.
pub fn cancelled() -> bool {
    context::cancelled()
}

/// Asks the server for data the command needs, by key: data sent with the command
/// (`ferry run --data key=text`) or supplied to the server by an operator. Needs
/// `request_data = true` under `[capabilities]` in the manifest (and the agent's policy); the
/// error says why there is no data.
///
/// ```no_run
/// let token = ferry_plugin::request_data("api-token")
///     .map_err(|e| ferry_plugin::Error::failed(format!("no token: {e}")))?;
/// # Ok::<(), ferry_plugin::Error>(())
/// ```
pub fn request_data(key: &str) -> Result<Vec<u8>, String> {
    context::request_data(key)
}

/// Logs a formatted message at trace level: `ferry_plugin::trace!("x = {x}")`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log($crate::Level::Trace, &::std::format!($($arg)*)) };
}

/// Logs a formatted message at debug level: `ferry_plugin::debug!("x = {x}")`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*)) };
}

/// Logs a formatted message at info level: `ferry_plugin::info!("x = {x}")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*)) };
}

/// Logs a formatted message at warn level: `ferry_plugin::warn!("x = {x}")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*)) };
}

/// Logs a formatted message at error level: `ferry_plugin::error!("x = {x}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(content_type: &str, payload: &[u8]) -> Command {
        Command {
            id: "1".into(),
            topic: "t".into(),
            payload: payload.to_vec(),
            content_type: content_type.into(),
        }
    }

    #[test]
    fn recognises_json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.x+json",
        ] {
            assert!(command(ct, b"").is_json(), "{ct}");
        }
        for ct in ["", "text/plain", "application/jsonl", "json"] {
            assert!(!command(ct, b"").is_json(), "{ct}");
        }
    }

    #[test]
    fn recognises_cbor_content_types() {
        for ct in [
            "application/cbor",
            "APPLICATION/CBOR ; x=y",
            "application/vnd.x+cbor",
        ] {
            assert!(command(ct, b"").is_cbor(), "{ct}");
        }
        for ct in ["", "application/json", "application/cbor-seq", "cbor"] {
            assert!(!command(ct, b"").is_cbor(), "{ct}");
        }
    }

    #[test]
    fn payload_str_rejects_invalid_utf8() {
        assert_eq!(command("", b"hi").payload_str().unwrap(), "hi");
        assert!(matches!(
            command("", &[0xff]).payload_str(),
            Err(Error::InvalidInput(_))
        ));
    }
}
