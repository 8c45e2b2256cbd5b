//! A logged `Writer`: redb commits without a flush, made durable by the log, and put back from
//! it when a crash takes the commits.

use std::sync::Arc;

use ferry_store::{CHECKPOINT_EVERY, Writer};
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

use super::*;

const ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("rows");

/// A record is the row's key and value.
fn apply(tx: &redb::WriteTransaction, record: &[u8]) -> Result<(), redb::Error> {
    let (key, value) = record.split_at(8);
    tx.open_table(ROWS)?
        .insert(u64::from_le_bytes(key.try_into().unwrap()), value)?;
    Ok(())
}

fn start(dir: &Path, segment_size: u64) -> (Writer, usize) {
    let db = Arc::new(Database::create(dir.join("db.redb")).unwrap());
    Writer::start_logged(
        "test",
        db,
        &dir.join("wal"),
        WalOptions { segment_size },
        &apply,
    )
    .expect("the logged writer starts")
}

async fn put(writer: &Writer, key: u64) {
    let value = record(key);
    writer
        .write_logged("a row", move |tx| {
            tx.open_table(ROWS)?.insert(key, value.as_slice())?;
            let mut logged = key.to_le_bytes().to_vec();
            logged.extend_from_slice(&value);
            Ok(((), Some(logged)))
        })
        .await
        .expect("the logged write is durable");
}

fn rows(db: &Database) -> u64 {
    let tx = db.begin_read().unwrap();
    match tx.open_table(ROWS) {
        Ok(table) => table.len().unwrap(),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => panic!("{e}"),
    }
}

/// Copies what a power cut would leave: the database as of its last durable commit (taken
/// when nothing had been written since) and the log as flushed.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wal") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test]
async fn logged_writes_lost_by_the_database_are_replayed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    {
        let (writer, replayed) = start(dir.path(), 1 << 20);
        assert_eq!(replayed, 0);
        std::fs::copy(dir.path().join("db.redb"), image.path().join("db.redb")).unwrap();
        for key in 0..10 {
            put(&writer, key).await;
        }
        assert_eq!(rows(writer.db()), 10, "readers see logged writes at once");
        copy_dir(&dir.path().join("wal"), &image.path().join("wal"));
    }
    {
        let raw = Database::create(image.path().join("db.redb")).unwrap();
        assert_eq!(rows(&raw), 0, "the database image holds none of the rows");
    }
    let (writer, replayed) = start(image.path(), 1 << 20);
    assert_eq!(replayed, 10);
    assert_eq!(rows(writer.db()), 10);
    {
        let tx = writer.db().begin_read().unwrap();
        let table = tx.open_table(ROWS).unwrap();
        assert_eq!(table.get(7).unwrap().unwrap().value(), record(7).as_slice());
    }
    drop(writer);
    // The replay was recorded as applied: the next start replays nothing.
    let (writer, replayed) = start(image.path(), 1 << 20);
    assert_eq!(replayed, 0);
    assert_eq!(rows(writer.db()), 10);
}

#[tokio::test]
async fn a_checkpoint_bounds_the_replay_and_drops_the_segments_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let total = CHECKPOINT_EVERY + 10;
    {
        let (writer, _) = start(dir.path(), 4096);
        for key in 0..total {
            put(&writer, key).await;
        }
        let segments = writer.wal().unwrap().stats().segments;
        // ~13 records fill a 4 KiB segment: without the checkpoint there would be ~80.
        assert!(segments <= 3, "{segments} segments left after a checkpoint");
        // A crash now: the database file as it is (its last durable commit is the
        // checkpoint), the log as flushed.
        std::fs::copy(dir.path().join("db.redb"), image.path().join("db.redb")).unwrap();
        copy_dir(&dir.path().join("wal"), &image.path().join("wal"));
    }
    let (writer, replayed) = start(image.path(), 4096);
    assert!(
        replayed < CHECKPOINT_EVERY as usize,
        "{replayed} records replayed after a checkpoint"
    );
    assert_eq!(rows(writer.db()), total);
}

#[tokio::test]
async fn without_a_log_a_logged_write_is_a_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Writer::start(
        "test",
        Arc::new(Database::create(dir.path().join("db.redb")).unwrap()),
    );
    assert!(writer.wal().is_none());
    let answer = writer
        .write_logged("a row", |tx| {
            tx.open_table(ROWS)?.insert(1, b"one".as_slice())?;
            Ok((42, Some(b"ignored".to_vec())))
        })
        .await
        .unwrap();
    assert_eq!(answer, 42);
    assert_eq!(rows(writer.db()), 1);
}

#[tokio::test]
async fn a_clean_stop_checkpoints_so_the_next_start_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (writer, _) = start(dir.path(), 1 << 20);
        for key in 0..5 {
            put(&writer, key).await;
        }
    }
    let (writer, replayed) = start(dir.path(), 1 << 20);
    assert_eq!(replayed, 0);
    assert_eq!(rows(writer.db()), 5);
}
