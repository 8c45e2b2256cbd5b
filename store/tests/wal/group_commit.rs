//! Records appended while a flush runs go to disk together in the next one.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_their_fdatasyncs_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1 << 20).unwrap();
    const APPENDERS: u64 = 32;
    const EACH: u64 = 20;
    let mut tasks = Vec::new();
    for a in 0..APPENDERS {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                wal.append(record(a * 1000 + i)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.appends, APPENDERS * EACH);
    // With one flush per append, there would be 640; appenders waiting on a flush share the
    // next one.
    assert!(
        stats.syncs * 2 <= stats.appends,
        "{} fdatasyncs for {} appends",
        stats.syncs,
        stats.appends
    );
    drop(wal);
    let (_, replayed) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(replayed.len() as u64, APPENDERS * EACH);
    let mut seen: Vec<_> = replayed.into_iter().map(|(_, r)| r).collect();
    seen.sort();
    let mut expected: Vec<_> = (0..APPENDERS)
        .flat_map(|a| (0..EACH).map(move |i| record(a * 1000 + i)))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

/// Appends queued together without waiting are written by one flush, in the order of the
/// calls, and each learns its own sequence number.
#[tokio::test]
async fn appends_queued_together_keep_their_order_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1 << 20).unwrap();
    let futures: Vec<_> = (1..=100).map(|i| wal.append(record(i))).collect();
    let seqs: Vec<u64> = futures.iter().map(|f| f.seq()).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    for (i, future) in futures.into_iter().enumerate() {
        assert_eq!(future.await.unwrap(), i as u64 + 1);
    }
    let stats = wal.stats();
    assert!(
        stats.syncs < 50,
        "{} fdatasyncs for 100 queued appends",
        stats.syncs
    );
    drop(wal);
    let (_, replayed) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        replayed,
        (1..=100).map(|i| (i, record(i))).collect::<Vec<_>>()
    );
}
