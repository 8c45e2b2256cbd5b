//! What operators decided about agents, as opposed to what agents say about themselves: labels
//! set on the server, and revocations. Persisted in the server's database (table
//! `agent_overrides`), kept in memory for the handshake check and for targeting.
//!
//! An agent's effective labels are its own (from its Hello) with the operator's merged over
//! them: an operator's `env=prod` wins over the agent's `env=dev`. Until agents enroll with
//! certificates that can be revoked, "revoked" means the server refuses the agent's id at its
//! handshake and closes its live connection.
//!
//! `Overrides::admission` is checked by the listener right after it reads the agent id from the
//! certificate, before Hello: a revoked agent is closed with `REJECTED` and never registered.
//! Revoking also closes the live connection, and once more after the handshake timeout, for a
//! handshake that passed the check just before.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use ferry_api::Revocation;

/// agent id → [`Override`], as JSON.
const OVERRIDES: TableDefinition<&str, &[u8]> = TableDefinition::new("agent_overrides");

/// What operators set on one agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Override {
    /// Labels set on the server, merged over the agent's own.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Set while the agent is revoked.
    #[serde(default)]
    pub revoked: Option<Revocation>,
}

/// Operators' labels and revocations for every agent.
pub(crate) struct Overrides {
    db: Arc<Database>,
    by_agent: RwLock<HashMap<String, Override>>,
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("the server's agent store failed: {e}")
}

/// Checks a label key or value: what a selector (`key=value,…`) can express.
pub(crate) fn check_label(key: &str, value: Option<&str>) -> Result<(), String> {
    let ok = |s: &str| {
        ferry_api::names::check(s, MAX_LABEL_BYTES, false).is_ok() && !s.contains(['=', ','])
    };
    if !ok(key) {
        return Err(format!(
            "{key:?} cannot be a label key: use 1 to {MAX_LABEL_BYTES} bytes without '=', ',', spaces or control characters"
        ));
    }
    if let Some(value) = value
        && !ok(value)
    {
        return Err(format!(
            "{value:?} cannot be the value of label '{key}': use 1 to {MAX_LABEL_BYTES} bytes without '=', ',', spaces or control characters"
        ));
    }
    Ok(())
}

/// The longest label key or value.
pub(crate) const MAX_LABEL_BYTES: usize = 128;
/// The most labels an operator may set on one agent, or a join token may carry.
pub(crate) const MAX_LABELS: usize = 64;

impl Overrides {
    pub(crate) fn open(db: Arc<Database>) -> Result<Overrides, String> {
        let tx = db.begin_write().map_err(failed)?;
        tx.open_table(OVERRIDES).map_err(failed)?;
        tx.commit().map_err(failed)?;
        let mut by_agent = HashMap::new();
        {
            let tx = db.begin_read().map_err(failed)?;
            for entry in tx
                .open_table(OVERRIDES)
                .map_err(failed)?
                .iter()
                .map_err(failed)?
            {
                let (key, value) = entry.map_err(failed)?;
                let record: Override = serde_json::from_slice(value.value()).map_err(|e| {
                    format!(
                        "the operator settings of agent {} are damaged: {e}",
                        key.value()
                    )
                })?;
                by_agent.insert(key.value().to_string(), record);
            }
        }
        Ok(Overrides {
            db,
            by_agent: RwLock::new(by_agent),
        })
    }

    /// What operators set on `agent`.
    pub(crate) fn get(&self, agent: &str) -> Override {
        self.by_agent.read().get(agent).cloned().unwrap_or_default()
    }

    /// The revocation of `agent`, if it is revoked.
    pub(crate) fn revoked(&self, agent: &str) -> Option<Revocation> {
        self.by_agent
            .read()
            .get(agent)
            .and_then(|o| o.revoked.clone())
    }

    /// Whether agent `id` may connect: `Err` with the reason, to close its connection with,
    /// when an operator revoked it.
    pub(crate) fn admission(&self, id: &ferry_protocol::AgentId) -> Result<(), String> {
        match self.revoked(id.as_str()) {
            Some(revocation) => Err(format!(
                "agent '{id}' was revoked by {} at {}; an operator can readmit it with `ferry agent unrevoke {id}`",
                revocation.by, revocation.at
            )),
            None => Ok(()),
        }
    }

