//! The audit log: every operator action that changes something — who (the token's id and
//! name, never the token), what (the action and the path), when, and how it ended (`ok` or the
//! error code). Kept in the server's database (table `audit_log`), committed before the API
//! answers, the newest [`RETAINED`] entries.
//!
//! An entry holds the token's id and name, the action (the route's operation id), the request, a
//! handler's note on what it acted on, the result (`ok` or the error code) and the status; the
//! request and the note are cut to `MAX_REQUEST_CHARS` and `MAX_DETAIL_CHARS`. The table maps a
//! sequence number to an entry; `GET /v1/audit` reads it a page at a time, newest first, older
//! pages by `before`.

use std::sync::Arc;

use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use ferry_api::AuditEntry;

/// sequence number → [`AuditEntry`], as JSON.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_log");

/// How many entries are kept; the oldest go first.
pub const RETAINED: u64 = 100_000;

/// The most characters an entry keeps of its request (method and path): the path is the
/// caller's choice, and even a refused request is audited, so without a bound the lowest
/// scope could store 65 KB an entry (300 requests grew the database by 28 MB).
pub const MAX_REQUEST_CHARS: usize = 256;
/// The most characters an entry keeps of a handler's note (which often quotes the request).
pub const MAX_DETAIL_CHARS: usize = 1_024;

/// `text` cut to `max` characters, with an ellipsis when cut.
fn cut(text: &mut String, max: usize) {
    if let Some((end, _)) = text.char_indices().nth(max) {
        text.truncate(end);
        text.push('…');
    }
}

/// The audit log.
pub(crate) struct AuditLog {
    db: Arc<Database>,
    next: Mutex<u64>,
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("the audit log failed: {e}")
}

impl AuditLog {
    pub(crate) fn open(db: Arc<Database>) -> Result<AuditLog, String> {
        let tx = db.begin_write().map_err(failed)?;
        tx.open_table(AUDIT).map_err(failed)?;
        tx.commit().map_err(failed)?;
        let last = {
            let tx = db.begin_read().map_err(failed)?;
            let table = tx.open_table(AUDIT).map_err(failed)?;
            table.last().map_err(failed)?.map(|(k, _)| k.value())
        };
        Ok(AuditLog {
            db,
            next: Mutex::new(last.map_or(1, |seq| seq + 1)),
        })
    }

    /// Appends an entry (its `seq` is assigned here) and drops the oldest past [`RETAINED`].
    /// Blocks on the commit: call it off the async workers.
    pub(crate) fn record(&self, mut entry: AuditEntry) -> Result<AuditEntry, String> {
        // Held across the commit so sequence numbers are written in order.
        let mut next = self.next.lock();
        entry.seq = *next;
        cut(&mut entry.request, MAX_REQUEST_CHARS);
        if let Some(detail) = &mut entry.detail {
            cut(detail, MAX_DETAIL_CHARS);
        }
        let value = serde_json::to_vec(&entry).expect("an audit entry serializes");
        let tx = self.db.begin_write().map_err(failed)?;
        {
            let mut table = tx.open_table(AUDIT).map_err(failed)?;
            table.insert(entry.seq, value.as_slice()).map_err(failed)?;
            if table.len().map_err(failed)? > RETAINED {
                table.pop_first().map_err(failed)?;
            }
        }
        tx.commit().map_err(failed)?;
        *next += 1;
        Ok(entry)
    }

    /// Up to `limit` entries older than `before` (all when `None`), newest first.
    pub(crate) fn recent(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, String> {
        let tx = self.db.begin_read().map_err(failed)?;
        let table = tx.open_table(AUDIT).map_err(failed)?;
        let range = table.range(..before.unwrap_or(u64::MAX)).map_err(failed)?;
        let mut out = Vec::new();
        for entry in range.rev().take(limit) {
            let (_, value) = entry.map_err(failed)?;
            out.push(serde_json::from_slice(value.value()).map_err(failed)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: OffsetDateTime::now_utc(),
            token_id: "t".into(),
            token_name: "ci".into(),
            action: action.into(),
            request: "POST /v1/commands".into(),
            detail: None,
            result: "ok".into(),
            status: 202,
        }
    }

    #[test]
    fn entries_are_numbered_newest_first_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(crate::storage::db::open(dir.path()).unwrap()).unwrap();
            log.record(entry("a")).unwrap();
            log.record(entry("b")).unwrap();
        }
        let log = AuditLog::open(crate::storage::db::open(dir.path()).unwrap()).unwrap();
        assert_eq!(log.record(entry("c")).unwrap().seq, 3);
        let all = log.recent(10, None).unwrap();
        let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["c", "b", "a"]);
        let older = log.recent(1, Some(3)).unwrap();
        assert_eq!(older[0].action, "b");
    }

    #[test]
    fn an_entry_keeps_a_bounded_request_and_note() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(crate::storage::db::open(dir.path()).unwrap()).unwrap();
        let mut long = entry("a");
        long.request = format!("POST /v1/commands/{}/cancel", "é".repeat(60_000));
        long.detail = Some("x".repeat(60_000));
        let stored = log.record(long).unwrap();
        assert_eq!(stored.request.chars().count(), MAX_REQUEST_CHARS + 1);
        assert!(stored.request.starts_with("POST /v1/commands/éé"));
        assert!(stored.request.ends_with('…'));
        assert_eq!(
            stored.detail.as_deref().map(|d| d.chars().count()),
            Some(MAX_DETAIL_CHARS + 1)
        );
        let read = log.recent(1, None).unwrap().remove(0);
        assert_eq!(read, stored, "what is stored is what was cut");
        // Short ones are kept whole.
        let short = log.record(entry("b")).unwrap();
        assert_eq!(short.request, "POST /v1/commands");
    }
}
