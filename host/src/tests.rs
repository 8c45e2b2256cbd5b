//! The host against the built-in echo plugin and the misbehaving `faulty` fixture.
//!
//! Time bounds here are generous on purpose: the tests share a small machine with parallel
//! builds and other tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_builtins::ECHO;
use ferry_builtins::fixtures::FAULTY;
use parking_lot::Mutex;

use super::*;
use crate::cache;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Log(LogLevel, String),
    Progress(u8, String),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    cancel_at: Option<Instant>,
}

impl Recorder {
    fn cancelling_after(delay: Duration) -> Self {
        Self {
            cancel_at: Some(Instant::now() + delay),
            ..Self::default()
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    fn logs(&self, level: LogLevel) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Log(l, m) if l == level => Some(m),
                _ => None,
            })
            .collect()
    }
}

impl CommandEvents for Recorder {
    fn log(&self, level: LogLevel, message: String) {
        self.events.lock().push(Event::Log(level, message));
    }

    fn progress(&self, percent: u8, message: String) {
        self.events.lock().push(Event::Progress(percent, message));
    }

    fn cancelled(&self) -> bool {
        self.cancel_at.is_some_and(|at| Instant::now() >= at)
    }
}

fn command(topic: &str, payload: &[u8], content_type: &str) -> Invocation {
    Invocation {
        id: format!("test-{topic}"),
        topic: topic.to_string(),
        payload: payload.to_vec(),
        content_type: content_type.to_string(),
        deadline: None,
    }
}

fn host() -> PluginHost {
    PluginHost::new(HostConfig::default()).expect("plugin host")
}

async fn run(plugin: &LoadedPlugin, inv: Invocation) -> (Invoked, Arc<Recorder>) {
    let events = Arc::new(Recorder::default());
    let invoked = plugin.invoke(inv, events.clone()).await;
    (invoked, events)
}

fn crashed(result: &Result<Vec<u8>, InvokeError>) -> &str {
    match result {
        Err(InvokeError::Crashed(message)) => message,
        other => panic!("expected Crashed, got {other:?}"),
    }
}

#[tokio::test]
async fn echo_returns_the_payload_and_reports_progress() {
    let host = host();
    let echo = host.load(ECHO.name, ECHO.component).unwrap();
    assert_eq!(echo.name(), "echo");

    let (invoked, events) = run(&echo, command("echo", b"hello", "text/plain")).await;

    assert_eq!(invoked.result, Ok(b"hello".to_vec()));
    assert_eq!(
        events.logs(LogLevel::Info),
        vec!["echo: 5 bytes of text/plain".to_string()]
    );
    let progress: Vec<u8> = events
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Progress(p, _) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![0, 50, 100]);
    assert!(invoked.stats.peak_memory_bytes > 0, "{:?}", invoked.stats);
    assert!(invoked.stats.peak_memory_bytes <= host.config().max_memory_bytes as u64);
    assert_eq!(invoked.stats.fuel_consumed, None);
    assert!(invoked.stats.duration > Duration::ZERO);
}

