use std::collections::BTreeMap;
use std::path::Path;

use ferry_protocol::package::{Package, PublicKey, SigningKey};
use ferry_protocol::{PluginState, PluginStatus};

use super::*;
use crate::domain::agents::{AgentInfo, AgentStatus};

fn manifest(name: &str, version: &str, topics: &[&str]) -> String {
    let topics: Vec<String> = topics.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[plugin]\nname = {name:?}\nversion = {version:?}\ntopics = [{}]\n",
        topics.join(", ")
    )
}

fn upload(name: &str, version: &str, topics: &[&str]) -> Vec<u8> {
    Package::new(
        manifest(name, version, topics),
        ferry_builtins::ECHO.component.to_vec(),
    )
    .encode()
}

fn agent(id: &str, labels: &[(&str, &str)], wit: &[&str]) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        status: AgentStatus::Online,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        agent_version: "test".into(),
        topics: vec![],
        read_only_topics: vec![],
        wit_versions: wit.iter().map(|v| v.to_string()).collect(),
        remote_address: None,
        connected_since: None,
        last_heartbeat: None,
        metrics: None,
        running_commands: 0,
        heartbeat: None,
        instance: None,
        duplicate: None,
    }
}

fn open(dir: &Path) -> (PluginRegistry, PublicKey) {
    let key = SigningKey::load_or_create(&dir.join("k"), &dir.join("k.pub")).unwrap();
    let public = key.public_key();
    let db = crate::storage::db::open(dir).unwrap();
    let store = crate::storage::plugins::PluginStore::open(dir, db).unwrap();
    (
        PluginRegistry::open(Box::new(store), key, 64 << 20).unwrap(),
        public,
    )
}

#[test]
fn a_push_is_stored_once_signed_and_served_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, public) = open(dir.path());
    let first = registry
        .push(&upload("hello", "1.0.0", &["hello"]))
        .unwrap();
    assert!(first.created);
    assert_eq!(first.package.wit_version, WIT_VERSIONS[0]);
    let again = registry
        .push(&upload("hello", "1.0.0", &["hello"]))
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.package.digest, first.package.digest);
    let files = std::fs::read_dir(dir.path().join("plugins"))
        .unwrap()
        .count();
    assert_eq!(files, 1, "the same bytes are stored once");

    let path = registry.package_path(&first.package.digest).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let signature = hex::decode(&first.package.signature).unwrap();
    let package =
        ferry_protocol::package::verify(&bytes, &first.package.digest, &signature, &public)
            .unwrap();
    assert_eq!(package.component, ferry_builtins::ECHO.component);
}

#[test]
fn bad_uploads_say_what_is_wrong_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = open(dir.path());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage".to_vec(), "not a ferry plugin package"),
        (
            Package::new(
                "[plugin]\nname = \"x\"\n".into(),
                ferry_builtins::ECHO.component.to_vec(),
            )
            .encode(),
            "manifest is not valid",
        ),
        (
            Package::new(
                manifest("x", "1.0.0", &[]),
                ferry_builtins::ECHO.component.to_vec(),
            )
            .encode(),
            "plugin.topics",
        ),
        (
            Package::new(
                manifest("x", "1.0.0", &["x"]),
                wat::parse_str("(module)").unwrap(),
            )
            .encode(),
            "core wasm module",
        ),
        (
            Package::new(
                manifest("x", "one", &["x"]),
                ferry_builtins::ECHO.component.to_vec(),
            )
            .encode(),
            "version",
        ),
    ];
    for (bytes, expected) in cases {
        let err = registry.push(&bytes).unwrap_err();
        assert!(matches!(err, PluginError::Invalid(_)), "{err}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    assert!(registry.list().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("plugins"))
            .unwrap()
            .count(),
        0
    );

    registry.push(&upload("x", "1.0.0", &["x"])).unwrap();
    let other = Package::new(
        manifest("x", "1.0.0", &["x", "y"]),
        ferry_builtins::ECHO.component.to_vec(),
    )
    .encode();
    let err = registry.push(&other).unwrap_err();
    assert!(err.to_string().contains("raise the version"), "{err}");
}

