//! `ferry bench`: measures a command's round trip server → agent → plugin → server on loopback,
//! with an embedded server and agent, and says where the time goes — against the floors
//! measured in the same run on the same machine and disk: a bare QUIC request/response on a
//! fresh stream (the same TLS and transport settings, no ferry), and an `fdatasync` of a block
//! of a preallocated file in the data directory. A durable command needs one network round
//! trip and two sequential fsyncs (the agent's receipt before the plugin runs, the server's
//! result before it is acknowledged), so `bare QUIC + 2 × fdatasync` is its physical floor.
//! A read-only topic's command (`echo`, which its manifest declares read-only) skips both
//! journals, so bare QUIC alone is its floor. Both run the same plugin: the durable one on a
//! topic of its own that is not read-only.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_agent::{Agent, AgentConfig, PluginConfig};
use ferry_protocol::AgentId;
use ferry_protocol::pki::PkiDir;
use ferry_server::{RunRequest, RunStatus, Server, ServerConfig};
use serde::Serialize;

/// The topic of the durable round trip: the echo plugin, journaled.
const DURABLE_TOPIC: &str = "bench.durable";
/// The topic of the journal-free round trip: `echo`, which its manifest declares read-only.
const JOURNAL_FREE_TOPIC: &str = "echo";

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Commands to time (after the warm-up).
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Commands run first and not counted.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Commands in flight at once for the throughput figures (a comma-separated list).
    #[arg(long, value_delimiter = ',', default_values_t = vec![16, 64])]
    pub concurrency: Vec<usize>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    iterations: usize,
    payload_bytes: usize,
    round_trip: Percentiles,
    plugin: Percentiles,
    outside_plugin: Percentiles,
    /// A request/response of the same size on a fresh QUIC stream, nothing else.
    bare_quic: Percentiles,
    /// One 4 KiB write and `fdatasync` of a preallocated file in the data directory.
    fdatasync: Percentiles,
    /// `round_trip.p50 / (bare_quic.p50 + 2 × fdatasync.p50)`: 1 is the physical floor.
    durable_ratio: f64,
    /// `round_trip.p50 / bare_quic.p50`.
    quic_ratio: f64,
    throughput: Vec<Throughput>,
    /// The same command on a read-only topic: no journal on either side.
    journal_free_round_trip: Percentiles,
    /// `journal_free_round_trip.p50 / bare_quic.p50`: 1 is the floor.
    journal_free_ratio: f64,
    journal_free_throughput: Vec<Throughput>,
}