#[tokio::test]
async fn echo_checks_json_payloads() {
    let echo = host().load(ECHO.name, ECHO.component).unwrap();

    let (ok, _) = run(
        &echo,
        command("echo", br#"{"a": [1, 2]}"#, "application/json"),
    )
    .await;
    assert_eq!(ok.result, Ok(br#"{"a": [1, 2]}"#.to_vec()));

    let (bad, _) = run(
        &echo,
        command("echo", b"{nope", "application/json; charset=utf-8"),
    )
    .await;
    match bad.result {
        Err(InvokeError::InvalidInput(m)) => {
            assert!(m.contains("not") && m.contains("JSON"), "{m}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[tokio::test]
async fn many_commands_run_at_once() {
    let echo = host().load(ECHO.name, ECHO.component).unwrap();
    let runs = (0..16u8).map(|i| {
        let echo = echo.clone();
        async move { run(&echo, command("echo", &[i; 100], "")).await.0.result }
    });
    for (i, result) in futures::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(result, Ok(vec![i as u8; 100]));
    }
}

#[tokio::test]
async fn a_trap_is_a_crash_and_the_plugin_keeps_serving() {
    let host = host();
    let faulty = host.load(FAULTY.name, FAULTY.component).unwrap();
    let echo = host.load(ECHO.name, ECHO.component).unwrap();

    let (invoked, _) = run(&faulty, command("fault.trap", b"", "")).await;
    let message = crashed(&invoked.result);
    assert!(message.contains("plugin 'faulty' trapped"), "{message}");
    assert!(message.contains("unreachable"), "{message}");

    // The trapped store is gone; the same LoadedPlugin and its host carry on.
    let (after, _) = run(&faulty, command("fault.fail", b"", "")).await;
    assert_eq!(
        after.result,
        Err(InvokeError::Failed(
            "faulty plugin failed on purpose".into()
        ))
    );
    let (echoed, _) = run(&echo, command("echo", b"still here", "")).await;
    assert_eq!(echoed.result, Ok(b"still here".to_vec()));
}

#[tokio::test]
async fn a_panic_is_a_crash_that_quotes_the_panic() {
    let faulty = host().load(FAULTY.name, FAULTY.component).unwrap();

    let (invoked, events) = run(&faulty, command("fault.panic", b"", "")).await;

    let message = crashed(&invoked.result);
    assert!(message.contains("panicked on purpose"), "{message}");
    assert!(
        events
            .logs(LogLevel::Warn)
            .iter()
            .any(|l| l.contains("panicked on purpose")),
        "the panic message reaches the log as stderr: {:?}",
        events.events()
    );
}

#[tokio::test]
async fn a_plugin_error_is_reported_as_such() {
    let faulty = host().load(FAULTY.name, FAULTY.component).unwrap();
    let (invoked, _) = run(&faulty, command("fault.fail", b"", "")).await;
    assert_eq!(
        invoked.result,
        Err(InvokeError::Failed(
            "faulty plugin failed on purpose".into()
        ))
    );
    let (unknown, _) = run(&faulty, command("fault.nope", b"", "")).await;
    assert!(
        matches!(unknown.result, Err(InvokeError::InvalidInput(_))),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn an_endless_loop_times_out_at_the_deadline() {
    let faulty = host().load(FAULTY.name, FAULTY.component).unwrap();
    let started = Instant::now();
    let mut inv = command("fault.loop", b"", "");
    inv.deadline = Some(started + Duration::from_millis(300));

    let (invoked, _) = run(&faulty, inv).await;

    assert_eq!(invoked.result, Err(InvokeError::TimedOut));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test]
async fn a_plugin_waiting_in_a_host_call_times_out_too() {
    let faulty = host().load(FAULTY.name, FAULTY.component).unwrap();
    let started = Instant::now();
    let mut inv = command("fault.sleep", b"", "");
    inv.deadline = Some(started + Duration::from_millis(300));

    let (invoked, _) = run(&faulty, inv).await;

    assert_eq!(invoked.result, Err(InvokeError::TimedOut));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_passed_deadline_does_not_start_the_plugin() {
    let echo = host().load(ECHO.name, ECHO.component).unwrap();
    let mut inv = command("echo", b"", "");
    inv.deadline = Some(Instant::now());
    let (invoked, events) = run(&echo, inv).await;
    assert_eq!(invoked.result, Err(InvokeError::TimedOut));
    assert!(events.events().is_empty());
}

#[tokio::test]
async fn running_out_of_memory_is_a_crash_naming_the_limit() {
    let host = PluginHost::new(HostConfig {
        max_memory_bytes: 32 << 20,
        ..HostConfig::default()
    })
    .unwrap();
    let faulty = host.load(FAULTY.name, FAULTY.component).unwrap();

    let (invoked, _) = run(&faulty, command("fault.memory", b"", "")).await;

    let message = crashed(&invoked.result);
    assert!(message.contains("memory limit of 32 MiB"), "{message}");
    assert!(
        invoked.stats.peak_memory_bytes <= 32 << 20,
        "{:?}",
        invoked.stats
    );
    assert!(
        invoked.stats.peak_memory_bytes > 16 << 20,
        "{:?}",
        invoked.stats
    );

    let echo = host.load(ECHO.name, ECHO.component).unwrap();
    assert_eq!(
        run(&echo, command("echo", b"ok", "")).await.0.result,
        Ok(b"ok".to_vec())
    );
}

#[tokio::test]
async fn a_plugin_that_checks_cancelled_stops_when_cancelled() {
    let faulty = host().load(FAULTY.name, FAULTY.component).unwrap();
    let events = Arc::new(Recorder::cancelling_after(Duration::from_millis(100)));
    let started = Instant::now();

    let invoked = faulty
        .invoke(command("fault.cancel", b"", ""), events.clone())
        .await;

    assert_eq!(invoked.result, Err(InvokeError::Cancelled));
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(
        events
            .logs(LogLevel::Info)
            .iter()
            .any(|l| l.starts_with("cancelled after")),
        "{:?}",
        events.events()
    );
}

#[tokio::test]
async fn a_plugin_that_ignores_a_cancel_is_stopped_after_the_grace() {
    let host = PluginHost::new(HostConfig {
        cancel_grace: Duration::from_millis(200),
        ..HostConfig::default()
    })
    .unwrap();
    let faulty = host.load(FAULTY.name, FAULTY.component).unwrap();
    let events = Arc::new(Recorder::cancelling_after(Duration::from_millis(100)));
    let started = Instant::now();

    let invoked = faulty.invoke(command("fault.loop", b"", ""), events).await;

    assert_eq!(invoked.result, Err(InvokeError::Cancelled));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test]
async fn stdout_and_stderr_become_bounded_log_lines() {
    let host = PluginHost::new(HostConfig {
        max_output_bytes: 1024,
        ..HostConfig::default()
    })
    .unwrap();
    let faulty = host.load(FAULTY.name, FAULTY.component).unwrap();

    let (invoked, events) = run(&faulty, command("fault.print", b"", "")).await;

    assert_eq!(invoked.result, Ok(b"printed".to_vec()));
    let info = events.logs(LogLevel::Info);
    assert_eq!(info.first().map(String::as_str), Some("stdout line 0"));
    assert!(
        info.iter().map(|l| l.len() + 1).sum::<usize>() <= 1024 + 4096,
        "{} lines",
        info.len()
    );
    let warn = events.logs(LogLevel::Warn);
    assert!(
        warn.iter()
            .any(|l| l.contains("were dropped") && l.contains("stdout")),
        "{warn:?}"
    );
    for i in 0..3 {
        assert!(warn.contains(&format!("stderr line {i}")), "{warn:?}");
    }
}

#[tokio::test]
async fn instances_beyond_the_limit_are_refused() {
    let host = PluginHost::new(HostConfig {
        max_instances: 1,
        ..HostConfig::default()
    })
    .unwrap();
    let faulty = host.load(FAULTY.name, FAULTY.component).unwrap();
    let mut busy = command("fault.loop", b"", "");
    busy.deadline = Some(Instant::now() + Duration::from_millis(500));

    // join! polls the looping command first, so it holds the only slot when the second starts.
    let ((first, _), (second, _)) = tokio::join!(
        run(&faulty, busy),
        run(&faulty, command("fault.fail", b"", ""))
    );

    assert_eq!(first.result, Err(InvokeError::TimedOut));
    match second.result {
        Err(InvokeError::Instantiate(m)) => assert!(m.contains("instances"), "{m}"),
        other => panic!("expected Instantiate, got {other:?}"),
    }
    // The slot is free again.
    let (third, _) = run(&faulty, command("fault.fail", b"", "")).await;
    assert!(matches!(third.result, Err(InvokeError::Failed(_))));
}

#[test]
fn garbage_is_refused_with_a_clear_message() {
    let host = host();

    let err = host.load("junk", b"definitely not wasm").unwrap_err();
    assert!(matches!(err, HostError::NotWasm { .. }), "{err:?}");
    assert!(
        err.to_string().contains("'junk' is not WebAssembly"),
        "{err}"
    );

    let core_module = b"\0asm\x01\0\0\0";
    let err = host.load("core", core_module).unwrap_err();
    assert!(matches!(err, HostError::NotAComponent { .. }), "{err:?}");

    let truncated = &ECHO.component[..ECHO.component.len() / 2];
    let err = host.load("truncated", truncated).unwrap_err();
    assert!(matches!(err, HostError::Compile { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("'truncated' could not be compiled"),
        "{err}"
    );
}

#[test]
fn a_component_without_the_handler_is_not_a_plugin() {
    let host = host();

    let err = host.load("empty", b"(component)").unwrap_err();
    assert!(matches!(err, HostError::NotAPlugin { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("ferry:plugin/handler@0.1.0"), "{message}");
    assert!(message.contains("exports nothing"), "{message}");

    let other_version = br#"(component
        (core module $m (func (export "f")))
        (core instance $i (instantiate $m))
        (func $f (canon lift (core func $i "f")))
        (instance $h (export "handle" (func $f)))
        (export "ferry:plugin/handler@0.2.0" (instance $h)))"#;
    let err = host.load("future", other_version).unwrap_err();
    assert!(
        err.to_string().contains("`ferry:plugin/handler@0.2.0`"),
        "{err}"
    );
}

#[test]
fn a_component_importing_what_the_agent_lacks_is_refused() {
    let imports_http = br#"(component
        (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func))))
        (core module $m (func (export "f")))
        (core instance $i (instantiate $m))
        (func $f (canon lift (core func $i "f")))
        (instance $h (export "handle" (func $f)))
        (export "ferry:plugin/handler@0.1.0" (instance $h)))"#;
    let err = host().load("http", imports_http).unwrap_err();
    assert!(matches!(err, HostError::Link { .. }), "{err:?}");
    assert!(
        err.to_string().contains("wasi:http/outgoing-handler"),
        "{err}"
    );
}

#[test]
fn hosts_and_plugins_can_outlive_each_other() {
    let host = host();
    let echo = host.load(ECHO.name, ECHO.component).unwrap();
    drop(host);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (invoked, _) = runtime.block_on(run(&echo, command("echo", b"x", "")));
    assert_eq!(invoked.result, Ok(b"x".to_vec()));
}

fn cached_host(dir: &std::path::Path) -> PluginHost {
    PluginHost::new(HostConfig {
        cache_dir: Some(dir.to_path_buf()),
        ..HostConfig::default()
    })
    .expect("plugin host")
}

async fn echoes(plugin: &LoadedPlugin) {
    let (invoked, _) = run(plugin, command("echo", b"cached?", "")).await;
    assert_eq!(invoked.result, Ok(b"cached?".to_vec()));
}

#[tokio::test]
async fn a_second_load_comes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache").join("components");

    let first = cached_host(&cache).load(ECHO.name, ECHO.component).unwrap();
    assert!(!first.from_cache(), "{:?}", first.load_stats());
    assert_eq!(cache::testing::entries(&cache).len(), 1);
    echoes(&first).await;

    // Another host, as after a restart: same engine configuration, so the entry fits.
    let second = cached_host(&cache).load(ECHO.name, ECHO.component).unwrap();
    assert!(second.from_cache(), "{:?}", second.load_stats());
    echoes(&second).await;

    // A different component is a different entry.
    let faulty = cached_host(&cache)
        .load(FAULTY.name, FAULTY.component)
        .unwrap();
    assert!(!faulty.from_cache());
    assert_eq!(cache::testing::entries(&cache).len(), 2);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_detected_and_rebuilt() {
    type Damage = fn(&std::path::Path);
    let damages: [(&str, Damage); 5] = [
        ("a flipped byte in the artifact", |path| {
            let mut bytes = std::fs::read(path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            std::fs::write(path, bytes).unwrap();
        }),
        ("a flipped byte in the header", |path| {
            let mut bytes = std::fs::read(path).unwrap();
            bytes[3] ^= 0xff;
            std::fs::write(path, bytes).unwrap();
        }),
        ("truncated to half", |path| {
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
        }),
        ("truncated to nothing", |path| {
            std::fs::write(path, b"").unwrap()
        }),
        (
            "an artifact with a valid checksum that wasmtime refuses",
            |path| {
                cache::testing::replace_artifact(path, b"\x7fELF but not really");
            },
        ),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        let loaded = cached_host(dir.path())
            .load(ECHO.name, ECHO.component)
            .unwrap();
        assert!(!loaded.from_cache());
        let entries = cache::testing::entries(dir.path());
        assert_eq!(entries.len(), 1, "{what}");
        damage(&entries[0]);

        let rebuilt = cached_host(dir.path())
            .load(ECHO.name, ECHO.component)
            .unwrap();
        assert!(!rebuilt.from_cache(), "{what}: the damaged entry was used");
        echoes(&rebuilt).await;

        // The entry was written again, whole, and is used from now on.
        assert_eq!(cache::testing::entries(dir.path()), entries, "{what}");
        let reloaded = cached_host(dir.path())
            .load(ECHO.name, ECHO.component)
            .unwrap();
        assert!(reloaded.from_cache(), "{what}: the entry was not rebuilt");
        echoes(&reloaded).await;
    }
}

#[tokio::test]
async fn a_cache_that_cannot_be_written_does_not_fail_a_load() {
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file can be neither created nor read, whoever runs the test
    // (permission bits would not stop root).
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"").unwrap();
    for cache in [file.join("components"), file.clone()] {
        let host = cached_host(&cache);
        for _ in 0..2 {
            let echo = host.load(ECHO.name, ECHO.component).unwrap();
            assert!(!echo.from_cache());
            echoes(&echo).await;
        }
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"");
}

#[tokio::test]
async fn metered_and_unmetered_loads_are_cached_apart() {
    let dir = tempfile::tempdir().unwrap();
    let fuel = || LoadOptions {
        fuel: Some(50_000_000),
        ..LoadOptions::default()
    };
    let host = cached_host(dir.path());
    let plain = host.load(ECHO.name, ECHO.component).unwrap();
    let metered = host.load_with(ECHO.name, ECHO.component, fuel()).unwrap();
    assert!(!plain.from_cache() && !metered.from_cache());
    assert_eq!(cache::testing::entries(dir.path()).len(), 2);

    let again = cached_host(dir.path())
        .load_with(ECHO.name, ECHO.component, fuel())
        .unwrap();
    assert!(again.from_cache());
    let (invoked, _) = run(&again, command("echo", b"metered", "")).await;
    assert_eq!(invoked.result, Ok(b"metered".to_vec()));
    assert!(
        invoked.stats.fuel_consumed.is_some_and(|f| f > 0),
        "a plugin from the cache is still metered: {:?}",
        invoked.stats
    );
}

#[tokio::test]
async fn a_plugin_over_its_fuel_budget_is_stopped() {
    let host = host();
    let faulty = host
        .load_with(
            FAULTY.name,
            FAULTY.component,
            LoadOptions {
                fuel: Some(2_000_000),
                ..LoadOptions::default()
            },
        )
        .unwrap();
    assert_eq!(faulty.fuel(), Some(2_000_000));
    let mut inv = command("fault.loop", b"", "");
    // Only a safety net: fuel ends the loop long before.
    inv.deadline = Some(Instant::now() + Duration::from_secs(60));

    let (invoked, _) = run(&faulty, inv).await;

    let message = crashed(&invoked.result);
    assert!(
        message.contains("plugin 'faulty' ran out of fuel"),
        "{message}"
    );
    assert!(message.contains("2000000"), "{message}");
    assert_eq!(invoked.stats.fuel_consumed, Some(2_000_000));

    // Each command has its own budget, and the plugin keeps serving.
    let (after, _) = run(&faulty, command("fault.fail", b"", "")).await;
    assert!(
        matches!(after.result, Err(InvokeError::Failed(_))),
        "{after:?}"
    );
    let used = after.stats.fuel_consumed.unwrap();
    assert!(used > 0 && used < 2_000_000, "{used}");
}

#[tokio::test]
async fn fuel_is_metered_only_where_configured() {
    let host = host();
    let plain = host.load(ECHO.name, ECHO.component).unwrap();
    let metered = host
        .load_with(
            ECHO.name,
            ECHO.component,
            LoadOptions {
                fuel: Some(u64::MAX),
                ..LoadOptions::default()
            },
        )
        .unwrap();
    assert_eq!(plain.fuel(), None);

    let (unmetered, _) = run(&plain, command("echo", b"x", "")).await;
    let (first, _) = run(&metered, command("echo", b"x", "")).await;
    let (second, _) = run(&metered, command("echo", b"x", "")).await;

    assert_eq!(unmetered.result, Ok(b"x".to_vec()));
    assert_eq!(unmetered.stats.fuel_consumed, None);
    assert_eq!(first.result, Ok(b"x".to_vec()));
    let used = first.stats.fuel_consumed.unwrap();
    assert!(used > 0, "{:?}", first.stats);
    // The same command costs the same fuel every time: each invocation starts afresh.
    assert_eq!(second.stats.fuel_consumed, Some(used));
}

#[test]
fn the_bindings_bind_exactly_the_versions_ferry_serves() {
    assert_eq!(
        bindings::Version::ALL
            .iter()
            .map(|v| v.number())
            .collect::<Vec<_>>(),
        ferry_protocol::WIT_VERSIONS,
        "ferry_protocol::WIT_VERSIONS and the host's bindings differ: a version in the list \
         needs its own bindings module (bindgen! from wit/<version>/), and bindings need their \
         version in the list"
    );
    assert_eq!(
        bindings::latest::VERSION,
        ferry_protocol::WIT_LATEST,
        "`bindings::latest` names the newest version's module"
    );
}
