//! Durable writes for ferry's journals (the agent's command journal, the server's command
//! store): a [`Writer`] owns one thread that commits every write queued while the previous
//! commit was on disk in a single redb transaction.
//!
//! Why a thread of its own: a durable redb commit waits for an fsync (milliseconds on a virtual
//! disk), which must not hold an async worker; and why *group* commit: with many commands in
//! flight, one fsync then covers all of their writes instead of each paying its own, so the
//! cost of durability stays per batch, not per command.
//!
//! Records are CBOR ([`encode`], [`decode`]), like the protocol: compact, self-describing, and
//! tolerant of fields added later (a newer record read by an older binary keeps its known
//! fields).
//!
//! A durable redb commit costs more than one `fdatasync`; a writer can instead be *logged*
//! ([`Writer::start_logged`]): its durable writes are made durable by a record in a
//! write-ahead log ([`wal`]), one `fdatasync` per group, and redb is flushed only at
//! checkpoints.
//!
//! The calls: `Writer::write` (async, durable or not); `write_with` (the same, returning what the
//! change decided inside its transaction, once committed: how an idempotency key is claimed, "take
//! it unless someone holds it, else tell me who", in one transaction); `write_now` (on the calling
//! thread, for start-up recovery). A write is queued when it is *called* (`write` returns a future
//! already in the queue) and batches commit in order, so a caller can start a write, go on, and
//! await it later, and anything written after it is durable only with it. Dropping the last clone
//! joins the thread, so a process can open the same file again at once (a restart inside a test). A
//! record that does not decode is skipped and reported by the caller, never a panic.
//!
//! A logged writer: `write_logged`'s change returns a record as well as its answer. The change is
//! committed to redb with `Durability::None` and the record appended *after* the commit, in commit
//! order, so every record in the log has its change committed; the caller is answered once the
//! record is durable. Every `CHECKPOINT_EVERY` (1,024) records, and with every durable commit, the
//! transaction also stores the last sequence number appended (table `ferry_store_wal_applied`):
//! everything up to it is in redb's durable state, and the log releases the segments before it. At
//! start the records after it are applied again (the caller's `apply`, which must bear a repeat) in
//! one durable commit before the writer starts, so nothing reads redb before the replay. A writer
//! without a log commits a change that returns a record durably instead.

pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use redb::{Database, Durability, ReadableDatabase, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;
use wal::{Durable, Wal, WalError, WalOptions};

/// A write did not reach the disk.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// redb refused the transaction or the commit (a full or read-only disk, a damaged file).
    #[error("{what}: {reason}")]
    Database {
        /// What was being written, for the person reading the error.
        what: &'static str,
        /// redb's reason.
        reason: String,
    },
    /// The write-ahead log of a logged writer failed (see [`wal::WalError`] for what to do).
    #[error("the write-ahead log {dir}: {error}")]
    Log {
        /// The log's directory.
        dir: PathBuf,
        /// What went wrong.
        error: WalError,
    },
    /// The writer thread is gone (the process is shutting down).
    #[error("the journal writer has stopped; the process is shutting down")]
    Stopped,
}

/// Opens (or creates) the redb database at `path`, readable and writable by its owner only
/// (an existing file is narrowed to that too): ferry's databases hold command payloads and
/// results, token hashes and the audit log.
pub fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let io = |e| redb::DatabaseError::Storage(redb::StorageError::Io(e));
    // Made here, with its mode, rather than by redb with the process's umask; never truncated.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE)
        .open(path)
        .map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FILE)).map_err(io)?;
    Database::create(path)
}

/// Creates `dir` and any missing parents, readable by their owner only; an existing directory
/// is left as it is (it may be shared on purpose).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// The mode of the files ferry keeps state in.
pub const PRIVATE_FILE: u32 = 0o600;
/// The mode of the directories ferry makes for them.
pub const PRIVATE_DIR: u32 = 0o700;

/// A record as it is stored.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).expect("serializing into a Vec cannot fail");
    bytes
}

/// A stored record, or `None` when the bytes are not one (a damaged or foreign record: the
/// caller skips it and says so).
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    ciborium::from_reader(bytes).ok()
}

/// What a change returns to its caller, once its transaction is committed.
type Answer = Box<dyn std::any::Any + Send>;
/// One change to apply inside a write transaction, and the record that makes it durable if it
/// is a logged one.
type Change =
    Box<dyn FnOnce(&WriteTransaction) -> Result<(Answer, Option<Vec<u8>>), redb::Error> + Send>;
