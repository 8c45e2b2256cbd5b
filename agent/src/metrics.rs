//! Host metrics for heartbeats, read with `sysinfo`.

use std::path::{Path, PathBuf};

use ferry_protocol::HostMetrics;
use sysinfo::{Disks, System};

/// Samples the host. CPU use is measured between two samples, so keep one sampler and call
/// [`MetricsSampler::sample`] once per interval.
pub struct MetricsSampler {
    system: System,
    disks: Disks,
    data_dir: PathBuf,
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

#[cfg(test)]
mod tests {
    use super::*;

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
