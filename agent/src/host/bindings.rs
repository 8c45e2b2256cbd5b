//! Rust bindings for the `ferry:plugin@0.1.0` world, generated from `wit/0.1.0`.

wasmtime::component::bindgen!({
    path: "../wit/0.1.0",
    world: "plugin",
    exports: { default: async },
    // Waiting for a child process, or for the server's answer, must not hold a runtime thread.
    imports: {
        "ferry:plugin/process.run": async,
        "ferry:plugin/context.request-data": async,
    },
});
