//! The agent's session with its server: connecting (with backoff), the control session,
//! renewing its certificate, and enrolling with a join token.

use std::time::Duration;

use ferry_protocol::tls::{self, Identity, TlsError, TransportSettings};

use crate::config::AgentConfig;

pub(crate) mod backoff;
pub(crate) mod connection;
pub mod enroll;
pub(crate) mod renew;

/// Where the agent's connection to its server stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// Trying to connect (attempt number since the last session).
    Connecting {
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// Welcomed by the server.
    Connected {
        /// The server's session id.
        session: String,
    },
    /// Waiting before the next attempt.
    Disconnected {
        /// Why the last attempt or session ended.
        reason: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// The agent stopped.
    Stopped,
    /// The agent was decommissioned: it told the server it is leaving for good, removed what
    /// its configuration says, and stopped.
    Removed {
        /// Why, as the plugin that removed it said.
        reason: String,
    },
}

/// The QUIC client configuration for `identity` and the configured CA.
pub(crate) fn client_config(
    config: &AgentConfig,
    identity: Identity,
) -> Result<quinn::ClientConfig, TlsError> {
    let roots = tls::roots_from_pem_file(&config.ca)?;
    let transport = TransportSettings {
        keep_alive: config.keep_alive,
        idle_timeout: config.idle_timeout,
        max_incoming_bidi_streams: config.max_concurrent_commands,
    };
    tls::client_config(identity, roots, &transport)
}
