//! Operator API tokens: bearer tokens with a scope, stored hashed.
//!
//! Scopes nest: `read` ⊂ `run` ⊂ `admin`. A `run` token can do everything a `read` token can,
//! and an `admin` token everything. Only the sha256 of a token is stored (in the server's
//! database, table `api_tokens`); the token itself is shown once, when it is created, and a
//! lost token is revoked and replaced, never recovered.
//!
//! The token in `<data_dir>/operator.token` (what `ferry dev` and a fresh server hand out) is
//! the admin token named `operator`; its record follows the file, so deleting the file and
//! restarting the server rotates it. These are *API* tokens: agents will enroll with join
//! tokens of their own, which is why the CLI calls these `ferry api-token`.
//!
//! Tokens are `ferry_at_` and 48 hex characters; authentication is a map lookup by the token's
//! sha256. Scopes are an ordered enum (`Scope::covers`). The `operator` token cannot be revoked
//! through the API, which would not survive a restart anyway.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use rand::RngCore;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

pub use ferry_api::{ApiToken, Scope};

/// token id → [`Stored`], as JSON.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");

/// The id of the token from `operator.token`.
pub const OPERATOR_TOKEN_ID: &str = "operator";

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    token: ApiToken,
    /// sha256 of the token, hex.
    sha256: String,
}

/// A token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No such token.
    #[error("no API token with id '{0}'; `ferry api-token list` shows them")]
    NotFound(String),
    /// It conflicts with what is there.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("the server's token store failed: {0}")]
    Storage(String),
}