/// What a job's caller gets: the change's answer and, for a logged change, its record's way to
/// disk.
type Done = Result<(Answer, Option<Durable>), StoreError>;

/// How a logged writer puts a record of its log back into the database after a crash.
pub type Apply = dyn Fn(&WriteTransaction, &[u8]) -> Result<(), redb::Error>;

/// The sequence number of the last log record whose change is in the database's durable state:
/// recovery replays only the records after it.
const WAL_APPLIED: TableDefinition<&str, u64> = TableDefinition::new("ferry_store_wal_applied");
const APPLIED: &str = "applied";

/// Logged records between two checkpoints (durable commits that let the log drop what they
/// cover). Each costs one durable redb commit on the writer thread, so rarely enough that the
/// hot path hardly sees it, often enough that a replay after a crash is short.
pub const CHECKPOINT_EVERY: u64 = 1024;

fn set_applied(tx: &WriteTransaction, seq: u64) -> Result<(), redb::Error> {
    tx.open_table(WAL_APPLIED)?.insert(APPLIED, seq)?;
    Ok(())
}

struct Job {
    what: &'static str,
    change: Change,
    durable: bool,
    done: oneshot::Sender<Done>,
}

/// Commits writes to one database from one thread, batching the ones that arrive together.
///
/// The thread ends when the last clone is dropped, and that drop waits for it: once it
/// returns, the writer's hold on the database is gone, so the same file can be opened again
/// (a server or agent restarted inside one process).
///
/// A *logged* writer ([`Writer::start_logged`]) also owns a write-ahead log ([`wal::Wal`]):
/// a logged write ([`Writer::write_logged`]) is committed to redb without a flush and is
/// durable once its record is in the log (one `fdatasync`, shared by every record of its
/// group), instead of once a durable redb commit is (several). Every [`CHECKPOINT_EVERY`]
/// records, a durable commit records how far the log is applied and the log drops the
/// segments before it; at the next start the records after it are replayed into the database
/// before anything reads it.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    wal: Option<Wal>,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the writes already queued.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn database(what: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |e| StoreError::Database {
        what,
        reason: e.to_string(),
    }
}

impl Writer {
    /// Starts the writer thread of `db`.
    pub fn start(name: &str, db: Arc<Database>) -> Writer {
        Writer::spawn(name, db, None)
    }

    /// Starts a logged writer of `db` whose log is in `dir`: first replays into `db`, with
    /// `apply`, every record of the log that `db`'s durable state does not have yet (a crash
    /// lost the non-durable commits that carried them), in one durable commit. Returns the
    /// writer and how many records were replayed.
    pub fn start_logged(
        name: &str,
        db: Arc<Database>,
        dir: &Path,
        options: WalOptions,
        apply: &Apply,
    ) -> Result<(Writer, usize), StoreError> {
        let log = |error| StoreError::Log {
            dir: dir.to_path_buf(),
            error,
        };
        let applied = {
            let what = "reading how far the write-ahead log is applied";
            let tx = db.begin_read().map_err(|e| database(what)(e.into()))?;
            match tx.open_table(WAL_APPLIED) {
                Ok(table) => table
                    .get(APPLIED)
                    .map_err(|e| database(what)(e.into()))?
                    .map_or(0, |v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(database(what)(e.into())),
            }
        };
        let mut records = Vec::new();
        let wal = Wal::open(dir, options, |seq, record| {
            if seq > applied {
                records.push(record.to_vec());
            }
        })
        .map_err(log)?;
        let replayed = records.len();
        if replayed > 0 || wal.last_seq() != applied {
            // Also when the log is behind the database (its directory was emptied): what it
            // numbers next must count as not applied yet.
            let what = "replaying the write-ahead log into the database";
            let last = wal.last_seq();
            let mut tx = db.begin_write().map_err(|e| database(what)(e.into()))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| database(what)(e.into()))?;
            for record in &records {
                apply(&tx, record).map_err(database(what))?;
            }
            set_applied(&tx, last).map_err(database(what))?;
            tx.commit().map_err(|e| database(what)(e.into()))?;
            if replayed > 0 {
                tracing::info!(
                    log = %dir.display(),
                    records = replayed,
                    "replayed the write-ahead log after an unclean stop"
                );
            }
        }
        wal.release(wal.last_seq()).map_err(log)?;
        Ok((Writer::spawn(name, db, Some(wal)), replayed))
    }

