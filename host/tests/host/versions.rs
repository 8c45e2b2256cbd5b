//! Every frozen `ferry:plugin` version is served, each through its own bindings: a plugin built
//! against any version in `ferry_protocol::WIT_VERSIONS` loads and runs, and one built for a
//! version the host does not serve is refused naming it, the versions served, and what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_host::{
    CommandEvents, HostConfig, HostError, Invocation, InvokeError, LogLevel, PluginHost,
};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{LiftLowerAbi, ManglingAndAbi, Resolve};

/// A real plugin built against each served version, and what it answers to "hello". A new
/// version needs one here (the Rust SDK's echo, rebuilt against it, say).
const PLUGINS: &[(&str, &[u8])] = &[("0.1.0", ferry_builtins::ECHO.component)];

struct Quiet;

impl CommandEvents for Quiet {
    fn log(&self, _: LogLevel, _: String) {}
    fn progress(&self, _: u8, _: String) {}
    fn cancelled(&self) -> bool {
        false
    }
}

fn hello() -> Invocation {
    Invocation {
        id: "1".into(),
        topic: "echo".into(),
        payload: b"hello".to_vec(),
        content_type: "text/plain".into(),
        deadline: None,
    }
}

fn host() -> PluginHost {
    PluginHost::new(HostConfig {
        max_instances: 4,
        ..HostConfig::default()
    })
    .expect("plugin host")
}

fn wit_folder(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wit")
        .join(version)
}

/// A component of the world in `folder`, as `wit-component` builds one: it imports every
/// interface of the world and exports the handler, whose body traps.
fn component_of(folder: &Path) -> Vec<u8> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(folder)
        .unwrap_or_else(|e| panic!("cannot read {}: {e:#}", folder.display()));
    let world = resolve.select_world(&[package], Some("plugin")).unwrap();
    let mut module =
        wit_component::dummy_module(&resolve, world, ManglingAndAbi::Legacy(LiftLowerAbi::Sync));
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .unwrap();
    ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

/// `wit/<from>/` copied into a temporary folder with its package version changed to `to`.
fn wit_renumbered(from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(wit_folder(from)).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&format!("@{from}"), &format!("@{to}"));
        std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
    }
    dir
}

#[tokio::test]
async fn a_plugin_built_against_each_served_version_loads_and_runs() {
    let built: Vec<&str> = PLUGINS.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        built,
        ferry_protocol::WIT_VERSIONS,
        "every served version needs a plugin built against it here"
    );
    let host = host();
    for (version, component) in PLUGINS {
        let plugin = host
            .load(&format!("echo-{version}"), component)
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        let invoked = plugin.invoke(hello(), Arc::new(Quiet)).await;
        assert_eq!(invoked.result, Ok(b"hello".to_vec()), "{version}");
    }
}

#[tokio::test]
async fn the_whole_world_of_each_served_version_links_and_its_handler_is_called() {
    let host = host();
    for version in ferry_protocol::WIT_VERSIONS {
        let component = component_of(&wit_folder(version));
        let plugin = host
            .load(&format!("every-import-{version}"), &component)
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        // The dummy's `handle` is `unreachable`: a trap shows the call went through.
        let invoked = plugin.invoke(hello(), Arc::new(Quiet)).await;
        match invoked.result {
            Err(InvokeError::Crashed(m)) => assert!(m.contains("unreachable"), "{version}: {m}"),
            other => panic!("{version}: expected a trap, got {other:?}"),
        }
    }
}

#[test]
fn a_plugin_for_a_version_not_served_is_refused_saying_what_to_do() {
    let latest = ferry_protocol::WIT_LATEST;
    let host = host();

    let newer = wit_renumbered(latest, "99.0.0");
    let err = host
        .load("from-the-future", &component_of(newer.path()))
        .unwrap_err();
    assert!(
        matches!(&err, HostError::UnservedVersion { wanted, .. } if wanted == "99.0.0"),
        "{err:?}"
    );
    let message = err.to_string();
    for expected in [
        "plugin 'from-the-future' was built for ferry:plugin@99.0.0",
        &format!(
            "it serves ferry:plugin@{}",
            ferry_protocol::WIT_VERSIONS.join(", ")
        ),
        "upgrade the agent",
        "rebuild the plugin against a version this agent serves",
        &format!("wit/{latest}"),
    ] {
        assert!(message.contains(expected), "{expected:?} in: {message}");
    }

    let older = wit_renumbered(latest, "0.0.1");
    let message = host
        .load("from-the-past", &component_of(older.path()))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("built for ferry:plugin@0.0.1") && message.contains("rebuild the plugin"),
        "{message}"
    );
    assert!(
        !message.contains("upgrade the agent"),
        "a newer agent does not serve an older version again: {message}"
    );
}
