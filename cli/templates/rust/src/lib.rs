//! {{name}}: a ferry plugin.
//!
//! It greets: given `{"name": "ferry"}` it answers `{"greeting": "hello, ferry!"}`, in JSON,
//! or in CBOR when asked in CBOR. Replace it with what your plugin does; the SDK's
//! documentation (`cargo doc --open -p ferry-plugin`) shows what else a plugin can do.

use ferry_plugin::{Command, Error};
use serde::{Deserialize, Serialize};

/// What the plugin accepts. A payload that does not fit is refused as invalid-input with a
/// message that says what is wrong ("missing field `name`"), before `handle` goes on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    /// Whom to greet.
    name: String,
    /// How many times; once when absent.
    #[serde(default = "once")]
    times: u32,
}

fn once() -> u32 {
    1
}

/// What the plugin answers.
#[derive(Serialize)]
struct Reply {
    greeting: String,
}

/// Handles one command. Every command gets a fresh instance of the plugin, so nothing carries
/// over from one command to the next.
fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
    let request: Request = cmd.decode()?;
    if request.name.trim().is_empty() {
        return Err(Error::invalid_input("`name` is empty; say whom to greet"));
    }
    if !(1..=10).contains(&request.times) {
        return Err(Error::invalid_input(format!(
            "`times` is {}; it must be from 1 to 10",
            request.times
        )));
    }
    ferry_plugin::info!("greeting {} {} time(s)", request.name, request.times);
    let mut greetings = Vec::new();
    for i in 1..=request.times {
        // An operator can cancel a command; a plugin that works for long should notice.
        if ferry_plugin::cancelled() {
            return Err(Error::Cancelled);
        }
        greetings.push(format!("hello, {}!", request.name));
        ferry_plugin::progress((i * 100 / request.times) as u8, "greeting");
    }
    ferry_plugin::respond(
        &cmd,
        &Reply {
            greeting: greetings.join(" "),
        },
    )
}

ferry_plugin::export!(fn handle);
