//! The `programs` capability, served by `ferry:plugin/process`: a plugin starts a program its
//! grant lists, by exact absolute path; the program's output becomes log lines of the command,
//! and the plugin gets its exit status and the start of its standard output.
//!
//! The child runs in a process group of its own, with standard input empty, in `/`, and with
//! only the environment variables granted to the plugin. The whole group is killed when the
//! program's own timeout or the command's deadline passes, when the command is cancelled, when
//! the program exits (so that nothing it left in the background outlives the command), and
//! when the invocation is dropped (the host stopping a plugin). Waiting is async
//! (`tokio::process`): a plugin waiting for its child holds no runtime thread.
//!
//! Only a program whose absolute path the grant lists runs, compared by path component, with no
//! `PATH` search. Its stdout and stderr become log lines (info and warn, bounded like the plugin's
//! own output); the start of its stdout and its last stderr lines come back with the exit status.
//! `run-with` adds standard input (written while the output is read, so neither side blocks on a
//! full pipe), variables (loader variables, `LD_*` and `DYLD_*`, refused) and a working directory
//! inside a granted directory. A child whose invocation was dropped is reaped in the background.

use std::future::pending;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_manifest::CapabilityId;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt};
use wasmtime::component::Linker;

use super::Grantee;
use crate::bindings::{self, Interface};
use crate::state::State;
use crate::{CommandEvents, LogLevel};

/// How often a running program's command is checked for a cancel.
const CANCEL_POLL: Duration = Duration::from_millis(50);
/// How long the output of a program that has ended (or was killed) is still read: a process
/// that left its process group may hold the pipes open.
const LINGER: Duration = Duration::from_secs(1);
/// A line longer than this is forwarded in pieces.
const MAX_LINE: usize = 4096;
/// How many of the last stderr lines the plugin gets back.
const TAIL_LINES: usize = 4;
/// Bytes read from a pipe at a time.
const CHUNK: usize = 8192;

/// The programs one plugin may start, and the environment they get; from its grant, at load.
#[derive(Debug)]
pub(crate) struct Programs {
    grantee: Arc<Grantee>,
    granted: Vec<PathBuf>,
    env: Vec<(String, String)>,
    /// Directories granted to the plugin: where a program may be started (`run-with`'s cwd).
    dirs: Vec<PathBuf>,
}

impl Programs {
    /// `env`: the granted environment, which the programs get; `dirs`: the granted
    /// directories, where they may run.
    pub(crate) fn new(
        grantee: &Arc<Grantee>,
        granted: &[PathBuf],
        env: &[(String, String)],
        dirs: Vec<PathBuf>,
    ) -> Self {
        Programs {
            grantee: grantee.clone(),
            granted: granted.to_vec(),
            env: env.to_vec(),
            dirs,
        }
    }

    /// `cwd` if it lies inside a granted directory (compared by component, `..` refused).
    fn working_dir(&self, cwd: &str) -> Result<PathBuf, String> {
        let asked = Path::new(cwd);
        let clean = asked.is_absolute()
            && !asked
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if clean && self.dirs.iter().any(|d| asked.starts_with(d)) {
            return Ok(asked.to_path_buf());
        }
        let plugin = &self.grantee.plugin;
        let filesystem = CapabilityId::Filesystem.key();
        Err(format!(
            "running a program in {cwd:?} is not granted to plugin '{plugin}': the working directory must be an absolute path inside a directory granted in `{filesystem}` (manifest and policy [plugins.{plugin}.capabilities])"
        ))
    }

    /// The granted path `program` names, or why it may not be started. Paths compare by
    /// component (`/bin//echo` is `/bin/echo`), never resolved: no `PATH` search, and neither
    /// `..` nor a symlink makes another path match a granted one.
    pub(crate) fn granted(&self, program: &str) -> Result<&Path, String> {
        let asked = Path::new(program);
        if asked.is_absolute()
            && let Some(path) = self.granted.iter().find(|p| p.as_path() == asked)
        {
            return Ok(path);
        }
        let plugin = &self.grantee.plugin;
        let hint = if asked.is_absolute() {
            ""
        } else {
            " (programs are absolute paths, matched exactly; there is no PATH search)"
        };
        let capability = CapabilityId::Programs.capability();
        // The table's flag is `program=PATH`: the same, with this program.
        let flag = capability.flag.split('=').next().unwrap_or(capability.flag);
        let how = self.grantee.how(
            &format!("{} = [{program:?}]", capability.key),
            &format!("{flag}={program}"),
        );
        Err(format!(
            "starting the program {program:?} is not granted to plugin '{plugin}'{hint}: {how}"
        ))
    }
}

