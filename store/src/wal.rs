//! An append-only log of records, durable by one `fdatasync` per group of appends (etcd's WAL
//! pattern), for writes whose durability must cost one disk flush rather than a database
//! commit's several.
//!
//! Why it is cheaper than a redb commit: a segment file is written full of zeros and flushed
//! before it holds any record, so an append only overwrites blocks that already exist, and
//! `fdatasync` then has data to flush but no file size or block allocation to record. A durable
//! redb commit writes and flushes its pages, then its header, in separate flushes.
//!
//! Layout: a directory of segments `<first sequence number, 16 hex digits>.wal`, each a
//! [`SEGMENT_HEADER`]-byte header (magic, first sequence number) followed by records, each
//! framed as length (u32) + CRC32 (u32) + sequence number (u64) + the record, little-endian;
//! the CRC covers the length, the sequence number and the record. An all-zero frame header is
//! the end of a segment's records: the rest of the segment is still the preallocated zeros. A
//! record never spans two segments. Sequence numbers start at 1 and have no gaps.
//!
//! Group commit: [`Wal::append`] queues a record and returns a [`Durable`] future; one thread
//! writes every record queued while the previous group's `fdatasync` ran, flushes once, and
//! resolves them all. Records are durable in the order they were appended: a record is never
//! on disk without every record appended before it.
//!
//! Recovery ([`Wal::open`]): every intact record is handed to the caller in order. A damaged
//! record at the end of the last segment with nothing intact after it is the torn tail of a
//! crash during an append (records that were never reported durable): it is cut off and the
//! space zeroed, so what is appended next cannot be read together with what was there. A
//! damaged record followed by intact ones is corruption of what was durable: the open fails and
//! says where, rather than replaying around a hole.
//!
//! Segments are 1 MiB; a thread prepares the next one once the current one is half full, so a
//! rotation rarely waits for the zeros to be written. A damaged record followed by intact ones, or
//! in a segment followed by another, is corruption: `open` fails naming the segment, offset and
//! record, after replaying what came before. After a failed write or flush the log refuses every
//! append until a restart: the page cache's view of a file after a failed `fdatasync` is not to be
//! trusted. `Wal::release(seq)` deletes the segments holding nothing after `seq`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::task::{Context, Poll};
use std::thread;

use tokio::sync::oneshot;

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"FERRYWL1";
/// Bytes before a segment's first record: [`MAGIC`] and the first sequence number.
pub const SEGMENT_HEADER: u64 = 16;
/// Bytes before each record: length, CRC32, sequence number.
pub const FRAME_HEADER: u64 = 16;

/// How a log is laid out on disk.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Each segment's size, preallocated before its first record; a record may be at most this
    /// minus [`SEGMENT_HEADER`] and [`FRAME_HEADER`].
    pub segment_size: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        // Small enough that zeroing one (at creation, and the unused part of the last one after
        // a torn write) takes milliseconds and a host with many agents writes little at their
        // start; large enough (thousands of journal records) that rotation, which flushes the
        // directory, is rare.
        WalOptions {
            segment_size: 1 << 20,
        }
    }
}

/// What went wrong with a log, and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("{what} {path}: {reason}; check that the disk is mounted, writable and not full")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A record that was durable is damaged.
    #[error(
        "the log segment {segment} is damaged at byte {offset} (record {seq}), and intact records follow it, so this is not a write cut short by a crash; records from {seq} on were not replayed. Restore the directory from a backup, or move the segments from this one on aside to start without the records they hold"
    )]
    Corrupt {
        /// The damaged segment.
        segment: PathBuf,
        /// Where its damaged record starts.
        offset: u64,
        /// The sequence number the damaged record should have had.
        seq: u64,
    },
    /// A file in the log's directory is not a segment of it, or segments are missing.
    #[error(
        "{path} does not continue the log: {reason}. The log's directory holds only its own segments; restore it from a backup, or move this file and the ones after it aside"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A record is larger than a segment can hold.
    #[error("a record of {len} bytes does not fit in a log segment (at most {max} bytes)")]
    TooLarge {
        /// The record's length.
        len: usize,
        /// The largest record a segment holds.
        max: u64,
    },
    /// An earlier write or flush failed, so the log no longer knows what is on disk.
    #[error(
        "the log stopped after a failed write ({reason}); nothing more is written until the process restarts and replays the log from disk"
    )]
    Failed {
        /// The first failure.
        reason: String,
    },
    /// The log's thread is gone (the process is shutting down).
    #[error("the log has stopped; the process is shutting down")]
    Stopped,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |e| WalError::Io {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Counters, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended and durable.
    pub appends: u64,
    /// `fdatasync`s of segments that carried records.
    pub syncs: u64,
    /// Segments on disk.
    pub segments: usize,
}

