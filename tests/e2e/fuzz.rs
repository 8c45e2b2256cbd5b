//! The fuzz targets (`fuzz/`), built with the stable toolchain. `cargo test` replays each
//! target's seeds (real inputs written below) and its regressions (`fuzz/regressions/<target>/`,
//! inputs that once failed it) exactly once: deterministic, and a second or two. The
//! coverage-guided search runs only when asked for, for `FERRY_FUZZ_SECONDS` per target:
//!
//! ```sh
//! FERRY_FUZZ_SECONDS=60 cargo test --workspace --test e2e -- fuzz:: --nocapture
//! ```
//!
//! On stable, `-Zsanitizer` does not exist, so there is no AddressSanitizer: the targets find
//! panics, aborts, failed assertions, stack overflows and out-of-memory (libFuzzer's RSS limit,
//! and the targets' own check of the largest allocation), not memory errors in `unsafe` code.
//! Coverage guidance works on stable: the codegen flags below are the ones cargo-fuzz passes.
//!
//! The `lifecycle` target's generator and oracle also run over thousands of random inputs
//! in-process in every `cargo test` (`lifecycle/tests/lifecycle/fuzzing.rs`).

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use ferry_manifest::Manifest;
use ferry_protocol::package::{Digest, Package};
use ferry_protocol::*;

/// The targets in `fuzz/Cargo.toml`.
const TARGETS: &[&str] = &["frame", "message", "manifest", "package", "lifecycle"];

/// What a run does with a target: replay its fixed inputs once, or search for that long.
#[derive(Clone, Copy)]
enum Mode {
    Replay,
    Search { seconds: u64 },
}

/// What cargo-fuzz passes to rustc for libFuzzer's coverage guidance, without the
/// nightly-only sanitizer flag; `--cfg fuzzing` as cargo-fuzz sets it, and assertions on.
const RUSTFLAGS: &str = "--cfg fuzzing \
    -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    -Cdebug-assertions \
    -Coverflow-checks";

