//! Host metrics, read with `sysinfo`: for heartbeats ([`MetricsSampler`]), and the history that
//! plugins granted `metrics` read ([`MetricsHistory`]).
//!
//! `MetricsHistory` is a ring buffer (every 5 s for 24 h by default) filled by a task that lives as
//! long as the agent, connected or not; it is the host's `MetricsSource`, read by the `metrics`
//! interface.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol::HostMetrics;
use parking_lot::Mutex;
use sysinfo::{Disks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

/// Samples the host. CPU use is measured between two samples, so keep one sampler and call
/// [`MetricsSampler::sample`] once per interval.
pub struct MetricsSampler {
    system: System,
    disks: Disks,
    data_dir: PathBuf,
    /// The agent's own process, for [`MetricsSampler::sample_with_agent`].
    pid: Option<Pid>,
}

impl MetricsSampler {
    /// A sampler whose disk figures are those of the volume holding `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        let mut system = System::new();
        // The first CPU reading is a baseline; the next sample reports use since then.
        system.refresh_cpu_usage();
        MetricsSampler {
            system,
            disks: Disks::new_with_refreshed_list(),
            data_dir: std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            pid: sysinfo::get_current_pid().ok(),
        }
    }

    /// The host's metrics now, with the agent process's CPU and memory.
    pub fn sample_with_agent(&mut self) -> Sample {
        let host = self.sample();
        let (mut agent_cpu, mut agent_memory) = (0.0, 0);
        if let Some(pid) = self.pid {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            if let Some(process) = self.system.process(pid) {
                // sysinfo counts a process's CPU in percent of one core; a share of the whole
                // host compares with the host's figure.
                let cores = self.system.cpus().len().max(1) as f32;
                agent_cpu = (process.cpu_usage() / cores).clamp(0.0, 100.0);
                agent_memory = process.memory();
            }
        }
        Sample {
            timestamp_ms: now_ms(),
            cpu_percent: host.cpu_percent,
            memory_used_bytes: host.memory_used_bytes,
            memory_total_bytes: host.memory_total_bytes,
            disk_used_bytes: host.disk_used_bytes,
            disk_total_bytes: host.disk_total_bytes,
            agent_cpu_percent: agent_cpu,
            agent_memory_bytes: agent_memory,
        }
    }

    /// The host's metrics now.
    pub fn sample(&mut self) -> HostMetrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        // The volume is the disk with the longest mount point that contains the data directory.
        let disk = self
            .disks
            .list()
            .iter()
            .filter(|d| self.data_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        let (disk_total, disk_available) =
            disk.map_or((0, 0), |d| (d.total_space(), d.available_space()));
        HostMetrics {
            cpu_percent: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            disk_used_bytes: disk_total.saturating_sub(disk_available),
            disk_total_bytes: disk_total,
            uptime_secs: System::uptime(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One measurement of the host and of the agent's process: what the `metrics` interface of
/// `ferry:plugin` returns (the plugin host's type).
pub use ferry_host::metrics::Sample;

/// What plugins granted `metrics` read: a sample now, and the recorded ones.
impl ferry_host::MetricsSource for MetricsHistory {
    fn now(&self) -> Sample {
        MetricsHistory::now(self)
    }

    fn history(&self, period: Duration) -> Vec<Sample> {
        MetricsHistory::history(self, period)
    }
}

/// The agent's recent metrics: a ring buffer of [`Sample`]s, one taken every
/// [`interval`](Self::interval) by the task [`MetricsHistory::spawn`] starts, the oldest dropped
/// once [`capacity`](Self::capacity) are kept (by default one every 5 s for 24 h: 17,280
/// samples, about 1 MiB). Cheap to clone; clones share the buffer.
#[derive(Clone)]
pub struct MetricsHistory {
    inner: Arc<HistoryInner>,
}

struct HistoryInner {
    interval: Duration,
    capacity: usize,
    samples: Mutex<VecDeque<Sample>>,
    /// Its own sampler: CPU use is measured between two refreshes of the same `System`, so
    /// sharing the heartbeats' sampler would skew both.
    sampler: Mutex<MetricsSampler>,
}

impl MetricsHistory {
    /// The default sampling interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// The default span of history kept.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

    /// An empty history of the host (disk figures: the volume holding `data_dir`), meant to be
    /// sampled every `interval` and to keep `retention` worth of samples (at least one).
    pub fn new(data_dir: &Path, interval: Duration, retention: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(100));
        let capacity = (retention.as_millis() / interval.as_millis()).clamp(1, 10_000_000) as usize;
        MetricsHistory {
            inner: Arc::new(HistoryInner {
                interval,
                capacity,
                samples: Mutex::new(VecDeque::new()),
                sampler: Mutex::new(MetricsSampler::new(data_dir)),
            }),
        }
    }

    /// How often the task of [`spawn`](Self::spawn) records a sample.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// How many samples are kept at most.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// A sample taken now, not recorded. Blocks for as long as `sysinfo` takes (milliseconds).
    pub fn now(&self) -> Sample {
        self.inner.sampler.lock().sample_with_agent()
    }

    /// Takes a sample and records it, dropping the oldest when full; returns it.
    pub fn record(&self) -> Sample {
        let sample = self.now();
        let mut samples = self.inner.samples.lock();
        if samples.len() >= self.inner.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
        sample
    }

    /// The recorded samples of the last `period`, oldest first.
    pub fn history(&self, period: Duration) -> Vec<Sample> {
        let since = now_ms().saturating_sub(period.as_millis().min(u64::MAX as u128) as u64);
        let samples = self.inner.samples.lock();
        // Samples are in time order (barring a clock step), so the period is a suffix.
        let start = samples.partition_point(|s| s.timestamp_ms < since);
        samples.range(start..).copied().collect()
    }

    /// Starts the task that records a sample every [`interval`](Self::interval), the first at
    /// once, until `stop` is cancelled. Must be called inside a tokio runtime.
    pub fn spawn(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let history = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(history.interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let history = history.clone();
                        // sysinfo reads /proc and friends: blocking work.
                        let _ = tokio::task::spawn_blocking(move || history.record()).await;
                    }
                }
            }
        })
    }
}