/// The future [`Wal::append`] returns: resolves to the record's sequence number once the
/// record is on disk.
#[must_use = "a record is durable only once its future resolves"]
pub struct Durable {
    seq: u64,
    state: DurableState,
}

enum DurableState {
    Waiting(oneshot::Receiver<Result<(), WalError>>),
    Refused(Option<WalError>),
}

impl Durable {
    /// The record's sequence number (0 when the append was refused).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Future for Durable {
    type Output = Result<u64, WalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            DurableState::Refused(e) => Poll::Ready(Err(e.take().unwrap_or(WalError::Stopped))),
            DurableState::Waiting(done) => match Pin::new(done).poll(cx) {
                Poll::Ready(Ok(Ok(()))) => Poll::Ready(Ok(this.seq)),
                Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e)),
                Poll::Ready(Err(_)) => Poll::Ready(Err(WalError::Stopped)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

struct Pending {
    seq: u64,
    record: Vec<u8>,
    done: oneshot::Sender<Result<(), WalError>>,
}

struct Queue {
    next_seq: u64,
    pending: Vec<Pending>,
    closing: bool,
    failed: Option<String>,
}

struct Shared {
    dir: PathBuf,
    options: WalOptions,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Every segment on disk, oldest first, as (first sequence number, path); the last is the
    /// one being written.
    segments: Mutex<VecDeque<(u64, PathBuf)>>,
    appends: AtomicU64,
    syncs: AtomicU64,
}

/// An open log. Cloning shares it; the thread that writes it ends when the last clone is
/// dropped, after the records already appended are on disk.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    writer: Option<thread::JoinHandle<()>>,
    preallocator: Option<thread::JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.queue.lock().expect("log queue").closing = true;
        self.shared.wake.notify_all();
        // The writer owns the receiving end of the spare segments: once it is gone, the
        // preallocator's hand-over fails and it removes its spare and ends.
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some(preallocator) = self.preallocator.take() {
            let _ = preallocator.join();
        }
    }
}

/// The segment being written.
struct Current {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    end: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:016x}.wal")
}

fn frame(seq: u64, record: &[u8], into: &mut Vec<u8>) {
    let len = (record.len() as u32).to_le_bytes();
    let seq = seq.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&seq);
    crc.update(record);
    into.extend_from_slice(&len);
    into.extend_from_slice(&crc.finalize().to_le_bytes());
    into.extend_from_slice(&seq);
    into.extend_from_slice(record);
}

/// What is at `offset` of a segment's bytes.
enum Read<'a> {
    /// An intact record, and where the next one starts.
    Record {
        seq: u64,
        record: &'a [u8],
        next: u64,
    },
    /// No more records in this segment.
    End,
    /// Not an intact record.
    Damaged,
}

fn read_at(bytes: &[u8], offset: u64) -> Read<'_> {
    let start = offset as usize;
    let Some(header) = bytes.get(start..start + FRAME_HEADER as usize) else {
        return Read::End;
    };
    if header.iter().all(|b| *b == 0) {
        return Read::End;
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let seq_bytes: [u8; 8] = header[8..16].try_into().expect("8 bytes");
    let body = start + FRAME_HEADER as usize;
    let Some(record) = bytes.get(body..body + len as usize) else {
        return Read::Damaged;
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..4]);
    hasher.update(&seq_bytes);
    hasher.update(record);
    if hasher.finalize() != crc {
        return Read::Damaged;
    }
    Read::Record {
        seq: u64::from_le_bytes(seq_bytes),
        record,
        next: (body + len as usize) as u64,
    }
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("flushing the log directory", dir))
}

