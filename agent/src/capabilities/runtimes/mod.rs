//! Supervised runtimes: named workloads on the agent's host, behind the `ferry:plugin/runtimes`
//! interface.
//!
//! A runtime's spec, desired state (running or stopped) and what the agent last knew of its
//! process are kept in `<data_dir>/runtimes/state.json`, written through a temporary file and a
//! rename after every change. A process runtime runs in a process group of its own with its
//! output appended to `<data_dir>/runtimes/<name>/output.log`, not to a pipe, so it does not
//! depend on the agent: when the agent stops, its runtimes keep running, and the next agent
//! finds them by pid (and the pid's start time, so a reused pid is not mistaken for the
//! workload) and supervises them again. A runtime whose workload died meanwhile is started
//! again if its desired state is running.
//!
//! Each running workload has one watcher task: it waits for the child (or, for a workload
//! taken over from an earlier agent, which is not this process's child, polls its pid), then
//! applies the restart policy with a backoff. Every change bumps the runtime's generation, so
//! a watcher that lost a race with `stop` or `restart` does nothing.
//!
//! The restart backoff starts at 250 ms and doubles to 30 s, reset after a minute of running. A
//! sampler records each workload's process tree (CPU share of the host, resident memory) every
//! metrics interval, for `consumption`.

mod component;
mod host;
mod process;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How long a stopped workload has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The first wait before a restart; it doubles up to [`MAX_BACKOFF`] while the workload keeps
/// failing within [`STABLE`] of its start.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE: Duration = Duration::from_secs(60);
/// How often a workload that is not the agent's child is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// Runtime names: what a directory name may safely be.
const MAX_NAME: usize = 64;

// The spec, restart policy, status and samples are the plugin host's view of a runtime,
// kept as they are in the state file; `Info` adds what only the agent tracks.
pub use ferry_host::runtimes::{RestartPolicy, Sample, Spec, Status};

/// A runtime as the agent knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    /// Its name.
    pub name: String,
    /// How it is built.
    pub spec: Spec,
    /// Where it stands.
    pub status: Status,
    /// Its workload's pid while it runs.
    pub pid: Option<u32>,
    /// The pid's start time (clock ticks since boot), which tells a reused pid apart.
    pub pid_start: Option<u64>,
    /// How many times it was started again.
    pub restarts: u32,
    /// The exit code of its last end, when it exited.
    pub last_exit_code: Option<i32>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When its workload last started.
    pub started_ms: Option<u64>,
    /// Why it failed or how it last ended.
    pub detail: String,
    /// Whether it should be running.
    pub wanted: bool,
}

struct Entry {
    info: Info,
    /// Bumped on every start, stop and delete: a watcher of an older generation does nothing.
    generation: u64,
    samples: VecDeque<Sample>,
    /// A component runtime's task, which runs it; aborting it stops the component.
    task: Option<tokio::task::AbortHandle>,
}

struct Inner {
    dir: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Serializes writes of the state file.
    save: Mutex<()>,
    max_samples: usize,
    stop: CancellationToken,
}

/// How a workload ended: exit code, success, description; `None` when unknown.
type Ended = std::pin::Pin<Box<dyn Future<Output = Option<(Option<i32>, bool, String)>> + Send>>;