    fn spawn(name: &str, db: Arc<Database>, wal: Option<Wal>) -> Writer {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread_db = db.clone();
        let thread_wal = wal.clone();
        let thread = thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || run(thread_db, thread_wal, queue))
            .expect("the journal writer thread starts");
        Writer {
            inner: Arc::new(Inner {
                db,
                wal,
                jobs: Some(jobs),
                thread: Some(thread),
            }),
        }
    }

    /// The database, for reads (redb reads run beside the writer without waiting for it).
    /// They see logged writes as soon as they are committed, before their records are durable.
    pub fn db(&self) -> &Arc<Database> {
        &self.inner.db
    }

    /// The write-ahead log of a logged writer.
    pub fn wal(&self) -> Option<&Wal> {
        self.inner.wal.as_ref()
    }

    fn queue(&self, job: Job) -> Result<(), StoreError> {
        self.inner
            .jobs
            .as_ref()
            .ok_or(StoreError::Stopped)?
            .send(job)
            .map_err(|_| StoreError::Stopped)
    }

    /// Applies `change` and returns once it is on disk (`durable`), or committed where a
    /// crash may still lose it (not `durable`; it becomes durable with the next durable commit).
    ///
    /// The write is queued when this is *called*, not when the future is first polled: writes
    /// are committed in the order they were called, so a caller may queue a write, go on (send
    /// a command while its record is on its way to disk), and await it later — and any write
    /// called after it is on disk only with it.
    pub fn write(
        &self,
        what: &'static str,
        durable: bool,
        change: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.write_with(what, durable, change)
    }

    /// Like [`Writer::write`], and returns what `change` decided inside its transaction — for
    /// a read and a write that must be one ("claim this key unless someone holds it; then
    /// tell me who"). The answer is handed out only once the transaction is committed: if the
    /// commit fails, the caller gets the error, never a decision that did not happen.
    /// Queued when called, like [`Writer::write`].
    pub fn write_with<T: Send + 'static>(
        &self,
        what: &'static str,
        durable: bool,
        change: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let committed = self.submit(what, durable, move |tx| {
            change(tx).map(|answer| (answer, None))
        });
        async move { Ok(committed.await?.0) }
    }

    /// A write made durable by a record of the log rather than by the commit: `change` applies
    /// itself and returns its answer and, when it changed what must survive a crash, the record
    /// that [`Writer::start_logged`]'s `apply` turns back into the same change. Resolves once
    /// the commit is done and the record (if any) is durable. On a writer without a log, a
    /// change that returns a record is committed durably instead. Queued when called, like
    /// [`Writer::write`]; records are durable in the order of the calls.
    ///
    /// If the record cannot be written, the caller gets the error, and the log refuses every
    /// write after it until the process restarts: the change is in the database's memory, not
    /// on disk, and the restart's replay brings back exactly what the log holds.
    pub fn write_logged<T: Send + 'static>(
        &self,
        what: &'static str,
        change: impl FnOnce(&WriteTransaction) -> Result<(T, Option<Vec<u8>>), redb::Error>
        + Send
        + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let dir = self.inner.wal.as_ref().map(|wal| wal.dir().to_path_buf());
        let committed = self.submit(what, false, change);
        async move {
            let (answer, durable) = committed.await?;
            if let Some(durable) = durable {
                durable.await.map_err(|error| StoreError::Log {
                    dir: dir.unwrap_or_default(),
                    error,
                })?;
            }
            Ok(answer)
        }
    }

    /// Queues `change`; resolves to its answer and, for a logged change on a logged writer,
    /// its record's way to disk.
    fn submit<T: Send + 'static>(
        &self,
        what: &'static str,
        durable: bool,
        change: impl FnOnce(&WriteTransaction) -> Result<(T, Option<Vec<u8>>), redb::Error>
        + Send
        + 'static,
    ) -> impl Future<Output = Result<(T, Option<Durable>), StoreError>> + Send + 'static {
        let (done, finished) = oneshot::channel();
        let queued = self.queue(Job {
            what,
            change: Box::new(move |tx| {
                change(tx).map(|(answer, record)| (Box::new(answer) as Answer, record))
            }),
            durable,
            done,
        });
        async move {
            queued?;
            let (answer, durable) = finished.await.map_err(|_| StoreError::Stopped)??;
            let answer = *answer
                .downcast::<T>()
                .expect("a change's answer has the type its caller gave it");
            Ok((answer, durable))
        }
    }

    /// Applies `change` durably on the calling thread, blocking it until the commit is on
    /// disk: for start-up work (recovery, pruning), before anything else writes.
    pub fn write_now(
        &self,
        what: &'static str,
        change: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let failed = database(what);
        let mut tx = self
            .inner
            .db
            .begin_write()
            .map_err(|e| database(what)(e.into()))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| database(what)(e.into()))?;
        change(&tx).map_err(database(what))?;
        let applied = self.inner.wal.as_ref().map(Wal::last_seq);
        if let Some(applied) = applied {
            set_applied(&tx, applied).map_err(database(what))?;
        }
        tx.commit().map_err(|e| failed(e.into()))
    }
}

