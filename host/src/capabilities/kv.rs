//! The `kv` capability: `ferry:plugin/kv` stores into a [`KvStore`], supplied by whoever runs
//! the host (the agent passes a redb database in its data directory), for plugins granted
//! `kv`.
//!
//! The host names the plugin on every call, from the name it was loaded under, never from the
//! plugin, so a plugin can only ever reach its own namespace; and it checks keys and values
//! against [`MAX_KEY_BYTES`] and [`MAX_VALUE_BYTES`] before the store sees them.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{Grantee, Switch};
use crate::bindings::{self, Interface};
use crate::state::State;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// The store behind `ferry:plugin/kv` ([`HostConfig::kv`](crate::HostConfig::kv)): a namespace
/// of keys per plugin name. Keys reaching it are non-empty and at most [`MAX_KEY_BYTES`] long,
/// values at most [`MAX_VALUE_BYTES`]. Errors are the messages the plugin gets.
///
/// Called in the middle of wasm execution, on the invoking task's thread; a write is durable
/// (as far as the store goes) when it returns.
pub trait KvStore: Send + Sync {
    /// The value of `key` in `plugin`'s namespace.
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Sets `key` to `value` in `plugin`'s namespace.
    fn set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), String>;
    /// Removes `key` from `plugin`'s namespace; whether it was there.
    fn delete(&self, plugin: &str, key: &str) -> Result<bool, String>;
    /// The keys of `plugin`'s namespace that start with `prefix`, in order.
    fn list_keys(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, String>;
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key must not be empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key is {} bytes long; keys are at most {MAX_KEY_BYTES} bytes",
            key.len()
        ));
    }
    Ok(())
}

fn check_value(key: &str, value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value for key {key:?} is {} bytes; values are at most {MAX_VALUE_BYTES} bytes (1 MiB)",
            value.len()
        ));
    }
    Ok(())
}

/// A loaded plugin's `kv`: its grant, its namespace, and the host's store.
pub(crate) struct Kv {
    pub(super) granted: Switch,
    grantee: Arc<Grantee>,
    store: Option<Arc<dyn KvStore>>,
}

impl Kv {
    pub(crate) fn new(
        granted: Switch,
        grantee: &Arc<Grantee>,
        store: Option<Arc<dyn KvStore>>,
    ) -> Self {
        Kv {
            granted,
            grantee: grantee.clone(),
            store,
        }
    }

    fn store(&self) -> Result<&dyn KvStore, String> {
        self.granted.check()?;
        self.store.as_deref().ok_or_else(|| {
            "the key-value store is unavailable: no key-value directory is configured on this agent".into()
        })
    }

    /// The plugin's namespace: the name it was loaded under, never the plugin's say.
    fn namespace(&self) -> &str {
        &self.grantee.plugin
    }

    // Keys and values are checked before the store is reached: a plugin gets the same answer
    // whatever the store, and the store only ever sees what fits.

    /// `kv.get`.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let store = self.store()?;
        check_key(key)?;
        store.get(self.namespace(), key)
    }

    /// `kv.set`.
    pub(crate) fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let store = self.store()?;
        check_key(key)?;
        check_value(key, value)?;
        store.set(self.namespace(), key, value)
    }

    /// `kv.delete`.
    pub(crate) fn delete(&self, key: &str) -> Result<bool, String> {
        let store = self.store()?;
        check_key(key)?;
        store.delete(self.namespace(), key)
    }

    /// `kv.list-keys`.
    pub(crate) fn list_keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let store = self.store()?;
        // No key is longer than this, so none starts with it.
        if prefix.len() > MAX_KEY_BYTES {
            return Ok(Vec::new());
        }
        store.list_keys(self.namespace(), prefix)
    }
}

/// Links `ferry:plugin/kv`.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    bindings::link(linker, Interface::Kv)
}
