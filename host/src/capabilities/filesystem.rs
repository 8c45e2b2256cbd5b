//! The `filesystem` capability, served by WASI: each granted directory is preopened at its own
//! path, read-only or read-write. Escapes are wasmtime-wasi's to refuse: preopened directories
//! are capability handles (cap-std), so `..` and symlinks cannot lead out of them.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_manifest::{Access, FsEntry};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::{CommandEvents, LogLevel};

/// A loaded plugin's granted directories.
#[derive(Debug)]
pub(crate) struct Filesystem {
    entries: Vec<FsEntry>,
}

impl Filesystem {
    pub(crate) fn new(entries: &[FsEntry]) -> Self {
        Filesystem {
            entries: entries.to_vec(),
        }
    }

    /// The granted directories (where the plugin's programs may run).
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        self.entries.iter().map(|e| e.path.clone()).collect()
    }

    /// Preopens each granted directory for one invocation. One that cannot be opened on this
    /// host is left out, with a warning in the command's log rather than a failed command.
    pub(crate) fn configure(&self, builder: &mut WasiCtxBuilder, events: &Arc<dyn CommandEvents>) {
        for entry in &self.entries {
            let perms = match entry.access {
                Access::ReadOnly => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            let guest = entry.path.to_string_lossy();
            if let Err(e) = builder.preopened_dir(&entry.path, guest.as_ref(), perms) {
                events.log(
                    LogLevel::Warn,
                    format!(
                        "the granted directory {} cannot be opened on this host ({e}); the plugin runs without it",
                        entry.path.display()
                    ),
                );
            }
        }
    }
}
