//! `ferry plugin test` and `ferry plugin new`, through the built `ferry` binary: plugins run on
//! this machine with no server, one command or a cases file, and a new project builds and
//! passes its own cases.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn ferry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // Backtraces would bury the one-line errors the tests look at.
    cmd.env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("RUST_LOG");
    cmd
}

struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(output: Output) -> Run {
        Run {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn ok(self) -> Run {
        assert!(self.status.success(), "{self}");
        self
    }

    fn fails(self) -> Run {
        assert_eq!(self.status.code(), Some(1), "{self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn run(args: &[&str], dir: &Path) -> Run {
    Run::of(
        ferry()
            .args(args)
            .current_dir(dir)
            .output()
            .expect("ferry runs"),
    )
}

/// A folder holding the built-in echo and the faulty fixture as files, as a user has them.
fn plugins() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("echo.wasm"), ferry_builtins::ECHO.component).unwrap();
    std::fs::write(
        dir.path().join("faulty.wasm"),
        ferry_builtins::fixtures::FAULTY.component,
    )
    .unwrap();
    dir
}

#[test]
fn runs_one_command_and_prints_events_then_the_output() {
    let dir = plugins();
    let run = run(
        &[
            "plugin",
            "test",
            "echo.wasm",
            "--topic",
            "echo",
            "--payload",
            r#"{"hello":"ferry"}"#,
        ],
        dir.path(),
    )
    .ok();
    let output: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(output, serde_json::json!({"hello": "ferry"}));
    // Pretty-printed, as a person reads it.
    assert!(run.stdout.contains("\n  \"hello\""), "{run}");
    for expected in [
        "echo: topic echo, 17 bytes of application/json",
        "info  echo: 17 bytes of application/json",
        "[  0%] received",
        "[100%] echoed",
        "succeeded in",
    ] {
        assert!(run.stderr.contains(expected), "{expected:?} missing\n{run}");
    }
}

#[test]
fn prints_text_output_as_it_is() {
    let dir = plugins();
    let run = run(
        &[
            "plugin",
            "test",
            "echo.wasm",
            "-t",
            "echo",
            "-p",
            "just text",
            "--content-type",
            "text/plain",
        ],
        dir.path(),
    )
    .ok();
    assert_eq!(run.stdout, "just text\n");
}

#[test]
fn json_report_carries_status_output_and_events() {
    let dir = plugins();
    let run = run(
        &[
            "plugin",
            "test",
            "echo.wasm",
            "--topic",
            "echo",
            "--payload",
            "[1, 2]",
            "--json",
        ],
        dir.path(),
    )
    .ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON report");
    assert_eq!(report["status"], "succeeded", "{run}");
    assert_eq!(report["payload"], serde_json::json!([1, 2]));
    assert_eq!(report["logs"][0]["level"], "info");
    assert_eq!(
        report["progress"].as_array().unwrap().last().unwrap()["percent"],
        100
    );
    assert!(report["stats"]["peak_memory_bytes"].as_u64().unwrap() > 0);
    // Events are in the report, not streamed.
    assert!(!run.stderr.contains("echoed"), "{run}");
}

#[test]
fn a_failing_command_exits_non_zero_with_its_message() {
    let dir = plugins();
    let run = run(
        &["plugin", "test", "faulty.wasm", "--topic", "fault.fail"],
        dir.path(),
    )
    .fails();
    assert!(run.stderr.contains("  failed in"), "{run}");
    assert!(
        run.stderr
            .contains("faulty ended failed: faulty plugin failed on purpose"),
        "{run}"
    );
    assert!(run.stdout.is_empty(), "{run}");

    let run = self::run(
        &[
            "plugin",
            "test",
            "echo.wasm",
            "--topic",
            "echo",
            "--payload",
            "{",
            "--content-type",
            "application/json",
        ],
        dir.path(),
    )
    .fails();
    assert!(
        run.stderr
            .contains("ended invalid-input: the payload is declared as JSON but is not"),
        "{run}"
    );
}

#[test]
fn a_trap_is_reported_as_a_crash() {
    let dir = plugins();
    let run = run(
        &["plugin", "test", "faulty.wasm", "--topic", "fault.trap"],
        dir.path(),
    )
    .fails();
    assert!(run.stderr.contains("  crashed in"), "{run}");
    assert!(run.stderr.contains("unreachable"), "{run}");
    // Said once, not again as the host's warning for an agent's log.
    assert_eq!(run.stderr.matches("unreachable").count(), 1, "{run}");
}

#[test]
fn a_plugin_that_never_returns_is_stopped_at_the_timeout() {
    let dir = plugins();
    let started = Instant::now();
    let run = run(
        &[
            "plugin",
            "test",
            "faulty.wasm",
            "--topic",
            "fault.loop",
            "--timeout",
            "300ms",
        ],
        dir.path(),
    )
    .fails();
    assert!(started.elapsed() < Duration::from_secs(20), "{run}");
    assert!(run.stderr.contains("timed-out in"), "{run}");
    assert!(
        run.stderr.contains(
            "ran past the 300ms timeout and was stopped; if it needs longer, raise --timeout"
        ),
        "{run}"
    );
}

#[test]
fn a_payload_that_is_not_json_is_refused_before_running() {
    let dir = plugins();
    let run = run(
        &[
            "plugin",
            "test",
            "echo.wasm",
            "--topic",
            "echo",
            "--payload",
            "{oops",
        ],
        dir.path(),
    )
    .fails();
    assert!(run.stderr.contains("--payload is not valid JSON"), "{run}");
    assert!(run.stderr.contains("--content-type"), "{run}");
    assert!(!run.stderr.contains("echo: topic"), "{run}");
}

#[test]
fn bad_plugin_files_get_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a plugin\n").unwrap();
    // The smallest core module: magic and version 1.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    // A valid component (in the text format the host also reads) that exports nothing.
    std::fs::write(dir.path().join("empty.wasm"), "(component)").unwrap();
    for (file, expected) in [
        ("missing.wasm", "cannot read the plugin missing.wasm"),
        ("notes.txt", "plugin 'notes' is not WebAssembly"),
        (
            "core.wasm",
            "plugin 'core' is a core wasm module, not a component",
        ),
        (
            "empty.wasm",
            "plugin 'empty' is not a ferry plugin for ferry:plugin@0.1.0: it does not export `ferry:plugin/handler@0.1.0`",
        ),
    ] {
        let run = run(&["plugin", "test", file, "--topic", "t"], dir.path()).fails();
        assert!(run.stderr.contains(expected), "{file}: {run}");
    }
}