    /// The agent's own labels with the operator's merged over them.
    pub(crate) fn effective_labels(
        &self,
        agent: &str,
        own: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut labels = own.clone();
        if let Some(o) = self.by_agent.read().get(agent) {
            labels.extend(o.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        labels
    }

    /// Changes one agent's record with `change` and persists it before it takes effect.
    pub(crate) fn update(
        &self,
        agent: &str,
        change: impl FnOnce(&mut Override),
    ) -> Result<Override, String> {
        // Held across the commit: two operators editing one agent must not lose a change.
        let mut by_agent = self.by_agent.write();
        let mut record = by_agent.get(agent).cloned().unwrap_or_default();
        change(&mut record);
        self.store(&mut by_agent, agent, record)
    }

    /// Removes `remove` from `agent`'s operator labels and sets `set` over them, unless the
    /// agent would then carry more than `MAX_LABELS`: checked under the same lock as the
    /// change, so that two operators adding labels at once cannot pass the bound together.
    pub(crate) fn set_labels(
        &self,
        agent: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Override, LabelsError> {
        let mut by_agent = self.by_agent.write();
        let mut record = by_agent.get(agent).cloned().unwrap_or_default();
        for key in remove {
            record.labels.remove(key);
        }
        record
            .labels
            .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        if record.labels.len() > MAX_LABELS {
            return Err(LabelsError::TooMany(record.labels.len()));
        }
        self.store(&mut by_agent, agent, record)
            .map_err(LabelsError::Storage)
    }

    /// Commits `record` as `agent`'s and then caches it; `by_agent` is the held cache lock.
    fn store(
        &self,
        by_agent: &mut HashMap<String, Override>,
        agent: &str,
        record: Override,
    ) -> Result<Override, String> {
        let tx = self.db.begin_write().map_err(failed)?;
        {
            let mut table = tx.open_table(OVERRIDES).map_err(failed)?;
            if record == Override::default() {
                table.remove(agent).map_err(failed)?;
            } else {
                let value = serde_json::to_vec(&record).expect("an override serializes");
                table.insert(agent, value.as_slice()).map_err(failed)?;
            }
        }
        tx.commit().map_err(failed)?;
        if record == Override::default() {
            by_agent.remove(agent);
        } else {
            by_agent.insert(agent.to_string(), record.clone());
        }
        Ok(record)
    }
}

/// Why [`Overrides::set_labels`] changed nothing.
#[derive(Debug)]
pub(crate) enum LabelsError {
    /// The agent would carry this many operator labels, more than `MAX_LABELS`.
    TooMany(usize),
    /// The database failed.
    Storage(String),
}

impl crate::domain::ports::AgentOverrides for Overrides {
    fn is_revoked(&self, agent: &str) -> bool {
        self.revoked(agent).is_some()
    }

    fn effective_labels(
        &self,
        agent: &str,
        own: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        Overrides::effective_labels(self, agent, own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_merge_over_the_agents_own_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Overrides::open(crate::storage::db::open(dir.path()).unwrap()).unwrap();
            o.update("a", |r| {
                r.labels.insert("env".into(), "prod".into());
            })
            .unwrap();
        }
        let o = Overrides::open(crate::storage::db::open(dir.path()).unwrap()).unwrap();
        let own = BTreeMap::from([
            ("env".to_string(), "dev".to_string()),
            ("zone".to_string(), "b".to_string()),
        ]);
        let labels = o.effective_labels("a", &own);
        assert_eq!(labels["env"], "prod");
        assert_eq!(labels["zone"], "b");
        assert!(o.revoked("a").is_none());
        assert!(check_label("env", Some("prod")).is_ok());
        assert!(check_label("e=v", None).is_err());
        assert!(check_label("env", Some("a b")).is_err());
    }

    #[test]
    fn an_agent_carries_at_most_max_labels_operator_labels() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overrides::open(crate::storage::db::open(dir.path()).unwrap()).unwrap();
        let labels = |range: std::ops::Range<usize>| -> BTreeMap<String, String> {
            range.map(|i| (format!("k{i}"), "v".to_string())).collect()
        };
        o.set_labels("a", &labels(0..MAX_LABELS - 1), &[]).unwrap();
        assert!(matches!(
            o.set_labels("a", &labels(100..102), &[]),
            Err(LabelsError::TooMany(n)) if n == MAX_LABELS + 1
        ));
        assert_eq!(
            o.get("a").labels.len(),
            MAX_LABELS - 1,
            "nothing was changed"
        );
        // Removing makes room in the same change; overwriting a key adds nothing.
        o.set_labels("a", &labels(100..102), &["k0".to_string()])
            .unwrap();
        o.set_labels("a", &labels(0..1), &["k1".to_string()])
            .unwrap();
        assert_eq!(o.get("a").labels.len(), MAX_LABELS);
    }
}
