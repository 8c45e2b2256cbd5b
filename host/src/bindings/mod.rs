//! The `ferry:plugin` versions this host serves, each through bindings of its own (Zed's
//! extension host is the model): a module `since_v<version>` per frozen `wit/<version>/`, with
//! its own `bindgen!` and the adapters between that version's types and the host's, and
//! [`latest`] naming the newest.
//!
//! A plugin is served by the version whose `ferry:plugin/handler@<version>` it exports
//! ([`Version::of`]); the linker holds every served version's imports at once, since their
//! names differ by version. The versions are `ferry_protocol::WIT_VERSIONS` and nothing else:
//! a test checks that [`Version::ALL`] is exactly that list.
//!
//! A new version: copy `wit/<latest>/` to `wit/<next>/`, add it to `WIT_VERSIONS`, add a module
//! `since_v<next>` (a copy of `latest`'s, its `bindgen!` pointed at the new folder), a
//! [`Version`] case and the arms that go with it here, and move `latest` to it
//! (docs/ARCHITECTURE.md, *`wit/`*).

use wasmtime::Store;
use wasmtime::component::{InstancePre, Linker};

use super::InvokeError;
use super::state::State;

pub(crate) mod since_v0_1_0;

/// The newest served version's bindings: the one `ferry plugin new` builds plugins against.
pub(crate) use since_v0_1_0 as latest;

/// The prefix of the interface a plugin exports; its version follows the `@`.
pub(crate) const HANDLER: &str = "ferry:plugin/handler@";

/// A version of the `ferry:plugin` world this host serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V0_1_0,
}

impl Version {
    /// Every served version, oldest first.
    pub(crate) const ALL: &[Version] = &[Version::V0_1_0];

    /// Its number, as in `wit/<number>/` and `ferry_protocol::WIT_VERSIONS`.
    pub(crate) fn number(self) -> &'static str {
        match self {
            Version::V0_1_0 => since_v0_1_0::VERSION,
        }
    }

    /// The served version numbered `number`, if this host serves it.
    pub(crate) fn of(number: &str) -> Option<Version> {
        Self::ALL.iter().copied().find(|v| v.number() == number)
    }

    /// The interface a plugin for this version exports.
    pub(crate) fn handler_export(self) -> String {
        format!("{HANDLER}{}", self.number())
    }

    /// The type `handle` has in this version, as `check.rs` renders types.
    pub(crate) fn handle_type(self) -> &'static str {
        match self {
            Version::V0_1_0 => since_v0_1_0::HANDLE_TYPE,
        }
    }

    /// Typed access to a pre-instantiated plugin of this version.
    pub(crate) fn pre(self, pre: InstancePre<State>) -> wasmtime::Result<PluginPre> {
        Ok(match self {
            Version::V0_1_0 => PluginPre::V0_1_0(since_v0_1_0::PluginPre::new(pre)?),
        })
    }
}

/// The served versions for a message, e.g. `0.1.0` or `0.1.0, 0.2.0`.
pub(crate) fn served() -> String {
    Version::ALL
        .iter()
        .map(|v| v.number())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `ferry:plugin` interface, which each version's bindings link: `Context` (with `types`)
/// is every plugin's, the others are the capabilities' (their `add_to_linker` hooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interface {
    Context,
    Process,
    Metrics,
    Kv,
    Runtimes,
    Agent,
}

/// Adds `interface`, of every served version that has it, to `linker`.
pub(crate) fn link(linker: &mut Linker<State>, interface: Interface) -> wasmtime::Result<()> {
    since_v0_1_0::link(linker, interface)?;
    Ok(())
}

/// Adds what every plugin gets, of every served version: `types` and `context`.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    link(linker, Interface::Context)
}

/// One command as a plugin of any version gets it.
pub(crate) struct Command {
    pub(crate) id: String,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: String,
}

/// A plugin linked and pre-instantiated against its version's bindings.
pub(crate) enum PluginPre {
    V0_1_0(since_v0_1_0::PluginPre<State>),
}

impl PluginPre {
    /// The version it was built for.
    pub(crate) fn version(&self) -> Version {
        match self {
            PluginPre::V0_1_0(_) => Version::V0_1_0,
        }
    }

    pub(crate) async fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Plugin> {
        Ok(match self {
            PluginPre::V0_1_0(pre) => Plugin::V0_1_0(pre.instantiate_async(store).await?),
        })
    }
}

/// An instance of a plugin, in its store.
pub(crate) enum Plugin {
    V0_1_0(since_v0_1_0::Plugin),
}

impl Plugin {
    /// Calls its `handle`: the outer error is a trap, the inner one how the plugin said it
    /// failed.
    pub(crate) async fn handle(
        &self,
        store: &mut Store<State>,
        cmd: Command,
    ) -> wasmtime::Result<Result<Vec<u8>, InvokeError>> {
        match self {
            Plugin::V0_1_0(plugin) => since_v0_1_0::handle(plugin, store, cmd).await,
        }
    }
}
