//! The server's database, `<data_dir>/state.redb`: opened once per server and shared by every
//! part that persists something (plugin registry, API tokens, audit log, agent labels and
//! revocations). redb takes an exclusive lock on the file, so a second `Database` on it would
//! fail; each part owns its own tables instead.
//!
//! A second server on the same data directory fails to start with a message saying the file is
//! locked.

use std::path::Path;
use std::sync::Arc;

use redb::Database;

/// The file name under the data directory.
pub const STATE_DB: &str = "state.redb";

/// Opens (or creates) `<data_dir>/state.redb`.
pub(crate) fn open(data_dir: &Path) -> Result<Arc<Database>, String> {
    let path = data_dir.join(STATE_DB);
    ferry_store::open_database(&path)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "cannot open {}: {e}; is another ferry server using this data directory?",
                path.display()
            )
        })
}
