//! What one durable journal record costs, measured in one run on one disk: the floor (a write
//! and `fdatasync` into a preallocated file), a durable redb commit through `Writer` (what the
//! journals did before the log), an append to `Wal`, and a logged write through a logged
//! `Writer` (a non-durable redb commit and the log append: what the agent's journal does now).
//! One at a time for the latencies, then 16 and 64 concurrent writers for the throughput.
//!
//! ```sh
//! cargo run --release --example journal_bench -- [--iterations N] [--dir DIR]
//! ```
//!
//! `--dir` (default: the system's temporary directory) picks the disk.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ferry_store::Writer;
use ferry_store::wal::{Wal, WalOptions};
use redb::{Database, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("commands");
/// About the size of an agent journal entry (a command with a small payload, its state).
const RECORD: usize = 256;

struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

fn floor(dir: &std::path::Path, iterations: usize) -> Vec<f64> {
    let path = dir.join("floor.bench");
    let size = 8 << 20;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.write_all_at(&vec![0; size], 0).unwrap();
    file.sync_all().unwrap();
    let record = [0x5a_u8; RECORD];
    let mut times = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let start = Instant::now();
        file.write_at(&record, ((i * RECORD) % size) as u64)
            .unwrap();
        file.sync_data().unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    std::fs::remove_file(&path).unwrap();
    times
}

/// One way of making a record durable, called from many tasks at once.
#[derive(Clone)]
enum Target {
    Redb(Writer),
    Wal(Wal),
    Logged(Writer),
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Target {
    async fn write(&self) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let key = format!("command-{n:012}");
        let record = vec![(n % 251) as u8; RECORD];
        match self {
            Target::Redb(writer) => writer
                .write("a record", true, move |tx| {
                    tx.open_table(TABLE)?
                        .insert(key.as_str(), record.as_slice())?;
                    Ok(())
                })
                .await
                .unwrap(),
            Target::Wal(wal) => {
                wal.append(record).await.unwrap();
            }
            Target::Logged(writer) => writer
                .write_logged("a record", move |tx| {
                    tx.open_table(TABLE)?
                        .insert(key.as_str(), record.as_slice())?;
                    // The journal's record carries the key and the entry.
                    let mut logged = key.into_bytes();
                    logged.extend_from_slice(&record);
                    Ok(((), Some(logged)))
                })
                .await
                .unwrap(),
        }
    }
}

async fn one_at_a_time(target: &Target, iterations: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        target.write().await;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times
}

async fn throughput(target: &Target, writers: usize, total: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let target = target.clone();
        let count = total / writers + usize::from(w < total % writers);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                target.write().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn apply(tx: &redb::WriteTransaction, record: &[u8]) -> Result<(), redb::Error> {
    let (key, value) = record.split_at(record.len() - RECORD);
    let key = std::str::from_utf8(key).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    tx.open_table(TABLE)?.insert(key, value)?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut iterations = 2000;
    let mut dir = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => iterations = args.next().and_then(|v| v.parse().ok()).unwrap(),
            "--dir" => dir = args.next().unwrap().into(),
            other => panic!("unknown argument {other}: --iterations N, --dir DIR"),
        }
    }
    let work = tempfile::tempdir_in(&dir).unwrap();
    let warmup = iterations / 10;

    let redb = Target::Redb(Writer::start(
        "bench-redb",
        Arc::new(Database::create(work.path().join("plain.redb")).unwrap()),
    ));
    let wal = Wal::open(&work.path().join("wal"), WalOptions::default(), |_, _| {}).unwrap();
    let wal_target = Target::Wal(wal.clone());
    let (logged, _) = Writer::start_logged(
        "bench-logged",
        Arc::new(Database::create(work.path().join("logged.redb")).unwrap()),
        &work.path().join("logged.wal"),
        WalOptions::default(),
        &apply,
    )
    .unwrap();
    let logged = Target::Logged(logged);

    let targets = [
        ("redb durable commit (Writer::write)", &redb),
        ("Wal::append", &wal_target),
        ("logged write (Writer::write_logged)", &logged),
    ];
    for (_, target) in targets {
        one_at_a_time(target, warmup).await;
    }
    floor(work.path(), warmup);

    // Interleaved in rounds, so that a noisy stretch of the machine hits every figure alike.
    let rounds = 4;
    let mut floor_samples = Vec::new();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        floor_samples.extend(floor(work.path(), iterations / rounds));
        for (i, (_, target)) in targets.iter().enumerate() {
            samples[i].extend(one_at_a_time(target, iterations / rounds).await);
        }
    }
    let floor = percentiles(floor_samples);
    println!(
        "one {RECORD}-byte record at a time, {iterations} each, in {}",
        work.path().display()
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>12}",
        "", "p50 µs", "p90 µs", "p99 µs", "p50 / floor"
    );
    let row = |name: &str, p: &Percentiles| {
        println!(
            "{name:<40} {:>9.0} {:>9.0} {:>9.0} {:>12.2}",
            p.p50,
            p.p90,
            p.p99,
            p.p50 / floor.p50
        );
    };
    row("floor: write + fdatasync, preallocated", &floor);
    for ((name, _), samples) in targets.iter().zip(samples) {
        row(name, &percentiles(samples));
    }

    let syncs_before = wal.stats();
    // More records than for the latencies: a throughput figure must outlast the machine's
    // passing hiccups.
    let total = iterations * 5;
    println!("\nthroughput, records/s ({total} records per figure)");
    println!("{:<40} {:>12} {:>12}", "", "16 writers", "64 writers");
    for (name, target) in targets {
        let t16 = throughput(target, 16, total).await;
        let t64 = throughput(target, 64, total).await;
        println!("{name:<40} {t16:>12.0} {t64:>12.0}");
    }
    let syncs = wal.stats();
    println!(
        "\nWal::append under load: {} records in {} fdatasyncs ({:.1} records per flush)",
        syncs.appends - syncs_before.appends,
        syncs.syncs - syncs_before.syncs,
        (syncs.appends - syncs_before.appends) as f64 / (syncs.syncs - syncs_before.syncs) as f64
    );
}