#[test]
fn fuzz_targets_pass_their_seeds_and_regressions() {
    let mode = match std::env::var("FERRY_FUZZ_SECONDS") {
        Err(_) => Mode::Replay,
        Ok(s) => match s.parse::<u64>() {
            Ok(0) => Mode::Replay,
            Ok(seconds) => Mode::Search { seconds },
            Err(_) => panic!("FERRY_FUZZ_SECONDS must be a number of seconds, not {s:?}"),
        },
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf();
    let fuzz = root.join("fuzz");
    let target_dir = fuzz.join("target");
    let host = host_triple(&root);
    build(&fuzz, &target_dir, &host);

    let seeds = target_dir.join("seeds");
    write_seeds(&seeds);
    let mut failures = Vec::new();
    for target in TARGETS {
        if let Err(why) = run(&fuzz, &target_dir, &host, target, &seeds, mode) {
            failures.push(why);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn host_triple(root: &Path) -> String {
    let out = Process::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .current_dir(root)
        .output()
        .expect("rustc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

fn build(fuzz: &Path, target_dir: &Path, host: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    // `--target`: RUSTFLAGS then apply to the targets only, not to build scripts and proc
    // macros, which must not link against libFuzzer's instrumentation hooks.
    let out = Process::new(cargo)
        .args(["build", "--profile", "fuzz-ci", "--bins", "--target", host])
        .arg("--manifest-path")
        .arg(fuzz.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .current_dir(fuzz)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building the fuzz targets (fuzz/Cargo.toml) failed; fix the build, it is part of the \
         test suite:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(
    fuzz: &Path,
    target_dir: &Path,
    host: &str,
    target: &str,
    seeds: &Path,
    mode: Mode,
) -> Result<(), String> {
    let binary = target_dir.join(host).join("fuzz-ci").join(target);
    // cargo-fuzz's places: new inputs under corpus/, crashes under artifacts/.
    let corpus = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    let regressions = fuzz.join("regressions").join(target);
    let target_seeds = seeds.join(target);
    for dir in [&corpus, &artifacts, &regressions, &target_seeds] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let mut child = Process::new(&binary);
    child
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let seconds = match mode {
        // Every input once, no mutation: the same inputs on every machine. The first
        // directory is where libFuzzer would add new inputs; with no runs it adds none.
        Mode::Replay => {
            child.arg("-runs=0");
            0
        }
        // The local corpus (not committed) carries what earlier searches found further.
        Mode::Search { seconds } => {
            child.arg(format!("-max_total_time={seconds}")).arg(&corpus);
            seconds
        }
    };
    child.arg(&target_seeds).arg(&regressions);
    // libFuzzer stops itself at max_total_time; the margin covers loading the corpus.
    let started = std::time::Instant::now();
    let out = child
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(seconds + 120),
        "fuzz target {target} ran far past its time"
    );
    if out.status.success() {
        // Without these counters libFuzzer runs blind (no coverage guidance): the flags above
        // stopped working with this toolchain.
        assert!(
            log.contains("inline 8-bit counters"),
            "fuzz target {target} is not instrumented for coverage:\n{log}"
        );
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units: "))
            .unwrap_or("?");
        match mode {
            Mode::Replay => eprintln!("fuzz target {target}: {runs} seeds and regressions pass"),
            Mode::Search { seconds } => {
                eprintln!("fuzz target {target}: {runs} inputs in {seconds} s, nothing found")
            }
        }
        return Ok(());
    }
    let crash = log
        .lines()
        .find_map(|line| line.split("Test unit written to ").nth(1))
        .map(str::trim)
        .unwrap_or("(no input written)");
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "fuzz target {target} failed on {crash}\n\
         reproduce: {} {crash}\n\
         (or, with nightly and cargo-fuzz: cargo fuzz run {target} {crash})\n\
         then keep the input in fuzz/regressions/{target}/ (replayed by every cargo test) and \
         a test of it where the fix goes.\n{}",
        binary.display(),
        tail.join("\n")
    ))
}

/// One real input of each kind, for the fuzzer to start from: every message type as a frame
/// body (and, for `frame`, as a stream of frames), a full manifest, a package, and the
/// lifecycle machines' paths.
fn write_seeds(seeds: &Path) {
    let messages = sample_messages();
    let write = |target: &str, name: String, bytes: &[u8]| {
        let dir: PathBuf = seeds.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let mut stream = vec![2, 7];
    for message in &messages {
        write(
            "message",
            message.kind().to_lowercase(),
            &codec::encode(message).unwrap(),
        );
        let frame = frame::encode_frame(message, DEFAULT_MAX_FRAME).unwrap();
        let mut one = vec![2, message.kind().len() as u8];
        one.extend_from_slice(&frame);
        write("frame", message.kind().to_lowercase(), &one);
        stream.extend_from_slice(&frame);
    }
    write("frame", "all".into(), &stream);

    let manifest = r#"
[plugin]
name = "inventory"
version = "1.2.3-rc.1+build.5"
topics = ["inventory.list", "inventory.get"]
description = "lists what is installed"

[capabilities]
env = ["HOME", "LANG"]
network = ["10.0.0.1:443", "updates.example.com:80", "[::1]:8080", "db.internal:*"]
programs = ["/usr/bin/dpkg-query"]
metrics = true
kv = true
request_data = true

[[capabilities.filesystem]]
path = "/var/lib/dpkg"
access = "read-only"

[[capabilities.filesystem]]
path = "/srv/data"
access = "read-write"

[limits]
memory_mib = 64
timeout = "30s"
fuel = 1000000
"#;
    // The seed must be valid, or the fuzzer starts from the error paths only.
    Manifest::from_toml(manifest).expect("the seed manifest is valid");
    write("manifest", "full.toml".into(), manifest.as_bytes());
    write(
        "manifest",
        "minimal.toml".into(),
        b"[plugin]\nname = \"echo\"\nversion = \"0.1.0\"\ntopics = [\"echo\"]\n",
    );

    // The lifecycle target's bytes are inputs to the command machines; its library names
    // the ones that reach their happy paths, a resend, a cancel and a refused stream.
    for (name, bytes) in ferry_lifecycle::fuzzing::seeds() {
        write("lifecycle", name.into(), &bytes);
    }

    let package = Package::new(
        "[plugin]\nname = \"echo\"\nversion = \"0.1.0\"\ntopics = [\"echo\"]\n".into(),
        b"\0asm\x0d\0\x01\0".to_vec(),
    );
    write("package", "echo.pkg".into(), &package.encode());
}

fn sample_messages() -> Vec<Message> {
    let digest = Digest::of(b"package");
    let range = VersionRange { min: 1, max: 1 };
    let messages = vec![
        Message::Hello(Hello {
            protocol: range,
            agent_version: "0.1.0".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            wit_versions: vec!["0.1.0".into()],
            topics: vec!["echo".into()],
            read_only: Vec::new(),
            cached_plugins: vec![digest.to_string()],
            instance: Some("b7e1c0de".into()),
        }),
        Message::Welcome(Welcome {
            session: "5f3a".into(),
            protocol: 1,
            heartbeat_interval_ms: 5000,
            features: vec!["x".into()],
            limits: Limits {
                max_frame_bytes: DEFAULT_MAX_FRAME,
                max_concurrent_commands: 32,
            },
        }),
        Message::Reject(Reject {
            code: RejectCode::UnsupportedVersion,
            message: "upgrade the server".into(),
            retry_after_ms: Some(1000),
            redirect: Some("other:7443".into()),
            server_protocol: Some(range),
            agent_protocol: Some(VersionRange { min: 2, max: 3 }),
        }),
        Message::Heartbeat(Heartbeat {
            metrics: HostMetrics {
                cpu_percent: 12.5,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 4 << 30,
                disk_used_bytes: 5 << 30,
                disk_total_bytes: 50 << 30,
                uptime_secs: 3600,
            },
            running_commands: 2,
            sent_at: "2026-01-01T00:00:00Z".into(),
            health: Health::Degraded,
            runtimes: vec![RuntimeState {
                name: "web".into(),
                status: "running".into(),
                pid: Some(42),
                restarts: 1,
            }],
        }),
        Message::Bye(Bye {
            reason: "stopping".into(),
        }),
        Message::PluginAssign(PluginAssign {
            plugins: vec![AssignedPlugin {
                name: "echo".into(),
                version: "0.1.0".into(),
                digest,
                signature: vec![1; 64],
                size: 1234,
                topics: vec!["echo".into()],
            }],
        }),
        Message::PluginReport(PluginReport {
            plugins: vec![PluginStatus {
                name: "echo".into(),
                version: "0.1.0".into(),
                digest,
                state: PluginState::Failed("no memory".into()),
            }],
            topics: vec!["echo".into()],
            read_only: Vec::new(),
        }),
        Message::Leave(Leave {
            reason: "decommissioned".into(),
        }),
        Message::Command(Command {
            id: "c-1".into(),
            topic: "echo".into(),
            payload: b"{\"a\":1}".to_vec(),
            content_type: "application/json".into(),
            timeout_ms: Some(60_000),
            idempotency_key: Some("k".into()),
        }),
        Message::Cancel(Cancel {
            reason: "operator".into(),
        }),
        Message::Accepted(Accepted { id: "c-1".into() }),
        Message::Progress(Progress {
            percent: 50,
            message: "half".into(),
        }),
        Message::Log(Log {
            level: LogLevel::Warn,
            message: "careful".into(),
        }),
        Message::Result(CommandResult {
            id: "c-1".into(),
            outcome: Outcome::Failed("no".into()),
            payload: vec![0xa0],
            stats: ResultStats {
                duration_us: 10,
                fuel: Some(5),
                peak_memory_bytes: 65536,
            },
        }),
        Message::DataRequest(DataRequest {
            request: 1,
            key: "config".into(),
        }),
        Message::DataResponse(DataResponse {
            request: 1,
            value: Some(b"value".to_vec()),
            error: None,
        }),
        Message::Fetch(Fetch { digest }),
        Message::FetchReply(FetchReply {
            size: Some(1234),
            error: None,
        }),
        Message::PackageChunk(PackageChunk {
            bytes: vec![0, 1, 2, 3],
        }),
        Message::ResultAck(ResultAck { id: "c1".into() }),
        Message::Enroll(Enroll {
            token: "ferry_jt_00".into(),
            csr: vec![0x30, 0x82, 1, 2],
            requested_id: "edge-1".into(),
        }),
        Message::Enrolled(Enrolled {
            agent_id: "edge-1".into(),
            certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----".into(),
            plugin_key: Some("ed25519:00".into()),
            not_after: 1_900_000_000,
        }),
        Message::EnrollRefused(EnrollRefused {
            code: EnrollCode::UsedToken,
            message: "used".into(),
        }),
        Message::Renew(Renew {
            csr: vec![0x30, 0x82],
        }),
        Message::Renewed(Renewed {
            certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
            not_after: 1_900_000_000,
        }),
    ];
    // A new message kind in the protocol's table needs a seed here.
    for kind in MessageKind::ALL {
        assert!(
            messages.iter().any(|m| m.message_kind() == *kind),
            "no seed for {}: add one to sample_messages",
            kind.name()
        );
    }
    messages
}