#[derive(Debug, Serialize)]
struct Throughput {
    in_flight: usize,
    commands_per_second: f64,
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50_us: at(0.50),
        p90_us: at(0.90),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.iterations == 0 || args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--iterations and each --concurrency must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        api_listen: None,
        data_dir: dir.path().join("server"),
        ..ServerConfig::default()
    })
    .await?;
    let id = AgentId::new("bench")?;
    let pki = PkiDir::open_or_create(&dir.path().join("server/pki"), &[])?;
    let (cert, key) = pki.ensure_agent(&id)?;
    // The echo plugin once more, on a topic no manifest declares read-only: journaled.
    let durable_echo = dir.path().join("echo.wasm");
    std::fs::write(&durable_echo, ferry_builtins::ECHO.component)?;
    let agent = Agent::start(AgentConfig {
        plugins: vec![PluginConfig {
            path: durable_echo,
            topics: vec![DURABLE_TOPIC.into()],
            manifest: None,
            name: Some("durable-echo".into()),
        }],
        server: server.quic_addr().to_string(),
        server_name: "localhost".into(),
        cert,
        key,
        ca: pki.ca_cert_path(),
        data_dir: dir.path().join("agent"),
        ..AgentConfig::default()
    })
    .await?;
    if let Err(status) = agent.wait_connected(Duration::from_secs(20)).await {
        bail!("the agent did not connect: {status:?}");
    }
    let payload = vec![b'x'; args.payload_bytes];
    let one = |topic: &'static str, payload: Vec<u8>| {
        let server = &server;
        let id = id.clone();
        async move {
            let start = Instant::now();
            let entry = server
                .submit(RunRequest {
                    agent: id,
                    topic: topic.into(),
                    payload,
                    content_type: "application/octet-stream".into(),
                    timeout: Some(Duration::from_secs(30)),
                    idempotency_key: None,
                    data: Default::default(),
                    deliver_within: None,
                })
                .await?;
            let view = entry.wait().await;
            let elapsed = start.elapsed();
            if view.status != RunStatus::Succeeded {
                bail!(
                    "a benchmark command ended {:?}: {:?}",
                    view.status,
                    view.detail
                );
            }
            let plugin = Duration::from_micros(view.stats.context("no stats")?.duration_us);
            Ok::<_, anyhow::Error>((elapsed, plugin))
        }
    };

    for topic in [DURABLE_TOPIC, JOURNAL_FREE_TOPIC] {
        for _ in 0..args.warmup {
            one(topic, payload.clone()).await?;
        }
    }
    let mut round_trip = Vec::with_capacity(args.iterations);
    let mut journal_free = Vec::with_capacity(args.iterations);
    let mut plugin = Vec::with_capacity(args.iterations);
    let mut outside = Vec::with_capacity(args.iterations);
    // Interleaved, so that both see the same machine.
    for _ in 0..args.iterations {
        let (total, in_plugin) = one(DURABLE_TOPIC, payload.clone()).await?;
        round_trip.push(total.as_secs_f64() * 1e6);
        plugin.push(in_plugin.as_secs_f64() * 1e6);
        outside.push(total.saturating_sub(in_plugin).as_secs_f64() * 1e6);
        let (total, _) = one(JOURNAL_FREE_TOPIC, payload.clone()).await?;
        journal_free.push(total.as_secs_f64() * 1e6);
    }

    let mut throughput = Vec::new();
    let mut journal_free_throughput = Vec::new();
    for &in_flight in &args.concurrency {
        for (topic, figures) in [
            (DURABLE_TOPIC, &mut throughput),
            (JOURNAL_FREE_TOPIC, &mut journal_free_throughput),
        ] {
            let start = Instant::now();
            let mut done = 0usize;
            while done < args.iterations {
                let batch = in_flight.min(args.iterations - done);
                let results =
                    futures::future::join_all((0..batch).map(|_| one(topic, payload.clone())))
                        .await;
                for r in results {
                    r?;
                }
                done += batch;
            }
            figures.push(Throughput {
                in_flight,
                commands_per_second: args.iterations as f64 / start.elapsed().as_secs_f64(),
            });
        }
    }
    agent.shutdown().await;
    server.shutdown().await;

    // The floors, measured after the commands so that neither disturbs the other.
    let floor_samples = args.iterations.clamp(100, 2000);
    let bare_quic = percentiles(
        bare_quic(&pki, &id, floor_samples, args.payload_bytes)
            .await
            .context("the bare QUIC baseline failed")?,
    );
    let fdatasync = percentiles(
        fdatasync(dir.path(), floor_samples.min(500)).context("the fdatasync baseline failed")?,
    );
    let round_trip = percentiles(round_trip);
    let journal_free = percentiles(journal_free);
    let floor = bare_quic.p50_us + 2.0 * fdatasync.p50_us;

    let report = Report {
        iterations: args.iterations,
        payload_bytes: args.payload_bytes,
        durable_ratio: round_trip.p50_us / floor,
        quic_ratio: round_trip.p50_us / bare_quic.p50_us,
        journal_free_ratio: journal_free.p50_us / bare_quic.p50_us,
        journal_free_round_trip: journal_free,
        journal_free_throughput,
        round_trip,
        plugin: percentiles(plugin),
        outside_plugin: percentiles(outside),
        bare_quic,
        fdatasync,
        throughput,
    };

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "echo round trip, server → agent → plugin → server, loopback, {} commands of {} bytes each way, one at a time",
        report.iterations, report.payload_bytes
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}",
        "", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    for (name, p) in [
        ("round trip (durable)", &report.round_trip),
        ("  in the plugin", &report.plugin),
        ("  outside the plugin", &report.outside_plugin),
        ("round trip, read-only", &report.journal_free_round_trip),
        ("bare QUIC req/resp", &report.bare_quic),
        ("fdatasync (4 KiB)", &report.fdatasync),
    ] {
        println!(
            "{name:<22} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            p.p50_us, p.p90_us, p.p99_us, p.max_us
        );
    }
    println!(
        "round trip / (bare QUIC + 2 × fdatasync), p50: {:.2}  (1.00 is the floor; goal ≤ 1.5)",
        report.durable_ratio
    );
    println!("round trip / bare QUIC, p50: {:.2}", report.quic_ratio);
    println!(
        "read-only round trip / bare QUIC, p50: {:.2}  (1.00 is the floor; goal ≤ 2)",
        report.journal_free_ratio
    );
    for (t, jf) in report
        .throughput
        .iter()
        .zip(&report.journal_free_throughput)
    {
        println!(
            "throughput with {} in flight: {:.0} commands/s durable, {:.0} read-only",
            t.in_flight, t.commands_per_second, jf.commands_per_second
        );
    }
    Ok(())
}