/// The agent's runtimes. Cheap to clone.
#[derive(Clone)]
pub struct Runtimes {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtimes")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Runtimes {
    /// Loads the runtimes kept under `<data_dir>/runtimes`, takes back the workloads still
    /// running and starts the ones that should run but do not. Supervision ends with `stop`;
    /// the workloads do not.
    pub fn open(
        data_dir: &Path,
        max_samples: usize,
        stop: CancellationToken,
    ) -> Result<Runtimes, String> {
        let dir = data_dir.join("runtimes");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let state = dir.join("state.json");
        let saved: Vec<Info> = match std::fs::read(&state) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is damaged ({e}); move it away to start without runtimes",
                    state.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", state.display())),
        };
        let runtimes = Runtimes {
            inner: Arc::new(Inner {
                dir,
                entries: Mutex::new(BTreeMap::new()),
                save: Mutex::new(()),
                max_samples: max_samples.max(1),
                stop,
            }),
        };
        for info in saved {
            let name = info.name.clone();
            let alive = info
                .pid
                .is_some_and(|pid| process::alive(pid, info.pid_start));
            runtimes.inner.entries.lock().insert(
                name.clone(),
                Entry {
                    info,
                    generation: 0,
                    samples: VecDeque::new(),
                    task: None,
                },
            );
            if alive {
                let (pid, generation) = {
                    let mut entries = runtimes.inner.entries.lock();
                    let entry = entries.get_mut(&name).expect("just inserted");
                    entry.info.status = Status::Running;
                    (entry.info.pid.expect("alive"), entry.generation)
                };
                tracing::info!(runtime = %name, pid, "runtime still running; supervising it again");
                runtimes.watch(name, generation, pid, None);
            } else {
                let wanted = {
                    let mut entries = runtimes.inner.entries.lock();
                    let entry = entries.get_mut(&name).expect("just inserted");
                    entry.info.pid = None;
                    entry.info.pid_start = None;
                    if entry.info.status == Status::Running
                        || entry.info.status == Status::Restarting
                    {
                        entry.info.status = Status::Exited;
                        entry.info.detail =
                            "its workload ended while the agent was not running".into();
                    }
                    entry.info.wanted
                };
                if wanted {
                    let _ = runtimes.launch(&name);
                }
            }
        }
        runtimes.save();
        Ok(runtimes)
    }

    /// Creates a runtime, started at once when `start`.
    pub fn create(&self, name: &str, spec: Spec, start: bool) -> Result<Info, String> {
        check_name(name)?;
        check_spec(&spec)?;
        {
            let mut entries = self.inner.entries.lock();
            if entries.contains_key(name) {
                return Err(format!(
                    "a runtime named '{name}' already exists; delete it first or choose another name"
                ));
            }
            entries.insert(
                name.to_string(),
                Entry {
                    info: Info {
                        name: name.to_string(),
                        spec,
                        status: Status::Stopped,
                        pid: None,
                        pid_start: None,
                        restarts: 0,
                        last_exit_code: None,
                        created_ms: now_ms(),
                        started_ms: None,
                        detail: String::new(),
                        wanted: start,
                    },
                    generation: 0,
                    samples: VecDeque::new(),
                    task: None,
                },
            );
        }
        if start {
            self.launch(name)?;
        }
        self.save();
        self.get(name)
    }

    /// Starts a runtime that is not running.
    pub fn start(&self, name: &str) -> Result<Info, String> {
        let running = {
            let mut entries = self.inner.entries.lock();
            let entry = entries.get_mut(name).ok_or_else(|| unknown(name))?;
            entry.info.wanted = true;
            entry.info.status == Status::Running
        };
        if !running {
            self.launch(name)?;
        }
        self.save();
        self.get(name)
    }

    /// Stops a runtime: SIGTERM to its process group, SIGKILL after the grace period.
    pub async fn stop(&self, name: &str) -> Result<Info, String> {
        let target = {
            let mut entries = self.inner.entries.lock();
            let entry = entries.get_mut(name).ok_or_else(|| unknown(name))?;
            entry.generation += 1;
            entry.info.wanted = false;
            entry.info.status = Status::Stopped;
            entry.info.detail = "stopped on request".into();
            if let Some(task) = entry.task.take() {
                task.abort();
            }
            entry
                .info
                .pid
                .take()
                .map(|pid| (pid, entry.info.pid_start.take()))
        };
        if let Some((pid, start)) = target {
            process::terminate(pid, start, STOP_GRACE).await;
        }
        self.save();
        self.get(name)
    }

    /// Stops and starts a runtime again.
    pub async fn restart(&self, name: &str) -> Result<Info, String> {
        self.stop(name).await?;
        {
            let mut entries = self.inner.entries.lock();
            let entry = entries.get_mut(name).ok_or_else(|| unknown(name))?;
            entry.info.restarts += 1;
            entry.info.wanted = true;
        }
        self.launch(name)?;
        self.save();
        self.get(name)
    }

    /// Stops a runtime and forgets it, with its logs.
    pub async fn delete(&self, name: &str) -> Result<(), String> {
        self.stop(name).await?;
        self.inner.entries.lock().remove(name);
        let _ = std::fs::remove_dir_all(self.inner.dir.join(name));
        self.save();
        Ok(())
    }

    /// One runtime.
    pub fn get(&self, name: &str) -> Result<Info, String> {
        self.inner
            .entries
            .lock()
            .get(name)
            .map(|e| e.info.clone())
            .ok_or_else(|| unknown(name))
    }

    /// Every runtime, by name.
    pub fn list(&self) -> Vec<Info> {
        self.inner
            .entries
            .lock()
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    /// The samples recorded for `name` within `period`, oldest first.
    pub fn consumption(&self, name: &str, period: Duration) -> Result<Vec<Sample>, String> {
        let entries = self.inner.entries.lock();
        let entry = entries.get(name).ok_or_else(|| unknown(name))?;
        let since = now_ms().saturating_sub(period.as_millis() as u64);
        Ok(entry
            .samples
            .iter()
            .filter(|s| s.timestamp_ms >= since)
            .copied()
            .collect())
    }

    /// Records one sample of every running workload; `measure` gives (cpu %, memory bytes)
    /// of a process tree by its root pid.
    pub fn record(&self, measure: impl Fn(u32) -> Option<(f32, u64)>) {
        let pids: Vec<(String, u32)> = self
            .inner
            .entries
            .lock()
            .values()
            .filter_map(|e| e.info.pid.map(|pid| (e.info.name.clone(), pid)))
            .collect();
        let timestamp_ms = now_ms();
        let measured: Vec<(String, Sample)> = pids
            .into_iter()
            .filter_map(|(name, pid)| {
                let (cpu_percent, memory_bytes) = measure(pid)?;
                Some((
                    name,
                    Sample {
                        timestamp_ms,
                        cpu_percent,
                        memory_bytes,
                    },
                ))
            })
            .collect();
        let mut entries = self.inner.entries.lock();
        for (name, sample) in measured {
            if let Some(entry) = entries.get_mut(&name) {
                if entry.samples.len() == self.inner.max_samples {
                    entry.samples.pop_front();
                }
                entry.samples.push_back(sample);
            }
        }
    }

    /// Starts the workload of `name` and a watcher for it.
    fn launch(&self, name: &str) -> Result<(), String> {
        let (spec, generation) = {
            let mut entries = self.inner.entries.lock();
            let entry = entries.get_mut(name).ok_or_else(|| unknown(name))?;
            entry.generation += 1;
            (entry.info.spec.clone(), entry.generation)
        };
        let log_dir = self.inner.dir.join(name);
        if spec.component {
            return self.launch_component(name, spec, generation, &log_dir);
        }
        match process::spawn(&spec, &log_dir) {
            Ok(child) => {
                let pid = child.id().unwrap_or_default();
                {
                    let mut entries = self.inner.entries.lock();
                    if let Some(entry) = entries.get_mut(name) {
                        entry.info.status = Status::Running;
                        entry.info.pid = Some(pid);
                        entry.info.pid_start = process::start_time(pid);
                        entry.info.started_ms = Some(now_ms());
                        entry.info.detail = String::new();
                    }
                }
                tracing::info!(runtime = %name, pid, "runtime started");
                self.watch(name.to_string(), generation, pid, Some(child));
                Ok(())
            }
            Err(why) => {
                let mut entries = self.inner.entries.lock();
                if let Some(entry) = entries.get_mut(name) {
                    entry.info.status = Status::Failed;
                    entry.info.detail = why.clone();
                }
                Err(why)
            }
        }
    }

    /// Waits for a workload to end, then applies its restart policy.
    fn watch(&self, name: String, generation: u64, pid: u32, child: Option<tokio::process::Child>) {
        let start = self_start(self, &name);
        let ended = async move {
            match child {
                Some(mut child) => child.wait().await.ok().map(process::describe),
                None => {
                    while process::alive(pid, start) {
                        tokio::time::sleep(ADOPTED_POLL).await;
                    }
                    // Not our child: how it ended is not ours to know.
                    None
                }
            }
        };
        self.supervise(name, generation, Box::pin(ended));
    }

    /// Compiles and starts a component runtime in a task of its own.
    fn launch_component(
        &self,
        name: &str,
        spec: Spec,
        generation: u64,
        log_dir: &Path,
    ) -> Result<(), String> {
        let prepared = std::fs::create_dir_all(log_dir)
            .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))
            .and_then(|()| component::prepare(&spec));
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(why) => {
                if let Some(entry) = self.inner.entries.lock().get_mut(name) {
                    entry.info.status = Status::Failed;
                    entry.info.detail = why.clone();
                }
                return Err(why);
            }
        };
        let log = log_dir.join("output.log");
        let task_name = name.to_string();
        let ended = async move { Some(component::run(prepared, task_name, spec, &log).await) };
        // The entry is updated before the task can end and look at it.
        let mut entries = self.inner.entries.lock();
        let entry = entries.get_mut(name).ok_or_else(|| unknown(name))?;
        entry.info.status = Status::Running;
        entry.info.pid = None;
        entry.info.pid_start = None;
        entry.info.started_ms = Some(now_ms());
        entry.info.detail = String::new();
        entry.task = Some(self.supervise(name.to_string(), generation, Box::pin(ended)));
        tracing::info!(runtime = %name, "component runtime started");
        Ok(())
    }

    /// Waits for `ended` (how a workload ended, when known), then applies the restart policy.
    fn supervise(&self, name: String, generation: u64, ended: Ended) -> tokio::task::AbortHandle {
        let runtimes = self.clone();
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let how = tokio::select! {
                how = ended => how,
                // The agent stops supervising; the workload keeps running.
                _ = stop.cancelled() => return,
            };
            let (code, success, detail) = how.unwrap_or((None, false, "ended".into()));
            let restart_after = {
                let mut entries = runtimes.inner.entries.lock();
                let Some(entry) = entries.get_mut(&name) else {
                    return;
                };
                if entry.generation != generation {
                    return;
                }
                entry.info.pid = None;
                entry.info.pid_start = None;
                entry.info.last_exit_code = code;
                entry.info.detail = detail;
                let again = entry.info.wanted
                    && match entry.info.spec.restart {
                        RestartPolicy::Never => false,
                        RestartPolicy::OnFailure => !success,
                        RestartPolicy::Always => true,
                    };
                if again {
                    entry.info.status = Status::Restarting;
                    entry.info.restarts += 1;
                    // Failing soon after each start backs off; a long run resets the wait.
                    let failures = if started.elapsed() > STABLE {
                        0
                    } else {
                        entry.info.restarts.min(10)
                    };
                    Some((MIN_BACKOFF * 2u32.pow(failures)).min(MAX_BACKOFF))
                } else {
                    entry.info.status = Status::Exited;
                    None
                }
            };
            runtimes.save();
            tracing::info!(runtime = %name, restart_in = ?restart_after, "runtime's workload ended");
            if let Some(wait) = restart_after {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
                let still = runtimes
                    .inner
                    .entries
                    .lock()
                    .get(&name)
                    .is_some_and(|e| e.generation == generation && e.info.wanted);
                if still {
                    let _ = runtimes.launch(&name);
                    runtimes.save();
                }
            }
        })
        .abort_handle()
    }

    /// Writes the state file; a failure is logged (the runtimes keep running either way).
    fn save(&self) {
        let _guard = self.inner.save.lock();
        let list = self.list();
        let bytes = serde_json::to_vec_pretty(&list).expect("runtimes serialize");
        let path = self.inner.dir.join("state.json");
        if let Err(e) = ferry_protocol::pki::write_file(&path, &bytes, true) {
            tracing::error!(
                "cannot save the runtimes' state (a restarted agent would not find them): {e}"
            );
        }
    }
}

