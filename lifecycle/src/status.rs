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
    /// Every status, in the order above.
    pub const ALL: &'static [Status] = &[
        Status::Pending,
        Status::Running,
        Status::Succeeded,
        Status::InvalidInput,
        Status::Denied,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
        Status::Crashed,
        Status::UnknownTopic,
        Status::Rejected,
        Status::Undelivered,
        Status::Lost,
    ];

    /// Its name, as the API, the CLI and cases files write it (`timed-out`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::InvalidInput => "invalid-input",
            Status::Denied => "denied",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed-out",
            Status::Crashed => "crashed",
            Status::UnknownTopic => "unknown-topic",
            Status::Rejected => "rejected",
            Status::Undelivered => "undelivered",
            Status::Lost => "lost",
        }
    }

    /// Can a plugin's run end so, as [`Status::from_outcome`] maps what the agent reports?
    /// The others are the server's: where a run is, or that it never ran or never came back.
    pub fn is_outcome(self) -> bool {
        self.is_final() && !matches!(self, Status::Undelivered | Status::Lost)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_wire_names_and_outcomes_are_what_from_outcome_makes() {
        for status in Status::ALL {
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.name()));
        }
        let outcomes = [
            Outcome::Succeeded,
            Outcome::InvalidInput(String::new()),
            Outcome::Denied(String::new()),
            Outcome::Failed(String::new()),
            Outcome::Cancelled,
            Outcome::TimedOut,
            Outcome::Crashed(String::new()),
            Outcome::UnknownTopic(String::new()),
            Outcome::Rejected(String::new()),
        ];
        let made: Vec<Status> = outcomes.iter().map(Status::from_outcome).collect();
        for status in Status::ALL {
            assert_eq!(status.is_outcome(), made.contains(status), "{status:?}");
        }
        for outcome in &outcomes {
            assert_eq!(Status::from_outcome(outcome).name(), outcome.name());
        }
    }
}