/// Why the host stopped a program before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Its timeout, or the command's deadline, passed.
    Timeout,
    /// The command was cancelled.
    Cancelled,
}

/// How a program ended, in the host's terms; each WIT version's bindings adapt it.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) stopped: Option<StopReason>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr_tail: Vec<String>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stderr_truncated: bool,
}

/// What a run needs from the invocation.
pub(crate) struct Context {
    pub(crate) events: Arc<dyn CommandEvents>,
    /// The command's deadline.
    pub(crate) deadline: Option<Instant>,
    /// Bytes of stdout, and as many of stderr, forwarded as log lines.
    pub(crate) max_output_bytes: usize,
}

/// What to run: `run` gives only a program, its arguments and a timeout; `run-with` the rest.
pub(crate) struct Request {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) stdin: Vec<u8>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<String>,
    pub(crate) timeout_ms: Option<u32>,
}

/// Runs `program` if granted, until it ends or is stopped.
pub(crate) async fn run(
    programs: &Programs,
    cx: Context,
    request: Request,
) -> Result<Exit, String> {
    let Request {
        program,
        args,
        stdin,
        env,
        cwd,
        timeout_ms,
    } = request;
    let path = programs.granted(&program)?;
    let cwd = match &cwd {
        Some(cwd) => programs.working_dir(cwd)?,
        None => PathBuf::from("/"),
    };
    for (key, _) in &env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(format!("{key:?} is not an environment variable name"));
        }
        if key.starts_with("LD_") || key.starts_with("DYLD_") {
            return Err(format!(
                "the environment variable {key} is refused: loader variables would run other code inside a granted program"
            ));
        }
    }
    let stop_at = match (
        cx.deadline,
        timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms.into())),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let name = path
        .file_name()
        .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());

    let mut command = tokio::process::Command::new(path);
    command
        .args(&args)
        .env_clear()
        .envs(programs.env.iter().map(|(k, v)| (k, v)))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cwd)
        .stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    tracing::debug!(program = %program, pid = child.id(), "plugin started a program");
    // Kills and reaps the program if this future is dropped before it was reaped.
    let mut guard = Guard {
        group: child.id(),
        child: Some(child),
    };
    let child = guard.child.as_mut().expect("just set");

    let out = Mutex::new(Sink::new(
        name.clone(),
        "stdout",
        LogLevel::Info,
        cx.events.clone(),
        cx.max_output_bytes,
        true,
    ));
    let err = Mutex::new(Sink::new(
        name,
        "stderr",
        LogLevel::Warn,
        cx.events.clone(),
        cx.max_output_bytes,
        true,
    ));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let input = child.stdin.take();
    // Input is written while output is read: a program that answers before it has read all
    // its input would otherwise block on a full pipe, and so would the host.
    let mut readers = std::pin::pin!(async {
        tokio::join!(pump(stdout, &out), pump(stderr, &err), feed(input, &stdin));
    });

    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut stopped: Option<StopReason> = None;
    let mut read_all = false;
    let mut linger: Option<Instant> = None;
    loop {
        if status.is_some() && read_all {
            break;
        }
        let running = status.is_none();
        let stopping = running && stopped.is_none();
        tokio::select! {
            s = child.wait(), if running => {
                status = Some(s);
                // Whatever it left behind in its group goes with it.
                kill_group(guard.group);
                guard.group = None;
                linger = Some(Instant::now() + LINGER);
            }
            () = readers.as_mut(), if !read_all => read_all = true,
            () = until(stop_at), if stopping => {
                stopped = Some(StopReason::Timeout);
                kill_group(guard.group);
                let _ = child.start_kill();
            }
            () = cancelled(&*cx.events), if stopping => {
                stopped = Some(StopReason::Cancelled);
                kill_group(guard.group);
                let _ = child.start_kill();
            }
            () = until(linger), if linger.is_some() => break,
        }
    }
    let status = status
        .expect("the loop ends only once the program was reaped")
        .map_err(|e| format!("cannot wait for {program}: {e}"))?;
    let (stdout, stdout_truncated) = out.lock().finish();
    let (stderr, stderr_truncated) = err.lock().finish();
    let stderr_tail = err.lock().tail.drain(..).collect();
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal = None;
    tracing::debug!(program = %program, %status, ?stopped, "a plugin's program ended");
    Ok(Exit {
        code: status.code(),
        signal,
        stopped,
        stdout,
        stdout_truncated,
        stderr_tail,
        stderr,
        stderr_truncated,
    })
}

/// Links `ferry:plugin/process`.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    bindings::link(linker, Interface::Process)
}