fn self_start(runtimes: &Runtimes, name: &str) -> Option<u64> {
    runtimes
        .inner
        .entries
        .lock()
        .get(name)
        .and_then(|e| e.info.pid_start)
}

fn unknown(name: &str) -> String {
    format!("no runtime named '{name}' on this agent")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a runtime name: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

fn check_spec(spec: &Spec) -> Result<(), String> {
    if !spec.command.is_absolute() {
        return Err(format!(
            "the command {} must be an absolute path",
            spec.command.display()
        ));
    }
    if let Some(cwd) = &spec.cwd
        && !cwd.is_absolute()
    {
        return Err(format!(
            "the working directory {} must be an absolute path",
            cwd.display()
        ));
    }
    for (key, _) in &spec.env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(format!("{key:?} is not an environment variable name"));
        }
        // A loader variable would run any code inside a granted program.
        if key.starts_with("LD_") || key.starts_with("DYLD_") {
            return Err(format!(
                "the environment variable {key} is refused: loader variables would let a runtime run code other than its granted program"
            ));
        }
    }
    Ok(())
}

/// The process tree rooted at each pid: (CPU % of the host, resident bytes), with sysinfo.
pub(crate) struct TreeMeter {
    system: sysinfo::System,
}

impl TreeMeter {
    pub(crate) fn new() -> Self {
        TreeMeter {
            system: sysinfo::System::new(),
        }
    }

