//! Starting, finding and stopping a runtime's process group.
//!
//! A workload runs in its own process group, its output appended to `<name>/output.log` (moved
//! aside past 16 MiB at a start), *not* a pipe, so it outlives the agent. A restarted agent finds
//! it by pid *and* the pid's start time (`/proc/<pid>/stat`), so a reused pid is never mistaken for
//! it, and supervises it again by polling: it is no longer the agent's child. Stop is SIGTERM to
//! the group, then SIGKILL after 5 s, to the group only while it still has members, since an empty
//! group's id may be reused.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use super::Spec;

/// A log file is moved aside (to `output.log.1`) when a workload starts and it is larger.
const MAX_LOG_BYTES: u64 = 16 << 20;

/// Starts the workload in a process group of its own, output appended to `output.log`.
pub(super) fn spawn(spec: &Spec, log_dir: &Path) -> Result<tokio::process::Child, String> {
    std::fs::create_dir_all(log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    let log = log_dir.join("output.log");
    if std::fs::metadata(&log).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let _ = std::fs::rename(&log, log_dir.join("output.log.1"));
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let mut command = tokio::process::Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd.as_deref().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // The workload outlives the agent on purpose.
        .kill_on_drop(false);
    #[cfg(unix)]
    command.process_group(0);
    command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.command.display()))
}

/// Exit code, whether it counts as success, and a description.
pub(super) fn describe(status: ExitStatus) -> (Option<i32>, bool, String) {
    if let Some(code) = status.code() {
        return (Some(code), code == 0, format!("exited with code {code}"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return (None, false, format!("killed by signal {signal}"));
        }
    }
    (None, false, "ended".into())
}

/// When `pid` started, in clock ticks since boot (from `/proc/<pid>/stat`); tells a pid that
/// was reused apart from the workload that had it.
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 of stat is the state, field 22 the start time.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive and, when `start` is known, is still the same process.
pub(super) fn alive(pid: u32, start: Option<u64>) -> bool {
    match (start_time(pid), start) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// SIGTERM to the process group, then SIGKILL once `grace` passes.
pub(super) async fn terminate(pid: u32, start: Option<u64>, grace: Duration) {
    if !alive(pid, start) {
        return;
    }
    signal_group(pid, Signal::Term);
    let deadline = tokio::time::Instant::now() + grace;
    while alive(pid, start) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The leader may be gone with others of its group left. A group id cannot be reused while
    // the group has members, so it is safe to signal only while some remain; once it is empty
    // the id may already name someone else's new group.
    if alive(pid, start) || group_has_members(pid) {
        signal_group(pid, Signal::Kill);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while alive(pid, start) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether any process is in process group `pgid` (field 5 of `/proc/<pid>/stat`).
fn group_has_members(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let rest = stat.rsplit(')').next()?.to_string();
                let fields: Vec<&str> = rest.split_whitespace().collect();
                // Field 3 is the state, field 5 the process group.
                Some(fields.first() != Some(&"Z") && fields.get(2)?.parse::<u32>().ok()? == pgid)
            })
            .unwrap_or(false)
    })
}

enum Signal {
    Term,
    Kill,
}

#[cfg(unix)]
fn signal_group(pid: u32, signal: Signal) {
    // Never group 0 (ours) or 1 (init's).
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    let sig = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a process group.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

#[cfg(not(unix))]
fn signal_group(_pid: u32, _signal: Signal) {}
