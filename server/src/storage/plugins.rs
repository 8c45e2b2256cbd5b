//! Where the plugin registry lives on disk.
//!
//! Package bytes are files named by their digest under `<data_dir>/plugins/` (content-addressed:
//! the same bytes pushed twice are one file, and a JavaScript or Python package of 10–20 MB
//! stays out of the database). What the registry knows about them (name, version, signature,
//! topics) and the assignment history are in redb, `<data_dir>/state.redb`, committed (and
//! fsynced) before a push or an assignment is acknowledged. A package file is written before
//! its record, so a crash in between leaves at most an unreferenced file, never a record
//! without bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_protocol::package::Digest;
use ferry_protocol::pki::write_file;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::domain::plugins::{Change, PackageRecord, StoredHistory};
use crate::domain::ports::{PluginStorage, StoredPlugins};

/// `name@version` → the package record, as JSON.
const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_packages");
/// plugin name → its assignment history, as JSON (the last entry is the current one).
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_assignments");

pub(crate) struct PluginStore {
    blobs: PathBuf,
    db: Arc<Database>,
}

impl PluginStore {
    /// `db` is the server's shared `state.redb` (see `crate::storage::db`).
    pub(crate) fn open(data_dir: &Path, db: Arc<Database>) -> Result<PluginStore, String> {
        let blobs = data_dir.join("plugins");
        std::fs::create_dir_all(&blobs)
            .map_err(|e| format!("cannot create {}: {e}", blobs.display()))?;
        // Create the tables, so that reads never meet a missing one.
        let tx = db.begin_write().map_err(failed)?;
        tx.open_table(PACKAGES).map_err(failed)?;
        tx.open_table(ASSIGNMENTS).map_err(failed)?;
        tx.commit().map_err(failed)?;
        Ok(PluginStore { blobs, db })
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
    ) -> Result<(), String> {
        let tx = self.db.begin_write().map_err(failed)?;
        tx.open_table(table)
            .map_err(failed)?
            .insert(key, value)
            .map_err(failed)?;
        tx.commit().map_err(failed)
    }
}

impl PluginStorage for PluginStore {
    fn load(&self) -> Result<StoredPlugins, String> {
        let tx = self.db.begin_read().map_err(failed)?;
        let mut packages = Vec::new();
        for entry in tx
            .open_table(PACKAGES)
            .map_err(failed)?
            .iter()
            .map_err(failed)?
        {
            let (key, value) = entry.map_err(failed)?;
            let record: PackageRecord = serde_json::from_slice(value.value())
                .map_err(|e| format!("the record of plugin {} is damaged: {e}", key.value()))?;
            packages.push(record);
        }
        let mut histories = Vec::new();
        for entry in tx
            .open_table(ASSIGNMENTS)
            .map_err(failed)?
            .iter()
            .map_err(failed)?
        {
            let (key, value) = entry.map_err(failed)?;
            let history: StoredHistory = serde_json::from_slice(value.value()).map_err(|e| {
                format!("the assignments of plugin {} are damaged: {e}", key.value())
            })?;
            histories.push((key.value().to_string(), history));
        }
        Ok(StoredPlugins {
            packages,
            histories,
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(format!("{digest}.pkg"))
    }

    /// Writes a package's bytes unless a file of that digest is already there.
    fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), String> {
        let path = self.blob_path(digest);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(());
        }
        write_file(&path, bytes, false).map_err(|e| e.to_string())
    }

    fn put_package(&self, record: &PackageRecord) -> Result<(), String> {
        let key = format!("{}@{}", record.name, record.version);
        let value = serde_json::to_vec(record).expect("a record serializes");
        self.put(PACKAGES, &key, &value)
    }

    fn put_history(&self, name: &str, history: &[Change]) -> Result<(), String> {
        let value = serde_json::to_vec(history).expect("a history serializes");
        self.put(ASSIGNMENTS, name, &value)
    }

    /// Removes a version's record, and the plugin's history with it when `whole`; in one
    /// transaction, so a crash leaves either all of it or none.
    fn delete(&self, name: &str, versions: &[String], whole: bool) -> Result<(), String> {
        let tx = self.db.begin_write().map_err(failed)?;
        {
            let mut packages = tx.open_table(PACKAGES).map_err(failed)?;
            for version in versions {
                packages
                    .remove(format!("{name}@{version}").as_str())
                    .map_err(failed)?;
            }
            if whole {
                tx.open_table(ASSIGNMENTS)
                    .map_err(failed)?
                    .remove(name)
                    .map_err(failed)?;
            }
        }
        tx.commit().map_err(failed)
    }

    /// Removes a package file no record refers to any more (already gone is fine).
    fn delete_blob(&self, digest: &Digest) -> Result<(), String> {
        match std::fs::remove_file(self.blob_path(digest)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("the server's plugin registry failed: {e}")
}
