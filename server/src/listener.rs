//! Accepting agents: the QUIC handshake, the control stream, heartbeats.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::identity::{IdentityError, agent_id_of};
use ferry_protocol::tls;
use ferry_protocol::{
    AgentId, AssignedPlugin, FrameError, FrameReader, Hello, Limits, Message, Peer, PluginAssign,
    Reject, RejectCode, StreamKind, Welcome, close, version, write_frame,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::report;
use crate::server::ServerState;

/// Accepts connections until the endpoint closes.
///
/// At most `max_pending_handshakes` connections are in their handshake at once: each holds a
/// permit until it is past Hello (or gone). Beyond that, `Incoming::refuse` answers at the QUIC
/// level, before any TLS work, so a flood of slow or idle handshakes costs the server a packet
/// each and cannot keep the slots filled longer than `handshake_timeout`.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<ServerState>) {
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
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(reason) = serve_connection(incoming, state, permit).await {
                tracing::info!(%remote, "agent connection ended: {reason}");
            }
        });
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    state: Arc<ServerState>,
    handshake_permit: OwnedSemaphorePermit,
) -> Result<(), String> {
    // One deadline for the whole handshake, so that a peer cannot take the timeout once for
    // TLS, once for its control stream and once more for Hello.
    let timeout = state.config.handshake_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let connection = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(connection)) => connection,
        // Wrong or missing client certificates end here, refused by the TLS verifier.
        Ok(Err(e)) => return Err(format!("handshake failed: {e}")),
        Err(_) => return Err(format!("QUIC/TLS handshake not done within {timeout:?}")),
    };
    // A connection without a client certificate reaches enrollment and nothing else.
    if tls::alpn_of(&connection).as_deref() == Some(tls::ENROLL_ALPN) {
        return crate::enroll::serve(connection, state).await;
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
    if let Err(why) = state.admission(&id) {
        connection.close(
            close::REJECTED.into(),
            b"this agent was revoked by an operator",
        );
        return Err(why);
    }
    let max_frame = state.config.max_frame_bytes;
    let (mut send, recv) = match tokio::time::timeout_at(deadline, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            return Err(format!(
                "agent '{id}' closed before opening its control stream: {e}"
            ));
        }
        Err(_) => {
            let why =
                format!("no control stream opened within the handshake timeout ({timeout:?})");
            connection.close(close::PROTOCOL_ERROR.into(), why.as_bytes());
            return Err(format!("agent '{id}': {why}"));
        }
    };
    // Until Hello, the handshake deadline is the only bound, so a late Hello is always closed
    // for the same reason whichever of its bytes were late (a stall limit racing the deadline
    // gave two). After Hello, see `set_stall_limit` below.
    let mut recv = FrameReader::new(recv, max_frame);
    let hello = match tokio::time::timeout_at(deadline, recv.next()).await {
        Ok(Ok(Some(Message::Hello(hello)))) => hello,
        other => {
            let why = match other {
                Ok(Ok(Some(m))) => format!("expected Hello, got {}", m.kind()),
                Ok(Ok(None)) => "control stream ended before Hello".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no complete Hello within the handshake timeout ({timeout:?})"),
            };
            let reject = Reject {
                code: RejectCode::BadHello,
                message: why.clone(),
                retry_after_ms: None,
                redirect: None,
                server_protocol: None,
                agent_protocol: None,
            };
            refuse(&connection, &mut send, reject, max_frame, &why).await;
            return Err(format!("agent '{id}': {why}"));
        }
    };
    let protocol = match version::negotiate(version::SUPPORTED, hello.protocol) {
        Ok(v) => v,
        Err(reject) => {
            let why = reject.message.clone();
            refuse(&connection, &mut send, reject, max_frame, &why).await;
            return Err(format!("agent '{id}' refused: {why}"));
        }
    };

    let session = state.next_session();
    // Registered before Welcome, in one step with the check for another installation of the
    // identity, so that of two hosts presenting one certificate only one is ever let in.
    let grace = state.config.heartbeat_grace;
    match state
        .registry
        .connect(&id, &hello, session, connection.clone(), grace)
    {
        Ok(Some(old)) => old.close(
            close::REPLACED.into(),
            b"replaced by a newer connection of the same agent",
        ),
        Ok(None) => {}
        Err(duplicate) => {
            let why = duplicate.to_string();
            tracing::warn!(agent = %id, remote = %connection.remote_address(), instance = ?hello.instance, "refusing a second installation of an agent's identity: {why}");
            let reject = Reject {
                code: RejectCode::DuplicateAgent,
                message: why.clone(),
                // Try again once the other one may have gone quiet.
                retry_after_ms: Some(grace.as_millis().min(u128::from(u64::MAX)) as u64),
                redirect: None,
                server_protocol: None,
                agent_protocol: None,
            };
            refuse(&connection, &mut send, reject, max_frame, &why).await;
            return Err(format!("agent '{id}': {why}"));
        }
    }
    let welcome = Welcome {
        session: format!("{session:x}"),
        protocol,
        heartbeat_interval_ms: state.config.heartbeat_interval.as_millis() as u64,
        features: Vec::new(),
        limits: Limits {
            max_frame_bytes: max_frame,
            max_concurrent_commands: state.config.max_concurrent_commands,
        },
    };
    if let Err(e) = write_frame(&mut send, &Message::Welcome(welcome), max_frame).await {
        state.registry.disconnect(&id, session);
        return Err(format!("agent '{id}': could not send Welcome: {e}"));
    }
    tracing::info!(agent = %id, remote = %connection.remote_address(), labels = ?hello.labels, "agent connected");
    if let Some(info) = state.registry.get(&id)
        && let Err(e) = state.persist.save_agent(&info).await
    {
        tracing::warn!(agent = %id, error = %e, "cannot record the agent; it will be listed again once it connects after a restart");
    }
    // Past Hello: this connection no longer counts against `max_pending_handshakes`.
    drop(handshake_permit);
    // A frame begun must be complete within the handshake timeout: an agent sends each in one
    // write, and half a frame parked for ever would hold the connection without the heartbeats
    // that show it alive. Idle between frames is for the heartbeat grace to judge.
    recv.set_stall_limit(timeout);

    let mut control = Control {
        state: &state,
        id: &id,
        session,
        connection: &connection,
        hello: &hello,
        send: &mut send,
        sent: None,
    };
    let result = control.run(&mut recv).await;
    state.registry.disconnect(&id, session);
    tracing::info!(agent = %id, "agent disconnected");
    result
}

