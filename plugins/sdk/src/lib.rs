//! Write [ferry](https://github.com/ferry-rs/ferry) plugins in Rust.
//!
//! A ferry plugin is a WebAssembly component for the world `ferry:plugin/plugin@0.1.0`
//! (`wit/0.1.0/plugin.wit` in the ferry repository). The agent creates a fresh instance of it
//! for every command it receives on one of the plugin's topics, calls its handler once, and
//! throws the instance away. This crate hides the generated bindings behind a trait and a macro:
//! implement [`Plugin`] and name your type in [`export!`].
//!
//! # Example
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "shout"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! ferry-plugin = "0.1"
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
//! use ferry_plugin::{Command, Error, Plugin};
//!
//! struct Shout;
//!
//! impl Plugin for Shout {
//!     fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
//!         let text = cmd.payload_str()?;
//!         if text.is_empty() {
//!             return Err(Error::invalid_input("the payload is empty; send some text"));
//!         }
//!         ferry_plugin::info!("command {}: shouting {} bytes", cmd.id, text.len());
//!         ferry_plugin::progress(50, "shouting");
//!         if ferry_plugin::cancelled() {
//!             return Err(Error::Cancelled);
//!         }
//!         Ok(text.to_uppercase().into_bytes())
//!     }
//! }
//!
//! ferry_plugin::export!(Shout);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`: the result,
//! `target/wasm32-wasip2/release/shout.wasm`, is the component to give the agent.
//!
//! # What a plugin can do
//!
//! Only what the agent grants. This version grants no files, no network, no environment
//! variables and no arguments. Standard output and standard error go to the command's log
//! (at info and warn); [`log`] and the [`info!`]-style macros are the better way, since they
//! carry a level. A panic or any other trap ends the command as crashed; the agent carries on.
//! The agent also ends a plugin that passes the command's deadline or its memory limit.

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

use bindings::ferry::plugin::context;

/// The level of a log message, from `Trace` to `Error`.
pub use bindings::ferry::plugin::context::Level;
/// One command, as the operator sent it: `id`, `topic`, `payload` bytes and `content_type`.
pub use bindings::ferry::plugin::types::Command;
/// Why a command did not succeed; see the constructors ([`Error::invalid_input`], …).
pub use bindings::ferry::plugin::types::Error;

/// What a plugin implements: handle one command.
///
/// There is no `self`: every command runs in a fresh instance, so there is no state to keep
/// between commands.
pub trait Plugin {
    /// Handles `cmd` and returns the result's payload, or why the command failed.
    fn handle(cmd: Command) -> Result<Vec<u8>, Error>;
}

/// Exports a type that implements [`Plugin`] as the component's handler.
///
/// Use it once per plugin, at the top level of the crate: `ferry_plugin::export!(MyPlugin);`.
#[macro_export]
macro_rules! export {
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
        let essence = self.content_type.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
            || essence
                .get(essence.len().saturating_sub(5)..)
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
    }
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
    fn payload_str_rejects_invalid_utf8() {
        assert_eq!(command("", b"hi").payload_str().unwrap(), "hi");
        assert!(matches!(
            command("", &[0xff]).payload_str(),
            Err(Error::InvalidInput(_))
        ));
    }
}
