//! The Rust plugin SDK's own tests. `plugins/` is a workspace of its own (its plugins are built
//! for wasm32-wasip2), so the root `cargo test` runs the SDK's host-side unit tests and doctests
//! from here, with the same cargo, in a target directory of their own.

use std::path::Path;
use std::process::Command;

#[test]
fn the_plugin_sdk_passes_its_own_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--quiet", "-p", "ferry-plugin", "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("plugins/target/host-tests"))
        // The outer test run's settings are not the nested build's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK's tests failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test result: ok"),
        "no SDK test ran:\n{stdout}\n{stderr}"
    );
}
