//! `ferry-lifecycle` imports no transport, runtime or storage: its machines take time and
//! events as inputs, so they can be driven by a virtual clock and a simulated network.

use std::process::Command;

#[test]
fn the_machines_depend_on_no_runtime_transport_or_storage() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "ferry-lifecycle",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("ferry-protocol"), "{tree}");
    for forbidden in [
        "tokio ",
        "quinn ",
        "quinn-proto ",
        "redb ",
        "rustls ",
        "ring ",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "ferry-lifecycle must not depend on {forbidden}:\n{tree}"
        );
    }
}
