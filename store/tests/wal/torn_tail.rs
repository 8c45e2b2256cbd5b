//! A crash during an append leaves part of a record (or the blocks of a group that reached the
//! disk out of order) after the last durable record: it is cut off, never replayed, and never
//! read together with what is appended after the restart.

use std::os::unix::fs::FileExt;

use super::*;

fn write_at(path: &Path, bytes: &[u8], at: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, at).unwrap();
}

#[tokio::test]
async fn half_a_record_at_the_end_is_cut_off_and_appends_continue_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let whole;
    {
        let (wal, _) = open(dir.path(), 1 << 20).unwrap();
        append(&wal, 1, 10).await;
        whole = end_of_records(&segments(dir.path())[0]);
        wal.append(b"the record a crash cuts in half".to_vec())
            .await
            .unwrap();
    }
    let segment = segments(dir.path())[0].clone();
    // The last record's second half never reached the disk.
    let end = end_of_records(&segment);
    let half = whole + (end - whole) / 2;
    write_at(&segment, &vec![0; (end - half) as usize], half);

    let (wal, replayed) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(replayed.len(), 10, "the torn record is not replayed");
    assert_eq!(wal.last_seq(), 10);
    let bytes = std::fs::read(&segment).unwrap();
    assert!(
        bytes[whole as usize..].iter().all(|b| *b == 0),
        "the torn tail is zeroed"
    );
    assert_eq!(wal.append(record(11)).await.unwrap(), 11);
    drop(wal);
    let (_, replayed) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(replayed.last().unwrap(), &(11, record(11)));
    assert_eq!(replayed.len(), 11);
}

#[tokio::test]
async fn garbage_after_the_last_record_is_dropped_and_never_read_with_new_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(dir.path(), 1 << 20).unwrap();
        append(&wal, 1, 5).await;
    }
    let segment = segments(dir.path())[0].clone();
    let end = end_of_records(&segment);
    // A header claiming more than is there, and stray blocks further on.
    write_at(&segment, &[0xff; 40], end);
    write_at(&segment, &[0x17; 4096], end + 8192);

    let (wal, replayed) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(replayed.len(), 5);
    let bytes = std::fs::read(&segment).unwrap();
    assert!(bytes[end as usize..].iter().all(|b| *b == 0));
    append(&wal, 6, 3).await;
    drop(wal);
    let (_, replayed) = open(dir.path(), 1 << 20).unwrap();
    let expected: Vec<_> = (1..=8).map(|i| (i, record(i))).collect();
    assert_eq!(replayed, expected);
}

/// A record that is intact but from before an earlier truncation (its sequence number is not
/// the next one) ends the log like a torn record does.
#[tokio::test]
async fn an_intact_record_out_of_sequence_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(dir.path(), 1 << 20).unwrap();
        append(&wal, 1, 3).await;
    }
    let segment = segments(dir.path())[0].clone();
    let second = {
        let bytes = std::fs::read(&segment).unwrap();
        let first_len = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as u64;
        16 + 16 + first_len
    };
    let end = end_of_records(&segment);
    // Record 2's bytes again after record 3: intact, but record 2, not 4.
    let bytes = std::fs::read(&segment).unwrap();
    let record_two_len = u32::from_le_bytes(
        bytes[second as usize..second as usize + 4]
            .try_into()
            .unwrap(),
    ) as u64;
    let copy = bytes[second as usize..(second + 16 + record_two_len) as usize].to_vec();
    write_at(&segment, &copy, end);
    let (wal, replayed) = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(replayed.len(), 3);
    assert_eq!(wal.last_seq(), 3);
}