/// Writes a file of `size` zero bytes and flushes it, so that writes into it later change no
/// metadata.
fn preallocate(path: &Path, size: u64) -> Result<File, WalError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .mode(crate::PRIVATE_FILE)
        .open(path)
        .map_err(io("creating the log segment", path))?;
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = chunk.len().min((size - at) as usize);
        file.write_all_at(&chunk[..n], at)
            .map_err(io("preallocating the log segment", path))?;
        at += n as u64;
    }
    file.sync_all()
        .map_err(io("flushing the preallocated log segment", path))?;
    Ok(file)
}

/// Turns a preallocated spare into the segment whose first record is `first_seq`: its header
/// is on disk and its name in the directory is durable before any record goes in, so a
/// segment found at recovery always has its header.
fn install(
    dir: &Path,
    spare: &Path,
    file: File,
    first_seq: u64,
) -> Result<(File, PathBuf), WalError> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&first_seq.to_le_bytes());
    file.write_all_at(&header, 0)
        .map_err(io("writing the log segment's header", spare))?;
    file.sync_data()
        .map_err(io("flushing the log segment's header", spare))?;
    let path = dir.join(segment_name(first_seq));
    std::fs::rename(spare, &path).map_err(io("naming the log segment", &path))?;
    sync_dir(dir)?;
    Ok((file, path))
}

