//! Accepting agents: the QUIC handshake, TLS identity and admission, then the control session
//! as a thin driver of [`ferry_lifecycle::ServerSession`].
//!
//! The TLS verifier has already refused foreign client certificates. A `ferry-enroll/1` connection
//! goes to `enroll::serve` and nothing else; a `ferry/1` connection without a certificate is closed
//! at once with a reason naming `ferry agent --join`. Otherwise the agent id is read from the
//! certificate, admission is checked (`Overrides::admission`: a revoked agent is closed with
//! `REJECTED` before Hello), and the session machine decides the rest: Hello, negotiation, the
//! registry's decision, Welcome or Reject, the frames each phase allows, the heartbeat grace,
//! leaving and the close.
//!
//! The driver carries out the machine's effects: the registry (connect, closing a replaced
//! connection; heartbeats; disconnect), the agent's record, the plugin view (a `PluginAssign` with
//! the agent's complete plugin set after Welcome and whenever the registry's assignments change
//! that set; plugin reports), renewals, the leave's revocation, and fetch and report streams,
//! accepted once established. A protocol breach closes that one connection with
//! `close::PROTOCOL_ERROR` and a reason naming the breach; an agent silent for `heartbeat_grace` is
//! shown unresponsive, not closed; a stopping server says Bye.
//!
//! The handshake (QUIC and TLS, the control stream, Hello) has one deadline, `handshake_timeout`,
//! not one per step. A connection still in it holds one of `max_pending_handshakes` permits (a
//! semaphore); past that the accept loop answers `Incoming::refuse`, a QUIC `CONNECTION_REFUSED`
//! before any TLS work, so a flood of slow handshakes costs a packet each and holds its slots for
//! at most the timeout. Refusals are logged at 1, 2, 4, 8… so a flood does not flood the log. The
//! control stream's reader has the same timeout as its stall limit
//! (`FrameReader::with_stall_limit`), so half a frame cannot park a connection.

use std::sync::Arc;
use std::time::Duration;

use ferry_lifecycle::{Phase, ServerEffect, ServerInput, ServerSession, ServerSettings};
use ferry_protocol::identity::{IdentityError, agent_id_of};
use ferry_protocol::tls;
use ferry_protocol::{
    AgentId, AssignedPlugin, FrameError, FrameReader, Hello, LogLevel, Message, PluginAssign,
    close, version, write_frame,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::Shared;
use crate::transport::streams;

/// Accepts connections until the endpoint closes.
///
/// At most `max_pending_handshakes` connections are in their handshake at once: each holds a
/// permit until it is past Hello (or gone). Beyond that, `Incoming::refuse` answers at the QUIC
/// level, before any TLS work, so a flood of slow or idle handshakes costs the server a packet
/// each and cannot keep the slots filled longer than `handshake_timeout`.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<Shared>) {
    let pending = Arc::new(Semaphore::new(state.config.max_pending_handshakes as usize));
    let mut refused = 0u64;
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            incoming.refuse();
            refused += 1;
            // Logged at 1, 2, 4, 8… refusals, so that a flood cannot flood the log too.
            if refused.is_power_of_two() {
                tracing::warn!(%remote, refused, limit = state.config.max_pending_handshakes,
                    "refusing a connection: too many handshakes in progress (max_pending_handshakes)");
            }
            continue;
        };
        let connection_state = state.clone();
        state.tasks.spawn(async move {
            if let Err(reason) = serve_connection(incoming, connection_state, permit).await {
                tracing::info!(%remote, "agent connection ended: {reason}");
            }
        });
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    state: Arc<Shared>,
    handshake_permit: OwnedSemaphorePermit,
) -> Result<(), String> {
    // One deadline for the whole handshake, so that a peer cannot take the timeout once for
    // TLS, once for its control stream and once more for Hello: the session machine's, which
    // starts now.
    let arrived = Instant::now();
    let timeout = state.config.handshake_timeout;
    let deadline = arrived + timeout;
    let connection = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(connection)) => connection,
        // Wrong or missing client certificates end here, refused by the TLS verifier.
        Ok(Err(e)) => return Err(format!("handshake failed: {e}")),
        Err(_) => return Err(format!("QUIC/TLS handshake not done within {timeout:?}")),
    };
    // A connection without a client certificate reaches enrollment and nothing else.
    if tls::alpn_of(&connection).as_deref() == Some(tls::ENROLL_ALPN) {
        return super::enroll::serve(connection, state).await;
    }
    let id = match agent_id_of(&connection) {
        Ok(id) => id,
        Err(IdentityError::NoCertificate) => {
            let why = "no client certificate: enroll this agent with `ferry agent --join <server> --token <token> --ca-fingerprint <sha256>`, or give it a certificate from the server's CA";
            connection.close(close::REJECTED.into(), why.as_bytes());
            return Err(why.to_string());
        }
        Err(e) => {
            connection.close(close::REJECTED.into(), e.to_string().as_bytes());
            return Err(e.to_string());
        }
    };
    if let Err(why) = state.overrides.admission(&id) {
        connection.close(
            close::REJECTED.into(),
            b"this agent was revoked by an operator",
        );
        return Err(why);
    }
    let config = &state.config;
    let settings = ServerSettings {
        supported: version::SUPPORTED,
        handshake_timeout: timeout,
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_grace: config.heartbeat_grace,
        max_frame_bytes: config.max_frame_bytes,
        max_concurrent_commands: config.max_concurrent_commands,
    };
    let session = ServerSession::new(arrived.into_std(), settings, state.next_session());
    let mut control = Control {
        state: &state,
        id: &id,
        connection: &connection,
        session,
        send: None,
        recv: None,
        handshake_permit: Some(handshake_permit),
        hello: None,
        plugin_changes: None,
        sent: None,
    };
    control.run().await
}

