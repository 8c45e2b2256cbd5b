use std::time::Duration;

use super::*;

const FULL: &str = r#"
[plugin]
name = "disk-report"
version = "1.2.0"
topics = ["disk.report", "disk/usage"]
description = "reports disks"

[capabilities]
filesystem = [{ path = "/var/log/app", access = "read-only" }]
env = ["TZ"]
network = ["metrics.example.com:443", "10.0.0.5:*", "[::1]:8080"]
programs = ["/usr/bin/df"]
metrics = true
kv = true

[limits]
memory_mib = 64
timeout = "30s"
fuel = 500_000_000
"#;

#[test]
fn a_full_manifest_parses_and_round_trips() {
    let m = Manifest::from_toml(FULL).unwrap();
    assert_eq!(m.plugin.version, semver::Version::new(1, 2, 0));
    assert_eq!(m.capabilities.filesystem[0].access, Access::ReadOnly);
    assert_eq!(m.capabilities.network[2].host, "::1");
    assert_eq!(m.capabilities.network[1].port, None);
    assert_eq!(m.limits.timeout, Some(Duration::from_secs(30)));
    assert!(!m.capabilities.request_data);
    assert_eq!(Manifest::from_toml(&m.to_toml()).unwrap(), m);
}

#[test]
fn a_minimal_manifest_asks_for_nothing() {
    let m = Manifest::from_toml(
        "[plugin]\nname = \"echo\"\nversion = \"0.1.0\"\ntopics = [\"echo\"]\n",
    )
    .unwrap();
    assert!(m.capabilities.is_empty());
    assert_eq!(m.limits, Limits::default());
}

