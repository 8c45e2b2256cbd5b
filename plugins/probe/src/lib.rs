//! A plugin that reaches outside its sandbox when asked to: a test fixture for the agent's
//! capability checks. Each topic tries one thing and reports exactly what happened, so a test
//! can tell "granted and worked" from "refused" without guessing.
//!
//! | topic | payload (text) | returns |
//! |---|---|---|
//! | `probe.read` | a file path | the file's contents |
//! | `probe.write` | `path` newline `content` | `written` |
//! | `probe.list` | a directory path | the entries, one per line, sorted |
//! | `probe.env` | a variable name | its value |
//! | `probe.connect` | `host:port` | `connected` |
//!
//! Any failure is returned as `error.denied` with the operating system's message, so the
//! test sees the refusal the plugin saw.

use std::io::Write;

use ferry_plugin::{Command, Error, Plugin};

struct Probe;

fn denied(what: &str, e: impl std::fmt::Display) -> Error {
    Error::denied(format!("{what}: {e}"))
}

impl Plugin for Probe {
    fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
        let arg = cmd.payload_str()?.trim_end_matches('\n').to_string();
        match cmd.topic.as_str() {
            "probe.read" => std::fs::read(&arg).map_err(|e| denied(&format!("read {arg}"), e)),
            "probe.write" => {
                let (path, content) = arg.split_once('\n').ok_or_else(|| {
                    Error::invalid_input("payload must be: path, a newline, the content")
                })?;
                let mut file = std::fs::File::create(path)
                    .map_err(|e| denied(&format!("create {path}"), e))?;
                file.write_all(content.as_bytes())
                    .map_err(|e| denied(&format!("write {path}"), e))?;
                Ok(b"written".to_vec())
            }
            "probe.list" => {
                let mut names: Vec<String> = std::fs::read_dir(&arg)
                    .map_err(|e| denied(&format!("list {arg}"), e))?
                    .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| denied(&format!("list {arg}"), e))?;
                names.sort();
                Ok(names.join("\n").into_bytes())
            }
            "probe.env" => std::env::var(&arg)
                .map(String::into_bytes)
                .map_err(|e| denied(&format!("env {arg}"), e)),
            "probe.connect" => std::net::TcpStream::connect(&arg)
                .map(|_| b"connected".to_vec())
                .map_err(|e| denied(&format!("connect {arg}"), e)),
            other => Err(Error::invalid_input(format!(
                "probe has no topic '{other}'"
            ))),
        }
    }
}

ferry_plugin::export!(Probe);