    /// Refreshes every process; call once per round, then [`TreeMeter::measure`] per root.
    pub(crate) fn refresh(&mut self) {
        self.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::All,
            true,
            sysinfo::ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory(),
        );
    }

    pub(crate) fn measure(&self, root: u32) -> Option<(f32, u64)> {
        let processes = self.system.processes();
        let root = sysinfo::Pid::from_u32(root);
        processes.get(&root)?;
        let mut children: HashMap<sysinfo::Pid, Vec<sysinfo::Pid>> = HashMap::new();
        for (pid, process) in processes {
            if let Some(parent) = process.parent() {
                children.entry(parent).or_default().push(*pid);
            }
        }
        let (mut cpu, mut memory) = (0f32, 0u64);
        let mut todo = vec![root];
        while let Some(pid) = todo.pop() {
            if let Some(process) = processes.get(&pid) {
                cpu += process.cpu_usage();
                memory += process.memory();
            }
            if let Some(kids) = children.get(&pid) {
                todo.extend(kids);
            }
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f32;
        Some(((cpu / cores).clamp(0.0, 100.0), memory))
    }
}

/// Samples every running workload each `interval` until `stop`.
pub(crate) fn spawn_sampler(runtimes: Runtimes, interval: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        let meter = Arc::new(Mutex::new(TreeMeter::new()));
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let (meter, runtimes) = (meter.clone(), runtimes.clone());
            // sysinfo reads /proc: blocking work.
            let _ = tokio::task::spawn_blocking(move || {
                let mut meter = meter.lock();
                meter.refresh();
                runtimes.record(|pid| meter.measure(pid));
            })
            .await;
        }
    });
}

#[cfg(test)]
mod tests;
