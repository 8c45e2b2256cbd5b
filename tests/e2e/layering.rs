//! The layers inside the server and the agent, checked from their sources: what each folder
//! may import. The rules make each crate's folders a chain without cycles, with its composition
//! root (`server.rs`, `agent.rs`) the only module that knows every part:
//!
//! - server: `domain` ← `storage` ← `transport` ← `api` ← `server.rs`. The domain names no
//!   transport, storage engine or HTTP framework, so another backend (PostgreSQL) or driver can
//!   be put under it through `domain/ports.rs`.
//! - agent: `capabilities` (what plugins reach on the host), `commands` ← `plugins` ←
//!   `session` ← `agent.rs`. Commands run without knowing how plugins arrive or how the
//!   session is kept; plugins are deployed without knowing the session. The agent's decisions
//!   live in `ferry-lifecycle` and `ferry-host`; `commands` and `plugins` drive them over the
//!   streams the session hands them (QUIC streams, named as such), and `capabilities` knows
//!   no transport at all.
//!
//! Tests (`tests.rs`, `mod tests`) may wire real parts together and are not checked.
//!
//! The crates that must stay free of the rest are checked by their dependency tree (`cargo
//! tree`, normal dependencies): the lifecycle machines take time and events as inputs, so a
//! virtual clock and a simulated network can drive them; the plugin host is the sandbox and
//! knows nothing of the fleet; the API's types are shared by any client.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Each such crate, what it must depend on (to show the tree was read), and what never.
const CRATES: &[(&str, &[&str], &[&str])] = &[
    (
        "ferry-lifecycle",
        &["ferry-protocol"],
        &["tokio", "quinn", "quinn-proto", "redb", "rustls", "ring"],
    ),
    (
        "ferry-host",
        &["ferry-manifest", "wasmtime"],
        &[
            "ferry-agent",
            "ferry-server",
            "quinn",
            "quinn-proto",
            "redb",
        ],
    ),
    (
        "ferry-api",
        &["ferry-lifecycle", "serde"],
        &[
            "ferry-server",
            "ferry-agent",
            "ferry-host",
            "tokio",
            "axum",
            "quinn",
            "redb",
            "wasmtime",
        ],
    ),
];

#[test]
fn the_machines_host_and_api_depend_on_nothing_of_the_fleet() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (krate, needs, forbidden) in CRATES {
        let out = Command::new(&cargo)
            .args(["tree", "--offline", "-p", krate, "-e", "normal"])
            .args(["--prefix", "none", "--format", "{p}"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        let has = |name: &str| tree.lines().any(|l| l.starts_with(&format!("{name} ")));
        for name in *needs {
            assert!(has(name), "{krate} should depend on {name}:\n{tree}");
        }
        for name in *forbidden {
            assert!(!has(name), "{krate} must not depend on {name}:\n{tree}");
        }
    }
}

/// The server's folders under `src/`, and the paths each must never name.
const SERVER: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "quinn::",
            "axum::",
            "redb::",
            "ferry_store::",
            "crate::storage",
            "crate::transport",
            "crate::api",
            "crate::server",
        ],
    ),
    (
        "storage",
        &[
            "quinn::",
            "axum::",
            "crate::transport",
            "crate::api",
            "crate::server",
        ],
    ),
    (
        "transport",
        &[
            "axum::",
            "redb::",
            "ferry_store::",
            "crate::api",
            "crate::server",
        ],
    ),
    (
        "api",
        &["quinn::", "redb::", "ferry_store::", "crate::server"],
    ),
];

/// The agent's folders under `src/`, and the paths each must never name.
const AGENT: &[(&str, &[&str])] = &[
    (
        "capabilities",
        &[
            "quinn::",
            "crate::commands",
            "crate::plugins",
            "crate::session",
            "crate::agent",
            "crate::Agent",
        ],
    ),
    (
        "commands",
        &[
            "crate::plugins",
            "crate::session",
            "crate::agent",
            "crate::Agent",
        ],
    ),
    (
        "plugins",
        &["crate::session", "crate::agent", "crate::Agent"],
    ),
    ("session", &["crate::agent", "crate::Agent"]),
];

/// The code of a source file that the rules apply to: without comments and test modules.
fn checked_code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source folder reads") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            found.push(path);
        }
    }
}

/// Every way the crate at `crate_dir` breaks `rules`, after checking that there was something
/// to check.
fn broken(crate_dir: &str, rules: &[(&str, &[&str])]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("src");
    let mut broken = Vec::new();
    let mut checked = 0;
    for (layer, forbidden) in rules {
        let mut files = Vec::new();
        sources(&src.join(layer), &mut files);
        assert!(
            !files.is_empty(),
            "no sources under {crate_dir}/src/{layer}"
        );
        for file in files {
            checked += 1;
            let code = checked_code(&std::fs::read_to_string(&file).unwrap());
            for name in *forbidden {
                if code.contains(name) {
                    broken.push(format!(
                        "{crate_dir}/src/{} names {name}, which the {layer} layer must not",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(checked >= 8, "only {checked} files checked in {crate_dir}");
    broken
}

#[test]
fn each_server_layer_imports_only_the_layers_below_it() {
    let broken = broken("server", SERVER);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn each_agent_layer_imports_only_the_layers_below_it() {
    let broken = broken("agent", AGENT);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_check_sees_an_import_and_skips_comments_and_tests() {
    let code = checked_code(
        "use quinn::Endpoint;\n// quinn::Connection\n#[cfg(test)]\nmod tests {\n    use redb::Database;\n}\n",
    );
    assert!(code.contains("quinn::Endpoint"));
    assert!(!code.contains("quinn::Connection"));
    assert!(!code.contains("redb::"));
}