/// The server's API tokens, all in memory (keyed by hash) and persisted.
pub(crate) struct TokenStore {
    db: Arc<Database>,
    by_hash: RwLock<HashMap<[u8; 32], ApiToken>>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn storage(e: impl fmt::Display) -> TokenError {
    TokenError::Storage(e.to_string())
}

impl TokenStore {
    /// Loads the tokens and makes sure `operator_token` is the admin token `operator`.
    pub(crate) fn open(db: Arc<Database>, operator_token: &str) -> Result<TokenStore, TokenError> {
        let tx = db.begin_write().map_err(storage)?;
        tx.open_table(TOKENS).map_err(storage)?;
        tx.commit().map_err(storage)?;
        let mut by_hash = HashMap::new();
        let mut operator = None;
        {
            let tx = db.begin_read().map_err(storage)?;
            let table = tx.open_table(TOKENS).map_err(storage)?;
            for entry in table.iter().map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                let stored: Stored = serde_json::from_slice(value.value()).map_err(|e| {
                    TokenError::Storage(format!(
                        "the record of token {} is damaged: {e}",
                        key.value()
                    ))
                })?;
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&stored.sha256, &mut digest).map_err(|e| {
                    TokenError::Storage(format!(
                        "the hash of token {} is damaged: {e}",
                        key.value()
                    ))
                })?;
                if stored.token.id == OPERATOR_TOKEN_ID {
                    operator = Some(digest);
                }
                by_hash.insert(digest, stored.token);
            }
        }
        let store = TokenStore {
            db,
            by_hash: RwLock::new(by_hash),
        };
        let current = hash(operator_token);
        if operator != Some(current) {
            // operator.token is new, or was replaced to rotate it: the old one stops working.
            if let Some(old) = operator {
                store.by_hash.write().remove(&old);
            }
            let token = ApiToken {
                id: OPERATOR_TOKEN_ID.into(),
                name: OPERATOR_TOKEN_ID.into(),
                scope: Scope::Admin,
                created_at: OffsetDateTime::now_utc(),
                created_by: None,
            };
            store.put(&token, &current)?;
            store.by_hash.write().insert(current, token);
        }
        Ok(store)
    }

    fn put(&self, token: &ApiToken, digest: &[u8; 32]) -> Result<(), TokenError> {
        let stored = Stored {
            token: token.clone(),
            sha256: hex::encode(digest),
        };
        let value = serde_json::to_vec(&stored).expect("a token record serializes");
        let tx = self.db.begin_write().map_err(storage)?;
        tx.open_table(TOKENS)
            .map_err(storage)?
            .insert(token.id.as_str(), value.as_slice())
            .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// The token `presented` is, if it is a live one.
    pub(crate) fn authenticate(&self, presented: &str) -> Option<ApiToken> {
        // A map lookup by hash: how long it takes says nothing about the token's bytes.
        self.by_hash.read().get(&hash(presented)).cloned()
    }

    /// Makes a token; returns its record and the token, which is not kept anywhere.
    pub(crate) fn create(
        &self,
        name: &str,
        scope: Scope,
        created_by: &str,
    ) -> Result<(ApiToken, String), TokenError> {
        let name = name.trim();
        if ferry_api::names::check(name, 64, true).is_err() {
            return Err(TokenError::Invalid(
                "a token's name has 1 to 64 printable characters, e.g. `ci` or `dashboard`".into(),
            ));
        }
        if name == "server" {
            return Err(TokenError::Invalid(
                "'server' names the server's own commands in listings and the audit log; choose another name".into(),
            ));
        }
        if self.by_hash.read().values().any(|t| t.name == name) {
            return Err(TokenError::Conflict(format!(
                "a token named '{name}' exists; names tell tokens apart in the audit log, so choose another or revoke it first"
            )));
        }
        let mut secret = [0u8; 24];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("ferry_at_{}", hex::encode(secret));
        let mut id = [0u8; 6];
        rand::rng().fill_bytes(&mut id);
        let record = ApiToken {
            id: hex::encode(id),
            name: name.to_string(),
            scope,
            created_at: OffsetDateTime::now_utc(),
            created_by: Some(created_by.to_string()),
        };
        let digest = hash(&token);
        self.put(&record, &digest)?;
        self.by_hash.write().insert(digest, record.clone());
        Ok((record, token))
    }

    /// Every live token, oldest first.
    pub(crate) fn list(&self) -> Vec<ApiToken> {
        let mut list: Vec<ApiToken> = self.by_hash.read().values().cloned().collect();
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        list
    }

    /// Revokes a token at once: the next request with it gets 401.
    pub(crate) fn revoke(&self, id: &str) -> Result<ApiToken, TokenError> {
        if id == OPERATOR_TOKEN_ID {
            return Err(TokenError::Conflict(
                "the operator token comes from <data_dir>/operator.token; to replace it, delete that file and restart the server (a new one is made)".into(),
            ));
        }
        let digest = self
            .by_hash
            .read()
            .iter()
            .find(|(_, t)| t.id == id)
            .map(|(digest, _)| *digest)
            .ok_or_else(|| TokenError::NotFound(id.to_string()))?;
        let tx = self.db.begin_write().map_err(storage)?;
        tx.open_table(TOKENS)
            .map_err(storage)?
            .remove(id)
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        self.by_hash
            .write()
            .remove(&digest)
            .ok_or_else(|| TokenError::NotFound(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &std::path::Path) -> Arc<Database> {
        crate::storage::db::open(dir).unwrap()
    }

    #[test]
    fn scopes_nest() {
        assert!(Scope::Admin.covers(Scope::Run) && Scope::Run.covers(Scope::Read));
        assert!(!Scope::Read.covers(Scope::Run) && !Scope::Run.covers(Scope::Admin));
        assert_eq!("run".parse::<Scope>(), Ok(Scope::Run));
        assert!(
            "root"
                .parse::<Scope>()
                .unwrap_err()
                .contains("read, run or admin")
        );
    }

    #[test]
    fn tokens_are_kept_hashed_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (ci, secret) = {
            let store = TokenStore::open(db(dir.path()), "op-secret").unwrap();
            assert_eq!(store.authenticate("op-secret").unwrap().scope, Scope::Admin);
            let (ci, secret) = store.create("ci", Scope::Run, "operator").unwrap();
            assert!(matches!(
                store.create("ci", Scope::Read, "operator"),
                Err(TokenError::Conflict(_))
            ));
            (ci, secret)
        };
        let raw = std::fs::read(dir.path().join(crate::storage::db::STATE_DB)).unwrap();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the token itself is never stored"
        );
        // A new operator.token replaces the old one.
        let store = TokenStore::open(db(dir.path()), "rotated").unwrap();
        assert_eq!(store.authenticate(&secret), Some(ci.clone()));
        assert!(store.authenticate("op-secret").is_none());
        assert!(store.authenticate("rotated").is_some());
        assert!(matches!(
            store.revoke(OPERATOR_TOKEN_ID),
            Err(TokenError::Conflict(_))
        ));
        store.revoke(&ci.id).unwrap();
        assert!(store.authenticate(&secret).is_none());
        assert!(matches!(store.revoke(&ci.id), Err(TokenError::NotFound(_))));
    }
}
