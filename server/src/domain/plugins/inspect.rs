//! What the server checks in a pushed component before it stores anything: that it is a valid
//! wasm component (not a core module) and which `ferry:plugin` world version it was built for.
//!
//! The server does not compile components (that is the agents' work, and would cost seconds for
//! a JavaScript or Python plugin); wasmparser validates the binary and reads its exports.
//! Whether `handle` has the right type is checked again by each agent when it loads the
//! component.

use wasmparser::{Encoding, Parser, Payload, Validator, WasmFeatures};

/// The interface every plugin exports; its version is the plugin's world version.
const HANDLER: &str = "ferry:plugin/handler@";

/// Validates `component` and returns the `ferry:plugin` version it targets.
pub(crate) fn world_version(component: &[u8]) -> Result<String, String> {
    if component.len() < 8 || &component[..4] != b"\0asm" {
        return Err(
            "the file is not WebAssembly (it does not start with \\0asm); push the .wasm component your build produced".into(),
        );
    }
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| format!("the component is malformed: {e}"))?;
        match payload {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth == 1 && encoding != Encoding::Component {
                    return Err("this is a core wasm module, not a component; build it as a component (for Rust: --target wasm32-wasip2; for C and Go: `ferry plugin build` adds the WASI adapter)".into());
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| format!("the component is malformed: {e}"))?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(component)
        .map_err(|e| format!("the component is not valid wasm: {e}"))?;
    let versions: Vec<&str> = exports
        .iter()
        .filter_map(|name| name.strip_prefix(HANDLER))
        .collect();
    match versions.as_slice() {
        [version] => Ok(version.to_string()),
        [] => Err(format!(
            "the component exports no `{HANDLER}<version>` interface, so it is not a ferry plugin (it exports: {}); build it against ferry's WIT world `ferry:plugin/plugin`",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        )),
        several => Err(format!(
            "the component exports the handler of several world versions ({}); a plugin targets one",
            several.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ferry_plugin_reports_its_world_version() {
        assert_eq!(
            world_version(ferry_builtins::ECHO.component).unwrap(),
            ferry_protocol::WIT_VERSIONS[0]
        );
    }

    #[test]
    fn core_modules_garbage_and_other_components_are_refused_by_name() {
        let core = wat::parse_str("(module)").unwrap();
        let err = world_version(&core).unwrap_err();
        assert!(err.contains("core wasm module"), "{err}");
        let err = world_version(b"not wasm at all").unwrap_err();
        assert!(err.contains("not WebAssembly"), "{err}");
        let other = wat::parse_str("(component)").unwrap();
        let err = world_version(&other).unwrap_err();
        assert!(err.contains("not a ferry plugin"), "{err}");
        let mut cut = ferry_builtins::ECHO.component.to_vec();
        cut.truncate(cut.len() / 2);
        assert!(world_version(&cut).is_err());
    }
}
