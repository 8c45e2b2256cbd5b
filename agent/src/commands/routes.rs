//! Which plugin serves which topic, now.
//!
//! Two sources: the agent's own plugins (built-ins and the configuration's), fixed at start, and
//! the plugins the server pushed, which change while the agent runs. A pushed plugin's route
//! wins over a local one for the same topic: the server's assignment is the operator's newer
//! word. A command takes the route as it is when the command starts and keeps that
//! [`LoadedPlugin`] until it ends, so replacing a plugin never disturbs running commands.
//!
//! While a pushed plugin is being fetched and compiled its topics are *pending*: a command for
//! one waits (until its deadline) instead of failing with "unknown topic", because the server
//! may send a command right behind the assignment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use ferry_protocol::package::Digest;
use ferry_protocol::{AssignedPlugin, PluginState, PluginStatus};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::host::LoadedPlugin;

/// A pushed plugin: what is assigned, and what is loaded (possibly an older version, which
/// keeps serving until the assigned one is ready, or if it cannot be).
struct Pushed {
    assigned: AssignedPlugin,
    state: PluginState,
    loaded: Option<(AssignedPlugin, LoadedPlugin)>,
}

#[derive(Default)]
struct Table {
    local: HashMap<String, LoadedPlugin>,
    pushed: BTreeMap<String, Pushed>,
}

/// What a topic resolves to.
pub(crate) enum Route {
    /// Run it on this plugin.
    Ready(LoadedPlugin),
    /// Its plugin is on its way; wait for a change.
    Pending,
    /// Nothing serves it; the text says why.
    Unknown(String),
}

/// The agent's routing table.
pub(crate) struct Routes {
    table: RwLock<Table>,
    changed: watch::Sender<u64>,
}

