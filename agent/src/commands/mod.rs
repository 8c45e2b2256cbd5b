//! Commands on the agent: the executor (a driver of `ferry_lifecycle::command`), the journal
//! that makes each command id run at most once, and the routes from topics to plugins.

pub(crate) mod executor;
pub(crate) mod journal;
pub(crate) mod routes;
