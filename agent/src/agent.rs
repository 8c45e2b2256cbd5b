//! Starting and stopping an agent.
//!
//! The composition root: the only module that names every folder (`tests/e2e/layering.rs`).
//! `Agent::start` loads the identity, the built-in plugins (each granted what the policy allows its
//! name, `Policy::allowance`: nothing by default) and the configured ones, opens the runtimes,
//! starts the metrics history, builds the plugin host (`ferry_host`, re-exported as
//! `ferry_agent::host`) with the agent's metrics history, key-value store and runtimes plugged in,
//! and spawns the connection loop. `ConnectionStatus` is published on a `watch` channel.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use ferry_protocol::identity::agent_id_from_cert;
use ferry_protocol::package::PublicKey;
use ferry_protocol::tls::{self, Identity};
use ferry_protocol::{AgentId, Hello, SUPPORTED};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber as _;

use crate::capabilities::kv::RedbKvStore;
use crate::capabilities::metrics::{MetricsHistory, MetricsSampler};
use crate::capabilities::runtimes::Runtimes;
use crate::commands::executor::Executor;
use crate::commands::journal::Journal;
use crate::commands::routes::Routes;
use crate::config::AgentConfig;
use crate::host::{HostConfig, HostError, LoadOptions, LoadedPlugin, PluginHost};
use crate::plugins::deploy::Deployer;
use crate::plugins::load_options;
use crate::plugins::policy::{Policy, PolicyError};
use crate::session::connection::{self, Link};
use crate::session::{ConnectionStatus, client_config};
use ferry_manifest::{Capabilities, Limits, Manifest};
use std::collections::HashMap;

/// The WIT versions of `ferry:plugin` this agent's plugin host serves.
pub const WIT_VERSIONS: &[&str] = ferry_protocol::WIT_VERSIONS;

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Its certificate, key or CA could not be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Its certificate names no valid agent.
    #[error("{path}: {source}")]
    Identity {
        /// The certificate file.
        path: String,
        /// What is wrong.
        source: ferry_protocol::identity::IdentityError,
    },
    /// The plugin host could not start.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The policy file could not be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A plugin could not be loaded.
    #[error("cannot load plugin {what}: {reason}")]
    Plugin {
        /// The plugin's name or file.
        what: String,
        /// Why.
        reason: String,
    },
    /// The data directory cannot be used.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running agent.