/// One agent's control stream after Welcome.
struct Control<'a> {
    state: &'a Arc<ServerState>,
    id: &'a AgentId,
    session: u64,
    connection: &'a quinn::Connection,
    hello: &'a Hello,
    send: &'a mut quinn::SendStream,
    /// The plugin set last sent, so that an unrelated change sends nothing.
    sent: Option<Vec<AssignedPlugin>>,
}

impl Control<'_> {
    async fn run(&mut self, recv: &mut FrameReader<quinn::RecvStream>) -> Result<(), String> {
        let id = self.id;
        let connection = self.connection;
        let mut plugin_changes = self.state.plugins.subscribe();
        // Sent even when empty: the agent then drops pushed plugins unassigned while it was away.
        self.send_plugins().await?;
        loop {
            tokio::select! {
                frame = recv.next() => match frame {
                    Ok(Some(message)) => {
                        if let Err(e) = message.check_allowed(Peer::Agent, StreamKind::Control) {
                            connection.close(close::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                            return Err(format!("agent '{id}': {e}"));
                        }
                        match message {
                            Message::Heartbeat(hb) => self.state.registry.heartbeat(id, self.session, &hb),
                            Message::PluginReport(report) => {
                                self.state.plugins.record(id.as_str(), &report.plugins);
                                self.state.registry.set_topics(id, self.session, report.topics, report.read_only);
                            }
                            Message::Bye(bye) => {
                                tracing::info!(agent = %id, reason = %bye.reason, "agent said goodbye");
                                return Ok(());
                            }
                            Message::Leave(leave) => {
                                // Recorded (durably) before the connection closes: the agent
                                // waits for the close, then deletes its keys.
                                let revocation = crate::overrides::Revocation {
                                    at: time::OffsetDateTime::now_utc(),
                                    by: "the agent itself (decommissioned)".into(),
                                    reason: Some(leave.reason.clone()),
                                };
                                if let Err(e) = self.state.overrides.update(id.as_str(), |o| o.revoked = Some(revocation)) {
                                    tracing::error!(agent = %id, "cannot record that the agent left: {e}");
                                }
                                tracing::warn!(agent = %id, reason = %leave.reason, "agent decommissioned; its certificate is refused from now on");
                                connection.close(close::NORMAL.into(), b"decommissioned");
                                return Ok(());
                            }
                            Message::Renew(renew) => self.renew(renew).await?,
                            Message::Hello(_) => {
                                connection.close(close::PROTOCOL_ERROR.into(), b"Hello sent twice");
                                return Err(format!("agent '{id}' sent Hello twice"));
                            }
                            _ => unreachable!("check_allowed admits only agent control messages"),
                        }
                    }
                    Ok(None) => return Ok(()),
                    // The close reason (e.g. "agent stopping") says more than the stream error.
                    Err(FrameError::Io(e)) => {
                        let why = connection.close_reason().map_or_else(|| e.to_string(), |r| r.to_string());
                        return Err(format!("agent '{id}': {why}"));
                    }
                    Err(e) => {
                        connection.close(close::PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                        return Err(format!("agent '{id}': {e}"));
                    }
                },
                Ok(()) = plugin_changes.changed() => self.send_plugins().await?,
                incoming = connection.accept_bi() => match incoming {
                    Ok((send, recv)) => {
                        tokio::spawn(report::serve_agent_stream(self.state.clone(), id.clone(), connection.clone(), send, recv));
                    }
                    Err(e) => return Err(format!("agent '{id}': {e}")),
                },
                reason = connection.closed() => return Err(reason.to_string()),
            }
        }
    }

    /// Answers a renewal: a certificate for the key this connection was authenticated with.
    async fn renew(&mut self, renew: ferry_protocol::Renew) -> Result<(), String> {
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
            state.enrollment.renew(&state, &id, &peer_cert, &renew)
        })
        .await
        .map_err(|e| format!("agent '{}': renewal failed: {e}", self.id))?;
        let message = match answer {
            Ok(renewed) => Message::Renewed(renewed),
            Err(refused) => {
                tracing::warn!(agent = %self.id, code = ?refused.code, "renewal refused: {}", refused.message);
                Message::EnrollRefused(refused)
            }
        };
        write_frame(self.send, &message, self.state.config.max_frame_bytes)
            .await
            .map_err(|e| format!("agent '{}': cannot answer its renewal: {e}", self.id))
    }

    /// Sends the agent the plugins assigned to it, if that set changed since the last time.
    async fn send_plugins(&mut self) -> Result<(), String> {
        let (plugins, refused) = self
            .state
            .plugins
            .desired_for(&self.hello.labels, &self.hello.wit_versions);
        let mut names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
        names.extend(refused.iter().map(|p| p.name.as_str()));
        self.state.plugins.retain_reports(self.id.as_str(), &names);
        self.state.plugins.record(self.id.as_str(), &refused);
        if self.sent.as_ref() == Some(&plugins) {
            return Ok(());
        }
        let message = Message::PluginAssign(PluginAssign {
            plugins: plugins.clone(),
        });
        write_frame(self.send, &message, self.state.config.max_frame_bytes)
            .await
            .map_err(|e| format!("agent '{}': cannot send its plugins: {e}", self.id))?;
        tracing::info!(agent = %self.id, plugins = ?plugins.iter().map(|p| format!("{}@{}", p.name, p.version)).collect::<Vec<_>>(), "plugins assigned");
        self.sent = Some(plugins);
        Ok(())
    }
}

/// Sends `reject` and closes the connection with `why` as the close reason, so that a peer
/// that does not read the Reject (or whose stream is gone) still learns why.
async fn refuse(
    connection: &quinn::Connection,
    send: &mut quinn::SendStream,
    reject: Reject,
    max_frame: u32,
    why: &str,
) {
    // Bounded: a peer that does not read must not hold the handshake slot.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        write_frame(send, &Message::Reject(reject), max_frame),
    )
    .await;
    let _ = send.finish();
    // Give the Reject a moment to leave before the close frame overtakes it.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    connection.close(
        close::REJECTED.into(),
        format!("rejected: {why}").as_bytes(),
    );
}
