//! Joining a server: a new agent makes its key, sends a CSR with a join token over a
//! connection whose server it accepts only if the server's CA has the pinned fingerprint, and
//! keeps the certificate, CA and plugin signing key it gets back in its data directory.
//!
//! `join` (`ferry agent --join`) makes a key and a CSR, connects with `tls::enroll_client_config`
//! (the pinned CA fingerprint), sends `Enroll`, checks the answer (the CA is the pinned one, the
//! certificate is for its key) and writes the key (0600), the CA, the plugin key, the server
//! address and, last, the certificate to `<data_dir>/identity/` (`IdentityFiles`). A data directory
//! that already holds an identity is used as it is, and nothing is sent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_protocol::pki::{self, write_file};
use ferry_protocol::tls::{self, TransportSettings};
use ferry_protocol::{
    AgentId, Enroll, EnrollCode, FrameReader, Message, Peer, StreamKind, close, write_frame,
};

use crate::config::AgentConfig;

/// Where an enrolled agent keeps its identity: `<data_dir>/identity/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The agent's certificate (PEM).
    pub cert: PathBuf,
    /// The agent's private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The server's CA (PEM).
    pub ca: PathBuf,
    /// The server's plugin signing key.
    pub plugin_key: PathBuf,
    /// The server's address the agent enrolled with (one line).
    pub server: PathBuf,
}

impl IdentityFiles {
    /// The identity files under `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> IdentityFiles {
        let dir = data_dir.join("identity");
        IdentityFiles {
            cert: dir.join("agent.pem"),
            key: dir.join("agent.key"),
            ca: dir.join("ca.pem"),
            plugin_key: dir.join("plugin-signing.pub"),
            server: dir.join("server"),
        }
    }

    /// Whether an enrollment left an identity here (the certificate is written last).
    pub fn exists(&self) -> bool {
        self.cert.exists() && self.key.exists() && self.ca.exists()
    }

    /// The server address the agent enrolled with, if it was kept.
    pub fn server(&self) -> Option<String> {
        std::fs::read_to_string(&self.server)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Points `config` at these files.
    pub fn apply(&self, config: &mut AgentConfig) {
        config.cert = self.cert.clone();
        config.key = self.key.clone();
        config.ca = self.ca.clone();
        if config.plugin_key.is_none() && self.plugin_key.exists() {
            config.plugin_key = Some(self.plugin_key.clone());
        }
    }
}

/// What `ferry agent --join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The server's QUIC address, `host:port`.
    pub server: String,
    /// The name the server's certificate must carry; the host part of `server` when empty.
    pub server_name: String,
    /// The join token.
    pub token: String,
    /// The SHA-256 fingerprint of the server's CA certificate, hex.
    pub ca_fingerprint: String,
    /// The agent id to ask for; sanitized host name when `None`.
    pub name: Option<String>,
    /// The agent's data directory; the identity goes to `<data_dir>/identity/`.
    pub data_dir: PathBuf,
    /// How long the exchange may take.
    pub timeout: Duration,
}

/// How joining ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The server issued a certificate for this id.
    Enrolled(AgentId),
    /// The data directory already held an identity; nothing was sent.
    AlreadyEnrolled,
}

/// Joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The request could not be made (a bad fingerprint, name or address).
    #[error("{0}")]
    Invalid(String),
    /// The server could not be reached, or was not the pinned one.
    #[error("cannot reach the server to enroll: {0}")]
    Connect(String),
    /// The server refused: the token is unknown, expired, used up or revoked, or the id taken.
    #[error("the server refused to enroll this agent: {message}")]
    Refused {
        /// Why, for machines.
        code: EnrollCode,
        /// Why, for people.
        message: String,
    },
    /// The server's answer did not hold up (wrong CA, wrong key).
    #[error("the server's answer cannot be used: {0}")]
    BadAnswer(String),
    /// The identity could not be written.
    #[error("cannot keep the new identity: {0}")]
    Write(#[from] pki::PkiError),
}

/// An agent id from a host name: characters an id cannot hold become `-`.
pub fn id_from_host_name(host: &str) -> Option<AgentId> {
    let mut id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let start = id.find(|c: char| c.is_ascii_alphanumeric())?;
    id.drain(..start);
    id.truncate(ferry_protocol::identity::MAX_AGENT_ID_LEN);
    AgentId::new(id).ok()
}

fn host_name() -> Option<String> {
    sysinfo::System::host_name().filter(|h| !h.is_empty())
}

