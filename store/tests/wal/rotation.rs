//! A full segment gives way to a preallocated one; segments whose records the caller has
//! checkpointed elsewhere are deleted.

use super::*;

const SIZE: u64 = 4096;

#[tokio::test]
async fn records_continue_across_segments_and_replay_whole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(dir.path(), SIZE).unwrap();
        append(&wal, 1, 500).await;
        assert!(wal.stats().segments > 2, "{:?}", wal.stats());
    }
    let all = segments(dir.path());
    // Every segment is preallocated to its full size before it holds a record.
    for segment in &all {
        assert_eq!(std::fs::metadata(segment).unwrap().len(), SIZE);
    }
    // Named by their first record, in order.
    let (_, replayed) = open(dir.path(), SIZE).unwrap();
    assert_eq!(
        replayed,
        (1..=500).map(|i| (i, record(i))).collect::<Vec<_>>()
    );
    // No spare segment is left behind as a segment.
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "wal"))
    );
}

#[tokio::test]
async fn released_segments_are_deleted_and_the_rest_still_replays() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let (wal, _) = open(dir.path(), SIZE).unwrap();
        append(&wal, 1, 500).await;
        before = wal.stats().segments;
        // Nothing is released below the first segment's end.
        assert_eq!(wal.release(0).unwrap(), 0);
        let deleted = wal.release(300).unwrap();
        assert!(deleted > 0);
        assert_eq!(wal.stats().segments, before - deleted);
        // The segment being written is never deleted, whatever is released.
        wal.release(u64::MAX - 1).unwrap();
        assert_eq!(wal.stats().segments, 1);
        assert_eq!(segments(dir.path()).len(), 1);
        append(&wal, 501, 5).await;
    }
    let (wal, replayed) = open(dir.path(), SIZE).unwrap();
    // What was left starts at the last segment's first record and runs to the end, in order.
    let first = replayed.first().unwrap().0;
    assert!(first > 300 && first <= 500, "{first}");
    assert_eq!(replayed.last().unwrap().0, 505);
    assert!(replayed.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    assert_eq!(wal.last_seq(), 505);
    assert!(before > 2);
}

#[tokio::test]
async fn a_release_keeps_segments_holding_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SIZE).unwrap();
    append(&wal, 1, 500).await;
    let all = segments(dir.path());
    let second_first =
        u64::from_str_radix(all[1].file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    // Up to the second segment's first record minus two: the first segment still holds
    // the last of them.
    assert_eq!(wal.release(second_first - 2).unwrap(), 0);
    assert_eq!(wal.release(second_first - 1).unwrap(), 1);
    assert_eq!(segments(dir.path())[0], all[1]);
}