#[test]
fn a_topic_or_a_cases_file_is_required() {
    let dir = plugins();
    let run = run(&["plugin", "test", "echo.wasm"], dir.path());
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(run.stderr.contains("--topic"), "{run}");
}

const FAULTY_CASES: &str = r#"
[defaults]
timeout = "5s"

[[case]]
name = "fails"
topic = "fault.fail"
outcome = "failed"
error_contains = "on purpose"

[[case]]
name = "traps"
topic = "fault.trap"
outcome = "crashed"
error_contains = "unreachable"

[[case]]
name = "loops"
topic = "fault.loop"
timeout = "300ms"
outcome = "timed-out"

[[case]]
name = "is cancelled"
topic = "fault.cancel"
cancel_after = "100ms"
outcome = "cancelled"
logs_contain = "cancelled after"

[[case]]
name = "prints"
topic = "fault.print"
output_text = "printed"
logs_contain = ["stdout line 0", "stderr line 2"]

[[case]]
name = "expected to succeed"
topic = "fault.fail"
"#;

#[test]
fn a_cases_file_reports_each_case_and_a_summary() {
    let dir = plugins();
    std::fs::write(dir.path().join("cases.toml"), FAULTY_CASES).unwrap();
    let run = run(&["plugin", "test", "faulty.wasm", "cases.toml"], dir.path()).fails();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{run}");
    for (line, name) in lines
        .iter()
        .zip(["fails", "traps", "loops", "is cancelled", "prints"])
    {
        assert!(line.starts_with(&format!("ok    {name} (")), "{run}");
    }
    let header = FAULTY_CASES
        .lines()
        .position(|l| l == r#"name = "expected to succeed""#)
        .unwrap(); // 0-based index of the name: the 1-based line of `[[case]]` above it
    assert!(
        lines[5].starts_with(&format!("FAIL  expected to succeed (line {header}, ")),
        "{run}"
    );
    assert!(
        lines[5].ends_with("): expected succeeded, got failed: faulty plugin failed on purpose"),
        "{run}"
    );
    assert_eq!(lines[6], "5 passed, 1 failed", "{run}");
    assert!(
        run.stderr.contains("1 of 6 cases in cases.toml failed"),
        "{run}"
    );
}

#[test]
fn a_passing_cases_file_exits_zero() {
    let dir = plugins();
    std::fs::write(
        dir.path().join("cases.toml"),
        r#"
[defaults]
topic = "echo"

[[case]]
name = "json"
payload = { hello = "ferry", list = [1, 2.5] }
output = { hello = "ferry", list = [1, 2.5] }
logs_contain = "bytes of application/json"
progress_reaches = 100

[[case]]
name = "text"
payload = "hi"
content_type = "text/plain"
output_text = "hi"

[[case]]
name = "null survives"
payload_text = '{"a": null}'
output_json = '{"a": null}'

[[case]]
name = "malformed JSON"
payload_text = "{"
outcome = "invalid-input"
error_contains = "declared as JSON but is not"
"#,
    )
    .unwrap();
    let run = run(&["plugin", "test", "echo.wasm", "cases.toml"], dir.path()).ok();
    assert_eq!(
        run.stdout.lines().last(),
        Some("4 passed, 0 failed"),
        "{run}"
    );

    let run = self::run(
        &["plugin", "test", "echo.wasm", "cases.toml", "--json"],
        dir.path(),
    )
    .ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(report["cases"][3]["status"], "invalid-input");
}

#[test]
fn a_malformed_cases_file_names_the_line_and_the_field() {
    let dir = plugins();
    std::fs::write(
        dir.path().join("cases.toml"),
        "[[case]]\nname = \"a\"\ntopic = \"echo\"\nexpect = \"succeeded\"\n",
    )
    .unwrap();
    let run = run(&["plugin", "test", "echo.wasm", "cases.toml"], dir.path()).fails();
    assert!(
        run.stderr.contains("cases.toml is not a valid cases file"),
        "{run}"
    );
    assert!(run.stderr.contains("line 4"), "{run}");
    assert!(run.stderr.contains("unknown field `expect`"), "{run}");

    let run = self::run(&["plugin", "test", "echo.wasm", "missing.toml"], dir.path()).fails();
    assert!(
        run.stderr
            .contains("cannot read the cases file missing.toml"),
        "{run}"
    );
}

#[test]
fn new_refuses_bad_names_and_folders_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(&["plugin", "new", "Hello World"], dir.path()).fails();
    assert!(
        run.stderr
            .contains("\"Hello World\" is not a valid plugin name"),
        "{run}"
    );

    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").unwrap();
    let run = self::run(&["plugin", "new", "hello", "--dir", "taken"], dir.path()).fails();
    assert!(
        run.stderr.contains("taken already exists and is not empty"),
        "{run}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("taken/keep.txt")).unwrap(),
        "mine"
    );

    let run = self::run(&["plugin", "new", "hello", "--lang", "cobol"], dir.path());
    assert_eq!(run.status.code(), Some(2), "{run}");
    assert!(run.stderr.contains("rust, c, go, js, python"), "{run}");
}

