//! The `decommission` capability: `ferry:plugin/agent.decommission`, which removes the agent
//! for good. The removal is per command ([`CommandEvents::decommission`](crate::CommandEvents::decommission):
//! the agent does it once that command's result is out); this is the grant and the link.

use wasmtime::component::Linker;

use super::Switch;
use crate::bindings::{self, Interface};
use crate::state::State;

/// A loaded plugin's `decommission`: its grant.
pub(crate) struct Decommission {
    pub(super) granted: Switch,
}

impl Decommission {
    pub(crate) fn new(granted: Switch) -> Self {
        Decommission { granted }
    }

    /// Fails unless the plugin may decommission the agent.
    pub(crate) fn check(&self) -> Result<(), String> {
        self.granted.check()
    }
}

/// Links `ferry:plugin/agent`.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    bindings::link(linker, Interface::Agent)
}