impl Routes {
    pub(crate) fn new(local: HashMap<String, LoadedPlugin>) -> Routes {
        Routes {
            table: RwLock::new(Table {
                local,
                pushed: BTreeMap::new(),
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves `topic` now.
    pub(crate) fn route(&self, topic: &str) -> Route {
        let table = self.table.read();
        let mut pending = false;
        let mut failed = None;
        for pushed in table.pushed.values() {
            if !pushed.assigned.topics.iter().any(|t| t == topic) {
                continue;
            }
            // An older version keeps serving while the new one loads, but only the topics it has.
            if let Some((loaded, plugin)) = &pushed.loaded
                && loaded.topics.iter().any(|t| t == topic)
            {
                return Route::Ready(plugin.clone());
            }
            match &pushed.state {
                PluginState::Pending => pending = true,
                PluginState::Failed(why) => {
                    failed = Some(format!(
                        "plugin {} {}, assigned for topic '{topic}', could not be loaded: {why}",
                        pushed.assigned.name, pushed.assigned.version
                    ))
                }
                PluginState::Ready => {}
            }
        }
        if let Some(plugin) = table.local.get(topic) {
            return Route::Ready(plugin.clone());
        }
        if pending {
            return Route::Pending;
        }
        Route::Unknown(failed.unwrap_or_else(|| {
            format!(
                "no plugin on this agent handles topic '{topic}'; it serves: {}",
                topics_of(&table).join(", ")
            )
        }))
    }

    /// Resolves `topic`, waiting while its plugin is pending, until `deadline`.
    pub(crate) async fn resolve(
        &self,
        topic: &str,
        deadline: Option<Instant>,
    ) -> Result<LoadedPlugin, String> {
        let mut changes = self.changed.subscribe();
        loop {
            changes.mark_unchanged();
            match self.route(topic) {
                Route::Ready(plugin) => return Ok(plugin),
                Route::Unknown(why) => return Err(why),
                Route::Pending => {}
            }
            let wait = changes.changed();
            let ok = match deadline {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline.into(), wait)
                        .await
                        .ok()
                        .map(|r| r.is_ok())
                        == Some(true)
                }
                None => wait.await.is_ok(),
            };
            if !ok {
                return Err(format!(
                    "the plugin for topic '{topic}' was still being fetched and compiled when the command's deadline passed; try again shortly"
                ));
            }
        }
    }

    /// Every topic served now, sorted.
    pub(crate) fn topics(&self) -> Vec<String> {
        topics_of(&self.table.read())
    }

    /// The topics served now whose plugin declares them read-only, sorted.
    pub(crate) fn read_only_topics(&self) -> Vec<String> {
        self.topics()
            .into_iter()
            .filter(|topic| matches!(self.route(topic), Route::Ready(p) if p.is_read_only(topic)))
            .collect()
    }

    /// Makes `plugins` the pushed set: drops plugins no longer assigned and marks new or
    /// changed ones pending. Returns the ones that need loading.
    pub(crate) fn assign(&self, plugins: &[AssignedPlugin]) -> Vec<AssignedPlugin> {
        let mut table = self.table.write();
        table
            .pushed
            .retain(|name, _| plugins.iter().any(|p| &p.name == name));
        let mut todo = Vec::new();
        for plugin in plugins {
            match table.pushed.get_mut(&plugin.name) {
                Some(pushed)
                    if pushed.assigned.digest == plugin.digest
                        && pushed.state == PluginState::Ready => {}
                Some(pushed) => {
                    pushed.assigned = plugin.clone();
                    pushed.state = PluginState::Pending;
                    todo.push(plugin.clone());
                }
                None => {
                    table.pushed.insert(
                        plugin.name.clone(),
                        Pushed {
                            assigned: plugin.clone(),
                            state: PluginState::Pending,
                            loaded: None,
                        },
                    );
                    todo.push(plugin.clone());
                }
            }
        }
        drop(table);
        self.bump();
        todo
    }

    /// Records that `plugin` is loaded; ignored if the assignment moved on meanwhile.
    pub(crate) fn ready(&self, plugin: &AssignedPlugin, loaded: LoadedPlugin) {
        let mut table = self.table.write();
        if let Some(pushed) = table.pushed.get_mut(&plugin.name)
            && pushed.assigned.digest == plugin.digest
        {
            pushed.state = PluginState::Ready;
            pushed.loaded = Some((plugin.clone(), loaded));
        }
        drop(table);
        self.bump();
    }

    /// Records that `plugin` cannot be loaded; an older version keeps serving if there is one.
    pub(crate) fn failed(&self, plugin: &AssignedPlugin, why: String) {
        let mut table = self.table.write();
        if let Some(pushed) = table.pushed.get_mut(&plugin.name)
            && pushed.assigned.digest == plugin.digest
        {
            let why = match &pushed.loaded {
                Some((old, _)) => format!("{why} (still serving version {})", old.version),
                None => why,
            };
            pushed.state = PluginState::Failed(why);
        }
        drop(table);
        self.bump();
    }

    /// Where every pushed plugin stands, for the server.
    pub(crate) fn statuses(&self) -> Vec<PluginStatus> {
        self.table
            .read()
            .pushed
            .values()
            .map(|p| PluginStatus {
                name: p.assigned.name.clone(),
                version: p.assigned.version.clone(),
                digest: p.assigned.digest,
                state: p.state.clone(),
            })
            .collect()
    }

    /// The digest of what serves plugin `name` now, if anything.
    #[cfg(test)]
    pub(crate) fn loaded_digest(&self, name: &str) -> Option<Digest> {
        self.table
            .read()
            .pushed
            .get(name)
            .and_then(|p| p.loaded.as_ref())
            .map(|(a, _)| a.digest)
    }

    /// The digests of every package the table refers to (assigned or still loaded).
    pub(crate) fn digests(&self) -> BTreeSet<Digest> {
        let table = self.table.read();
        let mut digests = BTreeSet::new();
        for pushed in table.pushed.values() {
            digests.insert(pushed.assigned.digest);
            if let Some((old, _)) = &pushed.loaded {
                digests.insert(old.digest);
            }
        }
        digests
    }
}

fn topics_of(table: &Table) -> Vec<String> {
    let mut topics: BTreeSet<String> = table.local.keys().cloned().collect();
    for pushed in table.pushed.values() {
        if let Some((loaded, _)) = &pushed.loaded {
            topics.extend(loaded.topics.iter().cloned());
        }
    }
    topics.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::host::{HostConfig, PluginHost};

    fn plugin(host: &PluginHost, name: &str) -> LoadedPlugin {
        host.load(name, ferry_builtins::ECHO.component).unwrap()
    }

    fn assigned(name: &str, version: &str, topics: &[&str]) -> AssignedPlugin {
        AssignedPlugin {
            name: name.into(),
            version: version.into(),
            digest: Digest::of(format!("{name}@{version}").as_bytes()),
            signature: Vec::new(),
            size: 0,
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn served_by(routes: &Routes, topic: &str) -> Option<String> {
        match routes.route(topic) {
            Route::Ready(p) => Some(p.name().to_string()),
            _ => None,
        }
    }

    /// A topic is read-only as the plugin serving it now says: a pushed version that drops the
    /// declaration takes it away with it.
    #[test]
    fn read_only_topics_follow_the_plugin_that_serves_them() {
        let host = PluginHost::new(HostConfig::default()).unwrap();
        let reader = |name: &str, read_only: &[&str]| {
            let options = crate::host::LoadOptions {
                read_only: read_only.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            };
            host.load_with(name, ferry_builtins::ECHO.component, options)
                .unwrap()
        };
        let local = reader("local", &["get"]);
        let routes = Routes::new(
            [
                ("get".to_string(), local.clone()),
                ("set".to_string(), local),
            ]
            .into(),
        );
        assert_eq!(routes.read_only_topics(), ["get"]);
        let v2 = assigned("pushed", "2.0.0", &["get"]);
        routes.assign(std::slice::from_ref(&v2));
        routes.ready(&v2, reader("pushed", &[]));
        assert!(
            routes.read_only_topics().is_empty(),
            "the pushed plugin does not declare it"
        );
    }

    #[tokio::test]
    async fn a_pending_topic_waits_for_its_plugin_until_the_deadline() {
        let host = PluginHost::new(HostConfig::default()).unwrap();
        let routes = std::sync::Arc::new(Routes::new(HashMap::new()));
        let v1 = assigned("greeter", "1.0.0", &["greet"]);
        assert_eq!(routes.assign(std::slice::from_ref(&v1)).len(), 1);

        let soon = Instant::now() + Duration::from_millis(50);
        let err = routes.resolve("greet", Some(soon)).await.err().unwrap();
        assert!(err.contains("still being fetched"), "{err}");

        let waiting = {
            let routes = routes.clone();
            tokio::spawn(async move {
                routes
                    .resolve("greet", None)
                    .await
                    .map(|p| p.name().to_string())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        routes.ready(&v1, plugin(&host, "greeter-v1"));
        assert_eq!(waiting.await.unwrap().unwrap(), "greeter-v1");
        assert_eq!(routes.loaded_digest("greeter"), Some(v1.digest));
    }

    #[tokio::test]
    async fn an_old_version_serves_until_the_new_one_is_ready_or_if_it_fails() {
        let host = PluginHost::new(HostConfig::default()).unwrap();
        let local: HashMap<String, LoadedPlugin> =
            [("greet".to_string(), plugin(&host, "local"))].into();
        let routes = Routes::new(local);
        assert_eq!(served_by(&routes, "greet").as_deref(), Some("local"));

        let v1 = assigned("greeter", "1.0.0", &["greet"]);
        routes.assign(std::slice::from_ref(&v1));
        routes.ready(&v1, plugin(&host, "greeter-v1"));
        assert_eq!(
            served_by(&routes, "greet").as_deref(),
            Some("greeter-v1"),
            "pushed wins"
        );

        let v2 = assigned("greeter", "2.0.0", &["greet", "wave"]);
        assert_eq!(routes.assign(std::slice::from_ref(&v2)).len(), 1);
        assert_eq!(served_by(&routes, "greet").as_deref(), Some("greeter-v1"));
        assert!(
            matches!(routes.route("wave"), Route::Pending),
            "v1 never served wave"
        );

        routes.failed(&v2, "refused: tampered".into());
        assert_eq!(served_by(&routes, "greet").as_deref(), Some("greeter-v1"));
        let status = &routes.statuses()[0];
        assert!(
            matches!(&status.state, PluginState::Failed(why) if why.contains("still serving version 1.0.0"))
        );
        match routes.route("wave") {
            Route::Unknown(why) => assert!(why.contains("tampered"), "{why}"),
            _ => panic!("wave should be unknown"),
        }

        // Unassigned: the local plugin serves again.
        routes.assign(&[]);
        assert_eq!(served_by(&routes, "greet").as_deref(), Some("local"));
        assert!(routes.statuses().is_empty());
    }
}
