//! The connection loop: connect, then drive the control session
//! ([`ferry_lifecycle::AgentSession`]: Hello, Welcome or Reject, heartbeats, the server's
//! liveness, leaving) and take commands until it ends; then wait (backoff with jitter, or the
//! delay the server asked for) and start again.
//!
//! Each connection attempt is bounded by `connect_timeout`. With TLS 1.3 the client's handshake
//! completes before the server has checked the client certificate, so only Welcome means accepted;
//! a TLS refusal surfaces as the connection's close reason, which is what the agent reports. Once
//! established: heartbeats (metrics sampled when the session says one is due; the transport's
//! received datagrams tell the session the server is alive, its grace being `idle_timeout`),
//! command streams, result replay on report streams, renewals, plugin reports and the server's
//! control frames; Bye on stop and Leave on decommission. There is one quinn endpoint per address
//! family for the agent's life.
//!
//! Decommissioning (`agent.decommission`, the `delete_orchestrator` topic): the host call only
//! records the request on the command. Once that command succeeded and the server acknowledged its
//! result, the executor signals this loop, which sends `Leave`, waits for the server to close the
//! connection (the server records the agent as revoked first, durably), stops and forgets the
//! runtimes, deletes the data directory and the key as `[decommission]` says, and ends with
//! `ConnectionStatus::Removed`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_lifecycle::{
    AgentEffect, AgentEnd, AgentInput, AgentSession, AgentSettings, Phase, Retry,
};
use ferry_protocol::{
    FrameError, FrameReader, Health, Heartbeat, Hello, LogLevel, Message, RuntimeState, write_frame,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capabilities::metrics::MetricsSampler;
use crate::capabilities::runtimes::{Runtimes, Status as RuntimeStatus};
use crate::commands::executor::Executor;
use crate::config::AgentConfig;
use crate::plugins::deploy::{Deployer, Session as PluginSession};
use crate::session::ConnectionStatus;
use crate::session::backoff::Backoff;
use crate::session::renew::Renewal;

/// What the loop needs, built once at start.
pub(crate) struct Link {
    pub(crate) config: AgentConfig,
    /// Rebuilt when the certificate is renewed: the next connection presents the new one.
    pub(crate) client_config: Mutex<quinn::ClientConfig>,
    /// When and how the certificate is renewed; `None` if its expiry cannot be read.
    pub(crate) renewal: Mutex<Option<Renewal>>,
    pub(crate) hello: Hello,
    pub(crate) executor: Arc<Executor>,
    pub(crate) sampler: Arc<Mutex<MetricsSampler>>,
    pub(crate) deployer: Arc<Deployer>,
    pub(crate) runtimes: Runtimes,
}

/// Runs until `stop` is cancelled.
pub(crate) async fn run(
    link: Arc<Link>,
    stop: CancellationToken,
    status: watch::Sender<ConnectionStatus>,
) {
    let mut backoff = Backoff::new(link.config.reconnect_min, link.config.reconnect_max);
    // One endpoint per address family for the agent's whole life: quinn endpoints are meant to
    // be long-lived, and a fresh UDP socket per attempt would churn ports.
    let mut endpoints: HashMap<bool, quinn::Endpoint> = HashMap::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        status.send_replace(ConnectionStatus::Connecting { attempt });
        let end = connect_and_serve(&link, &mut endpoints, &status, &stop).await;
        match &end {
            AgentEnd::Stopped => break,
            AgentEnd::Decommissioned(reason) => {
                decommission(&link).await;
                status.send_replace(ConnectionStatus::Removed {
                    reason: reason.clone(),
                });
                // Everything else the agent runs ends with it.
                stop.cancel();
                for endpoint in endpoints.values() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
                }
                return;
            }
            AgentEnd::Lost(reason) => {
                tracing::warn!(%reason, "connection to the server lost; reconnecting")
            }
            AgentEnd::Failed(reason) => {
                tracing::warn!(%reason, attempt, "could not connect to the server")
            }
            AgentEnd::Rejected(reject) => {
                tracing::error!(code = ?reject.code, message = %reject.message, "the server refused this agent")
            }
        }
        let delay = match end.retry() {
            Retry::Backoff { reset } => {
                if reset {
                    // After an established session, start again from the shortest delay.
                    backoff.reset();
                    attempt = 0;
                }
                backoff.next_delay()
            }
            Retry::After(delay) => delay,
            // Stopping and decommissioning are handled above.
            Retry::Never => break,
        };
        status.send_replace(ConnectionStatus::Disconnected {
            reason: end.reason(),
            retry_in: delay,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => break,
        }
    }
    for endpoint in endpoints.values() {
        // Without waiting, the close frame sent by the session would never leave.
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    status.send_replace(ConnectionStatus::Stopped);
}

async fn resolve(server: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(server)
        .await
        .map_err(|e| format!("cannot resolve server address '{server}': {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("server address '{server}' resolves to nothing"))
}

fn endpoint_for(
    endpoints: &mut HashMap<bool, quinn::Endpoint>,
    addr: SocketAddr,
) -> Result<quinn::Endpoint, String> {
    let v6 = addr.is_ipv6();
    if let Some(endpoint) = endpoints.get(&v6) {
        return Ok(endpoint.clone());
    }
    let bind: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .expect("valid address");
    let endpoint =
        quinn::Endpoint::client(bind).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    endpoints.insert(v6, endpoint.clone());
    Ok(endpoint)
}

/// One connection's control session: a thin driver of [`AgentSession`], which decides what
/// the server's frames mean in each phase, when the agent counts as connected, when a
/// heartbeat is due, when the server is given up and how the session ends. This driver
/// connects, reads and writes the control stream, and carries out the effects with the
/// executor, the deployer, the renewal and the metrics sampler.
async fn connect_and_serve(
    link: &Link,
    endpoints: &mut HashMap<bool, quinn::Endpoint>,
    status: &watch::Sender<ConnectionStatus>,
    stop: &CancellationToken,
) -> AgentEnd {
    let config = &link.config;
    let addr = tokio::select! {
        addr = resolve(&config.server) => match addr {
            Ok(addr) => addr,
            Err(e) => return AgentEnd::Failed(e),
        },
        _ = stop.cancelled() => return AgentEnd::Stopped,
    };
    let endpoint = match endpoint_for(endpoints, addr) {
        Ok(endpoint) => endpoint,
        Err(e) => return AgentEnd::Failed(e),
    };
    let server_name = config.effective_server_name();
    let client_config = link.client_config.lock().clone();
    let connecting = match endpoint.connect_with(client_config, addr, &server_name) {
        Ok(connecting) => connecting,
        Err(e) => return AgentEnd::Failed(format!("cannot connect to {addr}: {e}")),
    };
    let hello = Hello {
        topics: link.executor.routes.topics(),
        read_only: link.executor.routes.read_only_topics(),
        cached_plugins: link.deployer.stored(),
        ..link.hello.clone()
    };
    let settings = AgentSettings {
        connect_timeout: config.connect_timeout,
        // The transport's own idle timeout: what the agent tolerates of a silent server.
        server_grace: config.idle_timeout,
    };
    let mut session = AgentSession::new(now(), settings, hello, addr.to_string());
    // quinn's own handshake timeout equals the idle timeout; the session bounds each attempt.
    let deadline = session.poll_timeout().map(Instant::from_std);
    let opened = tokio::select! {
        opened = open(connecting, addr) => opened,
        _ = sleep_until(deadline) => {
            session.handle(now(), AgentInput::Timeout);
            return ending(&mut session);
        }
        _ = stop.cancelled() => return AgentEnd::Stopped,
    };
    let (connection, send, recv) = match opened {
        Ok(opened) => opened,
        Err(why) => {
            session.handle(now(), AgentInput::Lost(why));
            return ending(&mut session);
        }
    };
    // With TLS 1.3 the handshake completes on our side before the server has checked our
    // certificate: only Welcome means we are in, which the session decides.
    session.handle(now(), AgentInput::Connected);
    let mut driver = Driver {
        link,
        status,
        connection,
        send,
        recv: FrameReader::new(recv, config.max_frame_bytes),
        session,
        received: 0,
        reports: None,
        removal: None,
        replaying: None,
    };
    driver.run(stop).await
}

/// Connects and opens the control stream.
async fn open(
    connecting: quinn::Connecting,
    addr: SocketAddr,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), String> {
    let connection = connecting
        .await
        .map_err(|e| format!("handshake with {addr} failed: {e}"))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("cannot open the control stream: {e}"))?;
    Ok((connection, send, recv))
}

/// The session's end, once it has one; its last effects (a close) have no connection to act
/// on.
fn ending(session: &mut AgentSession) -> AgentEnd {
    while session.poll().is_some() {}
    session
        .ending()
        .cloned()
        .unwrap_or_else(|| AgentEnd::Failed("the connection attempt ended".into()))
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

type Reports = (
    tokio::sync::mpsc::UnboundedSender<Message>,
    tokio::sync::mpsc::UnboundedReceiver<Message>,
);

/// A connection whose control stream is open.
struct Driver<'a> {
    link: &'a Link,
    status: &'a watch::Sender<ConnectionStatus>,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: FrameReader<quinn::RecvStream>,
    session: AgentSession,
    /// Datagrams received from the server at the last look: more since then show it
    /// alive, whether or not it had anything to say on the control stream.
    received: u64,
    /// Plugin reports of this session; the deployer drops its sender when the set changes,
    /// and a report for an ended session goes nowhere (the next session gets a fresh one).
    reports: Option<Reports>,
    removal: Option<watch::Receiver<Option<String>>>,
    replaying: Option<tokio::task::JoinHandle<()>>,
}

impl Driver<'_> {
    async fn run(&mut self, stop: &CancellationToken) -> AgentEnd {
        let link = self.link;
        let mut stopping = false;
        loop {
            while let Some(effect) = self.session.poll() {
                if let AgentEffect::Ended(end) = effect {
                    return end;
                }
                self.carry_out(effect).await;
            }
            let established = self.session.phase() == Phase::Established;
            let leaving = self.session.phase() == Phase::Leaving;
            let deadline = self.session.poll_timeout().map(Instant::from_std);
            let renew_at = if established {
                link.renewal.lock().as_ref().map(Renewal::due)
            } else {
                None
            };
            let replay_idle = self.replaying.as_ref().is_none_or(|r| r.is_finished());
            let reading = self.session.reading();
            let (recv, removal, reports) = (&mut self.recv, &mut self.removal, &mut self.reports);
            let connection = &self.connection;
            let input = tokio::select! {
                frame = recv.next(), if reading => match frame {
                    Ok(Some(message)) => AgentInput::Frame(message),
                    Ok(None) => AgentInput::ControlEnded,
                    Err(e) => AgentInput::BadFrame(explain(&e, connection)),
                },
                _ = sleep_until(deadline) => AgentInput::Timeout,
                _ = stop.cancelled(), if !stopping => {
                    stopping = true;
                    AgentInput::Stop
                }
                // The server closes the connection once it has recorded a leave.
                reason = connection.closed(), if leaving => AgentInput::Lost(reason.to_string()),
                _ = link.executor.replay_wanted.notified(), if established && replay_idle => {
                    self.replay();
                    continue;
                }
                _ = sleep_until(renew_at), if established => {
                    let request = link.renewal.lock().as_mut().and_then(Renewal::request);
                    match request {
                        Some(request) => AgentInput::Send(request),
                        None => continue,
                    }
                }
                Ok(()) = async { removal.as_mut().expect("checked").changed().await }, if established && removal.is_some() => {
                    let reason = removal.as_mut().expect("checked").borrow_and_update().clone();
                    match reason {
                        Some(reason) => AgentInput::Decommission(reason),
                        None => continue,
                    }
                }
                Some(report) = async { reports.as_mut().expect("checked").1.recv().await }, if established && reports.is_some() => {
                    AgentInput::Send(report)
                }
                incoming = connection.accept_bi(), if established => match incoming {
                    Ok((cmd_send, cmd_recv)) => {
                        link.executor.tasks.spawn(link.executor.clone().serve(cmd_send, cmd_recv));
                        continue;
                    }
                    Err(e) => AgentInput::Lost(format!("connection closed: {e}")),
                },
            };
            if input == AgentInput::Timeout {
                // Before the session judges the server silent: whatever the transport has
                // received since the last look shows it alive.
                let received = self.connection.stats().udp_rx.datagrams;
                if received > self.received {
                    self.received = received;
                    self.session.handle(now(), AgentInput::Alive);
                }
            }
            self.session.handle(now(), input);
        }
    }

    /// Results the server has not acknowledged (from before a reconnection or a restart) go
    /// out on a report stream of their own, and again whenever one could not be delivered.
    fn replay(&mut self) {
        let executor = &self.link.executor;
        self.replaying = Some(
            executor
                .tasks
                .spawn(replay(executor.clone(), self.connection.clone())),
        );
    }

    async fn carry_out(&mut self, effect: AgentEffect) {
        let link = self.link;
        let max_frame = link.config.max_frame_bytes;
        match effect {
            AgentEffect::Send(message) => {
                if let Err(e) = write_frame(&mut self.send, &message, max_frame).await {
                    let why = match &message {
                        Message::Hello(_) => format!("cannot send Hello: {e}"),
                        Message::Heartbeat(_) => format!("cannot send a heartbeat: {e}"),
                        Message::PluginReport(_) => format!("cannot send a plugin report: {e}"),
                        Message::Renew(_) => format!("cannot send a renewal request: {e}"),
                        // Saying goodbye is best effort: the close follows either way.
                        Message::Bye(_) => return,
                        other => format!("cannot send {}: {e}", other.kind()),
                    };
                    self.session.handle(now(), AgentInput::Lost(why));
                }
            }
            AgentEffect::Finish => {
                let _ = self.send.finish();
            }
            AgentEffect::Close { code, reason } => {
                self.connection.close(code.into(), reason.as_bytes());
            }
            AgentEffect::Established(welcome) => {
                self.status.send_replace(ConnectionStatus::Connected {
                    session: welcome.session.clone(),
                });
                self.received = self.connection.stats().udp_rx.datagrams;
                self.reports = Some(tokio::sync::mpsc::unbounded_channel());
                self.removal = Some(link.executor.decommission.subscribe());
                self.replay();
            }
            AgentEffect::HeartbeatDue => {
                let sampler = link.sampler.clone();
                let metrics = tokio::task::spawn_blocking(move || sampler.lock().sample())
                    .await
                    .unwrap_or_default();
                let (health, runtimes) = runtime_states(&link.runtimes);
                let beat = Message::Heartbeat(Heartbeat {
                    metrics,
                    running_commands: link.executor.running.load(Ordering::Relaxed),
                    sent_at: time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    health,
                    runtimes,
                });
                self.session.handle(now(), AgentInput::Send(beat));
            }
            AgentEffect::Deliver(message) => match message {
                Message::Renewed(renewed) => link.renewed(renewed),
                Message::EnrollRefused(refused) => {
                    if let Some(renewal) = link.renewal.lock().as_mut() {
                        renewal.refused(refused);
                    }
                }
                Message::PluginAssign(assign) => {
                    if let Some((reports, _)) = self.reports.as_ref() {
                        link.deployer.assign(
                            assign.plugins,
                            PluginSession {
                                connection: self.connection.clone(),
                                reports: reports.clone(),
                            },
                        );
                    }
                }
                other => {
                    tracing::warn!(
                        kind = other.kind(),
                        "ignoring an unexpected control message"
                    )
                }
            },
            AgentEffect::Log(level, message) => match level {
                LogLevel::Error => tracing::error!("{message}"),
                LogLevel::Warn => tracing::warn!("{message}"),
                LogLevel::Info => tracing::info!("{message}"),
                LogLevel::Debug => tracing::debug!("{message}"),
                LogLevel::Trace => tracing::trace!("{message}"),
            },
            AgentEffect::Ended(_) => unreachable!("returned by the loop"),
        }
    }
}

async fn replay(executor: Arc<Executor>, connection: quinn::Connection) {
    if let Err(e) = executor.replay(&connection).await {
        tracing::warn!(error = %e, "could not deliver the results the server has not acknowledged; trying again on the next connection");
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Link {
    /// Keeps a renewed certificate and makes the next connection present it; the live one is
    /// left alone.
    fn renewed(&self, renewed: ferry_protocol::Renewed) {
        let written = match self.renewal.lock().as_mut() {
            Some(renewal) => renewal.renewed(renewed),
            None => false,
        };
        if !written {
            return;
        }
        let rebuilt =
            ferry_protocol::tls::Identity::from_pem_files(&self.config.cert, &self.config.key)
                .and_then(|identity| super::client_config(&self.config, identity));
        match rebuilt {
            Ok(config) => *self.client_config.lock() = config,
            Err(e) => tracing::error!("the renewed certificate cannot be used: {e}"),
        }
    }
}

/// Removes what the configuration says a decommissioned agent removes. Failures are logged:
/// the agent has already left the server, and stops either way.
async fn decommission(link: &Link) {
    let config = &link.config.decommission;
    if config.stop_runtimes {
        for runtime in link.runtimes.list() {
            if let Err(e) = link.runtimes.delete(&runtime.name).await {
                tracing::error!(runtime = %runtime.name, "cannot remove a runtime while decommissioning: {e}");
            }
        }
    }
    let mut remove = Vec::new();
    if config.remove_data {
        remove.push(link.config.data_dir.clone());
    }
    if config.remove_keys {
        remove.push(link.config.cert.clone());
        remove.push(link.config.key.clone());
    }
    for path in remove {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => tracing::info!(path = %path.display(), "removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot remove while decommissioning: {e}")
            }
        }
    }
    tracing::warn!("agent decommissioned: it left the server for good");
}

/// The runtimes for a heartbeat, and whether any that should run does not.
fn runtime_states(runtimes: &Runtimes) -> (Health, Vec<RuntimeState>) {
    let mut health = Health::Ok;
    let states = runtimes
        .list()
        .into_iter()
        .map(|info| {
            if info.wanted && info.status != RuntimeStatus::Running {
                health = Health::Degraded;
            }
            RuntimeState {
                status: serde_json::to_value(info.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                name: info.name,
                pid: info.pid,
                restarts: info.restarts,
            }
        })
        .collect();
    (health, states)
}

/// Prefer the connection's close reason (it carries the TLS alert, e.g. an unknown CA) over the
/// stream error that revealed it.
fn explain(error: &FrameError, connection: &quinn::Connection) -> String {
    match connection.close_reason() {
        Some(reason) => reason.to_string(),
        None => error.to_string(),
    }
}
