//! `ferry bench`: measures a command's round trip server → agent → plugin → server on loopback,
//! with an embedded server and agent, and says where the time goes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_agent::{Agent, AgentConfig};
use ferry_protocol::AgentId;
use ferry_protocol::pki::PkiDir;
use ferry_server::{CommandRequest, CommandStatus, Server, ServerConfig};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Commands to time (after the warm-up).
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Commands run first and not counted.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Commands in flight at once for the throughput figure.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
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
    concurrency: usize,
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
    if args.iterations == 0 || args.concurrency == 0 {
        bail!("--iterations and --concurrency must be at least 1");
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
    let agent = Agent::start(AgentConfig {
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
    let one = |payload: Vec<u8>| {
        let server = &server;
        let id = id.clone();
        async move {
            let start = Instant::now();
            let entry = server
                .submit(CommandRequest {
                    agent: id,
                    topic: "echo".into(),
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
            if view.status != CommandStatus::Succeeded {
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

    for _ in 0..args.warmup {
        one(payload.clone()).await?;
    }
    let mut round_trip = Vec::with_capacity(args.iterations);
    let mut plugin = Vec::with_capacity(args.iterations);
    let mut outside = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let (total, in_plugin) = one(payload.clone()).await?;
        round_trip.push(total.as_secs_f64() * 1e6);
        plugin.push(in_plugin.as_secs_f64() * 1e6);
        outside.push(total.saturating_sub(in_plugin).as_secs_f64() * 1e6);
    }

    let start = Instant::now();
    let mut done = 0usize;
    while done < args.iterations {
        let batch = args.concurrency.min(args.iterations - done);
        let results = futures::future::join_all((0..batch).map(|_| one(payload.clone()))).await;
        for r in results {
            r?;
        }
        done += batch;
    }
    let per_second = args.iterations as f64 / start.elapsed().as_secs_f64();

    let report = Report {
        iterations: args.iterations,
        payload_bytes: args.payload_bytes,
        round_trip: percentiles(round_trip),
        plugin: percentiles(plugin),
        outside_plugin: percentiles(outside),
        concurrency: args.concurrency,
        commands_per_second: per_second,
    };
    agent.shutdown().await;
    server.shutdown().await;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "echo round trip, server → agent → plugin → server, loopback, {} commands of {} bytes, one at a time",
        report.iterations, report.payload_bytes
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}",
        "", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    for (name, p) in [
        ("round trip", &report.round_trip),
        ("  in the plugin", &report.plugin),
        ("  outside the plugin", &report.outside_plugin),
    ] {
        println!(
            "{name:<22} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            p.p50_us, p.p90_us, p.p99_us, p.max_us
        );
    }
    println!(
        "throughput with {} in flight: {:.0} commands/s",
        report.concurrency, report.commands_per_second
    );
    Ok(())
}
