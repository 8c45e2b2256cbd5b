//! What ferry is about, apart from how it is carried and kept: agents, commands and their
//! runs, plugins. Nothing here imports a transport (quinn), the operator API (axum) or a
//! storage engine (redb); see docs/ARCHITECTURE.md.

pub(crate) mod agents;
pub(crate) mod commands;
pub(crate) mod plugins;
pub(crate) mod runs;
