//! `ferry-host` is the sandbox and knows nothing of the fleet: it depends on no agent, no
//! server, no transport and no storage engine. What it needs of the machine it runs on
//! (metrics, a key-value store, runtimes, decommissioning) comes in through its traits
//! (`MetricsSource`, `KvStore`, `RuntimeSupervisor`, `CommandEvents`), which the agent — or
//! `ferry plugin test` — implements.

use std::process::Command;

#[test]
fn the_host_depends_on_no_agent_server_transport_or_storage() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "ferry-host",
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
    assert!(tree.contains("ferry-manifest"), "{tree}");
    assert!(tree.contains("wasmtime "), "{tree}");
    for forbidden in [
        "ferry-agent ",
        "ferry-server ",
        "quinn ",
        "quinn-proto ",
        "redb ",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "ferry-host must not depend on {forbidden}:\n{tree}"
        );
    }
}

#[test]
fn the_manifest_names_no_agent_server_transport_or_storage() {
    let manifest = include_str!("../../Cargo.toml");
    for forbidden in ["ferry-agent", "ferry-server", "quinn", "redb"] {
        assert!(
            !manifest.contains(forbidden),
            "host/Cargo.toml must not name {forbidden}:\n{manifest}"
        );
    }
}