fn run(db: Arc<Database>, wal: Option<Wal>, queue: mpsc::Receiver<Job>) {
    let mut logged_since_checkpoint = 0u64;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        if let Some(reason) = wal.as_ref().and_then(Wal::failed) {
            // The database's memory may hold changes whose records never reached the log: no
            // commit may make them durable.
            let dir = wal
                .as_ref()
                .map(|w| w.dir().to_path_buf())
                .unwrap_or_default();
            for job in batch {
                let _ = job.done.send(Err(StoreError::Log {
                    dir: dir.clone(),
                    error: WalError::Failed {
                        reason: reason.clone(),
                    },
                }));
            }
            continue;
        }
        let durable = batch.iter().any(|job| job.durable);
        let mut done = Vec::with_capacity(batch.len());
        let mut changes = Vec::with_capacity(batch.len());
        for job in batch {
            done.push((job.what, job.done));
            changes.push((job.what, job.change));
        }
        let outcome = commit(&db, wal.as_ref(), durable, changes);
        match outcome {
            Ok((answers, checkpointed)) => {
                if checkpointed {
                    logged_since_checkpoint = 0;
                }
                for ((_, done), (answer, record)) in done.into_iter().zip(answers) {
                    // Appended after the commit, in commit order: every record in the log
                    // has its change committed, which is what lets a checkpoint say how far
                    // the log is applied.
                    let durable = match (record, &wal) {
                        (Some(record), Some(wal)) => {
                            logged_since_checkpoint += 1;
                            Some(wal.append(record))
                        }
                        _ => None,
                    };
                    let _ = done.send(Ok((answer, durable)));
                }
            }
            Err((culprit, e)) => {
                tracing::error!(error = %e, write = culprit, "a journal write failed");
                for (what, done) in done {
                    // The transaction is rolled back as a whole: every write of the batch
                    // failed.
                    let reason = if culprit == what {
                        e.to_string()
                    } else {
                        format!("{e} (while writing {culprit} in the same commit)")
                    };
                    let _ = done.send(Err(StoreError::Database { what, reason }));
                }
            }
        }
        if logged_since_checkpoint >= CHECKPOINT_EVERY {
            match commit(&db, wal.as_ref(), true, Vec::new()) {
                Ok(_) => logged_since_checkpoint = 0,
                Err((_, e)) => tracing::warn!(
                    error = %e,
                    "a checkpoint of the write-ahead log failed; the log keeps its records until the next one"
                ),
            }
        }
    }
    // A clean stop checkpoints, so that the next start replays nothing: a replay puts back the
    // logged state of an entry over the later changes that were never logged (a result's
    // acknowledgement), which is safe but repeats their work. Not after the log failed: the
    // database's memory may then hold changes the log does not.
    if let Some(wal) = &wal
        && logged_since_checkpoint > 0
        && wal.failed().is_none()
        && let Err((_, e)) = commit(&db, Some(wal), true, Vec::new())
    {
        tracing::warn!(error = %e, "the write-ahead log's checkpoint at shutdown failed; the next start replays it");
    }
}

type Committed = (Vec<(Answer, Option<Vec<u8>>)>, bool);