impl std::fmt::Debug for MetricsHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHistory")
            .field("interval", &self.inner.interval)
            .field("capacity", &self.inner.capacity)
            .field("recorded", &self.inner.samples.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_a_bounded_ring() {
        let history = MetricsHistory::new(
            Path::new("."),
            Duration::from_secs(1),
            Duration::from_secs(3),
        );
        assert_eq!(history.capacity(), 3);
        assert!(history.history(Duration::from_secs(60)).is_empty());
        let first = history.record();
        for _ in 0..4 {
            history.record();
        }
        let kept = history.history(Duration::from_secs(60));
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|s| s.timestamp_ms >= first.timestamp_ms));
        assert!(
            kept.windows(2)
                .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
        );
        let s = kept[2];
        assert!(
            s.memory_total_bytes > 0 && s.agent_memory_bytes > 0,
            "{s:?}"
        );
        assert!((0.0..=100.0).contains(&s.agent_cpu_percent), "{s:?}");
    }

    #[test]
    fn samples_are_plausible() {
        let mut sampler = MetricsSampler::new(Path::new("."));
        let m = sampler.sample();
        assert!(
            m.memory_total_bytes > 0 && m.memory_used_bytes <= m.memory_total_bytes,
            "{m:?}"
        );
        assert!(
            m.disk_total_bytes > 0 && m.disk_used_bytes <= m.disk_total_bytes,
            "{m:?}"
        );
        assert!((0.0..=100.0).contains(&m.cpu_percent), "{m:?}");
        assert!(m.uptime_secs > 0, "{m:?}");
    }
}
