//! The one list of where a run is and how it ended, with what the rest of ferry derives from
//! it: whether it is final, how a fleet summary buckets it, whether it counts against
//! `max_errors`, and which plugin outcome maps to which status.

use ferry_protocol::Outcome;
use serde::{Deserialize, Serialize};

/// Where one agent's run of a command is in its life, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Being sent to the agent.
    Pending,
    /// The agent accepted it.
    Running,
    /// The plugin returned a result.
    Succeeded,
    /// The plugin refused the payload.
    InvalidInput,
    /// The plugin was not allowed to do what the command needs.
    Denied,
    /// The plugin reported a failure.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
    /// Ran past its timeout.
    TimedOut,
    /// The plugin crashed; the agent kept serving.
    Crashed,
    /// No plugin on the agent handles the topic.
    UnknownTopic,
    /// The agent refused to start it.
    Rejected,
    /// It never reached the agent.
    Undelivered,
    /// The connection to the agent broke before the result arrived.
    Lost,
}

/// The summary bucket a status counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Not sent yet, or sent and not accepted yet.
    Pending,
    /// Running.
    Running,
    /// Succeeded.
    Succeeded,
    /// Any failure but a timeout.
    Failed,
    /// Ran past its timeout.
    TimedOut,
    /// Never ran.
    Undelivered,
    /// Cancelled.
    Cancelled,
}

impl Status {
    /// True once the run has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    /// Does a run that ended so count against a command's `max_errors`? Only runs that ran and
    /// did not succeed: undelivered ones never ran, and cancelled ones were stopped on purpose.
    pub fn is_error(self) -> bool {
        self.is_final()
            && !matches!(
                self,
                Status::Succeeded | Status::Undelivered | Status::Cancelled
            )
    }

    /// The summary bucket it counts in.
    pub fn bucket(self) -> Bucket {
        match self {
            Status::Pending => Bucket::Pending,
            Status::Running => Bucket::Running,
            Status::Succeeded => Bucket::Succeeded,
            Status::TimedOut => Bucket::TimedOut,
            Status::Undelivered => Bucket::Undelivered,
            Status::Cancelled => Bucket::Cancelled,
            Status::InvalidInput
            | Status::Denied
            | Status::Failed
            | Status::Crashed
            | Status::UnknownTopic
            | Status::Rejected
            | Status::Lost => Bucket::Failed,
        }
    }

    /// The status of a run whose agent reported `outcome`.
    pub fn from_outcome(outcome: &Outcome) -> Status {
        match outcome {
            Outcome::Succeeded => Status::Succeeded,
            Outcome::InvalidInput(_) => Status::InvalidInput,
            Outcome::Denied(_) => Status::Denied,
            Outcome::Failed(_) => Status::Failed,
            Outcome::Cancelled => Status::Cancelled,
            Outcome::TimedOut => Status::TimedOut,
            Outcome::Crashed(_) => Status::Crashed,
            Outcome::UnknownTopic(_) => Status::UnknownTopic,
            Outcome::Rejected(_) => Status::Rejected,
        }
    }
}
