//! The per-plugin key-value store behind the `ferry:plugin/kv` interface: the agent's
//! [`ferry_host::KvStore`], which the plugin host calls after checking the plugin's grant and
//! the sizes of its keys and values.
//!
//! Storage: one redb database, `<kv_dir>/kv.redb`, with a table per plugin name
//! (`plugin:<name>`), so that a plugin's calls can only ever name its own table. redb rather
//! than a file per key: keys may be up to 1 KiB, longer than a file name may be, so a
//! file-per-key layout would need hashed names with the key stored inside (and `list-keys`
//! reading every file); redb gives crash-safe commits (copy-on-write B-trees, fsync on commit),
//! ordered prefix scans and a single file, and the server is to use it too. A write is durable
//! when `set` or `delete` returns.
//!
//! The database is opened on first use and kept open for as long as the host (redb locks the
//! file: a second agent on the same data directory gets an error saying so from every call).
//! Calls block their thread for the commit's fsync; kv calls are rare next to a plugin's work.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, TableDefinition, TableError};

/// The database's file name in the kv directory.
const FILE: &str = "kv.redb";

/// The store of every plugin of one host: `<dir>/kv.redb`, created on first use, readable by
/// the agent's user alone.
pub struct RedbKvStore {
    dir: PathBuf,
    db: Mutex<Option<Arc<Database>>>,
}

impl RedbKvStore {
    /// A store in `dir`; nothing is opened or created until the first call.
    pub fn new(dir: PathBuf) -> Self {
        RedbKvStore {
            dir,
            db: Mutex::new(None),
        }
    }

    /// The database, opened (and created) on first use; a failed open is retried next call.
    fn db(&self) -> Result<Arc<Database>, String> {
        let mut db = self.db.lock();
        if let Some(db) = &*db {
            return Ok(db.clone());
        }
        create_private_dir(&self.dir).map_err(|e| {
            format!(
                "the agent's key-value store is unavailable: cannot create {}: {e}",
                self.dir.display()
            )
        })?;
        let path = self.dir.join(FILE);
        let opened = Arc::new(ferry_store::open_database(&path).map_err(|e| {
            format!(
                "the agent's key-value store is unavailable: cannot open {}: {e}",
                path.display()
            )
        })?);
        *db = Some(opened.clone());
        Ok(opened)
    }
}

impl ferry_host::KvStore for RedbKvStore {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let name = table_name(plugin);
        let tx = self.db()?.begin_read().map_err(failed)?;
        let table = match tx.open_table(definition(&name)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        Ok(table.get(key).map_err(failed)?.map(|v| v.value().to_vec()))
    }

    fn set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let name = table_name(plugin);
        let tx = self.db()?.begin_write().map_err(failed)?;
        {
            let mut table = tx.open_table(definition(&name)).map_err(failed)?;
            table.insert(key, value).map_err(failed)?;
        }
        tx.commit().map_err(failed)
    }

    fn delete(&self, plugin: &str, key: &str) -> Result<bool, String> {
        let name = table_name(plugin);
        let tx = self.db()?.begin_write().map_err(failed)?;
        let existed = {
            let mut table = tx.open_table(definition(&name)).map_err(failed)?;
            table.remove(key).map_err(failed)?.is_some()
        };
        tx.commit().map_err(failed)?;
        Ok(existed)
    }

    fn list_keys(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, String> {
        let name = table_name(plugin);
        let tx = self.db()?.begin_read().map_err(failed)?;
        let table = match tx.open_table(definition(&name)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(failed(e)),
        };
        let mut keys = Vec::new();
        for entry in table.range::<&str>(prefix..).map_err(failed)? {
            let (key, _) = entry.map_err(failed)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_string());
        }
        Ok(keys)
    }
}

fn definition(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// A plugin's table. Plugin names come from the agent's configuration, never from the plugin.
fn table_name(plugin: &str) -> String {
    format!("plugin:{plugin}")
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("the agent's key-value store failed: {e}")
}

/// Creates `dir` (and its parents), readable by the agent's user alone where that can be said.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
