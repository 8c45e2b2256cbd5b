//! The connection loop: connect, say Hello, wait for Welcome, then heartbeat and take commands
//! until the connection ends; then wait (backoff with jitter) and start again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_protocol::{
    Bye, FrameError, FrameReader, Health, Heartbeat, Hello, Leave, Message, Peer, Reject,
    RuntimeState, StreamKind, Welcome, close, write_frame,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::ConnectionStatus;
use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::deploy::{Deployer, Session as PluginSession};
use crate::executor::Executor;
use crate::metrics::MetricsSampler;
use crate::renew::Renewal;
use crate::runtimes::{Runtimes, Status as RuntimeStatus};

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

/// Why a connection attempt or a session ended.
enum Ended {
    /// The agent is stopping.
    Stopped,
    /// A session was established and then ended.
    SessionLost(String),
    /// No session was established.
    Failed(String),
    /// The server refused the agent.
    Rejected(Reject),
    /// The agent told the server it leaves for good.
    Decommissioned(String),
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
        let ended = connect_and_serve(&link, &mut endpoints, &status, &stop).await;
        let (reason, delay) = match ended {
            Ended::Stopped => break,
            Ended::Decommissioned(reason) => {
                decommission(&link).await;
                status.send_replace(ConnectionStatus::Removed { reason });
                // Everything else the agent runs ends with it.
                stop.cancel();
                for endpoint in endpoints.values() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
                }
                return;
            }
            Ended::SessionLost(reason) => {
                tracing::warn!(%reason, "connection to the server lost; reconnecting");
                backoff.reset();
                attempt = 0;
                (reason, backoff.next_delay())
            }
            Ended::Failed(reason) => {
                tracing::warn!(%reason, attempt, "could not connect to the server");
                (reason, backoff.next_delay())
            }
            Ended::Rejected(reject) => {
                tracing::error!(code = ?reject.code, message = %reject.message, "the server refused this agent");
                let delay = reject
                    .retry_after_ms
                    .map(Duration::from_millis)
                    .unwrap_or_else(|| backoff.next_delay());
                (format!("refused by the server: {}", reject.message), delay)
            }
        };
        status.send_replace(ConnectionStatus::Disconnected {
            reason,
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

/// An established session: the connection and its control stream.
struct Session {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: FrameReader<quinn::RecvStream>,
    welcome: Welcome,
}

async fn connect_and_serve(
    link: &Link,
    endpoints: &mut HashMap<bool, quinn::Endpoint>,
    status: &watch::Sender<ConnectionStatus>,
    stop: &CancellationToken,
) -> Ended {
    let session = tokio::select! {
        session = handshake(link, endpoints) => session,
        _ = stop.cancelled() => return Ended::Stopped,
    };
    match session {
        Ok(session) => serve(link, session, status, stop).await,
        Err(ended) => ended,
    }
}

async fn handshake(
    link: &Link,
    endpoints: &mut HashMap<bool, quinn::Endpoint>,
) -> Result<Session, Ended> {
    let config = &link.config;
    let addr = match resolve(&config.server).await {
        Ok(addr) => addr,
        Err(e) => return Err(Ended::Failed(e)),
    };
    let endpoint = match endpoint_for(endpoints, addr) {
        Ok(endpoint) => endpoint,
        Err(e) => return Err(Ended::Failed(e)),
    };
    let server_name = config.effective_server_name();
    let client_config = link.client_config.lock().clone();
    let connecting = match endpoint.connect_with(client_config, addr, &server_name) {
        Ok(connecting) => connecting,
        Err(e) => return Err(Ended::Failed(format!("cannot connect to {addr}: {e}"))),
    };
    // quinn's own handshake timeout equals the idle timeout; bound each attempt separately.
    let connection = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return Err(Ended::Failed(format!("handshake with {addr} failed: {e}"))),
        Err(_) => {
            return Err(Ended::Failed(format!(
                "no answer from {addr} within {:?}",
                config.connect_timeout
            )));
        }
    };

    // With TLS 1.3 the handshake completes on our side before the server has checked our
    // certificate: only Welcome means we are in.
    let max_frame = config.max_frame_bytes;
    let (mut send, recv) = match connection.open_bi().await {
        Ok(streams) => streams,
        Err(e) => {
            return Err(Ended::Failed(format!(
                "cannot open the control stream: {e}"
            )));
        }
    };
    let mut recv = FrameReader::new(recv, max_frame);
    let hello = Hello {
        topics: link.executor.routes.topics(),
        read_only: link.executor.routes.read_only_topics(),
        cached_plugins: link.deployer.stored(),
        ..link.hello.clone()
    };
    if let Err(e) = write_frame(&mut send, &Message::Hello(hello), max_frame).await {
        return Err(Ended::Failed(format!("cannot send Hello: {e}")));
    }
    let welcome = match tokio::time::timeout(config.connect_timeout, recv.next()).await {
        Ok(Ok(Some(Message::Welcome(welcome)))) => welcome,
        Ok(Ok(Some(Message::Reject(reject)))) => return Err(Ended::Rejected(reject)),
        Ok(Ok(Some(other))) => {
            connection.close(close::PROTOCOL_ERROR.into(), b"expected Welcome");
            return Err(Ended::Failed(format!(
                "the server answered Hello with {}",
                other.kind()
            )));
        }
        Ok(Ok(None)) => {
            return Err(Ended::Failed(
                "the server closed the control stream without answering".into(),
            ));
        }
        Ok(Err(e)) => {
            return Err(Ended::Failed(format!(
                "the server refused the connection: {}",
                explain(&e, &connection)
            )));
        }
        Err(_) => {
            return Err(Ended::Failed(format!(
                "no Welcome within {:?}",
                config.connect_timeout
            )));
        }
    };
    tracing::info!(session = %welcome.session, server = %addr, "connected to the server");
    Ok(Session {
        connection,
        send,
        recv,
        welcome,
    })
}

async fn serve(
    link: &Link,
    session: Session,
    status: &watch::Sender<ConnectionStatus>,
    stop: &CancellationToken,
) -> Ended {
    let Session {
        connection,
        mut send,
        mut recv,
        welcome,
    } = session;
    let max_frame = link.config.max_frame_bytes;
    status.send_replace(ConnectionStatus::Connected {
        session: welcome.session.clone(),
    });

    let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Plugin reports of this session; the deployer drops its sender when the set changes, and
    // a report for an ended session goes nowhere (the next session gets a fresh one).
    let (reports, mut report_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut removal = link.executor.decommission.subscribe();
    // Results the server has not acknowledged (from before a reconnection or a restart) go out
    // first, on a report stream of their own, and again whenever one could not be delivered.
    let tasks = &link.executor.tasks;
    let mut replaying = Some(tasks.spawn(replay(link.executor.clone(), connection.clone())));
    let ended = loop {
        let renew_at = link.renewal.lock().as_ref().map(Renewal::due);
        tokio::select! {
            _ = link.executor.replay_wanted.notified(), if replaying.as_ref().is_none_or(|r| r.is_finished()) => {
                replaying = Some(tasks.spawn(replay(link.executor.clone(), connection.clone())));
            }
            _ = sleep_until(renew_at) => {
                let request = link.renewal.lock().as_mut().and_then(Renewal::request);
                if let Some(request) = request
                    && let Err(e) = write_frame(&mut send, &request, max_frame).await
                {
                    break format!("cannot send a renewal request: {e}");
                }
            }
            Ok(()) = removal.changed() => {
                let Some(reason) = removal.borrow_and_update().clone() else { continue };
                let leave = Message::Leave(Leave { reason: reason.clone() });
                if write_frame(&mut send, &leave, max_frame).await.is_ok() {
                    let _ = send.finish();
                    // The server closes the connection once it has recorded the leave.
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
                }
                connection.close(close::NORMAL.into(), b"agent decommissioned");
                return Ended::Decommissioned(reason);
            }
            _ = stop.cancelled() => {
                let bye = Message::Bye(Bye { reason: "agent stopping".into() });
                let _ = write_frame(&mut send, &bye, max_frame).await;
                let _ = send.finish();
                connection.close(close::SHUTDOWN.into(), b"agent stopping");
                return Ended::Stopped;
            }
            _ = heartbeat.tick() => {
                let sampler = link.sampler.clone();
                let metrics = tokio::task::spawn_blocking(move || sampler.lock().sample()).await.unwrap_or_default();
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
                if let Err(e) = write_frame(&mut send, &beat, max_frame).await {
                    break format!("cannot send a heartbeat: {e}");
                }
            }
            Some(report) = report_rx.recv() => {
                if let Err(e) = write_frame(&mut send, &report, max_frame).await {
                    break format!("cannot send a plugin report: {e}");
                }
            }
            incoming = connection.accept_bi() => match incoming {
                Ok((cmd_send, cmd_recv)) => {
                    link.executor.tasks.spawn(link.executor.clone().serve(cmd_send, cmd_recv));
                }
                Err(e) => break format!("connection closed: {e}"),
            },
            frame = recv.next() => match frame {
                Ok(Some(message)) => {
                    if let Err(e) = message.check_allowed(Peer::Server, StreamKind::Control) {
                        connection.close(close::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                        break format!("protocol error from the server: {e}");
                    }
                    match message {
                        Message::Bye(Bye { reason }) => break format!("the server said goodbye: {reason}"),
                        Message::Renewed(renewed) => link.renewed(renewed),
                        Message::EnrollRefused(refused) => {
                            if let Some(renewal) = link.renewal.lock().as_mut() {
                                renewal.refused(refused);
                            }
                        }
                        Message::PluginAssign(assign) => link.deployer.assign(
                            assign.plugins,
                            PluginSession { connection: connection.clone(), reports: reports.clone() },
                        ),
                        other => tracing::warn!(kind = other.kind(), "ignoring an unexpected control message"),
                    }
                }
                Ok(None) => break "the server closed the control stream".to_string(),
                Err(e) => break format!("control stream failed: {}", explain(&e, &connection)),
            },
        }
    };
    Ended::SessionLost(ended)
}

async fn replay(executor: Arc<Executor>, connection: quinn::Connection) {
    if let Err(e) = executor.replay(&connection).await {
        tracing::warn!(error = %e, "could not deliver the results the server has not acknowledged; trying again on the next connection");
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
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
                .map_err(crate::AgentError::from)
                .and_then(|identity| crate::agent::client_config(&self.config, identity));
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
