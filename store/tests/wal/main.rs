//! `ferry_store::wal`: what survives a reopen, a crash mid-append and a damaged disk, and how
//! many flushes a group of appends costs.

mod corruption;
mod group_commit;
mod logged;
mod replay;
mod rotation;
mod torn_tail;

use std::path::{Path, PathBuf};

use ferry_store::wal::{Wal, WalError, WalOptions};

/// Records as replayed: sequence number and bytes.
type Replayed = Vec<(u64, Vec<u8>)>;

/// Opens the log in `dir` and returns it with what it replayed.
fn open(dir: &Path, segment_size: u64) -> Result<(Wal, Replayed), WalError> {
    let mut replayed = Vec::new();
    let wal = Wal::open(dir, WalOptions { segment_size }, |seq, record| {
        replayed.push((seq, record.to_vec()))
    })?;
    Ok((wal, replayed))
}

fn record(i: u64) -> Vec<u8> {
    format!("record number {i}").into_bytes()
}

/// Appends `count` records numbered from `from`, waiting for each.
async fn append(wal: &Wal, from: u64, count: u64) {
    for i in from..from + count {
        wal.append(record(i)).await.expect("the append is durable");
    }
}

/// The log's segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    found.sort();
    found
}

/// The offset just after the last record of a segment, by reading its frames.
fn end_of_records(segment: &Path) -> u64 {
    let bytes = std::fs::read(segment).unwrap();
    let mut at = ferry_store::wal::SEGMENT_HEADER as usize;
    loop {
        let header = &bytes[at..at + 16];
        if header.iter().all(|b| *b == 0) {
            return at as u64;
        }
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        at += 16 + len;
    }
}
