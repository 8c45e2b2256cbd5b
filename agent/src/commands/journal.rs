//! The agent's command journal, `<data_dir>/journal.redb` and its write-ahead log
//! `<data_dir>/journal.wal/`: what makes a command survive a dropped connection and a restart
//! of the agent.
//!
//! The writes a command waits for (its receipt, its running mark, its result) are durable by
//! a record in the log — one `fdatasync`, shared by the commands in flight — rather than by a
//! durable redb commit, which costs several; redb takes them without a flush and is
//! checkpointed now and then (see [`ferry_store::Writer::start_logged`]). Opening the journal
//! replays into redb what a crash kept from it, before anything reads it.
//!
//! - A command is written here when it arrives (`Accepted` leaves without waiting for the
//!   write) and marked *running* (with its plugin's name); both writes are durable before the
//!   plugin starts.
//! - Its result is written (durably) while it is sent, and kept until the server answers
//!   `ResultAck`; results the server has not acknowledged are delivered again on a report
//!   stream at the start of every session (after a reconnection or a restart of the agent).
//! - A command id or an idempotency key seen again is answered from here, never run twice.
//! - A command still *running* when the agent starts was interrupted by the agent's own end
//!   (a crash, a kill, a power cut): it ends as `crashed`, is counted against its plugin, and a
//!   plugin that was running at [`QUARANTINE_AFTER`] such ends in a row is quarantined: its
//!   topics are refused until a new version of it is loaded.
//!
//! Acknowledged entries are kept (without their payload) for [`RETENTION`], so that a
//! duplicate arriving late still finds its result, then pruned at the next start.
//!
//! Acknowledgements and pruning are commits a crash may lose: a lost acknowledgement delivers the
//! result once more. The running mark is one durable write with the receipt when the plugin is
//! known at once. `accept` looks the id and the idempotency key up and claims them in one
//! transaction, so of two copies arriving at once exactly one runs. At start, commands accepted but
//! not started are run (with what is left of their timeout). One end of the agent counts once per
//! plugin against quarantine, however many of its commands were in flight.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol::{Command, CommandResult, Outcome, ResultStats};
use ferry_store::wal::WalOptions;
use ferry_store::{StoreError, Writer, decode, encode};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// The journal's file name in the data directory.
pub const FILE: &str = "journal.redb";
/// The journal's write-ahead log directory in the data directory.
pub const LOG: &str = "journal.wal";
/// How many interrupted runs in a row quarantine a plugin.
pub const QUARANTINE_AFTER: u32 = 3;
/// How long an acknowledged command is remembered for duplicates.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Acknowledgements between two prunings of what is older than [`RETENTION`].
const PRUNE_EVERY: u32 = 10_000;

/// Command id → [`Entry`] (CBOR).
const COMMANDS: TableDefinition<&str, &[u8]> = TableDefinition::new("commands");
/// Idempotency key → command id.
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("idempotency_keys");
/// Plugin name → [`PluginRecord`] (CBOR).
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");

