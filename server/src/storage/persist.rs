//! What a restart of the server must not lose, in `<data_dir>/state.redb` beside the other
//! parts' tables: operator commands (with their request, so that unsent agents can still be
//! sent them), each agent's run of them with its result, idempotency keys, and the agents the
//! server has seen.
//!
//! Durable writes (a command's creation before the API answers, a run before its Command
//! frame leaves, a result before the agent gets its `ResultAck`) go through one logged
//! [`ferry_store::Writer`]: committed to redb without a flush and durable by one record of the
//! write-ahead log in `<data_dir>/commands.wal/` (one `fdatasync` per group of writes that
//! arrive together, where a durable redb commit costs several), replayed into the database at
//! start after an unclean stop.
//! Progress and log lines are not written: they are kept in memory for the event streams.
//!
//! What is durable: a command before the API answers (`create_command`, which claims its
//! idempotency key in the same transaction: a key already held returns its command instead); a run
//! before its `Command` leaves; every run's end before it is shown (so before `ResultAck`); the
//! agents a fan-out decided not to send it to (table `command_slots`, one small record per
//! decision, before it is shown); and the command's end. Writes that are not durable are commits
//! without a flush and no log record. After a restart a command shows its `accepted` and `finished`
//! events, not its progress.
//!
//! At start, `domain::commands::restore` brings every command back: ended ones as they ended, runs
//! still going sent again under the same id, agents not sent it yet sent it within the command's
//! limits, each waited for up to `restart_grace` (the restart cut them off, they are reconnecting).
//! The oldest ended commands past 2,000 are forgotten.

use std::path::Path;
use std::sync::Arc;

use ferry_store::wal::WalOptions;
use ferry_store::{StoreError, Writer, decode, encode};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::domain::agents::AgentInfo;
use crate::domain::ports::{CommandLog, StorageError, Written};
use crate::domain::records::{
    COMMAND_LAYOUT, CommandRecord, Created, Loaded, NotSent, RUN_LAYOUT, RunRecord,
};

/// Operator command id → [`CommandRecord`] (CBOR).
const COMMANDS: TableDefinition<&str, &[u8]> = TableDefinition::new("commands");
/// Agent run id → [`RunRecord`] (CBOR).
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("command_runs");
/// Idempotency key → operator command id.
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("command_idempotency_keys");
/// `<command id>/<slot index>` → [`NotSent`] (CBOR): an agent a fan-out decided not to send
/// the command to, written (durably) before anyone is shown the decision, so a restart never
/// sends it after all. One small record per decision, not the whole command again.
const SLOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("command_slots");
/// Agent id → [`AgentInfo`] as last seen (CBOR).
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");

/// The write-ahead log's directory under the data directory.
pub const LOG: &str = "commands.wal";

/// One row a durable write put, as its log record holds it.
#[derive(Debug, Serialize, Deserialize)]
enum Row {
    Command(String, serde_bytes::ByteBuf),
    Run(String, serde_bytes::ByteBuf),
    Slot(String, serde_bytes::ByteBuf),
    Key(String, String),
}

/// Puts `rows` into their tables: a write's own change, and its replay from the log.
fn put(tx: &redb::WriteTransaction, rows: &[Row]) -> Result<(), redb::Error> {
    for row in rows {
        match row {
            Row::Command(id, bytes) => {
                tx.open_table(COMMANDS)?
                    .insert(id.as_str(), bytes.as_slice())?;
            }
            Row::Run(id, bytes) => {
                tx.open_table(RUNS)?.insert(id.as_str(), bytes.as_slice())?;
            }
            Row::Slot(key, bytes) => {
                tx.open_table(SLOTS)?
                    .insert(key.as_str(), bytes.as_slice())?;
            }
            Row::Key(key, id) => {
                tx.open_table(KEYS)?.insert(key.as_str(), id.as_str())?;
            }
        }
    }
    Ok(())
}

