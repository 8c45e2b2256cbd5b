//! What the `ferry:plugin/kv` interface stores into: a [`KvStore`], supplied by whoever runs
//! the host (the agent passes a redb database in its data directory).
//!
//! The host names the plugin on every call, from the name it was loaded under, never from the
//! plugin, so a plugin can only ever reach its own namespace; and it checks keys and values
//! against [`MAX_KEY_BYTES`] and [`MAX_VALUE_BYTES`] before the store sees them.

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

pub(crate) fn check_key(key: &str) -> Result<(), String> {
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

pub(crate) fn check_value(key: &str, value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value for key {key:?} is {} bytes; values are at most {MAX_VALUE_BYTES} bytes (1 MiB)",
            value.len()
        ));
    }
    Ok(())
}