pub struct Agent {
    id: AgentId,
    routes: Arc<Routes>,
    executor: Arc<Executor>,
    status: watch::Receiver<ConnectionStatus>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Agent {
    /// Loads the agent's identity and plugins and starts connecting to its server.
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        ferry_store::private_dir(&config.data_dir).map_err(|source| AgentError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let identity = Identity::from_pem_files(&config.cert, &config.key)?;
        let id = agent_id_from_cert(
            identity
                .chain
                .first()
                .map(|c| c.as_ref())
                .unwrap_or_default(),
        )
        .map_err(|source| AgentError::Identity {
            path: config.cert.display().to_string(),
            source,
        })?;
        let client_config = client_config(&config, identity)?;
        let renewal = crate::session::renew::Renewal::load(
            id.clone(),
            config.cert.clone(),
            config.key.clone(),
        );

        let cache_dir = config
            .cache_dir
            .clone()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or_else(|| config.data_dir.join("cache").join("components"));
        // Sampled for as long as the agent runs, connected or not, so that plugins see the
        // history across reconnections; heartbeats keep their own sampler.
        let history = MetricsHistory::new(
            &config.data_dir,
            config.metrics_interval,
            config.metrics_history,
        );
        let stop = CancellationToken::new();
        let runtimes = Runtimes::open(&config.data_dir, history.capacity(), stop.clone()).map_err(
            |reason| AgentError::DataDir {
                path: config.data_dir.join("runtimes").display().to_string(),
                source: std::io::Error::other(reason),
            },
        )?;
        crate::capabilities::runtimes::spawn_sampler(
            runtimes.clone(),
            config.metrics_interval,
            stop.clone(),
        );
        let host = PluginHost::new(HostConfig {
            max_memory_bytes: config.plugin_memory_mib.saturating_mul(1024 * 1024),
            cache_dir: Some(cache_dir),
            metrics: Some(Arc::new(history.clone())),
            kv: Some(Arc::new(RedbKvStore::new(config.data_dir.join("kv")))),
            runtimes: Some(Arc::new(runtimes.clone())),
            ..HostConfig::default()
        })?;
        let policy = Arc::new(match &config.policy {
            Some(path) => Policy::load(path)?,
            None => Policy::deny_all(),
        });
        let routes = Arc::new(Routes::new(load_plugins(&host, &policy, &config)?));
        let key = match config.effective_plugin_key() {
            Some(path) => PublicKey::from_file(&path).map_err(|e| e.to_string()),
            None => Err(format!(
                "this agent has no plugin signing key, so it cannot check pushed plugins; copy the server's pki/plugin-signing.pub to {} (or set plugin_key in the agent's configuration)",
                config.ca.with_file_name("plugin-signing.pub").display()
            )),
        };
        if let Err(why) = &key {
            tracing::warn!("{why}");
        }
        let (journal, recovery) =
            Journal::open(&config.data_dir).map_err(|e| AgentError::DataDir {
                path: config
                    .data_dir
                    .join(crate::commands::journal::FILE)
                    .display()
                    .to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        for (id, plugin) in &recovery.interrupted {
            tracing::warn!(command = %id, %plugin, "a command was interrupted by the agent's last stop; it ends as crashed");
        }
        for (plugin, reason) in &recovery.quarantined {
            tracing::error!(%plugin, "{reason}");
        }
        let deployer = Arc::new(Deployer::new(
            routes.clone(),
            Arc::downgrade(&journal),
            host.clone(),
            policy,
            key,
            config.data_dir.join("packages"),
            config.max_frame_bytes,
            config.max_plugin_bytes,
        ));
        deployer.restore().await;
        tracing::info!(agent = %id, topics = ?routes.topics(), "agent starting");

        let instance =
            crate::instance::load_or_create(&config.data_dir).map_err(|e| AgentError::DataDir {
                path: config.data_dir.display().to_string(),
                source: std::io::Error::other(e),
            })?;
        let hello = Hello {
            protocol: SUPPORTED,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            labels: config.labels.clone(),
            wit_versions: WIT_VERSIONS.iter().map(|v| v.to_string()).collect(),
            topics: Vec::new(),
            read_only: Vec::new(),
            cached_plugins: Vec::new(),
            instance: Some(instance),
        };
        let executor = Arc::new(Executor {
            routes: routes.clone(),
            journal,
            stop: stop.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
            inflight: Default::default(),
            pending_removal: Default::default(),
            replay_wanted: Default::default(),
            decommission: watch::Sender::new(None),
            max_frame: config.max_frame_bytes,
            running: AtomicU32::new(0),
        });
        let sampler = Arc::new(Mutex::new(MetricsSampler::new(&config.data_dir)));
        let link = Arc::new(Link {
            config,
            client_config: Mutex::new(client_config),
            renewal: Mutex::new(renewal),
            hello,
            executor,
            sampler,
            deployer: deployer.clone(),
            runtimes,
        });
        let (status_tx, status) = watch::channel(ConnectionStatus::Connecting { attempt: 0 });
        history.spawn(stop.clone());
        // Its logs go where the agent's start went (an embedder's subscriber, say).
        tokio::spawn(deployer.run(stop.clone()).with_current_subscriber());
        link.executor.resume(recovery.to_run);
        let executor = link.executor.clone();
        let task = tokio::spawn(connection::run(link, stop.clone(), status_tx));
        Ok(Agent {
            id,
            routes,
            executor,
            status,
            stop,
            task,
        })
    }

    /// The agent's id, from its certificate.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// The topics it serves now (its own plugins' and the pushed ones that are ready), sorted.
    pub fn topics(&self) -> Vec<String> {
        self.routes.topics()
    }

    /// Where its connection stands now.
    pub fn status(&self) -> ConnectionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of the connection status.
    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatus> {
        self.status.clone()
    }

    /// Waits until the server has welcomed the agent; returns the session id, or the last status
    /// if `timeout` passes first.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<String, ConnectionStatus> {
        let mut rx = self.status.clone();
        let wait = rx.wait_for(|s| matches!(s, ConnectionStatus::Connected { .. }));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(status)) => match &*status {
                ConnectionStatus::Connected { session } => Ok(session.clone()),
                other => Err(other.clone()),
            },
            _ => Err(self.status()),
        }
    }