/// Puts a record of the log back into the database after a crash lost the commit that
/// carried it.
fn apply(tx: &redb::WriteTransaction, record: &[u8]) -> Result<(), redb::Error> {
    match decode::<Vec<Row>>(record) {
        Some(rows) => put(tx, &rows),
        // Skipping it could forget a command the API acknowledged, or a result acked to its
        // agent.
        None => Err(redb::Error::Corrupted(format!(
            "a record of the server's command log does not decode (written by a newer server?); start that server version again, or move {LOG} aside to lose what it holds"
        ))),
    }
}

/// The server's command journal.
pub(crate) struct Persist {
    writer: Writer,
}

/// `rows` put in `tx`, and their log record if the write is `durable`.
fn logged(
    tx: &redb::WriteTransaction,
    rows: Vec<Row>,
    durable: bool,
) -> Result<Option<Vec<u8>>, redb::Error> {
    put(tx, &rows)?;
    Ok(durable.then(|| encode(&rows)))
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("cannot read the server's command records: {e}")
}

impl Persist {
    /// Opens the journal on `db` with its log in `<data_dir>/`[`LOG`], first replaying into
    /// `db` what the log holds and `db` lost in an unclean stop.
    pub(crate) fn open(db: Arc<Database>, data_dir: &Path) -> Result<Persist, String> {
        let (writer, replayed) = Writer::start_logged(
            "commands",
            db,
            &data_dir.join(LOG),
            WalOptions::default(),
            &apply,
        )
        .map_err(|e| e.to_string())?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "the command records recovered writes from their log after an unclean stop"
            );
        }
        Ok(Persist { writer })
    }

    /// Writes a new operator command, durably, claiming its idempotency key in the same
    /// transaction: if the key is already held, nothing is written and the holder's id comes
    /// back, so two submissions with one key can never both create a command.
    ///
    /// Queued when called (see [`ferry_store::Writer::write`]): what is written after it is on
    /// disk only with it.
    ///
    /// `run`: the command's one run, recorded in the same transaction, so that the two are on
    /// disk together or not at all. `durable`: false only for a read-only topic's command.
    pub(crate) fn create_command(
        &self,
        record: &CommandRecord,
        run: Option<&RunRecord>,
        durable: bool,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send + 'static {
        let id = record.id.clone();
        let key = record.idempotency_key.clone();
        let bytes = encode(record);
        let run = run.map(|run| (run.id().to_string(), encode(run)));
        self.writer.write_logged("a new command", move |tx| {
            let mut rows = Vec::new();
            if let Some(key) = key {
                if let Some(holder) = tx.open_table(KEYS)?.get(key.as_str())? {
                    return Ok((Created::Existing(holder.value().to_string()), None));
                }
                rows.push(Row::Key(key, id.clone()));
            }
            rows.push(Row::Command(id, bytes.into()));
            if let Some((run_id, run)) = run {
                rows.push(Row::Run(run_id, run.into()));
            }
            Ok((Created::New, logged(tx, rows, durable)?))
        })
    }

    /// Writes an operator command again (its progress, its end); `key`: its idempotency key,
    /// recorded with it.
    pub(crate) fn save_command(
        &self,
        record: &CommandRecord,
        durable: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let id = record.id.clone();
        let key = record.idempotency_key.clone();
        let bytes = encode(record);
        self.writer.write_logged("a command", move |tx| {
            let mut rows = vec![Row::Command(id.clone(), bytes.into())];
            if let Some(key) = key {
                rows.push(Row::Key(key, id));
            }
            Ok(((), logged(tx, rows, durable)?))
        })
    }

    /// Writes, durably, that the agents at these slots of command `command` are not sent it.
    pub(crate) fn save_not_sent(
        &self,
        command: &str,
        slots: Vec<(u32, NotSent)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let rows: Vec<Row> = slots
            .iter()
            .map(|(index, not_sent)| {
                Row::Slot(format!("{command}/{index}"), encode(not_sent).into())
            })
            .collect();
        self.writer
            .write_logged("agents a command is not sent to", move |tx| {
                Ok(((), logged(tx, rows, true)?))
            })
    }

    /// Writes one agent's run; queued when called.
    pub(crate) fn save_run(
        &self,
        record: &RunRecord,
        durable: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let id = record.id().to_string();
        let bytes = encode(record);
        self.writer
            .write_logged("a command's run on an agent", move |tx| {
                Ok(((), logged(tx, vec![Row::Run(id, bytes.into())], durable)?))
            })
    }

    /// Writes what the server knows of an agent, for `ferry agents` after a restart.
    pub(crate) fn save_agent(
        &self,
        info: &AgentInfo,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let id = info.id.clone();
        let bytes = encode(info);
        self.writer.write("an agent", false, move |tx| {
            tx.open_table(AGENTS)?
                .insert(id.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// The operator command an idempotency key was first used for.
    pub(crate) fn command_for_key(&self, key: &str) -> Option<String> {
        let tx = self.writer.db().begin_read().ok()?;
        let table = tx.open_table(KEYS).ok()?;
        let id = table.get(key).ok()??.value().to_string();
        Some(id)
    }

    /// Reads everything back, and forgets the oldest ended commands past `retain` (with their
    /// runs and keys).
    pub(crate) fn load(&self, retain: usize) -> Result<Loaded, String> {
        let tx = self.writer.db().begin_read().map_err(failed)?;
        let mut loaded = Loaded::default();
        if let Some(table) = open(&tx, COMMANDS)? {
            for row in table.iter().map_err(failed)? {
                let (id, value) = row.map_err(failed)?;
                match decode::<CommandRecord>(value.value()) {
                    Some(record) if record.layout > COMMAND_LAYOUT => {
                        return Err(newer("command", &record.id, record.layout, COMMAND_LAYOUT));
                    }
                    Some(record) => loaded.commands.push(record),
                    None => tracing::warn!(
                        id = id.value(),
                        "skipping a command record that does not decode"
                    ),
                }
            }
        }
        if let Some(table) = open(&tx, RUNS)? {
            for row in table.iter().map_err(failed)? {
                let (_, value) = row.map_err(failed)?;
                if let Some(record) = decode::<RunRecord>(value.value()) {
                    // Skipping it would let the fan-out send its agent the command again under a
                    // new id, so a newer layout stops the start instead.
                    if record.layout > RUN_LAYOUT {
                        return Err(newer("run", record.id(), record.layout, RUN_LAYOUT));
                    }
                    loaded.runs.push(record);
                }
            }
        }
        if let Some(table) = open(&tx, SLOTS)? {
            let index_of: std::collections::HashMap<String, usize> = loaded
                .commands
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id.clone(), i))
                .collect();
            for row in table.iter().map_err(failed)? {
                let (key, value) = row.map_err(failed)?;
                let Some((command, slot)) = key.value().rsplit_once('/') else {
                    continue;
                };
                let (Some(&i), Ok(slot), Some(not_sent)) = (
                    index_of.get(command),
                    slot.parse::<usize>(),
                    decode::<NotSent>(value.value()),
                ) else {
                    continue;
                };
                if let Some(slot) = loaded.commands[i].slots.get_mut(slot) {
                    slot.not_sent.get_or_insert(not_sent);
                }
            }
        }
        if let Some(table) = open(&tx, AGENTS)? {
            for row in table.iter().map_err(failed)? {
                let (_, value) = row.map_err(failed)?;
                if let Some(info) = decode::<AgentInfo>(value.value()) {
                    loaded.agents.push(info);
                }
            }
        }
        drop(tx);
        loaded.commands.sort_by_key(|c| c.created_at);

        let ended = loaded
            .commands
            .iter()
            .filter(|c| c.finished_at.is_some())
            .count();
        if ended > retain {
            let mut drop_count = ended - retain;
            let mut forget = Vec::new();
            loaded.commands.retain(|c| {
                if drop_count > 0 && c.finished_at.is_some() {
                    drop_count -= 1;
                    forget.push((c.id.clone(), c.idempotency_key.clone()));
                    false
                } else {
                    true
                }
            });
            let forgotten: std::collections::HashSet<String> =
                forget.iter().map(|(id, _)| id.clone()).collect();
            let runs: Vec<String> = loaded
                .runs
                .iter()
                .filter(|r| forgotten.contains(&r.origin.fleet))
                .map(|r| r.id().to_string())
                .collect();
            loaded.runs.retain(|r| !forgotten.contains(&r.origin.fleet));
            self.writer
                .write_now("forgetting old commands", move |tx| {
                    let mut commands = tx.open_table(COMMANDS)?;
                    let mut keys = tx.open_table(KEYS)?;
                    for (id, key) in forget {
                        commands.remove(id.as_str())?;
                        if let Some(key) = key {
                            keys.remove(key.as_str())?;
                        }
                    }
                    let mut table = tx.open_table(RUNS)?;
                    for id in runs {
                        table.remove(id.as_str())?;
                    }
                    let mut slots = tx.open_table(SLOTS)?;
                    for id in forgotten {
                        // Every key of the command: `<id>/` up to, not including, `<id>0`.
                        let (from, to) = (format!("{id}/"), format!("{id}0"));
                        slots.retain_in(from.as_str()..to.as_str(), |_, _| false)?;
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(loaded)
    }
}

fn open(
    tx: &redb::ReadTransaction,
    table: TableDefinition<'static, &'static str, &'static [u8]>,
) -> Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>, String> {
    match tx.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(failed(e)),
    }
}

/// Why a start stops at a record a newer server wrote: skipping it could send a command again.
fn newer(what: &str, id: &str, layout: u32, reads: u32) -> String {
    format!(
        "{what} {id} was written in record layout {layout} by a newer ferry server (this one reads up to {reads}); run that version or a newer one on this data directory"
    )
}

/// A write's future as the domain's port gives it: boxed, with the backend's error as text.
fn port<T: Send + 'static>(
    write: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Written<T> {
    Box::pin(async move { write.await.map_err(|e| StorageError(e.to_string())) })
}

impl CommandLog for Persist {
    fn create_command(
        &self,
        record: &CommandRecord,
        run: Option<&RunRecord>,
        durable: bool,
    ) -> Written<Created> {
        port(Persist::create_command(self, record, run, durable))
    }

    fn save_command(&self, record: &CommandRecord, durable: bool) -> Written<()> {
        port(Persist::save_command(self, record, durable))
    }

    fn save_not_sent(&self, command: &str, slots: Vec<(u32, NotSent)>) -> Written<()> {
        port(Persist::save_not_sent(self, command, slots))
    }

    fn save_run(&self, record: &RunRecord, durable: bool) -> Written<()> {
        port(Persist::save_run(self, record, durable))
    }

    fn save_agent(&self, info: &AgentInfo) -> Written<()> {
        port(Persist::save_agent(self, info))
    }

    fn command_for_key(&self, key: &str) -> Option<String> {
        Persist::command_for_key(self, key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use time::OffsetDateTime;

    use super::*;
    use crate::domain::records::{SlotRecord, TargetRecord};
    use crate::domain::runs::{Origin, RenderedPayload, RunStatus, RunView};

    fn command(id: &str, key: Option<&str>) -> CommandRecord {
        CommandRecord {
            layout: COMMAND_LAYOUT,
            id: id.into(),
            topic: "echo".into(),
            target: TargetRecord::Agents(vec!["a1".into()]),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            timeout_ms: None,
            idempotency_key: key.map(Into::into),
            data: BTreeMap::new(),
            max_concurrency: None,
            max_errors: None,
            deliver_within_ms: None,
            created_by: "test".into(),
            created_at: OffsetDateTime::now_utc(),
            slots: vec![SlotRecord {
                agent: "a1".into(),
                not_sent: None,
            }],
            finished_at: None,
            cancelled: false,
            peak: 0,
        }
    }

    fn run(command: &str, status: RunStatus) -> RunRecord {
        RunRecord::new(
            Origin {
                fleet: command.into(),
                index: 0,
                timeout_ms: None,
            },
            RunView {
                id: format!("{command}-run"),
                agent: "a1".into(),
                topic: "echo".into(),
                status,
                created_at: OffsetDateTime::now_utc(),
                finished_at: None,
                progress: None,
                detail: None,
                output: RenderedPayload::default(),
                stats: None,
            },
        )
    }

    /// A run record as servers wrote it before records carried a layout: the API's view of
    /// the run under `view`, nothing else. It must still load, unchanged.
    #[derive(Serialize)]
    struct FirstLayout {
        origin: Origin,
        view: serde_json::Value,
    }

    #[test]
    fn run_records_of_the_first_layout_load_and_newer_ones_stop_the_start() {
        let created = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let origin = Origin {
            fleet: "c1".into(),
            index: 0,
            timeout_ms: Some(1000),
        };
        let view = serde_json::json!({
            "id": "r1", "agent": "a1", "topic": "echo", "status": "succeeded",
            "created_at": "2023-11-14T22:13:20Z", "finished_at": "2023-11-14T22:13:20Z",
            "progress": 100, "payload": null,
            "stats": {"duration_us": 3, "fuel": null, "peak_memory_bytes": 65536},
        });
        let old = encode(&FirstLayout {
            origin: origin.clone(),
            view,
        });
        let record: RunRecord = decode(&old).expect("a first-layout record decodes");
        assert_eq!(record.layout, 1);
        let (back, view) = record.clone().into_parts();
        assert_eq!(back, origin);
        assert_eq!(view.id, "r1");
        assert_eq!(view.created_at, created);
        assert_eq!(view.output.payload, Some(serde_json::Value::Null));
        assert_eq!(view.stats.as_ref().map(|s| s.duration_us), Some(3));
        // Written again, it is the same run in the current layout.
        let again: RunRecord = decode(&encode(&RunRecord::new(back, view))).unwrap();
        assert_eq!(again.layout, RUN_LAYOUT);
        assert_eq!(again.run, record.run);

        // A record from a newer server stops the start, naming the layout.
        let dir = tempfile::tempdir().unwrap();
        let newer = RunRecord {
            layout: RUN_LAYOUT + 1,
            ..again
        };
        {
            let db = crate::storage::db::open(dir.path()).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(RUNS)
                .unwrap()
                .insert("r1", encode(&newer).as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let db = crate::storage::db::open(dir.path()).unwrap();
        let err = Persist::open(db, dir.path())
            .unwrap()
            .load(100)
            .err()
            .expect("a newer layout is refused");
        assert!(err.contains("layout 2") && err.contains("newer"), "{err}");
    }

    /// A power cut leaves the database as of its last durable commit (here: before any
    /// command) and the log as flushed: every durable write comes back, with its key claimed.
    #[tokio::test]
    async fn durable_writes_in_the_log_survive_losing_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        let db = crate::storage::db::open(dir.path()).unwrap();
        let persist = Persist::open(db, dir.path()).unwrap();
        std::fs::copy(
            dir.path().join(crate::storage::db::STATE_DB),
            image.path().join(crate::storage::db::STATE_DB),
        )
        .unwrap();
        let created = persist
            .create_command(
                &command("c1", Some("key-1")),
                Some(&run("c1", RunStatus::Pending)),
                true,
            )
            .await
            .unwrap();
        assert_eq!(created, Created::New);
        persist
            .save_run(&run("c1", RunStatus::Succeeded), true)
            .await
            .unwrap();
        // Not durable: a crash may lose it, and this one does.
        persist
            .create_command(&command("read-only", None), None, false)
            .await
            .unwrap();
        std::fs::create_dir_all(image.path().join(LOG)).unwrap();
        for segment in std::fs::read_dir(dir.path().join(LOG)).unwrap() {
            let path = segment.unwrap().path();
            if path.extension().is_some_and(|e| e == "wal") {
                std::fs::copy(
                    &path,
                    image.path().join(LOG).join(path.file_name().unwrap()),
                )
                .unwrap();
            }
        }
        drop(persist);

        let db = crate::storage::db::open(image.path()).unwrap();
        let persist = Persist::open(db, image.path()).unwrap();
        let loaded = persist.load(100).unwrap();
        let commands: Vec<_> = loaded.commands.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(commands, ["c1"]);
        let runs: Vec<_> = loaded.runs.iter().map(|r| (r.id(), r.run.status)).collect();
        assert_eq!(runs, [("c1-run", RunStatus::Succeeded)]);
        assert_eq!(persist.command_for_key("key-1").as_deref(), Some("c1"));
        // The key is claimed: a second command with it is not created.
        let again = persist
            .create_command(&command("c2", Some("key-1")), None, true)
            .await
            .unwrap();
        assert_eq!(again, Created::Existing("c1".into()));
    }
}
