//! Enrollment: join tokens, and certificates for the agents that bring one. The QUIC side,
//! one `Enroll` on a `ferry-enroll/1` connection, is `transport/enroll.rs`.
//!
//! An operator makes a join token (`ferry token create`: labels, a time to live, a number of
//! uses). A new agent connects with ALPN `ferry-enroll/1` and no client certificate, having
//! pinned the CA by its fingerprint, and sends `Enroll` (the token, a CSR for a key it made,
//! the id it would like). The server checks the token, the id and the CSR, uses up one use of
//! the token (atomically: of two agents racing for a token's last use exactly one wins), signs
//! the CSR's public key into a certificate of its own making (`ferry://agent/<id>`, valid
//! `agent_cert_ttl`), and answers `Enrolled` with the CA and the plugin signing key. The
//! token's labels become the agent's server-side labels.
//!
//! Tokens are kept like API tokens: only their sha256 (table `join_tokens`). Enrolled agents
//! are remembered by id with the sha256 of their public key (table `enrolled_agents`), so an
//! id cannot be taken over by another key. Renewal (`Renew` on the control stream) signs a
//! new certificate for the key the connection was authenticated with, and only that key.
//!
//! Join tokens are `ferry_jt_` and 48 hex characters, kept with their labels, expiry, uses and the
//! agents that used them; ended tokens are forgotten a week after they end. `enroll` checks, in
//! order: the id is valid, the CSR's signature holds, the token is usable, the id is not revoked
//! nor held by another key (or by a known agent that did not enroll). Then one use of the token is
//! consumed under a lock held across its commit, the CA signs the CSR, the token's labels go into
//! the overrides, and `Enrolled` carries the certificate, the CA and the plugin signing key.
//! `renew` never answers for a revoked agent. A server on certificates it was given (`[tls]`) has
//! no CA key and refuses enrollment with a message saying so.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::pki::{self, CertificateAuthority};
use ferry_protocol::{AgentId, Enroll, EnrollCode, EnrollRefused, Enrolled, Renew, Renewed};
use parking_lot::Mutex;
use rand::RngCore;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

pub use ferry_api::{JoinToken, JoinTokenState};

use crate::domain::agents::AgentInfo;
use crate::storage::overrides::{MAX_LABELS, Overrides, check_label};

/// token id → [`StoredToken`], as JSON.
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
/// agent id → [`EnrolledAgent`], as JSON.
const ENROLLED: TableDefinition<&str, &[u8]> = TableDefinition::new("enrolled_agents");

/// Ended tokens (expired, used up, revoked) are listed this long, then forgotten.
const KEEP_ENDED: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most uses one token may have.
pub const MAX_USES: u32 = 10_000;

/// When a token stopped enrolling agents; `None` while it is active.
fn ended_at(token: &JoinToken) -> Option<OffsetDateTime> {
    match token.state(OffsetDateTime::now_utc()) {
        JoinTokenState::Active => None,
        // Used-up tokens have no end time of their own; their expiry bounds it.
        _ => Some(token.revoked_at.unwrap_or(token.expires_at)),
    }
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    #[serde(flatten)]
    token: JoinToken,
    /// sha256 of the token, hex.
    sha256: String,
}

/// An agent that enrolled: which key holds its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnrolledAgent {
    /// sha256 of the agent's public key, hex.
    key_sha256: String,
    /// The join token it came with.
    token_id: String,
    #[serde(with = "time::serde::rfc3339")]
    enrolled_at: OffsetDateTime,
}

/// A join-token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No such token.
    #[error("no join token with id '{0}'; `ferry token list` shows them")]
    NotFound(String),
    /// The database failed.
    #[error("the server's join-token store failed: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> JoinTokenError {
    JoinTokenError::Storage(e.to_string())
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn refused(code: EnrollCode, message: impl Into<String>) -> EnrollRefused {
    EnrollRefused {
        code,
        message: message.into(),
    }
}

