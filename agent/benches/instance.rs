//! What one command costs the plugin host: a fresh instance of the built-in echo plugin and one
//! call, end to end through `LoadedPlugin::invoke`.
//!
//! ```text
//! cargo bench -p ferry-agent --bench instance
//! ```
//!
//! Criterion measures the mean; after it, this prints the latency distribution of single
//! invocations (the goal is p50 ≤ 25 µs, p99 ≤ 60 µs), unmetered and with a fuel budget, the
//! throughput of one and of two concurrent invokers on a runtime with as many workers, and
//! what loading costs with and without the compiled-component cache. `FERRY_BENCH_ITERS` sets the number of timed single
//! invocations (default 20,000) and `FERRY_BENCH_SECS` the length of the throughput run
//! (default 5). The extra measurements run only under `cargo bench` (criterion's `--bench`
//! flag), not when `cargo test --benches` runs this file as a smoke test.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use ferry_agent::host::{
    CommandEvents, HostConfig, Invocation, LoadOptions, LoadedPlugin, LogLevel, PluginHost,
};
use ferry_builtins::ECHO;

/// Counts events and drops them, as cheaply as a sink can.
#[derive(Default)]
struct Sink {
    events: AtomicU64,
}

impl CommandEvents for Sink {
    fn log(&self, _: LogLevel, message: String) {
        black_box(message);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    fn progress(&self, _: u8, message: String) {
        black_box(message);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    fn cancelled(&self) -> bool {
        false
    }
}

fn invocation() -> Invocation {
    Invocation {
        id: "bench".into(),
        topic: "echo".into(),
        payload: b"hello, ferry".to_vec(),
        content_type: "text/plain".into(),
        deadline: Some(Instant::now() + Duration::from_secs(30)),
    }
}

async fn once(echo: &LoadedPlugin, sink: &Arc<Sink>) {
    let invoked = echo.invoke(invocation(), sink.clone()).await;
    assert_eq!(invoked.result.as_deref(), Ok(&b"hello, ferry"[..]));
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn criterion_benches(c: &mut Criterion, echo: &LoadedPlugin, sink: &Arc<Sink>) {
    let runtime = current_thread();
    c.bench_function("echo: fresh instance + call", |b| {
        b.iter(|| runtime.block_on(once(echo, sink)))
    });
}

/// p50/p90/p99/max of `iterations` single invocations, one after the other on one thread.
fn latency(what: &str, echo: &LoadedPlugin, sink: &Arc<Sink>, iterations: usize) {
    let runtime = current_thread();
    let mut samples = runtime.block_on(async {
        for _ in 0..1_000 {
            once(echo, sink).await;
        }
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            once(echo, sink).await;
            samples.push(started.elapsed());
        }
        samples
    });
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{what}, single invocations ({iterations}): p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs, mean {:.1} µs \
         (goal: p50 ≤ 25 µs, p99 ≤ 60 µs)",
        micros(at(0.50)),
        micros(at(0.90)),
        micros(at(0.99)),
        micros(*samples.last().unwrap()),
        micros(mean),
    );
}

/// Invocations per second with `invokers` tasks invoking in a loop on a runtime with as many
/// worker threads.
fn throughput(echo: &LoadedPlugin, sink: &Arc<Sink>, invokers: usize, run_for: Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(invokers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..invokers)
            .map(|_| {
                let (echo, sink, done, stop) =
                    (echo.clone(), sink.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        once(&echo, &sink).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(run_for).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("invoker");
        }
    });
    let elapsed = started.elapsed();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{invokers} concurrent invoker(s), {} worker thread(s): {:.0} invocations/s ({n} in {:.2} s)",
        invokers,
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

/// Loading echo: compiling it, and taking it from the on-disk cache.
fn loading() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let mut compiled = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..10 {
        let host = PluginHost::new(HostConfig::default()).expect("plugin host");
        let echo = host.load(ECHO.name, ECHO.component).expect("echo");
        compiled.push(echo.load_stats().duration);
        let host = PluginHost::new(config.clone()).expect("plugin host");
        let echo = host.load(ECHO.name, ECHO.component).expect("echo");
        cached.push(echo.load_stats().duration);
    }
    // The first load with the cache wrote it; the rest came from it.
    let cached = &mut cached[1..];
    compiled.sort_unstable();
    cached.sort_unstable();
    println!(
        "load echo ({} bytes): compiled {:.2} ms, from the cache {:.2} ms (medians)",
        ECHO.component.len(),
        compiled[compiled.len() / 2].as_secs_f64() * 1e3,
        cached[cached.len() / 2].as_secs_f64() * 1e3,
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let host = PluginHost::new(HostConfig::default()).expect("plugin host");
    let echo = host.load(ECHO.name, ECHO.component).expect("echo");
    let sink = Arc::new(Sink::default());

    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &echo, &sink);
    c.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        println!("pooling allocator: {}", host.is_pooling());
        let iterations = env_or("FERRY_BENCH_ITERS", 20_000);
        latency("echo", &echo, &sink, iterations);
        let metered = host
            .load_with(
                ECHO.name,
                ECHO.component,
                LoadOptions {
                    fuel: Some(10_000_000),
                    ..LoadOptions::default()
                },
            )
            .expect("metered echo");
        latency("echo with a fuel budget", &metered, &sink, iterations);
        let secs = Duration::from_secs(env_or("FERRY_BENCH_SECS", 5));
        throughput(&echo, &sink, 1, secs);
        throughput(&echo, &sink, 2, secs);
        loading();
    }
}