    /// Resolves once the agent has stopped by itself (it was decommissioned) or was shut down;
    /// returns the final status.
    pub async fn stopped(&self) -> ConnectionStatus {
        let mut rx = self.status.clone();
        let _ = rx
            .wait_for(|s| {
                matches!(
                    s,
                    ConnectionStatus::Stopped | ConnectionStatus::Removed { .. }
                )
            })
            .await;
        self.status()
    }

    /// Stops the agent: says Bye to the server and closes the connection, cancels the
    /// commands still running (their results, `cancelled`, are journaled and delivered after
    /// the next start) and waits for them to end, boundedly.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.executor.tasks.close();
        if tokio::time::timeout(Duration::from_secs(15), self.executor.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some commands did not end within 15 s of the agent stopping");
        }
    }

    /// Resolves when the agent has stopped (after [`Agent::shutdown`] from elsewhere, or never).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

fn load_plugins(
    host: &PluginHost,
    policy: &Policy,
    config: &AgentConfig,
) -> Result<HashMap<String, LoadedPlugin>, AgentError> {
    let mut topics = HashMap::new();
    if config.builtins {
        // Built-ins ask for what the policy allows them by name (nothing by default); the
        // policy's limits apply to them too.
        for builtin in ferry_builtins::all() {
            let grant = policy.grant_to(
                builtin.name,
                &policy.allowance(builtin.name),
                &Limits::default(),
            );
            let options = LoadOptions {
                read_only: builtin.read_only.iter().map(|t| t.to_string()).collect(),
                ..load_options(grant)
            };
            let plugin = host
                .load_with(builtin.name, builtin.component, options)
                .map_err(|e| AgentError::Plugin {
                    what: format!("built-in '{}'", builtin.name),
                    reason: e.to_string(),
                })?;
            for topic in builtin.topics {
                topics.insert(topic.to_string(), plugin.clone());
            }
        }
    }
    for spec in &config.plugins {
        let failed = |reason: String| AgentError::Plugin {
            what: spec.path.display().to_string(),
            reason,
        };
        let manifest = match &spec.manifest {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    failed(format!("cannot read its manifest {}: {e}", path.display()))
                })?;
                Some(Manifest::from_toml(&text).map_err(|e| {
                    failed(format!("its manifest {} is not valid: {e}", path.display()))
                })?)
            }
            None => None,
        };
        let name = spec
            .name
            .clone()
            .or_else(|| manifest.as_ref().map(|m| m.plugin.name.clone()))
            .unwrap_or_else(|| {
                spec.path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "plugin".into())
            });
        let plugin_topics = match (&spec.topics, &manifest) {
            (t, _) if !t.is_empty() => t.clone(),
            (_, Some(m)) => m.plugin.topics.clone(),
            _ => {
                return Err(failed(
                    "it names no topics; list them in `topics = [...]` or give it a manifest"
                        .into(),
                ));
            }
        };
        let grant = match &manifest {
            Some(m) => policy.grant_to(&name, &m.capabilities, &m.limits),
            None => policy.grant_to(&name, &Capabilities::default(), &Limits::default()),
        };
        for refusal in &grant.refusals {
            tracing::warn!(plugin = %name, "capability refused: {}", refusal.message);
        }
        let bytes = std::fs::read(&spec.path).map_err(|e| failed(e.to_string()))?;
        let options = LoadOptions {
            read_only: manifest
                .as_ref()
                .map(|m| m.plugin.read_only.clone())
                .unwrap_or_default(),
            ..load_options(grant)
        };
        let plugin = host
            .load_with(&name, &bytes, options)
            .map_err(|e| failed(e.to_string()))?;
        for topic in plugin_topics {
            topics.insert(topic, plugin.clone());
        }
    }
    Ok(topics)
}