/// Writes `input` to the program's standard input and closes it; a program that exits
/// without reading it all is not an error.
async fn feed(pipe: Option<tokio::process::ChildStdin>, input: &[u8]) {
    use tokio::io::AsyncWriteExt;
    if let Some(mut pipe) = pipe {
        let _ = pipe.write_all(input).await;
        let _ = pipe.shutdown().await;
    }
}

/// The running program: on drop (the invocation stopped while it ran), its process group is
/// killed and it is reaped in the background, so that it leaves neither processes nor a
/// zombie behind.
struct Guard {
    /// The program's process group (its id is the program's pid), until it was reaped.
    group: Option<u32>,
    child: Option<tokio::process::Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.group.is_none() {
            return;
        }
        kill_group(self.group);
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Without a runtime, `kill_on_drop` and tokio's orphan reaping take over.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
    }
}

/// Kills the process group `group`, if any.
fn kill_group(group: Option<u32>) {
    #[cfg(unix)]
    // kill(-0) would signal the agent's own group and kill(-1) every process it may signal;
    // a child never has those pids, and this makes sure of it.
    if let Some(pid) = group.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 1) {
        // SAFETY: kill(2) has no memory-safety preconditions. The group id is the program's
        // pid; while the program is unreaped (or any member of its group lives) the kernel
        // does not reuse it, so this reaches only the program's group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = group;
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => pending().await,
    }
}

async fn cancelled(events: &dyn CommandEvents) {
    while !events.cancelled() {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

async fn pump(reader: Option<impl AsyncRead + Unpin>, sink: &Mutex<Sink>) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0; CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sink.lock().write(&buf[..n]),
        }
    }
}

/// One output stream of a program: forwarded line by line as log events, up to a budget; the
/// forwarded bytes are also kept when `keep` (stdout, which the plugin gets back).
struct Sink {
    program: String,
    stream: &'static str,
    level: LogLevel,
    events: Arc<dyn CommandEvents>,
    budget: usize,
    dropped: u64,
    line: Vec<u8>,
    kept: Option<Vec<u8>>,
    tail: Vec<String>,
}

impl Sink {
    fn new(
        program: String,
        stream: &'static str,
        level: LogLevel,
        events: Arc<dyn CommandEvents>,
        budget: usize,
        keep: bool,
    ) -> Self {
        Sink {
            program,
            stream,
            level,
            events,
            budget,
            dropped: 0,
            line: Vec::new(),
            kept: keep.then(Vec::new),
            tail: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(self.budget);
        self.budget -= take;
        self.dropped += (bytes.len() - take) as u64;
        if let Some(kept) = &mut self.kept {
            kept.extend_from_slice(&bytes[..take]);
        }
        for &b in &bytes[..take] {
            if b == b'\n' {
                self.flush_line();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.flush_line();
                }
            }
        }
    }

    fn flush_line(&mut self) {
        let mut line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if line.ends_with('\r') {
            line.pop();
        }
        if !line.trim().is_empty() {
            if self.tail.len() == TAIL_LINES {
                self.tail.remove(0);
            }
            self.tail.push(line.clone());
        }
        self.events
            .log(self.level, format!("{}: {line}", self.program));
    }

    /// Forwards the unfinished last line, reports what was dropped, and hands back what was
    /// kept and whether there was more.
    fn finish(&mut self) -> (Vec<u8>, bool) {
        if !self.line.is_empty() {
            self.flush_line();
        }
        let truncated = self.dropped > 0;
        if truncated {
            self.events.log(
                LogLevel::Warn,
                format!(
                    "{}: {} more bytes of its {} were dropped: the agent forwards only so much of a program's output",
                    self.program, self.dropped, self.stream
                ),
            );
            self.dropped = 0;
        }
        (self.kept.take().unwrap_or_default(), truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::Programs;
    use crate::capabilities::Grantee;
    use std::path::PathBuf;
    use std::sync::Arc;

    #[test]
    fn only_the_exact_granted_paths_match() {
        let grantee = Arc::new(Grantee {
            plugin: "p".into(),
            grants: crate::GrantSource::default(),
        });
        let programs = Programs::new(&grantee, &[PathBuf::from("/bin/echo")], &[], Vec::new());
        assert!(programs.granted("/bin/echo").is_ok());
        assert!(programs.granted("/bin//echo").is_ok());
        for other in [
            "echo",
            "bin/echo",
            "/bin/../bin/echo",
            "/usr/bin/echo",
            "/bin/echo2",
            "",
        ] {
            let message = programs.granted(other).unwrap_err();
            assert!(
                message.contains("not granted to plugin 'p'")
                    && message.contains("[plugins.p.capabilities]"),
                "{other}: {message}"
            );
        }
        assert!(
            programs
                .granted("echo")
                .unwrap_err()
                .contains("no PATH search")
        );
    }
}