/// Variables the outer `cargo test` sets that would steer the nested build: its target
/// directory, flags meant for the host, a workspace wrapper, a pinned toolchain (the project's
/// rust-toolchain.toml should decide, as for a user).
const CLEARED: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
];

#[test]
fn a_new_project_builds_and_passes_its_own_cases() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    run(&["plugin", "new", "hello", "--lang", "rust"], dir.path()).ok();
    let project = dir.path().join("hello");
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        "README.md",
        "cases.toml",
        "ferry.toml",
        "src/lib.rs",
        "vendor/ferry-plugin/Cargo.toml",
        "vendor/ferry-plugin/src/lib.rs",
        "wit/0.1.0/plugin.wit",
    ] {
        assert!(project.join(file).is_file(), "{file} missing");
    }

    // `ferry plugin build` runs cargo for a Rust project. Everything the project needs is in it
    // or in the registry cache the built-in plugins were built from: building offline proves
    // the project needs no ferry source tree and no ferry crate from a registry.
    let target: PathBuf = dir.path().join("target");
    let mut build = ferry();
    for var in CLEARED {
        build.env_remove(var);
    }
    build
        .args(["plugin", "build"])
        .current_dir(&project)
        .env("CARGO_NET_OFFLINE", "true")
        .env("CARGO_TARGET_DIR", &target);
    let build = Run::of(build.output().expect("ferry runs"));
    assert!(
        build.status.success(),
        "the generated project does not build:\n{build}"
    );
    assert_eq!(build.stdout.trim(), "build/hello.wasm", "{build}");
    let built = started.elapsed();

    let run = run(
        &["plugin", "test", "build/hello.wasm", "cases.toml"],
        &project,
    )
    .ok();
    let summary = run.stdout.lines().last().unwrap_or_default();
    assert!(summary.ends_with(" passed, 0 failed"), "{run}");
    assert!(!summary.starts_with("0 passed"), "{run}");
    eprintln!(
        "generated, built ({built:?}) and tested ({:?}): {summary}",
        started.elapsed() - built
    );
}

