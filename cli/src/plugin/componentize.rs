//! Turning a core wasm module (what clang and Go emit) into a ferry plugin component, and
//! generating C bindings, inside `ferry` itself: no `wasm-tools` or `wit-bindgen` binary is
//! needed, and the versions match the wasmtime the agent runs (`wit-component` 0.254, the
//! preview-1 adapter of wasmtime 48, `wit-bindgen-c` 0.60).
//!
//! C bindings come from the project's WIT through the `wit-bindgen-c` crate (0.60, the release on
//! the same `wit-parser` and `wit-component` 0.254 as wasmtime 48, so nothing is compiled twice),
//! at every build, so they always match the project's WIT. A core module becomes a component with
//! `wit-component` and the WASI preview-1 *reactor* adapter from
//! `wasi-preview1-component-adapter-provider` (the adapter of the wasmtime release the agent runs).
//! Go's module gets the world's type embedded first, and the adapter allocates by growing memory,
//! since Go's `cabi_realloc` serves only the host's lowering.

use std::path::Path;

use anyhow::{Result, anyhow};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_bindgen_core::Files;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{Resolve, WorldId};

/// The world every ferry plugin of this WIT version targets.
pub const WORLD: &str = "plugin";

/// The WIT package in `wit_dir` (e.g. `wit/0.1.0`) and its `plugin` world.
pub fn load_world(wit_dir: &Path) -> Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path(wit_dir).map_err(|e| {
        anyhow!(
            "the plugin interface in {} does not parse: {e:#}; it is a copy `ferry plugin new` \
             wrote, restore it from a new project",
            wit_dir.display()
        )
    })?;
    let world = resolve
        .select_world(&[package], Some(WORLD))
        .map_err(|e| anyhow!("{} has no world `{WORLD}`: {e:#}", wit_dir.display()))?;
    Ok((resolve, world))
}

/// The C bindings for the world, by file name: `plugin.h`, `plugin.c`, and
/// `plugin_component_type.o`, which carries the world's type into the linked module.
pub fn c_bindings(wit_dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let (mut resolve, world) = load_world(wit_dir)?;
    let opts = wit_bindgen_c::Opts::default();
    let mut files = Files::default();
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| {
            anyhow!(
                "cannot generate the C bindings from {}: {e:#}",
                wit_dir.display()
            )
        })?;
    Ok(files
        .iter()
        .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
        .collect())
}

/// Options for [`component`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Let the adapter allocate by growing memory rather than through the module's
    /// `cabi_realloc`. Go needs it: its `cabi_realloc` must not be re-entered by the adapter.
    pub realloc_via_memory_grow: bool,
    /// Embed the world's type in the module first; not needed when the module already carries
    /// it (C, from the bindings' object file).
    pub embed_world: bool,
}

/// Turns a WASI preview-1 core module into a component of the `plugin` world in `wit_dir`:
/// embeds the world's type (if asked), then adapts preview 1 to WASI 0.2 with the reactor adapter of the
/// wasmtime release the agent runs.
pub fn component(
    module: &[u8],
    module_name: &str,
    wit_dir: &Path,
    options: Options,
) -> Result<Vec<u8>> {
    let (resolve, world) = load_world(wit_dir)?;
    let encode_error = |e: anyhow::Error| {
        // The version of the WIT the project builds against, which may be an older frozen one.
        let version = resolve.worlds[world]
            .package
            .and_then(|p| resolve.packages[p].name.version.as_ref())
            .map_or_else(|| ferry_protocol::WIT_LATEST.to_string(), |v| v.to_string());
        anyhow!(
            "{module_name} cannot become a ferry plugin component: {e:#}\n(it must export \
             `ferry:plugin/handler@{version}#handle` and `cabi_realloc`, and import only WASI \
             preview 1 and `ferry:plugin/*@{version}` functions)"
        )
    };
    let mut module = module.to_vec();
    if options.embed_world {
        wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
            .map_err(encode_error)?;
    }
    ComponentEncoder::default()
        .validate(true)
        .realloc_via_memory_grow(options.realloc_via_memory_grow)
        .module(&module)
        .and_then(|encoder| {
            encoder.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|mut encoder| encoder.encode())
        .map_err(encode_error)
}

/// Whether `bytes` is a component (not a core module, not something else).
pub fn is_component(bytes: &[u8]) -> bool {
    // The preamble: magic, then version 0x0d and layer 1 (a core module has layer 0).
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/0.1.0")
    }

    #[test]
    fn generates_c_bindings_for_the_world() {
        let files = c_bindings(&wit_dir()).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["plugin.c", "plugin.h", "plugin_component_type.o"]);
        let header = String::from_utf8(files[1].1.clone()).unwrap();
        assert!(
            header.contains("exports_ferry_plugin_handler_handle"),
            "{header}"
        );
        assert!(header.contains("ferry_plugin_metrics_now"), "{header}");
    }

    #[test]
    fn a_module_without_the_export_is_refused_with_a_reason() {
        let module = EMPTY_MODULE.to_vec();
        let options = Options {
            embed_world: true,
            ..Options::default()
        };
        let err = component(&module, "core.wasm", &wit_dir(), options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("core.wasm cannot become"), "{err}");
        assert!(err.contains("handler"), "{err}");
    }

    #[test]
    fn recognises_components() {
        assert!(is_component(ferry_builtins::ECHO.component));
        assert!(!is_component(EMPTY_MODULE));
        assert!(!is_component(b"not wasm"));
    }

    /// `(module)`.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";
}