/// Where a journaled command is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum State {
    /// Accepted, its plugin not started yet (it may be waiting for its plugin to arrive).
    Received,
    /// Its plugin runs it.
    Running {
        /// The plugin's name.
        plugin: String,
    },
    /// It ended; `acked` once the server recorded the result.
    Finished {
        /// The result as sent.
        result: CommandResult,
        /// The server acknowledged it.
        acked: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    command: Command,
    state: State,
    /// Unix milliseconds of the last change.
    updated_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PluginRecord {
    /// Runs in a row that the agent's end interrupted.
    interrupted: u32,
    /// Why it is quarantined, if it is.
    quarantined: Option<String>,
}

/// A record of the write-ahead log: a durable change, as [`apply`] makes it again.
#[derive(Debug, Serialize, Deserialize)]
enum Logged {
    /// A command's entry, and its idempotency key's claim.
    Command {
        id: String,
        entry: Box<Entry>,
        key: Option<String>,
    },
    /// A plugin's record.
    Plugin { name: String, record: PluginRecord },
}

/// Puts a record of the log back into the database after a crash lost the commit that
/// carried it.
fn apply(tx: &redb::WriteTransaction, record: &[u8]) -> Result<(), redb::Error> {
    match decode::<Logged>(record) {
        Some(Logged::Command { id, entry, key }) => {
            tx.open_table(COMMANDS)?
                .insert(id.as_str(), encode(&entry).as_slice())?;
            if let Some(key) = key {
                tx.open_table(KEYS)?.insert(key.as_str(), id.as_str())?;
            }
        }
        Some(Logged::Plugin { name, record }) => {
            tx.open_table(PLUGINS)?
                .insert(name.as_str(), encode(&record).as_slice())?;
        }
        // Skipping it could forget a receipt and run a command twice.
        None => {
            return Err(redb::Error::Corrupted(
                "a record of the command journal's log does not decode (written by a newer agent?); start that agent version again, or move journal.wal aside to lose what it holds".into(),
            ));
        }
    }
    Ok(())
}

/// What [`Journal::accept`] found.
#[derive(Debug)]
pub(crate) enum Seen {
    /// A new command: journaled, to be run.
    New,
    /// The same command (by id or idempotency key) was seen before and is still going; its
    /// id.
    Running(String),
    /// The same command ended before: its result.
    Finished(CommandResult),
}

/// The journaled command `command` is a copy of: the one with its id, else the one its
/// idempotency key was first used for. Over a read transaction's tables or a write
/// transaction's, so that `accept` can look up and claim in one transaction.
fn find(
    commands: &impl ReadableTable<&'static str, &'static [u8]>,
    keys: &impl ReadableTable<&'static str, &'static str>,
    command: &Command,
) -> Result<Option<Entry>, redb::StorageError> {
    if let Some(found) = commands.get(command.id.as_str())? {
        return Ok(decode(found.value()));
    }
    let Some(key) = &command.idempotency_key else {
        return Ok(None);
    };
    let Some(id) = keys.get(key.as_str())? else {
        return Ok(None);
    };
    Ok(commands.get(id.value())?.and_then(|v| decode(v.value())))
}

/// What a copy of a command already journaled as `entry` is answered with.
fn seen(asked: &Command, entry: Entry) -> Seen {
    match entry.state {
        State::Finished { result, .. } => Seen::Finished(CommandResult {
            // Answered under the id it was asked by.
            id: asked.id.clone(),
            ..result
        }),
        State::Received | State::Running { .. } => Seen::Running(entry.command.id),
    }
}

/// What the journal held when the agent started.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Commands accepted but not started, with how long ago they arrived: run them now.
    pub(crate) to_run: Vec<(Command, Duration)>,
    /// Commands the agent's end interrupted; they are now finished as `crashed`.
    pub(crate) interrupted: Vec<(String, String)>,
    /// Plugins quarantined by this start, with the reason.
    pub(crate) quarantined: Vec<(String, String)>,
}

/// The journal.
pub(crate) struct Journal {
    writer: Writer,
    /// Acknowledgements since the last pruning.
    acks: std::sync::atomic::AtomicU32,
    /// Plugin records, read at open and kept in step with every write (the hot path reads
    /// them for every command).
    plugins: Mutex<HashMap<String, PluginRecord>>,
}

/// The journal could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be opened.
    #[error(
        "cannot open the command journal {path}: {reason}; is another agent using this data directory?"
    )]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("the command journal failed: {0}")]
    Store(String),
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        JournalError::Store(e.to_string())
    }
}

