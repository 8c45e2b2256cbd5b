use super::*;

#[tokio::test]
async fn every_durable_record_is_replayed_in_order_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, replayed) = open(dir.path(), 1 << 20).unwrap();
        assert!(replayed.is_empty());
        append(&wal, 1, 50).await;
        assert_eq!(wal.last_seq(), 50);
    }
    let (wal, replayed) = open(dir.path(), 1 << 20).unwrap();
    let expected: Vec<_> = (1..=50).map(|i| (i, record(i))).collect();
    assert_eq!(replayed, expected);
    // Appending goes on after the replayed records, with the next sequence number.
    let seq = wal.append(record(51)).await.unwrap();
    assert_eq!(seq, 51);
    drop(wal);
    let (_, replayed) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(replayed.len(), 51);
    assert_eq!(replayed.last().unwrap(), &(51, record(51)));
}

#[tokio::test]
async fn an_empty_record_and_one_that_fills_a_segment_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 << 10;
    let big;
    {
        let (wal, _) = open(dir.path(), size).unwrap();
        big = vec![0xab; wal.max_record() as usize];
        wal.append(Vec::new()).await.unwrap();
        wal.append(big.clone()).await.unwrap();
        let err = wal.append(vec![0; wal.max_record() as usize + 1]).await;
        assert!(
            matches!(err, Err(WalError::TooLarge { .. })),
            "{:?}",
            err.map(|_| ())
        );
    }
    let (_, replayed) = open(dir.path(), size).unwrap();
    assert_eq!(replayed, vec![(1, Vec::new()), (2, big)]);
}

#[tokio::test]
async fn a_file_that_is_not_a_segment_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 1 << 20).unwrap());
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let err = open(dir.path(), 1 << 20).err().expect("refused");
    assert!(matches!(err, WalError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
}
