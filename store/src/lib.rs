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

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

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
    /// The writer thread is gone (the process is shutting down).
    #[error("the journal writer has stopped; the process is shutting down")]
    Stopped,
}

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
/// One change to apply inside a write transaction.
type Change = Box<dyn FnOnce(&WriteTransaction) -> Result<Answer, redb::Error> + Send>;

struct Job {
    what: &'static str,
    change: Change,
    durable: bool,
    done: oneshot::Sender<Result<Answer, StoreError>>,
}

/// Commits writes to one database from one thread, batching the ones that arrive together.
///
/// The thread ends when the last clone is dropped, and that drop waits for it: once it
/// returns, the writer's hold on the database is gone, so the same file can be opened again
/// (a server or agent restarted inside one process).
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
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

impl Writer {
    /// Starts the writer thread of `db`.
    pub fn start(name: &str, db: Arc<Database>) -> Writer {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread_db = db.clone();
        let thread = thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || run(thread_db, queue))
            .expect("the journal writer thread starts");
        Writer {
            inner: Arc::new(Inner {
                db,
                jobs: Some(jobs),
                thread: Some(thread),
            }),
        }
    }

    /// The database, for reads (redb reads run beside the writer without waiting for it).
    pub fn db(&self) -> &Arc<Database> {
        &self.inner.db
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
        let (done, finished) = oneshot::channel();
        let queued = self.queue(Job {
            what,
            change: Box::new(move |tx| change(tx).map(|answer| Box::new(answer) as Answer)),
            durable,
            done,
        });
        async move {
            queued?;
            let answer = finished.await.map_err(|_| StoreError::Stopped)??;
            Ok(*answer
                .downcast::<T>()
                .expect("a change's answer has the type its caller gave it"))
        }
    }

    /// Applies `change` durably on the calling thread, blocking it until the commit is on
    /// disk: for start-up work (recovery, pruning), before anything else writes.
    pub fn write_now(
        &self,
        what: &'static str,
        change: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .inner
            .db
            .begin_write()
            .map_err(|e| StoreError::Database {
                what,
                reason: e.to_string(),
            })?;
        let failed = |e: redb::Error| StoreError::Database {
            what,
            reason: e.to_string(),
        };
        tx.set_durability(Durability::Immediate)
            .map_err(|e| failed(e.into()))?;
        change(&tx).map_err(failed)?;
        tx.commit().map_err(|e| failed(e.into()))
    }
}

fn run(db: Arc<Database>, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let durable = batch.iter().any(|job| job.durable);
        let mut done = Vec::with_capacity(batch.len());
        let mut changes = Vec::with_capacity(batch.len());
        for job in batch {
            done.push((job.what, job.done));
            changes.push((job.what, job.change));
        }
        let outcome = commit(&db, durable, changes);
        match outcome {
            Ok(answers) => {
                for ((_, done), answer) in done.into_iter().zip(answers) {
                    let _ = done.send(Ok(answer));
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
    }
}

fn commit(
    db: &Database,
    durable: bool,
    changes: Vec<(&'static str, Change)>,
) -> Result<Vec<Answer>, (&'static str, redb::Error)> {
    let mut tx = db.begin_write().map_err(|e| ("commit", e.into()))?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    tx.set_durability(durability)
        .map_err(|e| ("commit", e.into()))?;
    let mut answers = Vec::with_capacity(changes.len());
    for (what, change) in changes {
        answers.push(change(&tx).map_err(|e| (what, e))?);
    }
    tx.commit().map_err(|e| ("commit", e.into()))?;
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

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
