//! The operator API client and the CLI config file that says where the API is.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use ferry_api::{CommandEvent, ErrorBody};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ApiArgs;

/// What `ferry dev` writes so that later `ferry` commands find the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CliConfig {
    /// The operator API's URL.
    pub api: String,
    /// The operator token.
    pub token: String,
}

/// Where the CLI config lives unless `--config`/`FERRY_CONFIG` says otherwise.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("ferry/cli.toml"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/ferry/cli.toml"))
}

/// Writes the CLI config, readable only by its owner (it holds a token).
pub fn write_config(path: &Path, config: &CliConfig) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = toml::to_string(config)?;
    ferry_protocol::pki::write_file(path, text.as_bytes(), true)?;
    Ok(())
}

/// A client of one server's operator API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// Resolves the API address and token: flags, then environment, then the config file.
    pub fn from_args(args: &ApiArgs) -> Result<Client> {
        let path = args.config.clone().or_else(default_config_path);
        let file =
            match &path {
                Some(p) if p.exists() => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    Some(toml::from_str::<CliConfig>(&text).with_context(|| {
                        format!("{} is not a valid ferry CLI config", p.display())
                    })?)
                }
                _ => None,
            };
        let api = args
            .api
            .clone()
            .or_else(|| file.as_ref().map(|f| f.api.clone()));
        let token = args
            .token
            .clone()
            .or_else(|| file.as_ref().map(|f| f.token.clone()));
        let (Some(api), Some(token)) = (api, token) else {
            bail!(
                "no server to talk to: start one with `ferry dev` (it writes {}), or pass --api and --token (or FERRY_API and FERRY_TOKEN)",
                path.map(|p| p.display().to_string())
                    .unwrap_or_else(|| "a CLI config".into())
            );
        };
        Ok(Client {
            http: reqwest::Client::new(),
            base: api.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the ferry server at {}; is it running?",
                    self.base
                )
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        match response.json::<ErrorBody>().await {
            Ok(ErrorBody { error }) => Err(anyhow!(
                "the server answered {status} ({}): {}",
                error.code,
                error.message
            )),
            Err(_) => Err(anyhow!("the server answered {status}: no details")),
        }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, as the server sent it: for `--json`, which prints exactly that.
    pub async fn get_value(&self, path: &str) -> Result<Value> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .json()
            .await?)
    }

    /// `GET path`, as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        read(self.get_value(path).await?)
    }

    /// `POST path` with `body` as JSON, the answer as the server sent it.
    pub async fn post_value<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Value> {
        Ok(self
            .send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?
            .json()
            .await?)
    }

    /// `POST path` with `body` as JSON, the answer as `T`.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        read(self.post_value(path, body).await?)
    }

    /// `POST path` with a binary body, the answer as the server sent it.
    pub async fn post_bytes(&self, path: &str, content_type: &str, body: Vec<u8>) -> Result<Value> {
        Ok(self
            .send(
                self.http
                    .post(format!("{}{path}", self.base))
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(body),
            )
            .await?
            .json()
            .await?)
    }

    /// `DELETE path`, the answer as the server sent it (null when it has no body).
    pub async fn delete_value(&self, path: &str) -> Result<Value> {
        let response = self
            .send(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        let bytes = response.bytes().await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Follows a command's event stream (`/v1/commands/{id}/events`), calling `on_event` for
    /// each event until the stream ends.
    pub async fn follow(&self, path: &str, mut on_event: impl FnMut(CommandEvent)) -> Result<()> {
        let mut unreadable = None;
        self.follow_raw(path, |kind, data| match read::<CommandEvent>(data) {
            Ok(event) => on_event(event),
            Err(e) => {
                unreadable.get_or_insert_with(|| format!("a `{kind}` event: {e:#}"));
            }
        })
        .await?;
        match unreadable {
            Some(what) => bail!("the event stream of {path} carried {what}"),
            None => Ok(()),
        }
    }

    /// Follows a server-sent-event stream, calling `on_event(kind, data)` with each event as the
    /// server sent it until the stream ends.
    pub async fn follow_raw(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, Value),
    ) -> Result<()> {
        let response = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the event stream broke off")?;
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            // Events end with a blank line.
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut kind = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if !data.is_empty() {
                    let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    on_event(kind, value);
                }
            }
        }
        Ok(())
    }
}

/// An answer of the server as `T`; an error says which shape it lacks.
pub fn read<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        anyhow!(
            "the server's answer is not the {} this ferry expects: {e}; is the server another version of ferry?",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("answer")
        )
    })
}

/// `?k=v&…` from the pairs that have a value, percent-encoded; empty when none has.
pub fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Encodes one path segment (an agent id, a name).
pub fn segment(s: &str) -> String {
    query_string(&[("x", Some(s.to_string()))])[3..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_encoded() {
        assert_eq!(query_string(&[("a", None)]), "");
        assert_eq!(
            query_string(&[
                ("selector", Some("env=prod,zone=b".into())),
                ("n", Some("5".into()))
            ]),
            "?selector=env%3Dprod%2Czone%3Db&n=5"
        );
        assert_eq!(segment("a b"), "a%20b");
    }
}
