//! Rust bindings for the `ferry:plugin@0.1.0` world, generated from `wit/0.1.0`.

/// The version these bindings are generated from (the `path` below): a test checks that it is
/// exactly `ferry_protocol::WIT_VERSIONS`. A new version gets its own bindings beside these.
#[cfg(test)]
pub(crate) const BOUND: &[&str] = &["0.1.0"];

wasmtime::component::bindgen!({
    path: "../wit/0.1.0",
    world: "plugin",
    exports: { default: async },
    // Waiting for a child process, or for the server's answer, must not hold a runtime thread.
    imports: {
        "ferry:plugin/process.run": async,
        "ferry:plugin/process.run-with": async,
        "ferry:plugin/context.request-data": async,
        // Stopping a runtime waits for its process group to go.
        "ferry:plugin/runtimes.stop": async,
        "ferry:plugin/runtimes.restart": async,
        "ferry:plugin/runtimes.delete": async,
    },
});
