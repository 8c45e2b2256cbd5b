//! The host capability interfaces, `metrics` and `kv`: denied without a grant (with a message
//! that says how to grant them), and working with one. Each test runs the `probe` fixture.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_agent::host::{
    CommandEvents, HostConfig, Invocation, InvokeError, KvStore, LoadOptions, LoadedPlugin,
    LogLevel, MAX_KEY_BYTES, MAX_VALUE_BYTES, MetricsSource, PluginHost,
};
use ferry_agent::kv::RedbKvStore;
use ferry_agent::metrics::MetricsHistory;
use ferry_builtins::fixtures::PROBE;
use ferry_manifest::Capabilities;

struct Quiet;

impl CommandEvents for Quiet {
    fn log(&self, _level: LogLevel, _message: String) {}
    fn progress(&self, _percent: u8, _message: String) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// A host with the agent's key-value store in `kv_dir` and its metrics `metrics`.
fn host(kv_dir: Option<&Path>, metrics: Option<MetricsHistory>) -> PluginHost {
    PluginHost::new(HostConfig {
        max_instances: 4,
        kv: kv_dir.map(|dir| Arc::new(RedbKvStore::new(dir.to_path_buf())) as Arc<dyn KvStore>),
        metrics: metrics.map(|m| Arc::new(m) as Arc<dyn MetricsSource>),
        ..HostConfig::default()
    })
    .unwrap()
}

fn load(host: &PluginHost, name: &str, capabilities: Capabilities) -> LoadedPlugin {
    host.load_with(
        name,
        PROBE.component,
        LoadOptions {
            capabilities,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

fn granted(metrics: bool, kv: bool) -> Capabilities {
    Capabilities {
        metrics,
        kv,
        ..Capabilities::default()
    }
}

async fn probe(plugin: &LoadedPlugin, topic: &str, arg: &str) -> Result<String, InvokeError> {
    plugin
        .invoke(
            Invocation {
                id: "t".into(),
                topic: topic.into(),
                payload: arg.as_bytes().to_vec(),
                content_type: "text/plain".into(),
                deadline: Some(Instant::now() + Duration::from_secs(20)),
            },
            Arc::new(Quiet),
        )
        .await
        .result
        .map(|b| String::from_utf8(b).unwrap())
}

fn denied(result: Result<String, InvokeError>) -> String {
    match result {
        Err(InvokeError::Denied(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn history(data_dir: &Path) -> MetricsHistory {
    MetricsHistory::new(
        data_dir,
        Duration::from_secs(5),
        Duration::from_secs(24 * 60 * 60),
    )
}

fn field(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn without_a_grant_every_call_is_refused_with_how_to_grant_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(Some(dir.path()), Some(history(dir.path())));
    // The other capability granted, to show each is granted on its own.
    let only_kv = load(&host, "probe", granted(false, true));
    for (topic, arg) in [("probe.metrics.now", ""), ("probe.metrics.history", "60")] {
        let message = denied(probe(&only_kv, topic, arg).await);
        assert!(
            message.contains("metrics is not granted to plugin 'probe'")
                && message.contains("`metrics = true` under [capabilities]")
                && message.contains("[plugins.probe.capabilities]"),
            "{topic}: {message}"
        );
    }
    let only_metrics = load(&host, "probe", granted(true, false));
    for (topic, arg) in [
        ("probe.kv.set", "k\nv"),
        ("probe.kv.get", "k"),
        ("probe.kv.delete", "k"),
        ("probe.kv.list", ""),
    ] {
        let message = denied(probe(&only_metrics, topic, arg).await);
        assert!(
            message.contains("kv is not granted to plugin 'probe'")
                && message.contains("`kv = true` under [capabilities]")
                && message.contains("`kv = true` under [plugins.probe.capabilities]"),
            "{topic}: {message}"
        );
    }
    // Nothing was written for the refused plugin.
    let both = load(&host, "probe", granted(true, true));
    assert_eq!(probe(&both, "probe.kv.list", "").await.unwrap(), "");
}

#[tokio::test]
async fn granted_interfaces_without_a_source_say_so() {
    let host = host(None, None);
    let plugin = load(&host, "probe", granted(true, true));
    let message = denied(probe(&plugin, "probe.metrics.now", "").await);
    assert!(
        message.contains("no metrics source is configured"),
        "{message}"
    );
    let message = denied(probe(&plugin, "probe.kv.get", "k").await);
    assert!(
        message.contains("no key-value directory is configured"),
        "{message}"
    );
}

#[tokio::test]
async fn metrics_now_is_plausible() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(None, Some(history(dir.path())));
    let plugin = load(&host, "probe", granted(true, false));
    let text = probe(&plugin, "probe.metrics.now", "").await.unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let ts = field(&text, "timestamp_ms");
    assert!(ts > now_ms - 600_000.0 && ts <= now_ms + 1_000.0, "{text}");
    assert!(field(&text, "memory_total_bytes") > 0.0, "{text}");
    assert!(
        field(&text, "memory_used_bytes") <= field(&text, "memory_total_bytes"),
        "{text}"
    );
    assert!(field(&text, "disk_total_bytes") > 0.0, "{text}");
    assert!(
        field(&text, "disk_used_bytes") <= field(&text, "disk_total_bytes"),
        "{text}"
    );
    assert!(
        (0.0..=100.0).contains(&field(&text, "cpu_percent")),
        "{text}"
    );
    assert!(
        (0.0..=100.0).contains(&field(&text, "agent_cpu_percent")),
        "{text}"
    );
    // This test process is the "agent": it has some memory, less than the host.
    let agent_memory = field(&text, "agent_memory_bytes");
    assert!(
        agent_memory > 0.0 && agent_memory < field(&text, "memory_total_bytes"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_history_returns_the_samples_of_the_period() {
    let dir = tempfile::tempdir().unwrap();
    let history = history(dir.path());
    let plugin = load(
        &host(None, Some(history.clone())),
        "probe",
        granted(true, false),
    );
    assert_eq!(
        probe(&plugin, "probe.metrics.history", "60").await.unwrap(),
        ""
    );
    let first = history.record();
    history.record();
    history.record();
    let text = probe(&plugin, "probe.metrics.history", "3600")
        .await
        .unwrap();
    let samples: Vec<Vec<f64>> = text
        .lines()
        .map(|l| l.split(' ').map(|f| f.parse().unwrap()).collect())
        .collect();
    assert_eq!(samples.len(), 3, "{text}");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    for s in &samples {
        assert!(
            s[0] >= first.timestamp_ms as f64 && s[0] <= now_ms,
            "{text}"
        );
        assert!(s[0] >= now_ms - 3_600_000.0, "{text}");
        assert!(s[2] > 0.0 && s[3] > 0.0, "{text}");
    }
    assert!(samples.windows(2).all(|w| w[0][0] <= w[1][0]), "{text}");
}

#[tokio::test]
async fn kv_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(Some(dir.path()), None);
    let plugin = load(&host, "probe", granted(false, true));
    assert_eq!(probe(&plugin, "probe.kv.get", "a").await.unwrap(), "(none)");
    for (key, value) in [("job/1", "one"), ("job/2", "two"), ("other", "x")] {
        assert_eq!(
            probe(&plugin, "probe.kv.set", &format!("{key}\n{value}"))
                .await
                .unwrap(),
            "stored"
        );
    }
    assert_eq!(
        probe(&plugin, "probe.kv.get", "job/1").await.unwrap(),
        "one"
    );
    probe(&plugin, "probe.kv.set", "job/1\nuno").await.unwrap();
    assert_eq!(
        probe(&plugin, "probe.kv.get", "job/1").await.unwrap(),
        "uno"
    );
    assert_eq!(
        probe(&plugin, "probe.kv.list", "job/").await.unwrap(),
        "job/1\njob/2"
    );
    assert_eq!(
        probe(&plugin, "probe.kv.list", "").await.unwrap(),
        "job/1\njob/2\nother"
    );
    assert_eq!(
        probe(&plugin, "probe.kv.delete", "job/1").await.unwrap(),
        "deleted"
    );
    assert_eq!(
        probe(&plugin, "probe.kv.delete", "job/1").await.unwrap(),
        "absent"
    );
    assert_eq!(
        probe(&plugin, "probe.kv.get", "job/1").await.unwrap(),
        "(none)"
    );
    assert_eq!(
        probe(&plugin, "probe.kv.list", "job/").await.unwrap(),
        "job/2"
    );
}

#[tokio::test]
async fn kv_survives_a_new_host_on_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    {
        let host = host(Some(dir.path()), None);
        let plugin = load(&host, "probe", granted(false, true));
        probe(&plugin, "probe.kv.set", "kept\nacross restarts")
            .await
            .unwrap();
    }
    let host = host(Some(dir.path()), None);
    let plugin = load(&host, "probe", granted(false, true));
    assert_eq!(
        probe(&plugin, "probe.kv.get", "kept").await.unwrap(),
        "across restarts"
    );
}

#[tokio::test]
async fn plugins_do_not_see_each_others_keys() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(Some(dir.path()), None);
    let a = load(&host, "a", granted(false, true));
    let b = load(&host, "b", granted(false, true));
    probe(&a, "probe.kv.set", "shared-name\nfrom a")
        .await
        .unwrap();
    assert_eq!(
        probe(&b, "probe.kv.get", "shared-name").await.unwrap(),
        "(none)"
    );
    assert_eq!(probe(&b, "probe.kv.list", "").await.unwrap(), "");
    assert_eq!(
        probe(&b, "probe.kv.delete", "shared-name").await.unwrap(),
        "absent"
    );
    probe(&b, "probe.kv.set", "shared-name\nfrom b")
        .await
        .unwrap();
    assert_eq!(
        probe(&a, "probe.kv.get", "shared-name").await.unwrap(),
        "from a"
    );
    assert_eq!(
        probe(&b, "probe.kv.get", "shared-name").await.unwrap(),
        "from b"
    );
}

#[tokio::test]
async fn oversized_keys_and_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(Some(dir.path()), None);
    let plugin = load(&host, "probe", granted(false, true));
    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    let message = denied(probe(&plugin, "probe.kv.set", &format!("{long_key}\nv")).await);
    assert!(
        message.contains(&format!("keys are at most {MAX_KEY_BYTES} bytes")),
        "{message}"
    );
    denied(probe(&plugin, "probe.kv.get", &long_key).await);
    let message = denied(
        probe(
            &plugin,
            "probe.kv.set-big",
            &format!("big\n{}", MAX_VALUE_BYTES + 1),
        )
        .await,
    );
    assert!(
        message.contains(&format!("values are at most {MAX_VALUE_BYTES} bytes")),
        "{message}"
    );
    assert_eq!(
        probe(&plugin, "probe.kv.get", "big").await.unwrap(),
        "(none)"
    );
    // The largest allowed key and value are fine.
    let key = "k".repeat(MAX_KEY_BYTES);
    assert_eq!(
        probe(
            &plugin,
            "probe.kv.set-big",
            &format!("{key}\n{MAX_VALUE_BYTES}")
        )
        .await
        .unwrap(),
        "stored"
    );
    assert_eq!(
        probe(&plugin, "probe.kv.get", &key).await.unwrap().len(),
        MAX_VALUE_BYTES
    );
    denied(probe(&plugin, "probe.kv.set", "\nempty key").await);
}