/// What the server issues agents with, and the tokens and enrolled agents it remembers.
pub(crate) struct Enrollment {
    db: Arc<Database>,
    /// Tokens by hash; the lock is held across a use's commit, which is what makes using a
    /// token atomic.
    tokens: Mutex<HashMap<[u8; 32], JoinToken>>,
    /// Held across an enrollment's checks and commit, so two agents asking for one id cannot
    /// both get it.
    enrolled: Mutex<HashMap<String, EnrolledAgent>>,
    /// `None` when the server runs on certificates it was given (`[tls]`) and has no CA key.
    ca: Option<CertificateAuthority>,
    ca_pem: String,
    plugin_key: Option<String>,
    cert_ttl: Duration,
}

impl Enrollment {
    pub(crate) fn open(
        db: Arc<Database>,
        ca: Option<CertificateAuthority>,
        ca_pem: String,
        plugin_key: Option<String>,
        cert_ttl: Duration,
    ) -> Result<Enrollment, String> {
        let failed = |e: &dyn std::fmt::Display| format!("the server's enrollment store: {e}");
        let tx = db.begin_write().map_err(|e| failed(&e))?;
        tx.open_table(JOIN_TOKENS).map_err(|e| failed(&e))?;
        tx.open_table(ENROLLED).map_err(|e| failed(&e))?;
        tx.commit().map_err(|e| failed(&e))?;
        let mut tokens = HashMap::new();
        let mut enrolled = HashMap::new();
        let mut forget = Vec::new();
        let now = OffsetDateTime::now_utc();
        {
            let tx = db.begin_read().map_err(|e| failed(&e))?;
            for entry in tx
                .open_table(JOIN_TOKENS)
                .map_err(|e| failed(&e))?
                .iter()
                .map_err(|e| failed(&e))?
            {
                let (key, value) = entry.map_err(|e| failed(&e))?;
                let stored: StoredToken = serde_json::from_slice(value.value())
                    .map_err(|e| failed(&format!("join token {} is damaged: {e}", key.value())))?;
                if ended_at(&stored.token).is_some_and(|t| now - t > KEEP_ENDED) {
                    forget.push(stored.token.id);
                    continue;
                }
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&stored.sha256, &mut digest)
                    .map_err(|e| failed(&format!("join token {} is damaged: {e}", key.value())))?;
                tokens.insert(digest, stored.token);
            }
            for entry in tx
                .open_table(ENROLLED)
                .map_err(|e| failed(&e))?
                .iter()
                .map_err(|e| failed(&e))?
            {
                let (key, value) = entry.map_err(|e| failed(&e))?;
                let record: EnrolledAgent = serde_json::from_slice(value.value()).map_err(|e| {
                    failed(&format!("enrolled agent {} is damaged: {e}", key.value()))
                })?;
                enrolled.insert(key.value().to_string(), record);
            }
        }
        if !forget.is_empty() {
            let tx = db.begin_write().map_err(|e| failed(&e))?;
            {
                let mut table = tx.open_table(JOIN_TOKENS).map_err(|e| failed(&e))?;
                for id in &forget {
                    table.remove(id.as_str()).map_err(|e| failed(&e))?;
                }
            }
            tx.commit().map_err(|e| failed(&e))?;
        }
        Ok(Enrollment {
            db,
            tokens: Mutex::new(tokens),
            enrolled: Mutex::new(enrolled),
            ca,
            ca_pem,
            plugin_key,
            cert_ttl,
        })
    }

    /// The SHA-256 fingerprint of the CA certificate, hex: what `ferry agent --join` pins.
    pub(crate) fn ca_fingerprint(&self) -> String {
        pki::first_cert_der(&self.ca_pem)
            .map(|der| pki::fingerprint(&der))
            .unwrap_or_default()
    }

    fn put_token(&self, token: &JoinToken, digest: &[u8; 32]) -> Result<(), JoinTokenError> {
        let stored = StoredToken {
            token: token.clone(),
            sha256: hex::encode(digest),
        };
        let value = serde_json::to_vec(&stored).expect("a join token serializes");
        let tx = self.db.begin_write().map_err(storage)?;
        tx.open_table(JOIN_TOKENS)
            .map_err(storage)?
            .insert(token.id.as_str(), value.as_slice())
            .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// Makes a join token; returns its record and the token, which is not kept anywhere.
    pub(crate) fn create(
        &self,
        labels: BTreeMap<String, String>,
        ttl: Duration,
        uses: u32,
        created_by: &str,
    ) -> Result<(JoinToken, String), JoinTokenError> {
        if uses == 0 || uses > MAX_USES {
            return Err(JoinTokenError::Invalid(format!(
                "a join token has 1 to {MAX_USES} uses, not {uses}"
            )));
        }
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(365 * 24 * 3600) {
            return Err(JoinTokenError::Invalid(
                "a join token lives between a second and a year; give a ttl such as 1h or 7d"
                    .into(),
            ));
        }
        if labels.len() > MAX_LABELS {
            return Err(JoinTokenError::Invalid(format!(
                "a join token carries at most {MAX_LABELS} labels, not {}",
                labels.len()
            )));
        }
        for (key, value) in &labels {
            check_label(key, Some(value)).map_err(JoinTokenError::Invalid)?;
        }
        if self.ca.is_none() {
            return Err(JoinTokenError::Invalid(UNAVAILABLE.into()));
        }
        let mut secret = [0u8; 24];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("ferry_jt_{}", hex::encode(secret));
        let mut id = [0u8; 6];
        rand::rng().fill_bytes(&mut id);
        let now = OffsetDateTime::now_utc();
        let record = JoinToken {
            id: hex::encode(id),
            labels,
            created_at: now,
            created_by: created_by.to_string(),
            expires_at: now + ttl,
            uses,
            enrolled: Vec::new(),
            revoked_at: None,
        };
        let digest = hash(token.as_bytes());
        let mut tokens = self.tokens.lock();
        self.put_token(&record, &digest)?;
        tokens.insert(digest, record.clone());
        Ok((record, token))
    }

    /// Every token the server remembers, oldest first.
    pub(crate) fn list(&self) -> Vec<JoinToken> {
        let mut list: Vec<JoinToken> = self.tokens.lock().values().cloned().collect();
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        list
    }

    /// Revokes a token: agents that already enrolled with it keep their certificates.
    pub(crate) fn revoke(&self, id: &str) -> Result<JoinToken, JoinTokenError> {
        let mut tokens = self.tokens.lock();
        let (digest, token) = tokens
            .iter()
            .find(|(_, t)| t.id == id)
            .map(|(d, t)| (*d, t.clone()))
            .ok_or_else(|| JoinTokenError::NotFound(id.to_string()))?;
        let mut token = token;
        token.revoked_at.get_or_insert_with(OffsetDateTime::now_utc);
        self.put_token(&token, &digest)?;
        tokens.insert(digest, token.clone());
        Ok(token)
    }

    /// Checks a token without using it.
    fn check_token(&self, presented: &str) -> Result<JoinToken, EnrollRefused> {
        let tokens = self.tokens.lock();
        let token = tokens.get(&hash(presented.trim().as_bytes())).ok_or_else(|| {
            refused(
                EnrollCode::UnknownToken,
                "the server does not know this join token: check it was copied whole, or ask an operator for a new one (`ferry token create` on the server)",
            )
        })?;
        match token.state(OffsetDateTime::now_utc()) {
            JoinTokenState::Active => Ok(token.clone()),
            JoinTokenState::Revoked => Err(refused(
                EnrollCode::RevokedToken,
                format!(
                    "join token {} was revoked by an operator; ask for a new one (`ferry token create`)",
                    token.id
                ),
            )),
            JoinTokenState::Used => Err(refused(
                EnrollCode::UsedToken,
                format!(
                    "join token {} is used up ({} of {} uses); ask an operator for a new one (`ferry token create --uses N`)",
                    token.id,
                    token.enrolled.len(),
                    token.uses
                ),
            )),
            JoinTokenState::Expired => Err(refused(
                EnrollCode::ExpiredToken,
                format!(
                    "join token {} expired at {}; ask an operator for a new one (`ferry token create --ttl …`)",
                    token.id, token.expires_at
                ),
            )),
        }
    }

    /// Uses one use of a token for `agent`, durably; fails if it is no longer usable.
    fn use_token(&self, presented: &str, agent: &AgentId) -> Result<JoinToken, EnrollRefused> {
        // Checked again under the lock held across the commit: of two agents racing for the
        // last use, the second sees it used up.
        let mut tokens = self.tokens.lock();
        let digest = hash(presented.trim().as_bytes());
        let mut token = match tokens.get(&digest) {
            Some(t) if t.state(OffsetDateTime::now_utc()) == JoinTokenState::Active => t.clone(),
            _ => {
                drop(tokens);
                return Err(self.check_token(presented).err().unwrap_or_else(|| {
                    refused(EnrollCode::UsedToken, "the join token is used up")
                }));
            }
        };
        token.enrolled.push(agent.to_string());
        self.put_token(&token, &digest)
            .map_err(|e| refused(EnrollCode::Unavailable, e.to_string()))?;
        tokens.insert(digest, token.clone());
        Ok(token)
    }

    /// Enrolls an agent, or says why not. Blocking (database commits): call it off the async
    /// workers.
    ///
    /// `overrides`: where a revoked id is refused and the token's labels go; `known`: the
    /// agent the server knows by an id, if any (an id in use cannot be taken by another key).
    pub(crate) fn enroll(
        &self,
        overrides: &Overrides,
        known: impl Fn(&AgentId) -> Option<AgentInfo>,
        request: &Enroll,
    ) -> Result<Enrolled, EnrollRefused> {
        let Some(ca) = &self.ca else {
            return Err(refused(EnrollCode::Unavailable, UNAVAILABLE));
        };
        let id = AgentId::new(request.requested_id.trim()).map_err(|e| {
            refused(
                EnrollCode::BadRequest,
                format!("{e}; choose one with `ferry agent --join … --name NAME`"),
            )
        })?;
        let key = pki::csr_public_key(&request.csr).map_err(|e| {
            refused(
                EnrollCode::BadRequest,
                format!("the certificate signing request is not valid: {e}"),
            )
        })?;
        let key_sha256 = hex::encode(hash(&key));
        self.check_token(&request.token)?;
        let mut enrolled = self.enrolled.lock();
        if overrides.revoked(id.as_str()).is_some() {
            return Err(refused(
                EnrollCode::AgentRevoked,
                format!(
                    "agent id '{id}' is revoked on this server; choose another name (--name), or have an operator run `ferry agent unrevoke {id}` first"
                ),
            ));
        }
        let same_key = enrolled
            .get(id.as_str())
            .map(|e| e.key_sha256 == key_sha256);
        let known = known(&id).is_some();
        if same_key == Some(false) || (same_key.is_none() && known) {
            return Err(refused(
                EnrollCode::IdTaken,
                format!(
                    "agent id '{id}' is already taken by another agent on this server; choose another name with --name (or revoke the other agent first with `ferry agents revoke {id}`)"
                ),
            ));
        }
        let token = self.use_token(&request.token, &id)?;
        let certificate_pem = ca
            .sign_agent_csr(&request.csr, &id, self.cert_ttl)
            .map_err(|e| {
                refused(
                    EnrollCode::BadRequest,
                    format!("the certificate signing request cannot be signed: {e}"),
                )
            })?;
        let record = EnrolledAgent {
            key_sha256,
            token_id: token.id.clone(),
            enrolled_at: OffsetDateTime::now_utc(),
        };
        let value = serde_json::to_vec(&record).expect("an enrollment serializes");
        let stored = (|| -> Result<(), redb::Error> {
            let tx = self.db.begin_write()?;
            tx.open_table(ENROLLED)?
                .insert(id.as_str(), value.as_slice())?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = stored {
            return Err(refused(
                EnrollCode::Unavailable,
                format!("the server cannot record the enrollment: {e}"),
            ));
        }
        enrolled.insert(id.to_string(), record);
        drop(enrolled);
        if !token.labels.is_empty()
            && let Err(e) = overrides.update(id.as_str(), |o| {
                o.labels.extend(token.labels.clone());
            })
        {
            tracing::error!(agent = %id, "cannot set the join token's labels: {e}");
        }
        let not_after = certificate_not_after(&certificate_pem);
        tracing::info!(agent = %id, token = %token.id, labels = ?token.labels, "agent enrolled");
        Ok(Enrolled {
            agent_id: id.to_string(),
            certificate_pem,
            ca_pem: self.ca_pem.clone(),
            plugin_key: self.plugin_key.clone(),
            not_after,
        })
    }

    /// Renews the certificate of `id`, authenticated by `peer_cert` (DER): the CSR must be for
    /// that certificate's key.
    pub(crate) fn renew(
        &self,
        overrides: &Overrides,
        id: &AgentId,
        peer_cert: &[u8],
        request: &Renew,
    ) -> Result<Renewed, EnrollRefused> {
        let Some(ca) = &self.ca else {
            return Err(refused(EnrollCode::Unavailable, UNAVAILABLE));
        };
        if let Err(why) = overrides.admission(id) {
            return Err(refused(EnrollCode::AgentRevoked, why));
        }
        let bad = |e: pki::PkiError| {
            refused(
                EnrollCode::BadRequest,
                format!("the renewal request is not valid: {e}"),
            )
        };
        let asked = pki::csr_public_key(&request.csr).map_err(bad)?;
        let holds = pki::cert_public_key(peer_cert).map_err(bad)?;
        if asked != holds {
            return Err(refused(
                EnrollCode::BadRequest,
                "a renewal must be for the key this connection was authenticated with; to change keys, enroll again with a new join token",
            ));
        }
        let certificate_pem = ca
            .sign_agent_csr(&request.csr, id, self.cert_ttl)
            .map_err(bad)?;
        let not_after = certificate_not_after(&certificate_pem);
        tracing::info!(agent = %id, not_after, "agent certificate renewed");
        Ok(Renewed {
            certificate_pem,
            not_after,
        })
    }
}

const UNAVAILABLE: &str = "this server cannot enroll agents: it runs on certificates it was given ([tls] in its configuration) and does not hold their CA's key; issue agent certificates with that CA instead";

fn certificate_not_after(pem: &str) -> i64 {
    pki::first_cert_der(pem)
        .and_then(|der| pki::cert_not_after(&der))
        .map(|t| t.unix_timestamp())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Enrollment {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let ca_pem = ca.cert_pem().to_string();
        Enrollment::open(
            crate::storage::db::open(dir).unwrap(),
            Some(ca),
            ca_pem,
            None,
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[test]
    fn a_one_use_token_is_used_once_even_when_raced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        let (_, token) = store
            .create(BTreeMap::new(), Duration::from_secs(60), 1, "test")
            .unwrap();
        let winners: Vec<bool> = (0..8)
            .map(|i| {
                let store = store.clone();
                let token = token.clone();
                std::thread::spawn(move || {
                    store
                        .use_token(&token, &AgentId::new(format!("a{i}")).unwrap())
                        .is_ok()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
        let err = store.check_token(&token).unwrap_err();
        assert_eq!(err.code, EnrollCode::UsedToken, "{}", err.message);
        assert!(err.message.contains("used up"), "{}", err.message);
    }

    #[test]
    fn tokens_are_kept_hashed_and_their_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (record, token) = {
            let store = open(dir.path());
            let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
            let (record, token) = store
                .create(labels, Duration::from_secs(60), 2, "test")
                .unwrap();
            store
                .use_token(&token, &AgentId::new("a").unwrap())
                .unwrap();
            (record, token)
        };
        let raw = std::fs::read(dir.path().join(crate::storage::db::STATE_DB)).unwrap();
        assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
        let store = open(dir.path());
        let listed = store.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].enrolled, ["a"]);
        assert_eq!(listed[0].labels["env"], "prod");
        store.revoke(&record.id).unwrap();
        assert_eq!(
            store.check_token(&token).unwrap_err().code,
            EnrollCode::RevokedToken
        );
        assert_eq!(
            store.check_token("ferry_jt_nope").unwrap_err().code,
            EnrollCode::UnknownToken
        );
        assert!(matches!(
            store.create(BTreeMap::new(), Duration::from_secs(60), 0, "t"),
            Err(JoinTokenError::Invalid(_))
        ));
        assert!(matches!(
            store.revoke("nope"),
            Err(JoinTokenError::NotFound(_))
        ));
    }
}
