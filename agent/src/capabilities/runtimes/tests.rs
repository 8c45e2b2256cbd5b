use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;

fn shell(script: &str, restart: RestartPolicy) -> Spec {
    Spec {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![("GREETING".into(), "hello".into())],
        cwd: None,
        restart,
        port: None,
        component: false,
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_runtime_starts_stops_restarts_and_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let runtimes = Runtimes::open(dir.path(), 10, CancellationToken::new()).unwrap();
    let info = runtimes
        .create(
            "web",
            shell("echo $GREETING; exec sleep 30", RestartPolicy::Never),
            true,
        )
        .unwrap();
    assert_eq!(info.status, Status::Running);
    let pid = info.pid.unwrap();
    assert!(process::alive(pid, info.pid_start));
    let log = dir.path().join("runtimes/web/output.log");
    until("the workload writes its log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("hello"))
    })
    .await;

    let err = runtimes
        .create("web", shell("true", RestartPolicy::Never), false)
        .unwrap_err();
    assert!(err.contains("already exists"), "{err}");

    let stopped = runtimes.stop("web").await.unwrap();
    assert_eq!(stopped.status, Status::Stopped);
    assert!(!process::alive(pid, info.pid_start), "the workload is gone");

    let started = runtimes.restart("web").await.unwrap();
    assert_eq!(started.status, Status::Running);
    assert_eq!(started.restarts, 1);
    let again = started.pid.unwrap();
    assert_ne!(again, pid);

    runtimes.delete("web").await.unwrap();
    assert!(!process::alive(again, started.pid_start));
    assert!(runtimes.get("web").is_err());
    assert!(!dir.path().join("runtimes/web").exists());
}

#[tokio::test]
async fn the_restart_policy_decides_what_happens_when_the_workload_ends() {
    let dir = tempfile::tempdir().unwrap();
    let runtimes = Runtimes::open(dir.path(), 10, CancellationToken::new()).unwrap();
    runtimes
        .create("flaky", shell("exit 3", RestartPolicy::OnFailure), true)
        .unwrap();
    runtimes
        .create("once", shell("exit 0", RestartPolicy::OnFailure), true)
        .unwrap();
    runtimes
        .create("never", shell("exit 5", RestartPolicy::Never), true)
        .unwrap();
    until("flaky is restarted", || {
        runtimes.get("flaky").unwrap().restarts >= 2
    })
    .await;
    let flaky = runtimes.get("flaky").unwrap();
    assert_eq!(flaky.last_exit_code, Some(3));
    until("once and never end", || {
        runtimes.get("once").unwrap().status == Status::Exited
            && runtimes.get("never").unwrap().status == Status::Exited
    })
    .await;
    assert_eq!(runtimes.get("once").unwrap().restarts, 0);
    let never = runtimes.get("never").unwrap();
    assert_eq!(never.last_exit_code, Some(5));
    assert!(
        never.detail.contains("exited with code 5"),
        "{}",
        never.detail
    );
    runtimes.delete("flaky").await.unwrap();
}

#[tokio::test]
async fn a_new_agent_takes_running_workloads_back_and_restarts_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let first_stop = CancellationToken::new();
    let first = Runtimes::open(dir.path(), 10, first_stop.clone()).unwrap();
    let kept = first
        .create("kept", shell("exec sleep 30", RestartPolicy::Never), true)
        .unwrap();
    let dead = first
        .create("dead", shell("exec sleep 30", RestartPolicy::Always), true)
        .unwrap();
    // The agent stops; its runtimes do not. One of them dies while no agent runs.
    first_stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    process::terminate(dead.pid.unwrap(), dead.pid_start, Duration::from_secs(2)).await;
    drop(first);

    let second = Runtimes::open(dir.path(), 10, CancellationToken::new()).unwrap();
    let kept_now = second.get("kept").unwrap();
    assert_eq!(kept_now.status, Status::Running);
    assert_eq!(kept_now.pid, kept.pid, "the same workload, taken back");
    let dead_now = second.get("dead").unwrap();
    assert_eq!(dead_now.status, Status::Running, "{dead_now:?}");
    assert_ne!(
        dead_now.pid, dead.pid,
        "started again: it should be running"
    );

    // The taken-back workload is supervised: its end is noticed.
    process::terminate(kept.pid.unwrap(), kept.pid_start, Duration::from_secs(2)).await;
    until("the end of a taken-back workload is seen", || {
        second.get("kept").unwrap().status == Status::Exited
    })
    .await;
    second.delete("dead").await.unwrap();
    second.delete("kept").await.unwrap();
}