/// `--grant` and `--data` stand in for the agent's policy and the server's data.
#[test]
fn grants_and_data_stand_in_for_policy_and_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("probe.wasm"),
        ferry_builtins::fixtures::PROBE.component,
    )
    .unwrap();
    std::fs::write(dir.path().join("note.txt"), "from a granted file").unwrap();
    let note = dir.path().join("note.txt").display().to_string();
    let probe = |extra: &[&str], topic: &str, arg: &str| {
        let mut args = vec![
            "plugin",
            "test",
            "probe.wasm",
            "--topic",
            topic,
            "--content-type",
            "text/plain",
            "--payload",
            arg,
        ];
        args.extend_from_slice(extra);
        run(&args, dir.path())
    };

    let refused = probe(&[], "probe.read", &note).fails();
    assert!(refused.stderr.contains("denied"), "{refused}");
    let dir_grant = format!("fs={}", dir.path().display());
    let read = probe(&["--grant", &dir_grant], "probe.read", &note).ok();
    assert_eq!(read.stdout.trim(), "from a granted file", "{read}");

    let refused = probe(&["--data", "token=abc"], "probe.data", "token").fails();
    // Named as a policy would name it, and granted the way this command grants.
    assert!(
        refused.stderr.contains(
            "request_data is not granted to plugin 'probe': run it with `--grant request_data`"
        ) && refused.stderr.contains("[plugins.probe.capabilities]"),
        "{refused}"
    );
    let data = probe(
        &["--grant", "request_data", "--data", "token=abc"],
        "probe.data",
        "token",
    )
    .ok();
    assert_eq!(data.stdout.trim(), "abc", "{data}");
    let missing = probe(&["--grant", "request_data"], "probe.data", "token").fails();
    assert!(missing.stderr.contains("--data token="), "{missing}");

    let bad = run(
        &[
            "plugin",
            "test",
            "probe.wasm",
            "--topic",
            "probe.data",
            "--grant",
            "sudo",
        ],
        dir.path(),
    );
    assert!(
        !bad.status.success() && bad.stderr.contains("is not a grant"),
        "{bad}"
    );
}