/// Request/response times of a bare QUIC exchange on a fresh bidirectional stream per
/// request, over one mutual-TLS connection on loopback with ferry's own transport settings:
/// what a command's network part cannot beat.
async fn bare_quic(pki: &PkiDir, id: &AgentId, samples: usize, bytes: usize) -> Result<Vec<f64>> {
    use ferry_protocol::tls::{self, Identity, TransportSettings};
    let transport = TransportSettings::default();
    let server_config = tls::server_config(
        Identity::from_pem_files(&pki.server_cert_path(), &pki.server_key_path())?,
        tls::roots_from_pem_file(&pki.ca_cert_path())?,
        &transport,
    )?;
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let echo = tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let Ok(connection) = incoming.await else {
                continue;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(request) = recv.read_to_end(1 << 20).await {
                        let _ = send.write_all(&request).await;
                        let _ = send.finish();
                    }
                });
            }
        }
    });
    let (cert, key) = pki.ensure_agent(id)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(tls::client_config(
        Identity::from_pem_files(&cert, &key)?,
        tls::roots_from_pem_file(&pki.ca_cert_path())?,
        &transport,
    )?);
    let connection = client.connect(addr, "localhost")?.await?;
    let request = vec![b'x'; bytes];
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 {
        let start = Instant::now();
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&request).await?;
        send.finish()?;
        let answer = recv.read_to_end(1 << 20).await?;
        let took = start.elapsed();
        if answer.len() != bytes {
            bail!("the echo answered {} bytes, not {bytes}", answer.len());
        }
        // The first tenth warms up.
        if i >= samples / 10 {
            times.push(took.as_secs_f64() * 1e6);
        }
    }
    connection.close(0u32.into(), b"done");
    client.wait_idle().await;
    echo.abort();
    Ok(times)
}

/// Times of writing one 4 KiB block of a preallocated 8 MiB file and `fdatasync`ing it, in
/// `dir` (the data directory's disk): what one durable journal write cannot beat (etcd's WAL
/// pattern).
fn fdatasync(dir: &std::path::Path, samples: usize) -> Result<Vec<f64>> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    const SIZE: usize = 8 << 20;
    let path = dir.join("fdatasync.bench");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    file.write_all(&vec![0u8; SIZE])?;
    file.sync_all()?;
    let block = [0x5a_u8; 4096];
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let start = Instant::now();
        file.write_at(&block, ((i * block.len()) % SIZE) as u64)?;
        file.sync_data()?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(times)
}
