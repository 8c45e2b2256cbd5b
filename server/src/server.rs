//! Starting and stopping a server, and what it offers to its embedder and to the operator API.
//!
//! The composition root: the only module that knows every part. `Server::start` makes the keys and
//! certificates, binds the QUIC endpoint and the API, starts the heartbeat sweeper, and gives each
//! part the handles it needs: `domain::commands::Commands` (its store, the run store, the ports),
//! `transport::dispatch::Dispatcher` (registry, log, data, limits), `transport::Shared` (what a
//! connection's task needs), `api::ApiState` (what handlers need). There is no god object.
//!
//! Every task the server runs (the accept loop, the heartbeat sweeper, connections, API
//! connections, report streams, runs, fan-outs, deferred writes, the delayed revocation check)
//! is spawned on one `TaskTracker` they share. `shutdown` cancels `stop`,
//! closes the endpoint, waits for exactly those tasks (bounded, 10 s, naming how many are left),
//! drops the parts, and waits (bounded) until nothing else holds the database, so that a restart in
//! the same process can open it.
//!
//! The plugin signing key is `<data_dir>/pki/plugin-signing.key`, made on first start; its public
//! half `plugin-signing.pub` sits beside `ca.pem`, where agents configured with that CA find it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ferry_protocol::AgentId;
use ferry_protocol::package::SigningKey;
use ferry_protocol::pki::{PkiDir, write_file};
use ferry_protocol::tls::{self, Identity, TransportSettings};
use rand::RngCore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::config::ServerConfig;
use crate::domain::ServerData;
use crate::domain::agents::AgentInfo;
use crate::domain::commands as fleet;
use crate::domain::commands::{
    CommandEntry, CommandRequest, CommandStore, Commands, Settings, SubmitError, Target,
};
use crate::domain::plugins::PluginRegistry;
use crate::domain::runs::{RunEntry, RunStore};
use crate::storage::audit::AuditLog;
use crate::storage::db;
use crate::storage::enrollment::{Enrollment, JoinToken};
use crate::storage::overrides::Overrides;
use crate::storage::persist::Persist;
use crate::storage::plugins::PluginStore;
use crate::storage::tokens::{Scope, TokenStore};
use crate::transport::accept as listener;
use crate::transport::dispatch::Dispatcher;
use crate::transport::{self, Agents};

