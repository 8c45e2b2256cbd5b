//! Protocol-version negotiation.
//!
//! `negotiate` picks the newest version both ranges share; its `Reject` names both ranges and which
//! side to upgrade.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::{Reject, RejectCode};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The range of protocol versions this build speaks (both ends included).
pub const SUPPORTED: VersionRange = VersionRange {
    min: PROTOCOL_VERSION,
    max: PROTOCOL_VERSION,
};

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u32,
    /// Newest version spoken.
    pub max: u32,
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "v{}", self.min)
        } else {
            write!(f, "v{}–v{}", self.min, self.max)
        }
    }
}

/// Picks the newest version both sides speak, or the `Reject` the server sends when there is
/// none (it names both ranges, so the operator knows which side to upgrade).
pub fn negotiate(server: VersionRange, agent: VersionRange) -> Result<u32, Reject> {
    let low = server.min.max(agent.min);
    let high = server.max.min(agent.max);
    if agent.min <= agent.max && low <= high {
        return Ok(high);
    }
    let advice = if agent.min > agent.max {
        "the agent sent an empty range; it is broken, reinstall it".to_string()
    } else if agent.max < server.min {
        "the agent is too old for this server: upgrade the agent".to_string()
    } else {
        "the agent is newer than this server: upgrade the server".to_string()
    };
    Err(Reject {
        code: RejectCode::UnsupportedVersion,
        message: format!(
            "no common protocol version: server speaks {server}, agent speaks {agent}; {advice}"
        ),
        retry_after_ms: None,
        redirect: None,
        server_protocol: Some(server),
        agent_protocol: Some(agent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u32, max: u32) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn picks_the_newest_common_version() {
        assert_eq!(negotiate(r(1, 3), r(2, 5)), Ok(3));
        assert_eq!(negotiate(r(1, 1), r(1, 1)), Ok(1));
        assert_eq!(negotiate(r(2, 4), r(1, 2)), Ok(2));
    }

    #[test]
    fn rejects_disjoint_ranges_naming_both() {
        let reject = negotiate(r(2, 3), r(1, 1)).unwrap_err();
        assert_eq!(reject.code, RejectCode::UnsupportedVersion);
        assert_eq!(reject.server_protocol, Some(r(2, 3)));
        assert_eq!(reject.agent_protocol, Some(r(1, 1)));
        assert!(
            reject.message.contains("upgrade the agent"),
            "{}",
            reject.message
        );
        let reject = negotiate(r(1, 1), r(4, 9)).unwrap_err();
        assert!(
            reject.message.contains("upgrade the server"),
            "{}",
            reject.message
        );
        assert!(reject.message.contains("v4–v9"), "{}", reject.message);
    }

    #[test]
    fn rejects_an_empty_agent_range() {
        assert!(negotiate(r(1, 5), r(3, 2)).is_err());
    }
}
