//! What ferry is about, apart from how it is carried and kept: agents, commands and their
//! runs, plugins. Nothing here imports a transport (quinn), the operator API (axum) or a
//! storage engine (redb); see docs/ARCHITECTURE.md.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

pub(crate) mod agents;
pub(crate) mod commands;
pub(crate) mod events;
pub(crate) mod plugins;
pub(crate) mod ports;
pub(crate) mod records;
pub(crate) mod runs;

/// Data an operator supplied for plugins to ask for by key (`request-data`), looked up after
/// the command's own; shared by the operator API (which sets it) and the runs (which read it).
pub(crate) type ServerData = Arc<RwLock<BTreeMap<String, Arc<[u8]>>>>;
