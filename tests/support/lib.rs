//! A test harness: a real server and real agents on loopback, in one process.

use std::path::PathBuf;
use std::sync::Once;

use std::time::Duration;
use tracing_subscriber::Layer as _;

use ferry_agent::{Agent, AgentConfig, PluginConfig};
use ferry_protocol::AgentId;
use ferry_protocol::pki::PkiDir;
use ferry_server::{RunRequest, RunView, Server, ServerConfig};

/// How long any single wait in a test may take before the test fails. Generous: these machines
/// are shared and small.
pub const WAIT: Duration = Duration::from_secs(30);

mod network;
mod runs;

pub use network::Relay;
pub use runs::runs_of;

/// Installs the process's tracing: the count of plugin runs ([`runs_of`]) always, and logs to
/// the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt as _;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let logs = std::env::var_os("RUST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        // The counter reads only the agents' INFO spans and events: unfiltered, the registry
        // would enable every callsite, and `try_init` would also route the `log` crate through
        // it at TRACE, turning on Cranelift's trace logging in every compile (it made a debug
        // build's plugin compiles ten times slower). `set_global_default` bridges nothing.
        let counter = runs::RunCounter.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("ferry_agent", tracing::Level::INFO),
        );
        let subscriber = tracing_subscriber::registry().with(counter).with(logs);
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// A server on loopback with fast heartbeats and short timeouts, and its data directory.
pub struct Harness {
    /// Everything the test writes lives here.
    pub dir: tempfile::TempDir,
    /// The server's configuration (its ports fixed after the first start).
    pub config: ServerConfig,
    server: Option<Server>,
}

impl Harness {
    /// Starts a server on ephemeral loopback ports.
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// Starts a server on ephemeral loopback ports, with `configure` applied to the test
    /// configuration first (e.g. slower heartbeats for many agents).
    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Harness {
        init_tracing();
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            api_listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: dir.path().join("server"),
            ..ServerConfig::default()
        };
        config.heartbeat_interval = Duration::from_millis(200);
        config.heartbeat_grace = Duration::from_secs(2);
        config.keep_alive = Duration::from_millis(500);
        config.idle_timeout = Duration::from_secs(5);
        configure(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        // Restarts must come back on the same ports, as a real server would.
        config.listen = server.quic_addr();
        config.api_listen = server.api_addr();
        Harness {
            dir,
            config,
            server: Some(server),
        }
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the server is running")
    }

    /// The certificate directory the server made.
    pub fn pki(&self) -> PkiDir {
        PkiDir::open_or_create(&self.config.data_dir.join("pki"), &[]).expect("pki")
    }

    /// An agent configuration for `id`, with a certificate from the server's CA and the
    /// test-fixture plugin `faulty` on the `fault.*` topics.
    pub fn agent_config(&self, id: &str) -> AgentConfig {
        let pki = self.pki();
        let (cert, key) = pki
            .ensure_agent(&AgentId::new(id).unwrap())
            .expect("agent certificate");
        let faulty = self.dir.path().join("faulty.wasm");
        if !faulty.exists() {
            std::fs::write(&faulty, ferry_builtins::fixtures::FAULTY.component).unwrap();
        }
        AgentConfig {
            server: self.config.listen.to_string(),
            server_name: "localhost".into(),
            cert,
            key,
            ca: pki.ca_cert_path(),
            data_dir: self.dir.path().join(format!("agent-{id}")),
            plugins: vec![PluginConfig {
                path: faulty,
                topics: ferry_builtins::fixtures::FAULTY
                    .topics
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
                name: Some("faulty".into()),
                manifest: None,
            }],
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(5),
            ..AgentConfig::default()
        }
    }

    /// Starts agent `id` and waits until the server has welcomed it.
    pub async fn start_agent(&self, id: &str) -> Agent {
        let agent = Agent::start(self.agent_config(id))
            .await
            .expect("agent starts");
        agent
            .wait_connected(WAIT)
            .await
            .unwrap_or_else(|status| panic!("agent {id} did not connect: {status:?}"));
        agent
    }

    /// Stops the server cleanly.
    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Starts the server again with the same data directory and QUIC port (agents come back to
    /// it). The operator API gets a fresh port: a TCP port let go is in the ephemeral range,
    /// and another test's outgoing connection may take it meanwhile; `api_url` follows.
    pub async fn restart_server(&mut self) {
        self.stop_server().await;
        let mut config = self.config.clone();
        if config.api_listen.is_some() {
            config.api_listen = Some("127.0.0.1:0".parse().unwrap());
        }
        // A loaded machine may take a while to drain the old endpoint's connections and free
        // its port; retry the bind boundedly rather than fail on the first refusal.
        let deadline = tokio::time::Instant::now() + WAIT;
        let server = loop {
            match Server::start(config.clone()).await {
                Ok(server) => break server,
                Err(ferry_server::StartError::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("server restarts: {e}"),
            }
        };
        self.config.api_listen = server.api_addr();
        self.server = Some(server);
    }

    /// Runs a command and waits for its end.
    pub async fn run(
        &self,
        agent: &str,
        topic: &str,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> RunView {
        let entry = self
            .server()
            .submit(RunRequest {
                agent: AgentId::new(agent).unwrap(),
                topic: topic.into(),
                payload: payload.to_vec(),
                content_type: "application/json".into(),
                timeout,
                idempotency_key: None,
                data: Default::default(),
                deliver_within: None,
            })
            .await
            .expect("command submitted");
        tokio::time::timeout(WAIT, entry.wait())
            .await
            .expect("command ends in time")
    }

    /// Pushes a plugin (its manifest text and component), assigns it to the agents `to`
    /// selects, and waits until each connected one has loaded it or failed to; returns each
    /// agent's state.
    pub async fn deploy(
        &self,
        manifest: &str,
        component: &[u8],
        to: &str,
    ) -> Vec<ferry_server::AgentRollout> {
        let plugins = self.server().plugins();
        let package = ferry_protocol::package::Package::new(manifest.into(), component.to_vec());
        let pushed = plugins
            .push(&package.encode())
            .expect("the plugin is accepted");
        let name = pushed.package.name;
        plugins
            .assign(
                &name,
                Some(&pushed.package.version),
                to.parse().expect("a valid selector"),
                &self.server().agents(),
                "the test harness",
            )
            .expect("the plugin is assigned");
        self.settle(&name, to).await
    }

    /// Waits until every connected agent `to` selects has settled on plugin `name`'s current
    /// assignment.
    pub async fn settle(&self, name: &str, to: &str) -> Vec<ferry_server::AgentRollout> {
        let selector: ferry_server::Selector = to.parse().expect("a valid selector");
        let agents: Vec<String> = self
            .server()
            .agents()
            .into_iter()
            .filter(|a| {
                a.status != ferry_server::AgentStatus::Offline && selector.matches(&a.labels)
            })
            .map(|a| a.id)
            .collect();
        self.server()
            .plugins()
            .wait_settled(name, &agents, WAIT)
            .await
    }

    /// The operator API's base URL, `http://127.0.0.1:<port>`.
    pub fn api_url(&self) -> String {
        format!(
            "http://{}",
            self.server().api_addr().expect("the operator API is on")
        )
    }

    /// The directory for the test's own files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Polls `check` every 20 ms until it holds or [`WAIT`] passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
