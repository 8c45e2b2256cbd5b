//! `/v1/api-tokens`, `/v1/audit`, `/v1/join-tokens` and `/v1/whoami`: who may use the API, what
//! they did with it, and the tokens new agents enroll with.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What an API token may do. Ordered: each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Look: agents, commands, plugins, data keys.
    Read,
    /// Also act on agents: create and cancel commands, supply data.
    Run,
    /// Also change the server: plugins, agent labels and revocations, tokens, the audit log.
    Admin,
}

impl Scope {
    /// Does a token with this scope cover `needed`?
    pub fn covers(self, needed: Scope) -> bool {
        self >= needed
    }

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Run => "run",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "run" => Ok(Scope::Run),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("'{other}' is not a scope; use read, run or admin")),
        }
    }
}

/// An API token as the API shows it: never the token itself, nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Its id, for revoking it and in the audit log.
    pub id: String,
    /// What it is for (`ci`, `dashboard`); unique among live tokens.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The token (its name) that made it; `None` for the operator token.
    pub created_by: Option<String>,
}

/// The answer of `POST /v1/api-tokens`: the record and, this once, the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewApiToken {
    /// The record, as listed.
    #[serde(flatten)]
    pub record: ApiToken,
    /// The bearer token (`ferry_at_…`); the server keeps only its hash.
    pub token: String,
}

/// The body of `POST /v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiToken {
    /// What it is for; unique among live tokens.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

/// One operator action, as `GET /v1/audit` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increases with every entry; `?before=` pages back with it.
    pub seq: u64,
    /// When the action was answered.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The token's id.
    pub token_id: String,
    /// The token's name.
    pub token_name: String,
    /// What was done, e.g. `command.create` (the operation id in the OpenAPI document).
    pub action: String,
    /// The request: method and path.
    pub request: String,
    /// What it was done to or with, when the handler said (e.g. the command id and target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `ok`, or the error code the API answered with.
    pub result: String,
    /// The HTTP status.
    pub status: u16,
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// At most this many (default 100, at most 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only entries with a smaller `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// A join token: never the token itself, nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Its id, for revoking it.
    pub id: String,
    /// Labels every agent enrolled with it gets on the server.
    pub labels: BTreeMap<String, String>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The API token (its name) that made it.
    pub created_by: String,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// How many agents may enroll with it.
    pub uses: u32,
    /// The agents that did.
    pub enrolled: Vec<String>,
    /// When an operator revoked it.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl JoinToken {
    /// Where it is at `now`.
    pub fn state(&self, now: OffsetDateTime) -> JoinTokenState {
        if self.revoked_at.is_some() {
            JoinTokenState::Revoked
        } else if self.enrolled.len() as u32 >= self.uses {
            JoinTokenState::Used
        } else if now >= self.expires_at {
            JoinTokenState::Expired
        } else {
            JoinTokenState::Active
        }
    }
}

/// Whether a join token still enrolls agents, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinTokenState {
    /// It does.
    Active,
    /// Past its time to live.
    Expired,
    /// Every use is used.
    Used,
    /// An operator revoked it.
    Revoked,
}

impl JoinTokenState {
    /// Its name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            JoinTokenState::Active => "active",
            JoinTokenState::Expired => "expired",
            JoinTokenState::Used => "used",
            JoinTokenState::Revoked => "revoked",
        }
    }
}

/// A join token as `GET /v1/join-tokens` lists it: its record and its state now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenView {
    /// The record.
    #[serde(flatten)]
    pub token: JoinToken,
    /// Its state when the server answered.
    pub state: JoinTokenState,
}

/// The answer of `POST /v1/join-tokens`: the token, this once, and what an agent needs to
/// enroll with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJoinToken {
    /// The record and state, as listed.
    #[serde(flatten)]
    pub view: JoinTokenView,
    /// The token (`ferry_jt_…`); the server keeps only its hash.
    pub token: String,
    /// SHA-256 of the CA certificate, hex: `ferry agent --join --ca-fingerprint`.
    pub ca_fingerprint: String,
    /// The UDP port agents connect to.
    pub agent_port: u16,
}

/// The body of `POST /v1/join-tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Labels every agent enrolled with it gets on the server.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How long it is valid (`30m`, `1h`, `7d`); 1 h by default.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// How many agents may enroll with it; 1 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
}
