//! The built-in `echo` plugin: returns its payload unchanged.
//!
//! It exists to check that an agent runs plugins end to end, so it exercises what a plugin can
//! do: it logs the payload's size, reports progress, and, when the payload is declared as JSON,
//! checks that it is JSON and answers `invalid-input` when it is not.

mod json;

use ferry_plugin::{Command, Error};

fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
    ferry_plugin::progress(0, "received");
    ferry_plugin::info!(
        "echo: {} bytes of {}",
        cmd.payload.len(),
        if cmd.content_type.is_empty() {
            "unspecified type"
        } else {
            &cmd.content_type
        }
    );
    if cmd.is_json() {
        json::validate(&cmd.payload).map_err(|e| {
            Error::invalid_input(format!("the payload is declared as JSON but is not: {e}"))
        })?;
        ferry_plugin::progress(50, "payload is valid JSON");
    } else {
        ferry_plugin::progress(50, "payload accepted");
    }
    ferry_plugin::progress(100, "echoed");
    Ok(cmd.payload)
}

ferry_plugin::export!(fn handle);
