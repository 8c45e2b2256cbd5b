//! The `request_data` capability: `context.request-data`, which asks the server for data the
//! command needs. The asking is per command ([`CommandEvents::request_data`](crate::CommandEvents::request_data):
//! the agent answers on the command's stream); this is only the grant. `context` is every
//! plugin's interface, so there is nothing of its own to link.

use super::Switch;

/// A loaded plugin's `request_data`: its grant.
pub(crate) struct RequestData {
    pub(super) granted: Switch,
}

impl RequestData {
    pub(crate) fn new(granted: Switch) -> Self {
        RequestData { granted }
    }

    /// Fails unless the plugin may ask the server for data.
    pub(crate) fn check(&self) -> Result<(), String> {
        self.granted.check()
    }
}
