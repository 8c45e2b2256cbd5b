//! What the server keeps on disk: `<data_dir>/state.redb` and the command log beside it.

pub(crate) mod audit;
pub(crate) mod db;
pub(crate) mod enrollment;
pub(crate) mod overrides;
pub(crate) mod persist;
pub(crate) mod plugins;
pub(crate) mod tokens;