/// Enrolls with the server, unless `data_dir` already holds an identity.
pub async fn join(options: &JoinOptions) -> Result<Joined, JoinError> {
    let files = IdentityFiles::in_data_dir(&options.data_dir);
    if files.exists() {
        return Ok(Joined::AlreadyEnrolled);
    }
    let pinned = tls::parse_fingerprint(&options.ca_fingerprint)
        .map_err(|e| JoinError::Invalid(e.to_string()))?;
    let id = match &options.name {
        Some(name) => AgentId::new(name.trim()).map_err(|e| JoinError::Invalid(e.to_string()))?,
        None => host_name()
            .as_deref()
            .and_then(id_from_host_name)
            .ok_or_else(|| {
                JoinError::Invalid(
                    "this host's name cannot serve as an agent id; give one with --name".into(),
                )
            })?,
    };
    if options.token.trim().is_empty() {
        return Err(JoinError::Invalid(
            "the join token is empty; pass the one `ferry token create` printed".into(),
        ));
    }
    let (key_pem, csr) = pki::new_agent_key_and_csr(&id)?;
    let client = tls::enroll_client_config(&options.ca_fingerprint, &TransportSettings::default())
        .map_err(|e| JoinError::Invalid(e.to_string()))?;
    let addr = resolve(&options.server).await?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("valid address");
    let endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| JoinError::Connect(format!("cannot open a UDP socket: {e}")))?;
    let server_name = if options.server_name.is_empty() {
        AgentConfig {
            server: options.server.clone(),
            ..AgentConfig::default()
        }
        .effective_server_name()
    } else {
        options.server_name.clone()
    };
    let request = Enroll {
        token: options.token.trim().to_string(),
        csr,
        requested_id: id.to_string(),
    };
    let exchange = async {
        let connection = endpoint
            .connect_with(client, addr, &server_name)
            .map_err(|e| JoinError::Connect(format!("{addr}: {e}")))?
            .await
            // A wrong fingerprint ends here, in our own verifier, before anything was sent.
            .map_err(|e| JoinError::Connect(format!("handshake with {addr} failed: {e}")))?;
        let answer = async {
            let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, &Message::Enroll(request), 1 << 20)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            FrameReader::new(recv, 1 << 20)
                .next()
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the server closed the stream without answering".to_string())
        }
        .await
        .map_err(|e| {
            JoinError::Connect(
                connection
                    .close_reason()
                    .map_or(e, |reason| reason.to_string()),
            )
        });
        connection.close(close::NORMAL.into(), b"enrollment done");
        answer
    };
    let answer = tokio::time::timeout(options.timeout, exchange).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let answer = answer.map_err(|_| {
        JoinError::Connect(format!(
            "no answer from {addr} within {:?}",
            options.timeout
        ))
    })??;
    if let Err(e) = answer.check_allowed(Peer::Server, StreamKind::Enroll) {
        return Err(JoinError::BadAnswer(e.to_string()));
    }
    let enrolled = match answer {
        Message::Enrolled(enrolled) => enrolled,
        Message::EnrollRefused(refused) => {
            return Err(JoinError::Refused {
                code: refused.code,
                message: refused.message,
            });
        }
        _ => unreachable!("check_allowed admits only Enrolled and EnrollRefused"),
    };
    // The CA must be the pinned one, and the certificate for our key, under an id.
    let ca_der = pki::first_cert_der(&enrolled.ca_pem)
        .map_err(|e| JoinError::BadAnswer(format!("its CA certificate: {e}")))?;
    if pki::fingerprint(&ca_der) != hex::encode(pinned) {
        return Err(JoinError::BadAnswer(
            "its CA is not the one with the pinned fingerprint".into(),
        ));
    }
    let cert_der = pki::first_cert_der(&enrolled.certificate_pem)
        .map_err(|e| JoinError::BadAnswer(format!("the certificate: {e}")))?;
    let ours = pki::key_public_key(&key_pem)?;
    if pki::cert_public_key(&cert_der)? != ours {
        return Err(JoinError::BadAnswer(
            "the certificate is not for this agent's key".into(),
        ));
    }
    let issued_id = ferry_protocol::identity::agent_id_from_cert(&cert_der)
        .map_err(|e| JoinError::BadAnswer(e.to_string()))?;
    let dir = files
        .cert
        .parent()
        .expect("identity files are in a directory");
    std::fs::create_dir_all(dir).map_err(|source| pki::PkiError::Io {
        action: "cannot create",
        path: dir.display().to_string(),
        source,
    })?;
    write_file(&files.key, key_pem.as_bytes(), true)?;
    write_file(&files.ca, enrolled.ca_pem.as_bytes(), false)?;
    if let Some(plugin_key) = &enrolled.plugin_key {
        write_file(&files.plugin_key, plugin_key.as_bytes(), false)?;
    }
    write_file(&files.server, options.server.as_bytes(), false)?;
    // Last: its presence is what marks the data directory as enrolled.
    write_file(&files.cert, enrolled.certificate_pem.as_bytes(), false)?;
    tracing::info!(agent = %issued_id, not_after = enrolled.not_after, "enrolled");
    Ok(Joined::Enrolled(issued_id))
}

async fn resolve(server: &str) -> Result<SocketAddr, JoinError> {
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| JoinError::Invalid(format!("cannot resolve server address '{server}': {e}")))?
        .next()
        .ok_or_else(|| JoinError::Invalid(format!("server address '{server}' resolves to nothing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_valid_ids() {
        assert_eq!(id_from_host_name("edge-7").unwrap().as_str(), "edge-7");
        assert_eq!(id_from_host_name("-my host!").unwrap().as_str(), "my-host-");
        assert_eq!(
            id_from_host_name(&"x".repeat(80)).unwrap().as_str().len(),
            64
        );
        assert!(id_from_host_name("---").is_none());
        assert!(id_from_host_name("").is_none());
    }
}
