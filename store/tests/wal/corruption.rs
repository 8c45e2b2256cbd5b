//! A record that was durable and is damaged later (a flipped bit, a bad block) stops the
//! replay at that record with an error naming it, instead of being taken for a torn tail.

use std::os::unix::fs::FileExt;

use super::*;

fn flip_byte(path: &Path, at: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
}

/// Where record `n` (1-based) of a segment starts.
fn offset_of(segment: &Path, n: u64) -> u64 {
    let bytes = std::fs::read(segment).unwrap();
    let mut at = ferry_store::wal::SEGMENT_HEADER;
    for _ in 1..n {
        let len = u32::from_le_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap());
        at += 16 + u64::from(len);
    }
    at
}

#[tokio::test]
async fn a_damaged_record_with_intact_ones_after_it_stops_the_replay_there() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(dir.path(), 1 << 20).unwrap();
        append(&wal, 1, 20).await;
    }
    let segment = segments(dir.path())[0].clone();
    let seventh = offset_of(&segment, 7);
    // A bit flipped inside record 7's payload.
    flip_byte(&segment, seventh + 16 + 3);

    let mut replayed = Vec::new();
    let err = Wal::open(
        dir.path(),
        WalOptions {
            segment_size: 1 << 20,
        },
        |seq, _| replayed.push(seq),
    )
    .err()
    .expect("a damaged durable record fails the open");
    assert_eq!(
        replayed,
        (1..=6).collect::<Vec<_>>(),
        "replay stops at the record"
    );
    match &err {
        WalError::Corrupt {
            segment: at,
            offset,
            seq,
        } => {
            assert_eq!((at, *offset, *seq), (&segment, seventh, 7));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("record 7") && message.contains("backup"),
        "{message}"
    );
    // The file is left as it was for whoever repairs it.
    let bytes = std::fs::read(&segment).unwrap();
    assert!(bytes[seventh as usize + 16..].iter().any(|b| *b != 0));
}

#[tokio::test]
async fn a_damaged_record_in_an_older_segment_is_corruption_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let size = 4096;
    {
        let (wal, _) = open(dir.path(), size).unwrap();
        append(&wal, 1, 200).await;
    }
    let all = segments(dir.path());
    assert!(all.len() >= 2);
    let first = &all[0];
    // The first segment's last record: in a segment followed by another, it was durable.
    let end = end_of_records(first);
    flip_byte(first, end - 1);
    let err = open(dir.path(), size).err().expect("refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn a_missing_segment_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let size = 4096;
    {
        let (wal, _) = open(dir.path(), size).unwrap();
        append(&wal, 1, 300).await;
    }
    let all = segments(dir.path());
    assert!(all.len() >= 3);
    std::fs::remove_file(&all[1]).unwrap();
    let err = open(dir.path(), size).err().expect("refused");
    assert!(matches!(err, WalError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("end at record 126"), "{err}");
}