#[test]
fn assignments_select_agents_by_label_and_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = open(dir.path());
    let wit = WIT_VERSIONS;
    registry
        .push(&upload("hello", "1.0.0", &["hello"]))
        .unwrap();
    registry
        .push(&upload("hello", "2.0.0", &["hello"]))
        .unwrap();
    let agents = [agent("a", &[("env", "prod")], wit), agent("b", &[], wit)];
    let prod: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
    let wit: Vec<String> = wit.iter().map(|v| v.to_string()).collect();

    let mut changes = registry.subscribe();
    registry
        .assign(
            "hello",
            Some("1.0.0"),
            "env=prod".parse().unwrap(),
            &agents,
            "tester",
        )
        .unwrap();
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    let (set, _) = registry.desired_for(&prod, &wit);
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].version, "1.0.0");
    assert!(registry.desired_for(&BTreeMap::new(), &wit).0.is_empty());

    // Without a version, the newest.
    registry
        .assign("hello", None, Selector::all(), &agents, "tester")
        .unwrap();
    assert_eq!(
        registry.desired_for(&BTreeMap::new(), &wit).0[0].version,
        "2.0.0"
    );

    let back = registry.rollback("hello", "tester").unwrap().unwrap();
    assert_eq!(back.version, "1.0.0");
    assert_eq!(back.to.to_string(), "env=prod");
    let err = registry.rollback("hello", "tester").unwrap_err();
    assert!(err.to_string().contains("no earlier assignment"), "{err}");

    registry.unassign("hello", "tester").unwrap();
    assert!(registry.desired_for(&prod, &wit).0.is_empty());
    assert_eq!(
        registry
            .rollback("hello", "tester")
            .unwrap()
            .unwrap()
            .version,
        "1.0.0"
    );

    let err = registry
        .assign("hello", Some("3.0.0"), Selector::all(), &agents, "tester")
        .unwrap_err();
    assert!(err.to_string().contains("it has 1.0.0, 2.0.0"), "{err}");
    assert!(matches!(
        registry.assign("nope", None, Selector::all(), &agents, "tester"),
        Err(PluginError::NotFound(_))
    ));
}

#[test]
fn an_agent_without_the_world_version_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = open(dir.path());
    registry
        .push(&upload("hello", "1.0.0", &["hello"]))
        .unwrap();
    let old = [agent("old-box", &[], &["0.0.9"])];
    let err = registry
        .assign("hello", None, Selector::all(), &old, "tester")
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PluginError::Incompatible(_)));
    assert!(text.contains("old-box"), "{text}");
    assert!(text.contains("ferry:plugin@0.0.9"), "{text}");
    assert!(
        text.contains(&format!("ferry:plugin@{}", WIT_VERSIONS[0])),
        "{text}"
    );
    // An agent that connects later without it is told why it got nothing.
    registry
        .assign("hello", None, Selector::all(), &[], "tester")
        .unwrap();
    let (set, refused) = registry.desired_for(&BTreeMap::new(), &["0.0.9".to_string()]);
    assert!(set.is_empty());
    assert!(
        matches!(&refused[0].state, PluginState::Failed(why) if why.contains("upgrade the agent"))
    );
}

#[test]
fn two_plugins_cannot_serve_one_topic() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = open(dir.path());
    registry.push(&upload("one", "1.0.0", &["shared"])).unwrap();
    registry
        .push(&upload("two", "1.0.0", &["shared", "own"]))
        .unwrap();
    registry
        .assign("one", None, Selector::all(), &[], "tester")
        .unwrap();
    let err = registry
        .assign("two", None, Selector::all(), &[], "tester")
        .unwrap_err();
    assert!(
        err.to_string().contains("ferry plugin unassign one"),
        "{err}"
    );
    registry.unassign("one", "tester").unwrap();
    registry
        .assign("two", None, Selector::all(), &[], "tester")
        .unwrap();
}

