//! The agents' side of the server: QUIC connections, their control sessions and the streams
//! on them, each a thin driver of a `ferry_lifecycle` machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::domain::plugins::PluginRegistry;
use crate::domain::ports::CommandLog;
use crate::domain::runs::RunStore;
use crate::storage::enrollment::Enrollment;
use crate::storage::overrides::Overrides;

pub(crate) mod accept;
pub(crate) mod dispatch;
pub(crate) mod enroll;
pub(crate) mod fetch;
pub(crate) mod streams;

impl crate::domain::ports::Link for quinn::Connection {
    fn remote_address(&self) -> String {
        quinn::Connection::remote_address(self).to_string()
    }

    fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    fn close(&self, code: u32, reason: &str) {
        quinn::Connection::close(self, code.into(), reason.as_bytes());
    }
}

/// The registry of agents over their QUIC connections.
pub(crate) type Agents = crate::domain::agents::Registry<quinn::Connection>;

/// What the agents' side of the server needs: each connection's task gets these handles (and
/// not the operator API's tokens, audit log or commands).
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) registry: Arc<Agents>,
    /// Every agent's run of a command: report streams deliver results to them.
    pub(crate) runs: Arc<RunStore>,
    pub(crate) plugins: Arc<PluginRegistry>,
    pub(crate) enrollment: Arc<Enrollment>,
    /// Revocations (refused at admission) and the labels enrollment sets.
    pub(crate) overrides: Arc<Overrides>,
    /// Where agents as last seen are written, for listings after a restart.
    pub(crate) log: Arc<dyn CommandLog>,
    /// Every connection's and stream's task; shutdown waits for them.
    pub(crate) tasks: TaskTracker,
    pub(crate) stop: CancellationToken,
    pub(crate) sessions: AtomicU64,
}

impl Shared {
    /// A session number never used before, in this run or (from a random start) an earlier one.
    pub(crate) fn next_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed)
    }
}
