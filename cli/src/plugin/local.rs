//! What `ferry plugin test` gives plugins granted `metrics` and `kv`, in place of an agent's
//! sampled history and redb store: a sample of this machine taken when asked, and keys kept in
//! memory for the run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_host::metrics::Sample;
use ferry_host::{KvStore, MetricsSource};
use sysinfo::{Disks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// This machine's metrics, with this process's: `now` samples them; nothing is recorded, so
/// `history` is empty.
pub struct Metrics {
    sampler: Mutex<Sampler>,
}

struct Sampler {
    system: System,
    disks: Disks,
    /// Disk figures are those of the volume holding this directory.
    dir: std::path::PathBuf,
    pid: Option<Pid>,
}

impl Metrics {
    /// A source whose disk figures are those of the volume holding `dir`.
    pub fn new(dir: &Path) -> Self {
        let mut system = System::new();
        // The first CPU reading is a baseline; the next sample reports use since then.
        system.refresh_cpu_usage();
        Metrics {
            sampler: Mutex::new(Sampler {
                system,
                disks: Disks::new_with_refreshed_list(),
                dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
                pid: sysinfo::get_current_pid().ok(),
            }),
        }
    }
}

impl MetricsSource for Metrics {
    fn now(&self) -> Sample {
        let mut guard = self.sampler.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        s.system.refresh_cpu_usage();
        s.system.refresh_memory();
        s.disks.refresh(true);
        // The volume is the disk with the longest mount point that contains the directory.
        let disk = s
            .disks
            .list()
            .iter()
            .filter(|d| s.dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        let (disk_total, disk_available) =
            disk.map_or((0, 0), |d| (d.total_space(), d.available_space()));
        let (mut own_cpu, mut own_memory) = (0.0, 0);
        if let Some(pid) = s.pid {
            s.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            if let Some(process) = s.system.process(pid) {
                // sysinfo counts a process's CPU in percent of one core; a share of the whole
                // machine compares with the machine's figure.
                let cores = s.system.cpus().len().max(1) as f32;
                own_cpu = (process.cpu_usage() / cores).clamp(0.0, 100.0);
                own_memory = process.memory();
            }
        }
        Sample {
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            cpu_percent: s.system.global_cpu_usage(),
            memory_used_bytes: s.system.used_memory(),
            memory_total_bytes: s.system.total_memory(),
            disk_used_bytes: disk_total.saturating_sub(disk_available),
            disk_total_bytes: disk_total,
            agent_cpu_percent: own_cpu,
            agent_memory_bytes: own_memory,
        }
    }

    fn history(&self, _period: Duration) -> Vec<Sample> {
        Vec::new()
    }
}

/// Keys in memory, a namespace per plugin, gone with the run.
#[derive(Default)]
pub struct Kv {
    keys: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl Kv {
    fn keys(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Vec<u8>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KvStore for Kv {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.keys().get(&(plugin.into(), key.into())).cloned())
    }

    fn set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.keys()
            .insert((plugin.into(), key.into()), value.to_vec());
        Ok(())
    }

    fn delete(&self, plugin: &str, key: &str) -> Result<bool, String> {
        Ok(self.keys().remove(&(plugin.into(), key.into())).is_some())
    }

    fn list_keys(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, String> {
        let keys = self.keys();
        Ok(keys
            .range((plugin.to_string(), prefix.to_string())..)
            .take_while(|((p, k), _)| p == plugin && k.starts_with(prefix))
            .map(|((_, k), _)| k.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keeps_plugins_apart_and_lists_by_prefix() {
        let kv = Kv::default();
        kv.set("a", "k1", b"1").unwrap();
        kv.set("a", "k2", b"2").unwrap();
        kv.set("a", "x", b"3").unwrap();
        kv.set("b", "k3", b"4").unwrap();
        assert_eq!(kv.list_keys("a", "k").unwrap(), ["k1", "k2"]);
        assert_eq!(kv.list_keys("b", "").unwrap(), ["k3"]);
        assert_eq!(kv.get("b", "k1").unwrap(), None);
        assert!(kv.delete("a", "k1").unwrap());
        assert!(!kv.delete("a", "k1").unwrap());
        assert_eq!(kv.list_keys("a", "").unwrap(), ["k2", "x"]);
    }

    #[test]
    fn metrics_now_is_plausible() {
        let metrics = Metrics::new(Path::new("."));
        let sample = metrics.now();
        assert!(sample.memory_total_bytes > 0);
        assert!(sample.memory_used_bytes <= sample.memory_total_bytes);
        assert!(metrics.history(Duration::from_secs(60)).is_empty());
    }
}