#[test]
fn the_registry_survives_a_restart_and_reports_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let digest = {
        let (registry, _) = open(dir.path());
        let pushed = registry
            .push(&upload("hello", "1.0.0", &["hello"]))
            .unwrap();
        registry
            .assign("hello", None, "env=prod".parse().unwrap(), &[], "tester")
            .unwrap();
        pushed.package.digest
    };
    let (registry, _) = open(dir.path());
    let list = registry.list();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].assigned.as_ref().unwrap().to.to_string(),
        "env=prod"
    );
    assert!(registry.package_path(&digest).unwrap().exists());

    let agents = [
        agent("a", &[("env", "prod")], WIT_VERSIONS),
        agent("b", &[("env", "prod")], WIT_VERSIONS),
        agent("c", &[], WIT_VERSIONS),
    ];
    registry.record(
        "a",
        &[PluginStatus {
            name: "hello".into(),
            version: "1.0.0".into(),
            digest,
            state: PluginState::Failed("tampered".into()),
        }],
    );
    let shown = registry.show("hello", &agents).unwrap();
    let states: Vec<(&str, &str)> = shown
        .agents
        .iter()
        .map(|a| (a.agent.as_str(), a.state.name()))
        .collect();
    assert_eq!(states, [("a", "failed"), ("b", "not-reported")]);
    assert_eq!(shown.agents[0].detail.as_deref(), Some("tampered"));
    assert_eq!(shown.agents[0].digest, Some(digest));
}

#[test]
fn a_history_stored_before_changes_were_kept_loads_as_changes() {
    let at = OffsetDateTime::now_utc();
    let assignment = |version: &str| Assignment {
        version: version.into(),
        to: Selector::all(),
        at,
    };
    let old = vec![Some(assignment("1.0.0")), None, Some(assignment("2.0.0"))];
    let stored: StoredHistory = serde_json::from_slice(&serde_json::to_vec(&old).unwrap()).unwrap();
    let changes = stored.into_changes();
    let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.change).collect();
    assert_eq!(
        kinds,
        [ChangeKind::Assign, ChangeKind::Unassign, ChangeKind::Assign]
    );
    assert_eq!(changes[2].previous, Some(1));
    assert_eq!(changes[0].previous, None);
    assert!(changes.iter().all(|c| c.by == UNKNOWN_AUTHOR));
    // Today's format reads back as itself.
    let again: StoredHistory =
        serde_json::from_slice(&serde_json::to_vec(&changes).unwrap()).unwrap();
    assert_eq!(again.into_changes(), changes);
}

#[test]
fn a_version_or_a_plugin_is_deleted_only_when_not_assigned_and_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = open(dir.path());
    let one = registry
        .push(&upload("hello", "1.0.0", &["hello"]))
        .unwrap();
    let two = registry
        .push(&upload("hello", "2.0.0", &["hello"]))
        .unwrap();
    registry
        .assign("hello", Some("1.0.0"), Selector::all(), &[], "tester")
        .unwrap();
    registry
        .assign("hello", Some("2.0.0"), Selector::all(), &[], "tester")
        .unwrap();

    // What is assigned is refused, with the way out.
    let err = registry.delete("hello", Some("2.0.0")).unwrap_err();
    assert!(matches!(err, PluginError::Conflict(_)), "{err}");
    assert!(
        err.to_string().contains("ferry plugin unassign hello"),
        "{err}"
    );
    let err = registry.delete("hello", None).unwrap_err();
    assert!(matches!(err, PluginError::Conflict(_)), "{err}");
    assert!(matches!(
        registry.delete("hello", Some("9.0.0")),
        Err(PluginError::NotFound(_))
    ));

    // A version not assigned goes, file and all; a rollback to it is refused by name.
    assert_eq!(registry.delete("hello", Some("1.0.0")).unwrap(), ["1.0.0"]);
    assert!(registry.package_path(&one.package.digest).is_none());
    assert!(
        !dir.path()
            .join("plugins")
            .join(format!("{}.pkg", one.package.digest))
            .exists()
    );
    let err = registry.rollback("hello", "tester").unwrap_err();
    assert!(err.to_string().contains("which was deleted"), "{err}");

    // Unassigned, the whole plugin goes, and stays gone after a restart.
    registry.unassign("hello", "tester").unwrap();
    assert_eq!(registry.delete("hello", None).unwrap(), ["2.0.0"]);
    assert!(registry.show("hello", &[]).is_none());
    assert!(registry.package_path(&two.package.digest).is_none());
    drop(registry);
    let (registry, _) = open(dir.path());
    assert!(registry.show("hello", &[]).is_none());
    assert!(matches!(
        registry.delete("hello", None),
        Err(PluginError::NotFound(_))
    ));
}
