//! What plugins reach on this host through `ferry-host`'s traits: metrics, a key-value store,
//! and supervised runtimes.

pub mod kv;
pub mod metrics;
pub mod runtimes;
