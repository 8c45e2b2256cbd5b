//! Builds the `plugins/` workspace for `wasm32-wasip2` and hands the components to `lib.rs`,
//! so that `cargo build` / `cargo test` from a fresh clone needs no manual step.
//!
//! The nested cargo must not inherit what the outer build set for *this* crate's compilation
//! (flags for the host target, clippy as a wrapper, the outer target directory, cfg values), or
//! it would build the wrong thing, in the wrong place, or fight the outer build for its lock.
//!
//! It builds with the same cargo into `plugins/target`, adding the `wasm32-wasip2` target with
//! rustup when the toolchain lacks it.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";

/// The plugins to embed: (cargo package, artifact file, environment variable for lib.rs).
const PLUGINS: &[(&str, &str, &str)] = &[
    ("echo", "echo.wasm", "FERRY_BUILTIN_ECHO"),
    ("runtimes", "runtimes.wasm", "FERRY_BUILTIN_RUNTIMES"),
    (
        "orchestrator",
        "orchestrator.wasm",
        "FERRY_BUILTIN_ORCHESTRATOR",
    ),
    (
        "run-command",
        "run_command.wasm",
        "FERRY_BUILTIN_RUN_COMMAND",
    ),
    ("faulty", "faulty.wasm", "FERRY_FIXTURE_FAULTY"),
    ("probe", "probe.wasm", "FERRY_FIXTURE_PROBE"),
    ("ticker", "ticker.wasm", "FERRY_FIXTURE_TICKER"),
];

/// Environment variables that configure a cargo build and must not leak from the outer one.
const CLEARED: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "CARGO_RUSTC_CURRENT_DIR",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "NUM_JOBS",
    "OPT_LEVEL",
    "DEBUG",
    "PROFILE",
    "RUSTC_LINKER",
];

/// Prefixes of variables cargo sets for a build script about the outer package and target.
const CLEARED_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PROFILE_",
    "CARGO_PKG_",
    "DEP_",
    "__CARGO",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("builtins/ sits in the repository root")
        .to_path_buf();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    watch_sources(&root, &plugins);
    ensure_wasm_target();
    build_plugins(&plugins);

    let artifacts = plugins.join("target").join(TARGET).join("release");
    for (package, file, var) in PLUGINS {
        let built = artifacts.join(file);
        let embedded = out_dir.join(file);
        // A copy in OUT_DIR, so a later nested build (say, from another checkout state) cannot
        // change the bytes under a crate that is already compiled.
        fs::copy(&built, &embedded).unwrap_or_else(|e| {
            panic!(
                "the plugins build succeeded but {} (package '{package}') is missing: {e}",
                built.display()
            )
        });
        println!("cargo:rustc-env={var}={}", embedded.display());
    }
}

/// Reruns this script when a plugin's sources, a plugins Cargo file or the WIT change. Not the
/// whole `plugins/` directory: its `target/` changes on every build and would make every
/// outer build rerun this script.
fn watch_sources(root: &Path, plugins: &Path) {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    // Cargo reruns a script on every build while a watched path is missing, so watch only
    // what exists (Cargo.lock appears after the first build; that costs one more run).
    for file in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", ".cargo"] {
        let path = plugins.join(file);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let entries =
        fs::read_dir(plugins).unwrap_or_else(|e| panic!("cannot read {}: {e}", plugins.display()));
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.path().is_dir() && name != "target" && !name.starts_with('.') {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
}

/// rustup installs the targets listed in rust-toolchain.toml only when it installs the
/// toolchain itself, not for a toolchain that was already there; so add it here if missing.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{} --print sysroot`: {e}",
                rustc.to_string_lossy()
            )
        });
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if sysroot.join("lib").join("rustlib").join(TARGET).is_dir() {
        return;
    }

    // The toolchain rustup is running us with, or else the one the sysroot belongs to
    // (rustup names toolchain directories after the toolchain).
    let toolchain = env::var("RUSTUP_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| {
            sysroot
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
    let mut args = vec!["target".to_string(), "add".to_string(), TARGET.to_string()];
    if let Some(toolchain) = &toolchain {
        args.push("--toolchain".into());
        args.push(toolchain.clone());
    }
    let command = format!("rustup {}", args.join(" "));
    println!(
        "cargo:warning=the {TARGET} target is not installed for this toolchain; running `{command}`"
    );

    let status = Command::new("rustup")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "ferry's built-in plugins need the {TARGET} target, and `{command}` failed ({s}). \
             Run it yourself (it needs to download the target once), then build again."
        ),
        Err(e) => panic!(
            "ferry's built-in plugins need the {TARGET} target, which is not installed in {}, and \
             rustup could not be run ({e}). Install the target: with rustup, `{command}`; \
             otherwise add the {TARGET} standard library to your Rust installation.",
            sysroot.display()
        ),
    }
}

fn build_plugins(plugins: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(plugins.join("target"))
        // From plugins/, cargo finds the configuration meant for the plugins, not the
        // outer build's.
        .current_dir(plugins)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if CLEARED.contains(&key.as_ref()) || CLEARED_PREFIXES.iter().any(|p| key.starts_with(p)) {
            command.env_remove(key.as_ref());
        }
    }
    // CARGO_MAKEFLAGS stays: through it the nested cargo shares the outer jobserver, so the
    // two builds together use no more than the cores cargo was given.

    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{}` to build the plugins: {e}",
            cargo.to_string_lossy()
        )
    });
    if !output.status.success() {
        panic!(
            "building the plugins workspace ({}) for {TARGET} failed ({}):\n{}",
            plugins.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
