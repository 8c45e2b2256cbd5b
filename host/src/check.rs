//! Checks that a component is a ferry plugin before it is linked, so that the error says what
//! is wrong in the plugin author's terms rather than the linker's.
//!
//! The version comes from the `ferry:plugin/handler@<version>` the component exports. A served
//! version picks its bindings; another is refused with `HostError::UnservedVersion`, naming the
//! version it wants, the versions served and what to do (upgrade the agent for a newer one, rebuild
//! the plugin against a served one). No handler at all is `HostError::NotAPlugin`. Then `handle`
//! must have its version's type; each mismatch is its own clear error.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::{ComponentItem, Type};

use super::HostError;
use super::bindings::{self, HANDLER, Version, latest};

/// Refuses what is plainly not a component before the compiler gives a less direct message
/// (with the `wat` feature it would even try to parse the bytes as text).
pub(crate) fn bytes(name: &str, bytes: &[u8]) -> Result<(), HostError> {
    if let Some(header) = bytes.strip_prefix(b"\0asm") {
        // A core module has version 1 and layer 0 here; a component has layer 1.
        if header.get(..4) == Some(&[1, 0, 0, 0]) {
            return Err(HostError::NotAComponent {
                name: name.to_string(),
            });
        }
        return Ok(());
    }
    let text = std::str::from_utf8(bytes)
        .map(str::trim_start)
        .unwrap_or("");
    if text.starts_with('(') || text.starts_with(";;") {
        // WebAssembly text, as tests and experiments write it.
        return Ok(());
    }
    Err(HostError::NotWasm {
        name: name.to_string(),
        len: bytes.len(),
    })
}

fn not_a_plugin(name: &str, reason: String) -> HostError {
    HostError::NotAPlugin {
        name: name.to_string(),
        reason,
    }
}

/// The served version whose handler the component exports: the bindings it is served through.
/// A handler of a version this host does not serve is refused naming it, and a component
/// without any is not a plugin.
pub(crate) fn handler_version(
    engine: &Engine,
    name: &str,
    component: &Component,
) -> Result<Version, HostError> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(n, _)| n).collect();
    let wanted: Vec<&str> = exports
        .iter()
        .filter_map(|n| n.strip_prefix(HANDLER))
        .collect();
    if let Some(version) = wanted.iter().find_map(|w| Version::of(w)) {
        return Ok(version);
    }
    if let Some(wanted) = wanted.first() {
        return Err(HostError::UnservedVersion {
            name: name.to_string(),
            wanted: wanted.to_string(),
            served: bindings::served(),
            what_to_do: what_to_do(wanted),
        });
    }
    let served: Vec<String> = Version::ALL
        .iter()
        .map(|v| format!("`{}`", v.handler_export()))
        .collect();
    Err(not_a_plugin(
        name,
        format!(
            "it does not export {} (it exports {}); build it against the world \
             ferry:plugin/plugin in wit/{}, e.g. with the ferry-plugin crate",
            served.join(" or "),
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            latest::VERSION
        ),
    ))
}

/// What to do about a plugin built for `wanted`, which this host does not serve: a newer
/// version needs a newer agent, an older one that is no longer served a rebuild.
fn what_to_do(wanted: &str) -> String {
    let rebuild = format!(
        "rebuild the plugin against a version this agent serves (a project from this \
         release's `ferry plugin new` uses wit/{})",
        latest::VERSION
    );
    match (numbers(wanted), numbers(latest::VERSION)) {
        (Some(wanted), Some(latest)) if wanted < latest => rebuild,
        _ => format!("upgrade the agent to a ferry release that serves it, or {rebuild}"),
    }
}

/// `X.Y.Z` as numbers, to compare versions.
fn numbers(version: &str) -> Option<Vec<u64>> {
    version.split('.').map(|n| n.parse().ok()).collect()
}

/// Checks that the handler's `handle` has the type the world gives it. Linking does not check
/// this (wasmtime checks a function's type when it is first looked up in an instance), and a
/// plugin that fails on every command is better refused when loaded.
pub(crate) fn handle_signature(
    engine: &Engine,
    name: &str,
    component: &Component,
    version: Version,
) -> Result<(), HostError> {
    let not_a_plugin = |reason| not_a_plugin(name, reason);
    let ty = component.component_type();
    let handler_export = version.handler_export();
    let Some(handler) = ty.get_export(engine, &handler_export) else {
        return Err(not_a_plugin(format!(
            "it does not export `{handler_export}`"
        )));
    };
    let ComponentItem::ComponentInstance(instance) = handler.ty else {
        return Err(not_a_plugin(format!(
            "its export `{handler_export}` is not an interface instance"
        )));
    };
    let Some(handle) = instance.get_export(engine, "handle") else {
        return Err(not_a_plugin(format!(
            "its `{handler_export}` has no function `handle`"
        )));
    };
    let ComponentItem::ComponentFunc(func) = handle.ty else {
        return Err(not_a_plugin(format!(
            "its `{handler_export}#handle` is not a function"
        )));
    };
    let params: Vec<String> = func.params().map(|(_, t)| render(&t)).collect();
    let results: Vec<String> = func.results().map(|t| render(&t)).collect();
    let mut actual = format!("func({})", params.join(", "));
    if !results.is_empty() {
        actual.push_str(&format!(" -> {}", results.join(", ")));
    }
    let expected = version.handle_type();
    if actual != expected {
        return Err(not_a_plugin(format!(
            "its `handle` has the type `{actual}`, but ferry:plugin@{} requires `{expected}`",
            version.number()
        )));
    }
    Ok(())
}

/// A type in WIT-like notation, with records and variants spelled out, so that two types
/// render alike exactly when the canonical ABI treats them alike.
fn render(ty: &Type) -> String {
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", render(&l.ty())),
        Type::Option(o) => format!("option<{}>", render(&o.ty())),
        Type::Result(r) => format!(
            "result<{}, {}>",
            r.ok().map_or("_".into(), |t| render(&t)),
            r.err().map_or("_".into(), |t| render(&t))
        ),
        Type::Record(r) => format!(
            "record {{ {} }}",
            r.fields()
                .map(|f| format!("{}: {}", f.name, render(&f.ty)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Variant(v) => format!(
            "variant {{ {} }}",
            v.cases()
                .map(|c| match &c.ty {
                    Some(t) => format!("{}({})", c.name, render(t)),
                    None => c.name.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Tuple(t) => format!(
            "tuple<{}>",
            t.types().map(|t| render(&t)).collect::<Vec<_>>().join(", ")
        ),
        Type::Enum(e) => format!("enum {{ {} }}", e.names().collect::<Vec<_>>().join(", ")),
        Type::Flags(f) => format!("flags {{ {} }}", f.names().collect::<Vec<_>>().join(", ")),
        // Nothing in the handler's signature uses the rest; a coarse name is enough to say
        // that a signature differs.
        other => format!("{other:?}"),
    }
}