#[tokio::test]
async fn consumption_is_sampled_per_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let runtimes = Runtimes::open(dir.path(), 3, CancellationToken::new()).unwrap();
    runtimes
        .create("busy", shell("exec sleep 30", RestartPolicy::Never), true)
        .unwrap();
    let mut meter = TreeMeter::new();
    for _ in 0..5 {
        meter.refresh();
        runtimes.record(|pid| meter.measure(pid));
    }
    let samples = runtimes
        .consumption("busy", Duration::from_secs(60))
        .unwrap();
    assert_eq!(samples.len(), 3, "bounded by max_samples");
    assert!(samples.iter().all(|s| s.memory_bytes > 0), "{samples:?}");
    assert!(
        runtimes
            .consumption("nope", Duration::from_secs(1))
            .is_err()
    );
    runtimes.delete("busy").await.unwrap();
}

#[test]
fn bad_names_and_loader_variables_are_refused() {
    assert!(check_name("web-1.prod").is_ok());
    for bad in ["", ".hidden", "a/b", "x y", &"n".repeat(65)] {
        assert!(check_name(bad).is_err(), "{bad}");
    }
    let mut spec = shell("true", RestartPolicy::Never);
    spec.env.push(("LD_PRELOAD".into(), "/tmp/evil.so".into()));
    assert!(check_spec(&spec).unwrap_err().contains("LD_PRELOAD"));
    let mut spec = shell("true", RestartPolicy::Never);
    spec.command = "sh".into();
    assert!(check_spec(&spec).unwrap_err().contains("absolute"));
}

#[tokio::test]
async fn a_component_runtime_runs_in_the_agent_and_follows_its_restart_policy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticker.wasm");
    std::fs::write(&file, ferry_builtins::fixtures::TICKER).unwrap();
    let component = |args: &[&str], restart| Spec {
        command: file.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("GREETING".into(), "from-wasm".into())],
        cwd: None,
        restart,
        port: None,
        component: true,
    };
    let runtimes = Runtimes::open(dir.path(), 10, CancellationToken::new()).unwrap();
    let info = runtimes
        .create("tick", component(&["20"], RestartPolicy::Never), true)
        .unwrap();
    assert_eq!(info.status, Status::Running);
    assert_eq!(info.pid, None, "it runs inside the agent");
    let log = dir.path().join("runtimes/tick/output.log");
    until("the component writes its log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("tick 3 from-wasm"))
    })
    .await;
    let stopped = runtimes.stop("tick").await.unwrap();
    assert_eq!(stopped.status, Status::Stopped);
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        lines,
        "a stopped component writes nothing more"
    );

    runtimes
        .create(
            "fails",
            component(&["exit", "7"], RestartPolicy::OnFailure),
            true,
        )
        .unwrap();
    until("the failing component is restarted", || {
        runtimes.get("fails").unwrap().restarts >= 2
    })
    .await;
    // WASI 0.2's exit carries success or failure only: any failing code is 1.
    assert_eq!(runtimes.get("fails").unwrap().last_exit_code, Some(1));
    runtimes.delete("fails").await.unwrap();

    std::fs::write(dir.path().join("not.wasm"), b"nope").unwrap();
    let mut bad = component(&[], RestartPolicy::Never);
    bad.command = dir.path().join("not.wasm");
    let err = runtimes.create("bad", bad, true).unwrap_err();
    assert!(err.contains("not a wasm component"), "{err}");
    assert_eq!(runtimes.get("bad").unwrap().status, Status::Failed);
    runtimes.delete("tick").await.unwrap();
}