fn store<E: std::fmt::Display>(e: E) -> JournalError {
    JournalError::Store(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Journal {
    /// Opens (or creates) the journal in `data_dir` and settles what the last run left: see
    /// [`Recovery`].
    pub(crate) fn open(data_dir: &Path) -> Result<(Arc<Journal>, Recovery), JournalError> {
        let path = data_dir.join(FILE);
        let db = ferry_store::open_database(&path).map_err(|e| JournalError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let db = Arc::new(db);
        let (writer, replayed) = Writer::start_logged(
            "journal",
            db.clone(),
            &data_dir.join(LOG),
            WalOptions::default(),
            &apply,
        )?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "the command journal recovered writes from its log after an unclean stop"
            );
        }
        // The tables exist from the first start on, so reads never meet a missing one.
        writer.write_now("creating the journal", |tx| {
            tx.open_table(COMMANDS)?;
            tx.open_table(KEYS)?;
            tx.open_table(PLUGINS)?;
            Ok(())
        })?;
        let (entries, plugins) = read_all(&db)?;

        let mut recovery = Recovery::default();
        let mut plugins = plugins;
        let mut rewrite: Vec<(String, Option<Entry>)> = Vec::new();
        let cutoff = now_ms().saturating_sub(RETENTION.as_millis() as u64);
        // One stop of the agent is one interruption of each plugin that was running then,
        // however many of its commands were in flight: quarantine counts deaths, not runs.
        let mut interrupted_now = std::collections::HashSet::new();
        for (id, entry) in entries {
            match &entry.state {
                State::Received => {
                    let age = now_ms().saturating_sub(entry.updated_ms);
                    recovery
                        .to_run
                        .push((entry.command.clone(), Duration::from_millis(age)));
                }
                State::Running { plugin } => {
                    let record = plugins.entry(plugin.clone()).or_default();
                    if interrupted_now.insert(plugin.clone()) {
                        record.interrupted += 1;
                    }
                    let why = format!(
                        "the agent stopped while plugin '{plugin}' ran this command (it crashed, was killed, or the host went down); it was not run again, since it may have done part of its work"
                    );
                    if record.interrupted >= QUARANTINE_AFTER && record.quarantined.is_none() {
                        let reason = format!(
                            "plugin '{plugin}' was running each of the last {} times the agent stopped unexpectedly, so it is quarantined: its topics are refused until a new version of it is loaded (push one, or change the agent's configuration and restart)",
                            record.interrupted
                        );
                        record.quarantined = Some(reason.clone());
                        recovery.quarantined.push((plugin.clone(), reason));
                    }
                    recovery.interrupted.push((id.clone(), plugin.clone()));
                    let result = CommandResult {
                        id: id.clone(),
                        outcome: Outcome::Crashed(why),
                        payload: Vec::new(),
                        stats: ResultStats::default(),
                    };
                    rewrite.push((
                        id,
                        Some(Entry {
                            state: State::Finished {
                                result,
                                acked: false,
                            },
                            updated_ms: now_ms(),
                            ..entry
                        }),
                    ));
                }
                State::Finished { acked: true, .. } if entry.updated_ms < cutoff => {
                    rewrite.push((id, None));
                }
                State::Finished { .. } => {}
            }
        }
        if !rewrite.is_empty() || !recovery.quarantined.is_empty() {
            let plugin_rows: Vec<(String, Vec<u8>)> = plugins
                .iter()
                .map(|(name, record)| (name.clone(), encode(record)))
                .collect();
            writer.write_now("recovery after a restart", move |tx| {
                let mut commands = tx.open_table(COMMANDS)?;
                let mut keys = tx.open_table(KEYS)?;
                for (id, entry) in rewrite {
                    match entry {
                        Some(entry) => {
                            commands.insert(id.as_str(), encode(&entry).as_slice())?;
                        }
                        None => {
                            let old = commands.remove(id.as_str())?;
                            let key = old
                                .and_then(|v| decode::<Entry>(v.value()))
                                .and_then(|e| e.command.idempotency_key);
                            if let Some(key) = key {
                                keys.remove(key.as_str())?;
                            }
                        }
                    }
                }
                let mut table = tx.open_table(PLUGINS)?;
                for (name, record) in plugin_rows {
                    table.insert(name.as_str(), record.as_slice())?;
                }
                Ok(())
            })?;
        }
        Ok((
            Arc::new(Journal {
                writer,
                acks: Default::default(),
                plugins: Mutex::new(plugins),
            }),
            recovery,
        ))
    }

    fn lookup(&self, command: &Command) -> Result<Option<Entry>, JournalError> {
        let tx = self.writer.db().begin_read().map_err(store)?;
        let commands = tx.open_table(COMMANDS).map_err(store)?;
        let keys = tx.open_table(KEYS).map_err(store)?;
        find(&commands, &keys, command).map_err(store)
    }

    /// Journals a new command before the agent accepts it, or says what became of it when it
    /// was seen before. `plugin`: the plugin that will run it when it is already known, so
    /// that *received* and *running* are one write in the common case.
    ///
    /// The look-up and the write are one transaction: of two copies of a command (one id, or
    /// one idempotency key) arriving at once, exactly one is `New` and runs.
    pub(crate) async fn accept(
        &self,
        command: &Command,
        plugin: Option<&str>,
    ) -> Result<Seen, JournalError> {
        // Most duplicates are answered by a read, without a write.
        if let Some(entry) = self.lookup(command)? {
            return Ok(seen(command, entry));
        }
        let state = match plugin {
            Some(plugin) => State::Running {
                plugin: plugin.to_string(),
            },
            None => State::Received,
        };
        let asked = command.clone();
        let entry = Entry {
            command: command.clone(),
            state,
            updated_ms: now_ms(),
        };
        // The claim is decided and committed in one transaction; only a claim that was made
        // is logged, and `New` is answered once its record is durable.
        let seen = self
            .writer
            .write_logged("a command", move |tx| {
                let mut commands = tx.open_table(COMMANDS)?;
                let mut keys = tx.open_table(KEYS)?;
                if let Some(holder) = find(&commands, &keys, &asked)? {
                    return Ok((seen(&asked, holder), None));
                }
                commands.insert(asked.id.as_str(), encode(&entry).as_slice())?;
                if let Some(key) = &asked.idempotency_key {
                    keys.insert(key.as_str(), asked.id.as_str())?;
                }
                let record = encode(&Logged::Command {
                    id: asked.id.clone(),
                    entry: Box::new(entry),
                    key: asked.idempotency_key.clone(),
                });
                Ok((Seen::New, Some(record)))
            })
            .await?;
        Ok(seen)
    }

    /// Writes a command's entry; queued when called, so what is written after it lands after
    /// it. `durable`: through the log; otherwise a commit a crash may lose.
    fn put(
        &self,
        command: Command,
        state: State,
        durable: bool,
    ) -> impl Future<Output = Result<(), JournalError>> + Send + 'static {
        debug_assert!(
            !matches!(state, State::Received),
            "a new command goes in through accept, which claims it"
        );
        let id = command.id.clone();
        let key = command.idempotency_key.clone();
        let entry = Entry {
            command,
            state,
            updated_ms: now_ms(),
        };
        let written = self.writer.write_logged("a command", move |tx| {
            tx.open_table(COMMANDS)?
                .insert(id.as_str(), encode(&entry).as_slice())?;
            if let Some(key) = &key {
                tx.open_table(KEYS)?.insert(key.as_str(), id.as_str())?;
            }
            let record = durable.then(|| {
                encode(&Logged::Command {
                    id,
                    entry: Box::new(entry),
                    key,
                })
            });
            Ok(((), record))
        });
        async move { Ok(written.await?) }
    }

    /// Records that `plugin` starts running `command` (when [`Journal::accept`] could not
    /// name the plugin yet).
    pub(crate) async fn running(
        &self,
        command: &Command,
        plugin: &str,
    ) -> Result<(), JournalError> {
        let state = State::Running {
            plugin: plugin.to_string(),
        };
        self.put(command.clone(), state, true).await
    }

    /// Records the result, durably, before it is sent. `plugin` ran it to its end (whatever
    /// the outcome), so its count of interrupted runs starts again.
    ///
    /// Queued when called, so the caller can send the result while it goes to disk (the
    /// receipt, durable before the plugin started, is what keeps a command from running
    /// twice; a crash that loses this write makes the result `crashed` at the next start, and
    /// a server that recorded the real one keeps it). Await it before [`Journal::acked`].
    pub(crate) fn finished(
        &self,
        command: &Command,
        plugin: Option<&str>,
        result: &CommandResult,
    ) -> impl Future<Output = Result<(), JournalError>> + Send + 'static {
        let mut plugin_written = None;
        if let Some(plugin) = plugin {
            let reset = {
                let mut plugins = self.plugins.lock();
                match plugins.get_mut(plugin) {
                    Some(record) if record.interrupted > 0 && record.quarantined.is_none() => {
                        record.interrupted = 0;
                        Some(record.clone())
                    }
                    _ => None,
                }
            };
            if let Some(record) = reset {
                let name = plugin.to_string();
                // Logged before the result, so that the result is never durable without it.
                plugin_written = Some(self.writer.write_logged("a plugin record", move |tx| {
                    tx.open_table(PLUGINS)?
                        .insert(name.as_str(), encode(&record).as_slice())?;
                    Ok(((), Some(encode(&Logged::Plugin { name, record }))))
                }));
            }
        }
        let state = State::Finished {
            result: result.clone(),
            acked: false,
        };
        let written = self.put(command.clone(), state, true);
        async move {
            if let Some(plugin_written) = plugin_written {
                plugin_written.await?;
            }
            written.await
        }
    }

    /// The server has recorded the result of `id`: keep only what answers a duplicate.
    /// Not durable: if a crash loses it, the result is delivered once more, and the server
    /// drops the repeat.
    pub(crate) async fn acked(&self, id: &str) -> Result<(), JournalError> {
        let tx = self.writer.db().begin_read().map_err(store)?;
        let found = tx
            .open_table(COMMANDS)
            .map_err(store)?
            .get(id)
            .map_err(store)?
            .and_then(|v| decode::<Entry>(v.value()));
        drop(tx);
        let Some(Entry {
            mut command,
            state: State::Finished { result, .. },
            ..
        }) = found
        else {
            return Ok(());
        };
        command.payload = Vec::new();
        let state = State::Finished {
            result,
            acked: true,
        };
        self.put(command, state, false).await?;
        let acks = self.acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if acks >= PRUNE_EVERY {
            self.acks.store(0, std::sync::atomic::Ordering::Relaxed);
            self.prune().await?;
        }
        Ok(())
    }

    /// Forgets acknowledged commands older than [`RETENTION`].
    async fn prune(&self) -> Result<(), JournalError> {
        let cutoff = now_ms().saturating_sub(RETENTION.as_millis() as u64);
        let (entries, _) = read_all(self.writer.db())?;
        let old: Vec<(String, Option<String>)> = entries
            .into_iter()
            .filter(|(_, e)| {
                matches!(e.state, State::Finished { acked: true, .. }) && e.updated_ms < cutoff
            })
            .map(|(id, e)| (id, e.command.idempotency_key))
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        tracing::debug!(count = old.len(), "pruning the command journal");
        self.writer
            .write("pruning the journal", false, move |tx| {
                let mut commands = tx.open_table(COMMANDS)?;
                let mut keys = tx.open_table(KEYS)?;
                for (id, key) in old {
                    commands.remove(id.as_str())?;
                    if let Some(key) = key {
                        keys.remove(key.as_str())?;
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// The result of command `id`, if it has ended.
    pub(crate) fn result_of(&self, id: &str) -> Result<Option<CommandResult>, JournalError> {
        let tx = self.writer.db().begin_read().map_err(store)?;
        let entry = tx
            .open_table(COMMANDS)
            .map_err(store)?
            .get(id)
            .map_err(store)?
            .and_then(|v| decode::<Entry>(v.value()));
        Ok(match entry.map(|e| e.state) {
            Some(State::Finished { result, .. }) => Some(result),
            _ => None,
        })
    }

    /// Results the server has not acknowledged yet, oldest first.
    pub(crate) fn unacked(&self) -> Result<Vec<CommandResult>, JournalError> {
        let (entries, _) = read_all(self.writer.db())?;
        let mut results: Vec<(u64, CommandResult)> = entries
            .into_iter()
            .filter_map(|(_, entry)| match entry.state {
                State::Finished {
                    result,
                    acked: false,
                } => Some((entry.updated_ms, result)),
                _ => None,
            })
            .collect();
        results.sort_by_key(|(at, _)| *at);
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }

    /// Why `plugin` is quarantined, if it is.
    pub(crate) fn quarantined(&self, plugin: &str) -> Option<String> {
        self.plugins.lock().get(plugin)?.quarantined.clone()
    }

    /// A new version of `plugin` was loaded: it starts with a clean record.
    pub(crate) async fn release(&self, plugin: &str) -> Result<(), JournalError> {
        if self.plugins.lock().remove(plugin).is_none() {
            return Ok(());
        }
        let name = plugin.to_string();
        self.writer
            .write("a plugin record", true, move |tx| {
                tx.open_table(PLUGINS)?.remove(name.as_str())?;
                Ok(())
            })
            .await?;
        Ok(())
    }
}

type Loaded = (Vec<(String, Entry)>, HashMap<String, PluginRecord>);

fn read_all(db: &Database) -> Result<Loaded, JournalError> {
    let tx = db.begin_read().map_err(store)?;
    let mut entries = Vec::new();
    match tx.open_table(COMMANDS) {
        Ok(table) => {
            for row in table.iter().map_err(store)? {
                let (id, value) = row.map_err(store)?;
                match decode::<Entry>(value.value()) {
                    Some(entry) => entries.push((id.value().to_string(), entry)),
                    None => tracing::warn!(
                        id = id.value(),
                        "skipping a journal entry that does not decode"
                    ),
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(store(e)),
    }
    let mut plugins = HashMap::new();
    match tx.open_table(PLUGINS) {
        Ok(table) => {
            for row in table.iter().map_err(store)? {
                let (name, value) = row.map_err(store)?;
                if let Some(record) = decode::<PluginRecord>(value.value()) {
                    plugins.insert(name.value().to_string(), record);
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(store(e)),
    }
    Ok((entries, plugins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str, key: Option<&str>) -> Command {
        Command {
            id: id.into(),
            topic: "echo".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            timeout_ms: Some(1000),
            idempotency_key: key.map(str::to_string),
        }
    }

    fn result(id: &str) -> CommandResult {
        CommandResult {
            id: id.into(),
            outcome: Outcome::Succeeded,
            payload: b"out".to_vec(),
            stats: ResultStats::default(),
        }
    }

    /// Opens the journal again; the previous instance let go of the file when it was dropped.
    fn reopen(dir: &Path) -> (Arc<Journal>, Recovery) {
        Journal::open(dir).expect("the journal reopens")
    }

    #[tokio::test]
    async fn a_result_survives_a_restart_until_acknowledged_and_answers_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _) = Journal::open(dir.path()).unwrap();
            let c = command("c1", Some("key-1"));
            assert!(matches!(
                journal.accept(&c, Some("echo")).await.unwrap(),
                Seen::New
            ));
            assert!(matches!(
                journal.accept(&c, Some("echo")).await.unwrap(),
                Seen::Running(id) if id == "c1"
            ));
            journal
                .finished(&c, Some("echo"), &result("c1"))
                .await
                .unwrap();
        }
        let (journal, recovery) = reopen(dir.path());
        assert!(recovery.to_run.is_empty() && recovery.interrupted.is_empty());
        assert_eq!(journal.unacked().unwrap(), vec![result("c1")]);
        journal.acked("c1").await.unwrap();
        assert!(journal.unacked().unwrap().is_empty());
        // Another id with the same idempotency key gets the stored result under its own id.
        match journal
            .accept(&command("c2", Some("key-1")), None)
            .await
            .unwrap()
        {
            Seen::Finished(r) => {
                assert_eq!(r.id, "c2");
                assert_eq!(r.payload, b"out");
            }
            other => panic!("expected the stored result, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn interrupted_runs_end_as_crashed_and_quarantine_their_plugin_at_the_third() {
        let dir = tempfile::tempdir().unwrap();
        for round in 1..=QUARANTINE_AFTER {
            let (journal, recovery) = reopen(dir.path());
            if round > 1 {
                assert_eq!(recovery.interrupted.len(), 1);
            }
            let c = command(&format!("crash-{round}"), None);
            journal.accept(&c, Some("faulty")).await.unwrap();
            // Never finished: the "agent" dies here.
        }
        let (journal, recovery) = reopen(dir.path());
        assert_eq!(recovery.quarantined.len(), 1, "{recovery:?}");
        let reason = journal.quarantined("faulty").expect("quarantined");
        assert!(reason.contains("new version"), "{reason}");
        let crashed = journal.unacked().unwrap();
        assert_eq!(crashed.len(), QUARANTINE_AFTER as usize);
        assert!(
            crashed
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Crashed(_)))
        );
        journal.release("faulty").await.unwrap();
        assert!(journal.quarantined("faulty").is_none());
    }

    #[tokio::test]
    async fn a_finished_run_resets_the_count_and_received_commands_run_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _) = reopen(dir.path());
            journal
                .accept(&command("a", None), Some("p"))
                .await
                .unwrap();
        }
        {
            let (journal, recovery) = reopen(dir.path());
            assert_eq!(recovery.interrupted.len(), 1);
            let c = command("b", None);
            journal.accept(&c, Some("p")).await.unwrap();
            journal.finished(&c, Some("p"), &result("b")).await.unwrap();
            journal
                .accept(&command("waiting", None), None)
                .await
                .unwrap();
        }
        let (journal, recovery) = reopen(dir.path());
        assert!(recovery.interrupted.is_empty());
        assert_eq!(recovery.to_run.len(), 1);
        assert_eq!(recovery.to_run[0].0.id, "waiting");
        assert_eq!(
            journal.plugins.lock().get("p").map(|r| r.interrupted),
            Some(0)
        );
    }

    /// Copies of one command under different ids but one idempotency key, arriving at once:
    /// the look-up and the claim are one transaction, so exactly one of them runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_copies_of_one_key_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = reopen(dir.path());
        let mut copies = Vec::new();
        for i in 0..16 {
            let journal = journal.clone();
            copies.push(tokio::spawn(async move {
                journal
                    .accept(
                        &command(&format!("copy-{i}"), Some("one-key")),
                        Some("echo"),
                    )
                    .await
                    .unwrap()
            }));
        }
        let mut new = 0;
        for copy in copies {
            if matches!(copy.await.unwrap(), Seen::New) {
                new += 1;
            }
        }
        assert_eq!(new, 1, "one key ran {new} times");
    }

    /// Builds in `image` what a power cut would leave of a journal in `dir` that accepted a
    /// running command (with a key), finished another and received a third: the database as
    /// of its last durable commit (the one that opened it) and the log as flushed.
    async fn crash_image(dir: &Path, image: &Path) {
        let (journal, _) = reopen(dir);
        std::fs::copy(dir.join(FILE), image.join(FILE)).unwrap();
        let running = command("running", Some("key-r"));
        assert!(matches!(
            journal.accept(&running, Some("echo")).await.unwrap(),
            Seen::New
        ));
        let done = command("done", None);
        journal.accept(&done, Some("echo")).await.unwrap();
        journal
            .finished(&done, Some("echo"), &result("done"))
            .await
            .unwrap();
        journal
            .accept(&command("waiting", None), None)
            .await
            .unwrap();
        std::fs::create_dir_all(image.join(LOG)).unwrap();
        for segment in std::fs::read_dir(dir.join(LOG)).unwrap() {
            let path = segment.unwrap().path();
            if path.extension().is_some_and(|e| e == "wal") {
                std::fs::copy(&path, image.join(LOG).join(path.file_name().unwrap())).unwrap();
            }
        }
        drop(journal);
        let raw = Database::create(image.join(FILE)).unwrap();
        let (entries, _) = read_all(&raw).unwrap();
        assert!(
            entries.is_empty(),
            "the database image holds nothing of it: {entries:?}"
        );
    }

    /// What the journal must say after the crash of [`crash_image`].
    async fn check_recovered(journal: &Journal, recovery: &Recovery) {
        // The receipt survived: the command that was running is not run again.
        assert_eq!(
            recovery.interrupted,
            vec![("running".to_string(), "echo".to_string())]
        );
        let to_run: Vec<_> = recovery.to_run.iter().map(|(c, _)| c.id.as_str()).collect();
        assert_eq!(to_run, ["waiting"]);
        let unacked = journal.unacked().unwrap();
        assert!(unacked.contains(&result("done")), "{unacked:?}");
        assert!(
            unacked
                .iter()
                .any(|r| r.id == "running" && matches!(r.outcome, Outcome::Crashed(_)))
        );
        // Its idempotency key is still claimed.
        match journal
            .accept(&command("again", Some("key-r")), None)
            .await
            .unwrap()
        {
            Seen::Finished(r) => assert!(matches!(r.outcome, Outcome::Crashed(_))),
            other => panic!("the key was forgotten: {other:?}"),
        }
    }

    #[tokio::test]
    async fn receipts_and_results_in_the_log_survive_losing_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        crash_image(dir.path(), image.path()).await;
        let (journal, recovery) = reopen(image.path());
        check_recovered(&journal, &recovery).await;
        drop(journal);
        // The replay is in the database now: a second start finds the same, nothing new.
        let (journal, recovery) = reopen(image.path());
        assert!(recovery.interrupted.is_empty() && recovery.quarantined.is_empty());
        assert_eq!(journal.unacked().unwrap().len(), 2);
    }

    /// A crash in the middle of an append leaves half a record after the last durable one:
    /// the journal opens, with everything before it.
    #[tokio::test]
    async fn a_torn_record_at_the_end_of_the_log_is_dropped() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        crash_image(dir.path(), image.path()).await;
        let segment = std::fs::read_dir(image.path().join(LOG))
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let bytes = std::fs::read(&segment).unwrap();
        let mut end = ferry_store::wal::SEGMENT_HEADER as usize;
        while bytes[end..end + 16].iter().any(|b| *b != 0) {
            end += 16 + u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
        }
        // The header of a record claiming 200 bytes, and 50 of them.
        let mut torn = 200u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[0x33; 12 + 50]);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.write_all_at(&torn, end as u64).unwrap();
        drop(file);
        let (journal, recovery) = reopen(image.path());
        check_recovered(&journal, &recovery).await;
    }

    /// Three commands of one plugin in flight when the agent dies are one death of the
    /// plugin, not three: it is not quarantined for them.
    #[tokio::test]
    async fn one_death_with_many_runs_in_flight_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, _) = reopen(dir.path());
            for i in 0..QUARANTINE_AFTER + 1 {
                journal
                    .accept(&command(&format!("inflight-{i}"), None), Some("busy"))
                    .await
                    .unwrap();
            }
        }
        let (journal, recovery) = reopen(dir.path());
        assert_eq!(recovery.interrupted.len(), (QUARANTINE_AFTER + 1) as usize);
        assert!(recovery.quarantined.is_empty(), "{recovery:?}");
        assert!(journal.quarantined("busy").is_none());
        assert_eq!(
            journal.plugins.lock().get("busy").map(|r| r.interrupted),
            Some(1)
        );
    }
}