impl Wal {
    /// Opens the log in `dir` (created if missing), hands every intact record to `replay` in
    /// order, cuts off a torn tail, and starts the thread that appends.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        mut replay: impl FnMut(u64, &[u8]),
    ) -> Result<Wal, WalError> {
        assert!(
            options.segment_size > SEGMENT_HEADER + FRAME_HEADER,
            "a log segment must hold a record"
        );
        crate::private_dir(dir).map_err(io("creating the log directory", dir))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("listing the log directory", dir))? {
            let path = entry.map_err(io("listing the log directory", dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                // A spare segment prepared ahead and never used: it holds no record.
                std::fs::remove_file(&path).map_err(io("removing a spare log segment", &path))?;
                continue;
            }
            let Some(first) = name
                .strip_suffix(".wal")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            else {
                return Err(WalError::Foreign {
                    path,
                    reason: "its name is not a segment's (16 hex digits and .wal)".into(),
                });
            };
            found.push((first, path));
        }
        found.sort();

        let mut expected = found.first().map_or(1, |(first, _)| *first);
        let mut current = None;
        let last = found.len().saturating_sub(1);
        for (i, (first, path)) in found.iter().enumerate() {
            let bytes = std::fs::read(path).map_err(io("reading the log segment", path))?;
            if bytes.get(..8) != Some(MAGIC.as_slice())
                || bytes.get(8..16) != Some(first.to_le_bytes().as_slice())
            {
                return Err(WalError::Foreign {
                    path: path.clone(),
                    reason:
                        "its header is not a ferry log segment's, or names another first record"
                            .into(),
                });
            }
            if *first != expected {
                return Err(WalError::Foreign {
                    path: path.clone(),
                    reason: format!(
                        "it starts at record {first}, but the segments before it end at record {}",
                        expected - 1
                    ),
                });
            }
            let mut offset = SEGMENT_HEADER;
            let stop = loop {
                match read_at(&bytes, offset) {
                    Read::Record { seq, record, next } if seq == expected => {
                        replay(seq, record);
                        expected += 1;
                        offset = next;
                    }
                    Read::Record { .. } | Read::Damaged => break Some(offset),
                    Read::End => break None,
                }
            };
            if let Some(offset) = stop {
                // Intact records after the damaged one mean it was durable once: corruption,
                // not a crash mid-append. Only the record right after it can be found (the
                // damaged length cannot be trusted to find the ones after).
                let len = bytes
                    .get(offset as usize..offset as usize + 4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                let followed = i < last
                    || matches!(
                        read_at(&bytes, offset + FRAME_HEADER + u64::from(len)),
                        Read::Record { seq, .. } if seq == expected + 1
                    );
                if followed {
                    return Err(WalError::Corrupt {
                        segment: path.clone(),
                        offset,
                        seq: expected,
                    });
                }
                tracing::warn!(
                    segment = %path.display(),
                    offset,
                    seq = expected,
                    "the log ends in a record cut short by a crash; it was never reported durable and is dropped"
                );
            }
            if i == last {
                current = Some((path.clone(), offset, bytes));
            }
        }

        let segments;
        let current = match current {
            Some((path, end, bytes)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io("opening the log segment", &path))?;
                // Whatever follows the last intact record (a torn record, or blocks of a group
                // that reached the disk without the ones before them) is zeroed, so that
                // records appended now are never read together with it.
                if bytes[end as usize..].iter().any(|b| *b != 0) {
                    let zeros = vec![0u8; bytes.len() - end as usize];
                    file.write_all_at(&zeros, end)
                        .map_err(io("zeroing the log's torn tail", &path))?;
                    file.sync_data()
                        .map_err(io("flushing the log's zeroed tail", &path))?;
                }
                segments = found.into_iter().collect::<VecDeque<_>>();
                Current { file, path, end }
            }
            None => {
                let spare = dir.join("first.tmp");
                let file = preallocate(&spare, options.segment_size)?;
                let (file, path) = install(dir, &spare, file, 1)?;
                segments = VecDeque::from([(1, path.clone())]);
                Current {
                    file,
                    path,
                    end: SEGMENT_HEADER,
                }
            }
        };

        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            queue: Mutex::new(Queue {
                next_seq: expected,
                pending: Vec::new(),
                closing: false,
                failed: None,
            }),
            wake: Condvar::new(),
            segments: Mutex::new(segments),
            appends: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        });
        let (spares_in, spares) = mpsc::sync_channel(0);
        let (request, requests) = mpsc::channel::<()>();
        let preallocator = {
            let dir = dir.to_path_buf();
            let size = shared.options.segment_size;
            thread::Builder::new()
                .name("wal-prealloc".into())
                .spawn(move || {
                    for n in 0u64.. {
                        // A spare is made once the segment being written is half full, not at
                        // once: a log that never fills its first segment never writes a second.
                        if requests.recv().is_err() {
                            return;
                        }
                        let path = dir.join(format!("spare-{n}.tmp"));
                        let made = preallocate(&path, size).map(|file| (path.clone(), file));
                        let failed = made.is_err();
                        if spares_in.send(made).is_err() {
                            let _ = std::fs::remove_file(&path);
                            return;
                        }
                        if failed {
                            return;
                        }
                    }
                })
                .expect("the log's preallocation thread starts")
        };
        let writer = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || {
                    let mut spares = Spares {
                        request,
                        requested: false,
                        spares,
                    };
                    run(&shared, current, &mut spares)
                })
                .expect("the log's writer thread starts")
        };
        Ok(Wal {
            inner: Arc::new(Handle {
                shared,
                writer: Some(writer),
                preallocator: Some(preallocator),
            }),
        })
    }

    /// The largest record a segment holds.
    pub fn max_record(&self) -> u64 {
        self.inner.shared.options.segment_size - SEGMENT_HEADER - FRAME_HEADER
    }

    /// Queues `record` and returns its sequence number's future, resolved once it is on disk.
    /// Queued when called: records are durable in the order of these calls.
    pub fn append(&self, record: Vec<u8>) -> Durable {
        let refused = |e| Durable {
            seq: 0,
            state: DurableState::Refused(Some(e)),
        };
        if record.len() as u64 > self.max_record() || record.len() > u32::MAX as usize {
            return refused(WalError::TooLarge {
                len: record.len(),
                max: self.max_record(),
            });
        }
        let (done, waiting) = oneshot::channel();
        let seq = {
            let mut queue = self.inner.shared.queue.lock().expect("log queue");
            if let Some(reason) = &queue.failed {
                return refused(WalError::Failed {
                    reason: reason.clone(),
                });
            }
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.pending.push(Pending { seq, record, done });
            seq
        };
        self.inner.shared.wake.notify_one();
        Durable {
            seq,
            state: DurableState::Waiting(waiting),
        }
    }

    /// The sequence number of the last record appended (0 before the first): every record up
    /// to it was queued before this call returned.
    pub fn last_seq(&self) -> u64 {
        self.inner.shared.queue.lock().expect("log queue").next_seq - 1
    }

    /// Why the log stopped writing, if it did.
    pub fn failed(&self) -> Option<String> {
        self.inner
            .shared
            .queue
            .lock()
            .expect("log queue")
            .failed
            .clone()
    }

    /// The caller no longer needs records up to `seq` (they are in a durable checkpoint):
    /// deletes the segments that hold nothing after it. The segment being written stays.
    /// Returns how many were deleted.
    ///
    /// A deletion a crash undoes only brings back records the caller already has, which
    /// [`Wal::open`] replays again: what the caller does with a record must bear a repeat.
    pub fn release(&self, seq: u64) -> Result<usize, WalError> {
        let mut segments = self.inner.shared.segments.lock().expect("log segments");
        let mut deleted = 0;
        while segments.len() >= 2 && segments[1].0 <= seq + 1 {
            let (_, path) = segments.front().expect("two segments").clone();
            std::fs::remove_file(&path).map_err(io("deleting a released log segment", &path))?;
            segments.pop_front();
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> WalStats {
        let shared = &self.inner.shared;
        WalStats {
            appends: shared.appends.load(Ordering::Relaxed),
            syncs: shared.syncs.load(Ordering::Relaxed),
            segments: shared.segments.lock().expect("log segments").len(),
        }
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }
}

type Spare = Result<(PathBuf, File), WalError>;

/// The writer's side of the preallocation thread.
struct Spares {
    request: mpsc::Sender<()>,
    requested: bool,
    spares: mpsc::Receiver<Spare>,
}

impl Spares {
    fn ask(&mut self) {
        if !self.requested {
            self.requested = true;
            let _ = self.request.send(());
        }
    }

    fn take(&mut self) -> Result<(PathBuf, File), WalError> {
        self.ask();
        self.requested = false;
        self.spares.recv().map_err(|_| WalError::Stopped)?
    }
}

fn run(shared: &Shared, mut current: Current, spares: &mut Spares) {
    loop {
        let group = {
            let mut queue = shared.queue.lock().expect("log queue");
            while queue.pending.is_empty() && !queue.closing {
                queue = shared.wake.wait(queue).expect("log queue");
            }
            if queue.pending.is_empty() {
                return;
            }
            std::mem::take(&mut queue.pending)
        };
        match write_group(shared, &mut current, spares, &group) {
            Ok(()) => {
                shared
                    .appends
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                for pending in group {
                    let _ = pending.done.send(Ok(()));
                }
            }
            Err(e) => {
                // After a failed write or fdatasync the kernel's view of the file is not
                // to be trusted (the failed pages may be dropped and later reads succeed), so
                // nothing more is written: a restart replays what is really on disk.
                tracing::error!(error = %e, "the log failed; it stops writing");
                let reason = e.to_string();
                let failed = {
                    let mut queue = shared.queue.lock().expect("log queue");
                    queue.failed = Some(reason.clone());
                    std::mem::take(&mut queue.pending)
                };
                for pending in group.into_iter().chain(failed) {
                    let _ = pending.done.send(Err(WalError::Failed {
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }
}

fn write_group(
    shared: &Shared,
    current: &mut Current,
    spares: &mut Spares,
    group: &[Pending],
) -> Result<(), WalError> {
    let size = shared.options.segment_size;
    let mut buffer = Vec::new();
    for pending in group {
        let framed = FRAME_HEADER + pending.record.len() as u64;
        if current.end + buffer.len() as u64 + framed > size {
            flush(shared, current, &mut buffer)?;
            let (spare, file) = spares.take()?;
            let (file, path) = install(&shared.dir, &spare, file, pending.seq)?;
            shared
                .segments
                .lock()
                .expect("log segments")
                .push_back((pending.seq, path.clone()));
            *current = Current {
                file,
                path,
                end: SEGMENT_HEADER,
            };
        }
        frame(pending.seq, &pending.record, &mut buffer);
    }
    flush(shared, current, &mut buffer)?;
    if current.end > size / 2 {
        spares.ask();
    }
    Ok(())
}

fn flush(shared: &Shared, current: &mut Current, buffer: &mut Vec<u8>) -> Result<(), WalError> {
    if buffer.is_empty() {
        return Ok(());
    }
    current
        .file
        .write_all_at(buffer, current.end)
        .map_err(io("appending to the log segment", &current.path))?;
    current
        .file
        .sync_data()
        .map_err(io("flushing the log segment", &current.path))?;
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    current.end += buffer.len() as u64;
    buffer.clear();
    Ok(())
}