fn error_of(text: &str) -> String {
    Manifest::from_toml(text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_field_and_the_fix() {
    let head = "[plugin]\nname = \"p\"\nversion = \"1.0.0\"\ntopics = [\"t\"]\n";
    let cases = [
        (
            "[plugin]\nname = \"P Q\"\nversion = \"1.0.0\"\ntopics = [\"t\"]\n",
            "plugin.name",
        ),
        (
            "[plugin]\nname = \"p\"\nversion = \"one\"\ntopics = [\"t\"]\n",
            "version",
        ),
        (
            "[plugin]\nname = \"p\"\nversion = \"1.0.0\"\ntopics = []\n",
            "plugin.topics",
        ),
        (
            "[plugin]\nname = \"p\"\nversion = \"1.0.0\"\ntopics = [\"a b\"]\n",
            "plugin.topics[0]",
        ),
        ("[plugin]\nname = \"p\"\nversion = \"1.0.0\"\n", "topics"),
        (
            "[plugin]\nname = \"p\"\nversion = \"1.0.0\"\ntopics = [\"t\"]\nread_only = [\"u\"]\n",
            "plugin.read_only[0]",
        ),
        (
            &format!(
                "{head}[capabilities]\nfilesystem = [{{ path = \"data\", access = \"read-only\" }}]\n"
            ),
            "capabilities.filesystem[0].path",
        ),
        (
            &format!(
                "{head}[capabilities]\nfilesystem = [{{ path = \"/a/../etc\", access = \"read-only\" }}]\n"
            ),
            "'..'",
        ),
        (
            &format!(
                "{head}[capabilities]\nfilesystem = [{{ path = \"/a\", access = \"all\" }}]\n"
            ),
            "read-only",
        ),
        (
            &format!("{head}[capabilities]\nnetwork = [\"example.com\"]\n"),
            "host:port",
        ),
        (
            &format!("{head}[capabilities]\nnetwork = [\"example.com:99999\"]\n"),
            "host:port",
        ),
        (
            &format!("{head}[capabilities]\nprograms = [\"sh\"]\n"),
            "capabilities.programs[0]",
        ),
        (
            &format!("{head}[capabilities]\nenv = [\"A=B\"]\n"),
            "capabilities.env[0]",
        ),
        (&format!("{head}[capabilities]\nsudo = true\n"), "sudo"),
        (
            &format!("{head}[limits]\nmemory_mib = 0\n"),
            "limits.memory_mib",
        ),
        (&format!("{head}[limits]\ntimeout = \"soon\"\n"), "timeout"),
    ];
    for (text, expected) in cases {
        let err = error_of(text);
        assert!(
            err.contains(expected),
            "{expected:?} not in {err:?} for\n{text}"
        );
    }
}

#[test]
fn net_rules_cover_by_host_and_port() {
    let any: NetRule = "api.example.com:*".parse().unwrap();
    let one: NetRule = "API.example.com:443".parse().unwrap();
    assert!(any.covers(&one));
    assert!(one.covers(&one));
    assert!(!one.covers(&"api.example.com:80".parse().unwrap()));
    assert!(!one.covers(&any));
    assert_eq!(one.to_string(), "api.example.com:443");
    assert_eq!("[::1]:1".parse::<NetRule>().unwrap().to_string(), "[::1]:1");
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = Manifest::from_toml(&text);
        let _ = text.parse::<NetRule>();
    }
}

#[test]
fn read_only_topics_are_a_subset_of_the_topics_and_round_trip() {
    let m = Manifest::from_toml(
        "[plugin]\nname = \"p\"\nversion = \"1.0.0\"\ntopics = [\"get\", \"set\"]\nread_only = [\"get\"]\n",
    )
    .unwrap();
    assert_eq!(m.plugin.read_only, vec!["get".to_string()]);
    assert_eq!(Manifest::from_toml(&m.to_toml()).unwrap(), m);
}

/// A [`Capabilities`] with every field set: a new field does not compile here until it is set,
/// and the test below then wants it in the table.
fn every_capability() -> Capabilities {
    Capabilities {
        filesystem: vec![FsEntry {
            path: "/srv".into(),
            access: Access::ReadOnly,
        }],
        env: vec!["TZ".into()],
        network: vec!["a.example:443".parse().unwrap()],
        programs: vec!["/bin/df".into()],
        metrics: true,
        kv: true,
        request_data: true,
        runtimes: true,
        decommission: true,
    }
}

#[test]
fn every_field_of_capabilities_is_in_the_table_with_its_kind() {
    let value = toml::Value::try_from(every_capability()).unwrap();
    let fields: Vec<(&str, Kind)> = value
        .as_table()
        .unwrap()
        .iter()
        .map(|(key, value)| {
            let kind = if value.is_bool() {
                Kind::Switch
            } else {
                Kind::List
            };
            (key.as_str(), kind)
        })
        .collect();
    let mut table: Vec<(&str, Kind)> = CAPABILITIES.iter().map(|c| (c.key, c.kind)).collect();
    let mut sorted = fields.clone();
    sorted.sort_by_key(|(k, _)| *k);
    table.sort_by_key(|(k, _)| *k);
    assert_eq!(
        sorted, table,
        "ferry_manifest::CAPABILITIES and the fields of Capabilities differ"
    );
    for capability in CAPABILITIES {
        assert_eq!(capability.id.capability().key, capability.key);
        let example = format!("{} = {}", capability.key, capability.example);
        let parsed: Capabilities = toml::from_str(&example)
            .unwrap_or_else(|e| panic!("the example of {} does not parse: {e}", capability.key));
        parsed.validate("example").unwrap();
        assert!(!parsed.is_empty(), "{example}");
    }
}

#[test]
fn a_grant_is_the_request_covered_by_an_allowance_in_the_tables_order() {
    let asked = every_capability();
    let (granted, refused) = asked.grant(&[]);
    assert!(granted.is_empty());
    let order: Vec<CapabilityId> = refused.iter().map(|r| r.id).collect();
    let table: Vec<CapabilityId> = CAPABILITIES.iter().map(|c| c.id).collect();
    assert_eq!(order, table);

    let (granted, refused) = asked.grant(&[&every_capability()]);
    assert_eq!(granted, asked);
    assert!(refused.is_empty(), "{refused:?}");

    let mut both = Capabilities::default();
    both.extend(&every_capability());
    assert_eq!(both, every_capability());
}

/// The capability table of docs/PLUGINS.md, as [`CAPABILITIES`] has it.
fn docs_table() -> String {
    let mut table = String::from(
        "| key | value, e.g. | grants | through | `ferry plugin test` |\n|---|---|---|---|---|\n",
    );
    for c in CAPABILITIES {
        table.push_str(&format!(
            "| `{}` | `{}` | {} | `{}` | `--grant {}` |\n",
            c.key, c.example, c.doc, c.gate, c.flag
        ));
    }
    table
}

#[test]
fn the_docs_list_exactly_the_capabilities() {
    let docs = include_str!("../../docs/PLUGINS.md");
    let expected = docs_table();
    let header = expected.lines().next().unwrap();
    let start = docs
        .find(header)
        .unwrap_or_else(|| panic!("docs/PLUGINS.md has no capability table; add:\n\n{expected}"));
    let found: String = docs[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        found, expected,
        "the capability table in docs/PLUGINS.md differs from ferry_manifest::CAPABILITIES; it \
         should read:\n\n{expected}"
    );
}