/// One agent's control session: a thin driver of [`ServerSession`], which decides what each
/// frame means in each phase, when the session is established, and how and why it closes.
/// This driver turns the connection, the control stream, the registry, plugin changes and
/// timers into its inputs, and carries out its effects with the registry, the plugin view,
/// the enrollment authority and the overrides.
struct Control<'a> {
    state: &'a Arc<Shared>,
    id: &'a AgentId,
    connection: &'a quinn::Connection,
    session: ServerSession,
    send: Option<quinn::SendStream>,
    recv: Option<FrameReader<quinn::RecvStream>>,
    /// Held until the session is established: until then the connection counts against
    /// `max_pending_handshakes`.
    handshake_permit: Option<OwnedSemaphorePermit>,
    /// The agent's Hello, once it was found valid.
    hello: Option<Hello>,
    plugin_changes: Option<watch::Receiver<u64>>,
    /// The plugin set last sent, so that an unrelated change sends nothing.
    sent: Option<Vec<AssignedPlugin>>,
}

impl Control<'_> {
    async fn run(&mut self) -> Result<(), String> {
        let id = self.id;
        let connection = self.connection;
        let mut established = false;
        let mut stopping = false;
        loop {
            while let Some(effect) = self.session.poll() {
                if effect == ServerEffect::Established {
                    established = true;
                }
                self.carry_out(effect).await;
            }
            if self.session.phase() == Phase::Closed {
                break;
            }
            let deadline = self.session.poll_timeout().map(Instant::from_std);
            let phase = self.session.phase();
            let wants_control = self.session.wants_control();
            let reading = self.session.reading() && self.recv.is_some();
            let recv = &mut self.recv;
            let plugin_changes = &mut self.plugin_changes;
            let input = tokio::select! {
                incoming = connection.accept_bi(), if wants_control || phase == Phase::Established => match incoming {
                    Ok((send, recv)) if wants_control => {
                        self.send = Some(send);
                        // Until Hello, the handshake deadline is the only bound, so a late
                        // Hello is always closed for the same reason whichever of its bytes
                        // were late. Once established, see `set_stall_limit`.
                        self.recv = Some(FrameReader::new(recv, self.state.config.max_frame_bytes));
                        ServerInput::ControlOpened
                    }
                    Ok((send, recv)) => {
                        self.state.tasks.spawn(streams::serve_agent_stream(self.state.clone(), id.clone(), connection.clone(), send, recv));
                        continue;
                    }
                    Err(e) => ServerInput::Lost(e.to_string()),
                },
                frame = async { recv.as_mut().expect("checked").next().await }, if reading => match frame {
                    Ok(Some(message)) => ServerInput::Frame(message),
                    Ok(None) => ServerInput::ControlEnded,
                    // The close reason (e.g. "agent stopping") says more than the stream error.
                    Err(FrameError::Io(e)) => ServerInput::Lost(
                        connection.close_reason().map_or_else(|| e.to_string(), |r| r.to_string()),
                    ),
                    Err(e) => ServerInput::BadFrame(e.to_string()),
                },
                changed = async { plugin_changes.as_mut().expect("checked").changed().await }, if plugin_changes.is_some() => {
                    match changed {
                        Ok(()) => self.send_plugins(),
                        // The plugin view is gone: the server is stopping.
                        Err(_) => self.plugin_changes = None,
                    }
                    continue;
                }
                reason = connection.closed() => ServerInput::Lost(reason.to_string()),
                _ = self.state.stop.cancelled(), if !stopping => {
                    stopping = true;
                    ServerInput::Stop("server shutting down".into())
                }
                _ = sleep_until(deadline) => ServerInput::Timeout,
            };
            let now = Instant::now().into_std();
            self.session.handle(now, input);
        }
        if established {
            tracing::info!(agent = %id, "agent disconnected");
        }
        match self.session.ending() {
            Some(ending) if ending.clean => Ok(()),
            Some(ending) => Err(format!("agent '{id}': {}", ending.reason)),
            None => Err(format!("agent '{id}': the session ended without a reason")),
        }
    }

    fn handle(&mut self, input: ServerInput) {
        self.session.handle(Instant::now().into_std(), input);
    }

    async fn carry_out(&mut self, effect: ServerEffect) {
        let id = self.id;
        let max_frame = self.state.config.max_frame_bytes;
        match effect {
            ServerEffect::Send(message) => {
                let Some(send) = self.send.as_mut() else {
                    return;
                };
                if let Message::Reject(_) = message {
                    // Bounded: a peer that does not read must not hold the handshake slot.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        write_frame(send, &message, max_frame),
                    )
                    .await;
                    return;
                }
                if let Err(e) = write_frame(send, &message, max_frame).await {
                    let why = match message {
                        Message::Welcome(_) => format!("could not send Welcome: {e}"),
                        Message::PluginAssign(_) => format!("cannot send its plugins: {e}"),
                        Message::Renewed(_) | Message::EnrollRefused(_) => {
                            format!("cannot answer its renewal: {e}")
                        }
                        other => format!("cannot send {}: {e}", other.kind()),
                    };
                    self.handle(ServerInput::Lost(why));
                }
            }
            ServerEffect::Finish => {
                if let Some(send) = self.send.as_mut() {
                    let _ = send.finish();
                    // Give what was written a moment to leave before the close overtakes it.
                    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                }
            }
            ServerEffect::Close { code, reason } => {
                self.connection.close(code.into(), reason.as_bytes());
            }
            ServerEffect::Register(hello) => {
                // Registered before Welcome, in one step with the check for another
                // installation of the identity, so that of two hosts presenting one
                // certificate only one is ever let in.
                let decision = match self.state.registry.connect(
                    id,
                    &hello,
                    self.session.session(),
                    self.connection.clone(),
                    self.state.config.heartbeat_grace,
                ) {
                    Ok(Some(old)) => {
                        old.close(
                            close::REPLACED.into(),
                            b"replaced by a newer connection of the same agent",
                        );
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(duplicate) => {
                        let why = duplicate.to_string();
                        tracing::warn!(agent = %id, remote = %self.connection.remote_address(), instance = ?hello.instance, "refusing a second installation of an agent's identity: {why}");
                        Err(why)
                    }
                };
                self.hello = Some(*hello);
                self.handle(ServerInput::Registered(decision));
            }
            ServerEffect::Unregister => self.state.registry.disconnect(id, self.session.session()),
            ServerEffect::Established => {
                let labels = self.hello.as_ref().map(|h| &h.labels);
                tracing::info!(agent = %id, remote = %self.connection.remote_address(), labels = ?labels, "agent connected");
                if let Some(info) = self.state.registry.get(id)
                    && let Err(e) = self.state.log.save_agent(&info).await
                {
                    tracing::warn!(agent = %id, error = %e, "cannot record the agent; it will be listed again once it connects after a restart");
                }
                // Past Hello: this connection no longer counts against
                // `max_pending_handshakes`.
                self.handshake_permit = None;
                // A frame begun must be complete within the handshake timeout: an agent sends
                // each in one write, and half a frame parked for ever would hold the
                // connection without the heartbeats that show it alive. Idle between frames
                // is for the heartbeat grace to judge.
                if let Some(recv) = self.recv.as_mut() {
                    recv.set_stall_limit(self.state.config.handshake_timeout);
                }
                self.plugin_changes = Some(self.state.plugins.subscribe());
                // Sent even when empty: the agent then drops pushed plugins unassigned while
                // it was away.
                self.send_plugins();
            }
            ServerEffect::Heartbeat(beat) => {
                self.state
                    .registry
                    .heartbeat(id, self.session.session(), &beat)
            }
            ServerEffect::PluginReport(report) => {
                self.state.plugins.record(id.as_str(), &report.plugins);
                self.state.registry.set_topics(
                    id,
                    self.session.session(),
                    report.topics,
                    report.read_only,
                );
            }
            ServerEffect::Renew(renew) => match self.renew(renew).await {
                Ok(answer) => self.handle(ServerInput::Send(answer)),
                Err(why) => self.handle(ServerInput::Lost(why)),
            },
            ServerEffect::RecordLeave(reason) => {
                // Recorded (durably) before the connection closes: the agent waits for the
                // close, then deletes its keys.
                let revocation = crate::storage::overrides::Revocation {
                    at: time::OffsetDateTime::now_utc(),
                    by: "the agent itself (decommissioned)".into(),
                    reason: Some(reason.clone()),
                };
                if let Err(e) = self
                    .state
                    .overrides
                    .update(id.as_str(), |o| o.revoked = Some(revocation))
                {
                    tracing::error!(agent = %id, "cannot record that the agent left: {e}");
                }
                tracing::warn!(agent = %id, %reason, "agent decommissioned; its certificate is refused from now on");
                self.handle(ServerInput::LeaveRecorded);
            }
            ServerEffect::Log(level, message) => log(id, level, &message),
        }
    }

    /// Answers a renewal: a certificate for the key this connection was authenticated with.
    async fn renew(&mut self, renew: ferry_protocol::Renew) -> Result<Message, String> {
        let peer_cert = self
            .connection
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().map(|c| c.to_vec()))
            .unwrap_or_default();
        let state = self.state.clone();
        let id = self.id.clone();
        let answer = tokio::task::spawn_blocking(move || {
            state
                .enrollment
                .renew(&state.overrides, &id, &peer_cert, &renew)
        })
        .await
        .map_err(|e| format!("renewal failed: {e}"))?;
        Ok(match answer {
            Ok(renewed) => Message::Renewed(renewed),
            Err(refused) => {
                tracing::warn!(agent = %self.id, code = ?refused.code, "renewal refused: {}", refused.message);
                Message::EnrollRefused(refused)
            }
        })
    }

    /// Hands the session the plugins assigned to the agent, if that set changed since the
    /// last time.
    fn send_plugins(&mut self) {
        let Some(hello) = self.hello.as_ref() else {
            return;
        };
        let (plugins, refused) = self
            .state
            .plugins
            .desired_for(&hello.labels, &hello.wit_versions);
        let mut names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
        names.extend(refused.iter().map(|p| p.name.as_str()));
        self.state.plugins.retain_reports(self.id.as_str(), &names);
        self.state.plugins.record(self.id.as_str(), &refused);
        if self.sent.as_ref() == Some(&plugins) {
            return;
        }
        tracing::info!(agent = %self.id, plugins = ?plugins.iter().map(|p| format!("{}@{}", p.name, p.version)).collect::<Vec<_>>(), "plugins assigned");
        let message = Message::PluginAssign(PluginAssign {
            plugins: plugins.clone(),
        });
        self.sent = Some(plugins);
        self.handle(ServerInput::Send(message));
    }
}

fn log(id: &AgentId, level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(agent = %id, "{message}"),
        LogLevel::Warn => tracing::warn!(agent = %id, "{message}"),
        LogLevel::Info => tracing::info!(agent = %id, "{message}"),
        LogLevel::Debug => tracing::debug!(agent = %id, "{message}"),
        LogLevel::Trace => tracing::trace!(agent = %id, "{message}"),
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