/// Commits `changes` in one transaction; returns each one's answer and record, and whether the
/// commit was durable (a checkpoint, for a logged writer).
fn commit(
    db: &Database,
    wal: Option<&Wal>,
    durable: bool,
    changes: Vec<(&'static str, Change)>,
) -> Result<Committed, (&'static str, redb::Error)> {
    let mut tx = db.begin_write().map_err(|e| ("commit", e.into()))?;
    let mut answers = Vec::with_capacity(changes.len());
    for (what, change) in changes {
        answers.push(change(&tx).map_err(|e| (what, e))?);
    }
    // Without a log, a change that asked for a record is made durable by the commit itself.
    let durable = durable || (wal.is_none() && answers.iter().any(|(_, r)| r.is_some()));
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    tx.set_durability(durability)
        .map_err(|e| ("commit", e.into()))?;
    let applied = match wal {
        Some(wal) if durable => {
            // Every record appended so far had its change committed before it was appended,
            // so this durable commit holds all of them.
            let applied = wal.last_seq();
            set_applied(&tx, applied).map_err(|e| ("checkpoint", e))?;
            Some((wal, applied))
        }
        _ => None,
    };
    tx.commit().map_err(|e| ("commit", e.into()))?;
    if let Some((wal, applied)) = applied
        && let Err(e) = wal.release(applied)
    {
        tracing::warn!(error = %e, "could not delete checkpointed segments of the write-ahead log");
    }
    Ok((answers, durable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[test]
    fn databases_are_made_private_and_existing_ones_narrowed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.path().join("fresh.redb");
        drop(open_database(&fresh).unwrap());
        assert_eq!(mode(&fresh), PRIVATE_FILE);
        // A database an older version left readable by others is narrowed, and keeps its data.
        let old = dir.path().join("old.redb");
        let table = TableDefinition::<&str, &str>::new("t");
        {
            let db = Database::create(&old).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(table).unwrap().insert("k", "v").unwrap();
            tx.commit().unwrap();
        }
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let db = open_database(&old).unwrap();
        assert_eq!(mode(&old), PRIVATE_FILE);
        let tx = db.begin_read().unwrap();
        assert_eq!(
            tx.open_table(table)
                .unwrap()
                .get("k")
                .unwrap()
                .unwrap()
                .value(),
            "v"
        );
        let nested = dir.path().join("a/b");
        private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), PRIVATE_DIR);
        assert_eq!(mode(&dir.path().join("a")), PRIVATE_DIR);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let writer = Writer::start("test", Arc::new(Database::create(&path).unwrap()));
            let mut tasks = Vec::new();
            for i in 0..200u64 {
                let writer = writer.clone();
                tasks.push(tokio::spawn(async move {
                    writer
                        .write("row", true, move |tx| {
                            tx.open_table(T)?.insert(i, i * 2)?;
                            Ok(())
                        })
                        .await
                }));
            }
            for task in tasks {
                task.await.unwrap().unwrap();
            }
        }
        // Dropping the last Writer waited for its thread: the file opens again at once.
        let db = Database::create(&path).expect("the database reopens once the writer is gone");
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(T).unwrap();
        assert_eq!(table.len().unwrap(), 200);
        assert_eq!(table.get(7).unwrap().unwrap().value(), 14);
    }

    /// Many writers race to claim one key in one transaction each: exactly one wins, and all
    /// the others are told who did.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_inside_a_write_has_exactly_one_winner() {
        const CLAIMS: TableDefinition<&str, u64> = TableDefinition::new("claims");
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::start(
            "test",
            Arc::new(Database::create(dir.path().join("db.redb")).unwrap()),
        );
        let mut tasks = Vec::new();
        for me in 0..64u64 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer
                    .write_with("a claim", me % 2 == 0, move |tx| {
                        let mut table = tx.open_table(CLAIMS)?;
                        let holder = table.get("key")?.map(|v| v.value());
                        Ok(match holder {
                            Some(holder) => holder,
                            None => {
                                table.insert("key", me)?;
                                me
                            }
                        })
                    })
                    .await
                    .map(|holder| (me, holder))
            }));
        }
        let mut holders = std::collections::HashSet::new();
        let mut winners = 0;
        for task in tasks {
            let (me, holder) = task.await.unwrap().unwrap();
            holders.insert(holder);
            winners += u32::from(me == holder);
        }
        assert_eq!(holders.len(), 1, "everyone is told the same holder");
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn a_failing_change_fails_its_batch_and_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::start(
            "test",
            Arc::new(Database::create(dir.path().join("db.redb")).unwrap()),
        );
        let err = writer
            .write("the bad row", true, |_| {
                Err(redb::Error::Corrupted("made up for the test".into()))
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("the bad row"), "{err}");
        // The writer keeps working after a failed batch.
        writer
            .write("a good row", true, |tx| {
                tx.open_table(T)?.insert(1, 1)?;
                Ok(())
            })
            .await
            .unwrap();
    }
}