/// The server's plugin signing key, under `<data_dir>/pki/`.
pub const PLUGIN_KEY: &str = "plugin-signing.key";
/// Its public half, which agents pin.
pub const PLUGIN_KEY_PUB: &str = "plugin-signing.pub";

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or a file in it could not be used.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Pki(#[from] ferry_protocol::pki::PkiError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The plugin registry or its signing key could not be opened.
    #[error("plugin registry in {path}: {reason}")]
    Plugins {
        /// The data directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// A setting is out of its range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; is another server running there? choose another address with --listen / --api-listen"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What to run on one agent: [`Server::submit`] makes a command for that agent alone and
/// hands back its run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The agent to run it on.
    pub agent: AgentId,
    /// The topic.
    pub topic: String,
    /// The plugin's input.
    pub payload: Vec<u8>,
    /// How `payload` is encoded.
    pub content_type: String,
    /// How long it may run; the server's default when `None`.
    pub timeout: Option<Duration>,
    /// An optional idempotency key.
    pub idempotency_key: Option<String>,
    /// Data the plugin may ask for by key while it runs (`request-data`); looked up before
    /// the server's own data.
    pub data: BTreeMap<String, Vec<u8>>,
    /// How long to wait for the agent if it is not connected; `None` refuses the command at
    /// once instead.
    pub deliver_within: Option<Duration>,
}

/// A running ferry server.
pub struct Server {
    registry: Arc<Agents>,
    runs: Arc<RunStore>,
    commands: Arc<Commands>,
    plugins: Arc<PluginRegistry>,
    tokens: Arc<TokenStore>,
    enrollment: Arc<Enrollment>,
    data: ServerData,
    /// Held to know when every part has let go of it: the database closes then, and a restart
    /// in this process can open it.
    db: Arc<redb::Database>,
    /// Every task the parts start (connections, runs, fan-outs, report streams, deferred
    /// writes): shutdown cancels `stop` and then waits for exactly these.
    tracked: TaskTracker,
    endpoint: quinn::Endpoint,
    quic_addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    api_token: String,
    ca_cert_path: std::path::PathBuf,
    plugin_key_path: std::path::PathBuf,
    stop: CancellationToken,
}

impl Server {
    /// Starts a server: makes (or loads) its keys and certificates under the data directory,
    /// binds the QUIC endpoint and the operator API, and begins accepting agents.
    pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
        config.check().map_err(StartError::Config)?;
        let data_dir = config.data_dir.clone();
        ferry_store::private_dir(&data_dir).map_err(|e| data_dir_error(&data_dir, e))?;

        let (mut identity, client_roots, ca_cert_path, ca) = match &config.tls {
            Some(paths) => (
                Identity::from_pem_files(&paths.cert, &paths.key)?,
                tls::roots_from_pem_file(&paths.client_ca)?,
                paths.client_ca.clone(),
                None,
            ),
            None => {
                let pki = PkiDir::open_or_create(&data_dir.join("pki"), &config.server_names)?;
                (
                    Identity::from_pem_files(&pki.server_cert_path(), &pki.server_key_path())?,
                    tls::roots_from_pem_file(&pki.ca_cert_path())?,
                    pki.ca_cert_path(),
                    Some(pki.ca()?),
                )
            }
        };
        // The CA goes in the chain the server sends: an enrolling agent has only the CA's
        // fingerprint, and finds the CA to check the server's certificate against there.
        if let Some(ca) = &ca
            && identity.chain.len() == 1
        {
            identity.chain.push(
                ferry_protocol::pki::first_cert_der(ca.cert_pem())
                    .map_err(StartError::Pki)?
                    .into(),
            );
        }
        let transport = TransportSettings {
            keep_alive: config.keep_alive,
            idle_timeout: config.idle_timeout,
            // Agents open their control stream and a stream per package they fetch; commands go
            // the other way.
            max_incoming_bidi_streams: config.max_agent_streams,
        };
        let server_config = tls::server_config(identity, client_roots, &transport)?;
        let secret = load_or_create_secret(&data_dir.join("server.secret"))?;
        let socket =
            std::net::UdpSocket::bind(config.listen).map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let endpoint = quinn::Endpoint::new(
            tls::endpoint_config_from_secret(&secret),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let quic_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;

        // Both addresses are bound before anything opens the database or spawns a task, so a
        // start that fails to bind holds nothing: `ferry dev` retries on a free port at once,
        // and a second server on the same data directory still learns the real reason.
        let api_listener = match config.api_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?;
                Some((listener, bound))
            }
            None => None,
        };

        let api_token = load_or_create_token(&data_dir.join("operator.token"))?;
        // The signing key sits with the CA: both are what agents trust this server by, and
        // `ferry cert issue` hands out both public halves together.
        let pki_dir = data_dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(|e| data_dir_error(&pki_dir, e))?;
        let plugin_key_path = pki_dir.join(PLUGIN_KEY_PUB);
        let plugins_error = |reason: String| StartError::Plugins {
            path: data_dir.display().to_string(),
            reason,
        };
        let signing_key = SigningKey::load_or_create(&pki_dir.join(PLUGIN_KEY), &plugin_key_path)
            .map_err(|e| plugins_error(e.to_string()))?;
        let db = db::open(&data_dir).map_err(|e| data_dir_error(&data_dir, e))?;
        let plugins = PluginStore::open(&data_dir, db.clone())
            .and_then(|store| {
                PluginRegistry::open(Box::new(store), signing_key, config.max_plugin_bytes)
            })
            .map_err(plugins_error)?;
        let tokens =
            TokenStore::open(db.clone(), &api_token).map_err(|e| data_dir_error(&data_dir, e))?;
        let audit = AuditLog::open(db.clone()).map_err(|e| data_dir_error(&data_dir, e))?;
        let overrides = Overrides::open(db.clone()).map_err(|e| data_dir_error(&data_dir, e))?;
        let ca_pem =
            std::fs::read_to_string(&ca_cert_path).map_err(|e| data_dir_error(&ca_cert_path, e))?;
        let enrollment = Enrollment::open(
            db.clone(),
            ca,
            ca_pem,
            std::fs::read_to_string(&plugin_key_path).ok(),
            config.agent_cert_ttl,
        )
        .map_err(|e| data_dir_error(&data_dir, e))?;
        let persist =
            Persist::open(db.clone(), &data_dir).map_err(|e| data_dir_error(&data_dir, e))?;
        let mut loaded = persist
            .load(fleet::RETAINED_FLEETS)
            .map_err(|e| data_dir_error(&data_dir, e))?;

        // The composition root: every part gets the handles it needs, and only this function
        // knows them all.
        let stop = CancellationToken::new();
        let tracked = TaskTracker::new();
        let registry = Arc::new(Agents::default());
        let runs = Arc::new(RunStore::default());
        let persist = Arc::new(persist);
        let overrides = Arc::new(overrides);
        let plugins = Arc::new(plugins);
        let tokens = Arc::new(tokens);
        let enrollment = Arc::new(enrollment);
        let data = ServerData::default();
        let dispatcher = Arc::new(Dispatcher {
            agents: registry.clone(),
            log: persist.clone(),
            data: data.clone(),
            result_wait: config.result_wait,
            max_frame_bytes: config.max_frame_bytes,
            tasks: tracked.clone(),
            stop: stop.clone(),
        });
        let commands = Arc::new(Commands {
            settings: Settings {
                default_timeout: config.default_command_timeout,
                restart_grace: config.restart_grace,
                max_frame_bytes: config.max_frame_bytes,
            },
            store: CommandStore::default(),
            runs: runs.clone(),
            agents: registry.clone(),
            overrides: overrides.clone(),
            log: persist.clone(),
            deliver: Arc::new(dispatcher),
            tasks: tracked.clone(),
            stop: stop.clone(),
        });
        registry.restore(std::mem::take(&mut loaded.agents));
        fleet::restore(&commands, loaded);
        let agent_side = Arc::new(transport::Shared {
            config: config.clone(),
            registry: registry.clone(),
            runs: runs.clone(),
            plugins: plugins.clone(),
            enrollment: enrollment.clone(),
            overrides: overrides.clone(),
            log: persist.clone(),
            tasks: tracked.clone(),
            stop: stop.clone(),
            // Random start: session ids must not repeat across restarts.
            sessions: AtomicU64::new(rand::random::<u64>() >> 1),
        });
        // The accept loop ends when shutdown closes the endpoint, the sweeper at the stop
        // signal: like every other task, both are waited for.
        tracked.spawn(listener::accept_loop(endpoint.clone(), agent_side));

        let sweeper_registry = registry.clone();
        let sweeper_stop = stop.clone();
        let (interval, grace) = (config.heartbeat_interval, config.heartbeat_grace);
        tracked.spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
            loop {
                tokio::select! {
                    _ = tick.tick() => sweeper_registry.sweep(grace),
                    _ = sweeper_stop.cancelled() => return,
                }
            }
        });

        let api_addr = match api_listener {
            Some((listener, bound)) => {
                let limits = api::Limits {
                    header_timeout: config.api_header_timeout,
                    max_connections: config.api_max_connections,
                };
                let router = api::router(Arc::new(api::ApiState {
                    config,
                    registry: registry.clone(),
                    commands: commands.clone(),
                    plugins: plugins.clone(),
                    tokens: tokens.clone(),
                    audit: Arc::new(audit),
                    overrides,
                    enrollment: enrollment.clone(),
                    data: data.clone(),
                    tasks: tracked.clone(),
                    stop: stop.clone(),
                    refused_tokens: api::RefusedTokens::default(),
                }));
                tracked.spawn(api::serve(
                    listener,
                    router,
                    limits,
                    stop.clone(),
                    tracked.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        tracing::info!(%quic_addr, ?api_addr, "ferry server started");
        Ok(Server {
            registry,
            runs,
            commands,
            plugins,
            tokens,
            enrollment,
            data,
            db,
            tracked,
            endpoint,
            quic_addr,
            api_addr,
            api_token,
            ca_cert_path,
            plugin_key_path,
            stop,
        })
    }

    /// The public key agents check plugin packages with (`ed25519:<hex>` in a file).
    pub fn plugin_key_path(&self) -> &Path {
        &self.plugin_key_path
    }

    /// The plugin registry: push, assign, roll back, list.
    pub fn plugins(&self) -> &PluginRegistry {
        &self.plugins
    }

    /// The UDP address agents connect to.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The operator API's address, if it is on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The bearer token the operator API requires.
    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// The CA certificate agents must trust (and whose certificates agents present).
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert_path
    }

    /// The SHA-256 fingerprint of the CA certificate, hex: what `ferry agent --join
    /// --ca-fingerprint` takes.
    pub fn ca_fingerprint(&self) -> String {
        self.enrollment.ca_fingerprint()
    }

    /// Makes a join token (see [`crate::storage::enrollment`]); returns its record and the token, which is
    /// shown nowhere else.
    pub fn create_join_token(
        &self,
        labels: BTreeMap<String, String>,
        ttl: Duration,
        uses: u32,
    ) -> Result<(JoinToken, String), String> {
        self.enrollment
            .create(labels, ttl, uses, "server")
            .map_err(|e| e.to_string())
    }

    /// Every agent the server knows.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.registry.list()
    }

    /// One agent.
    pub fn agent(&self, id: &AgentId) -> Option<AgentInfo> {
        self.registry.get(id)
    }

    /// Sends a command to an agent; the returned entry follows it to its end. The command is
    /// listed by the operator API like any other, created by `server`.
    pub async fn submit(&self, request: RunRequest) -> Result<Arc<RunEntry>, SubmitError> {
        let fleet = self
            .submit_fleet(CommandRequest {
                target: Target::Agents(vec![request.agent]),
                topic: request.topic,
                payload: request.payload,
                content_type: request.content_type,
                timeout: request.timeout,
                idempotency_key: request.idempotency_key,
                data: request.data,
                max_concurrency: None,
                max_errors: None,
                deliver_within: request.deliver_within,
                created_by: "server".into(),
            })
            .await?;
        Ok(fleet
            .child(0)
            .expect("a command for one agent is sent before it is returned"))
    }

    /// Sends a command to one or many agents (see [`crate::domain::commands`]). A command whose
    /// idempotency key was used before is not sent again: the first one is returned.
    pub async fn submit_fleet(
        &self,
        request: CommandRequest,
    ) -> Result<Arc<CommandEntry>, SubmitError> {
        fleet::start(&self.commands, request).await.map(|(f, _)| f)
    }

    /// A command by id, as [`Server::submit_fleet`] returned it.
    pub fn fleet_command(&self, id: &str) -> Option<Arc<CommandEntry>> {
        self.commands.store.get(id)
    }

    /// Makes an operator API token; returns the token, which is shown nowhere else.
    pub fn create_api_token(&self, name: &str, scope: Scope) -> Result<String, String> {
        self.tokens
            .create(name, scope, "server")
            .map(|(_, token)| token)
            .map_err(|e| e.to_string())
    }

    /// Supplies data plugins may ask for by key (`request-data`), replacing any under `key`.
    pub fn set_data(&self, key: impl Into<String>, value: Vec<u8>) {
        self.data.write().insert(key.into(), value.into());
    }

    /// Withdraws data; true if there was any under `key`.
    pub fn remove_data(&self, key: &str) -> bool {
        self.data.write().remove(key).is_some()
    }

    /// A command by id.
    pub fn command(&self, id: &str) -> Option<Arc<RunEntry>> {
        self.runs.get(id)
    }

    /// Stops the server: closes every agent connection and the operator API, waits (briefly) for
    /// the close frames to leave, so agents notice at once, and returns once the QUIC port is
    /// free again, so a restart in the same process can bind it.
    pub async fn shutdown(self) {
        let Server {
            registry,
            runs,
            commands,
            plugins,
            tokens,
            enrollment,
            data,
            db,
            tracked,
            endpoint,
            quic_addr,
            stop,
            ..
        } = self;
        stop.cancel();
        registry.close_all("server shutting down");
        endpoint.close(
            ferry_protocol::close::SHUTDOWN.into(),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        drop(endpoint);
        // The parts' tasks end at the stop signal (what they must not lose is on disk) or with
        // their connection, closed above: wait for exactly those.
        tracked.close();
        if tokio::time::timeout(Duration::from_secs(10), tracked.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = tracked.len(),
                "some of the server's tasks are still running 10 s after shutdown"
            );
        }
        drop((registry, runs, commands, plugins, tokens, enrollment, data));
        // A blocking call an API handler started (its connection cut at the stop) may still
        // hold a part for a moment; the database closes (and a restart in this process can open
        // it) once the last part lets go of it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&db) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&db) > 1 {
            tracing::warn!("the server's database is still held 2 s after its tasks ended");
        }
        drop(db);
        // quinn's endpoint driver owns the socket and ends by itself once the last handle is
        // gone; wait until it has, boundedly (a busy machine takes a while).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::UdpSocket::bind(quic_addr).is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(%quic_addr, "the QUIC port is still taken 10 s after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn data_dir_error(path: &Path, e: impl std::fmt::Display) -> StartError {
    StartError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The secret the QUIC reset and connection-id keys derive from; it must survive restarts.
fn load_or_create_secret(path: &Path) -> Result<[u8; 32], StartError> {
    match std::fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            data_dir_error(
                path,
                "server.secret must hold exactly 32 bytes; delete it to make a new one",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            write_file(path, &secret, true)?;
            Ok(secret)
        }
        Err(e) => Err(data_dir_error(path, e)),
    }
}

fn load_or_create_token(path: &Path) -> Result<String, StartError> {
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_string()),
        Ok(_) => Err(data_dir_error(
            path,
            "the operator token file is empty; delete it to make a new one",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 24];
            rand::rng().fill_bytes(&mut bytes);
            let token = hex::encode(bytes);
            write_file(path, token.as_bytes(), true)?;
            Ok(token)
        }
        Err(e) => Err(data_dir_error(path, e)),
    }
}
