//! TLS and QUIC configuration for both ends: TLS 1.3 only, mutual authentication, ALPN `ferry/1`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol id of ferry's v1 protocol.
pub const ALPN: &[u8] = b"ferry/1";

/// TLS material could not be loaded or configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// Where it was looked for.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match its certificate, …).
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// A certificate chain and its private key: who this end is.
#[derive(Debug)]
pub struct Identity {
    /// The leaf certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Parses a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Ok(Identity {
            chain: parse_certs(cert_pem, "certificate chain", "<memory>")?,
            key: PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| pem_error("private key", "<memory>", e))?,
        })
    }

    /// Reads a PEM certificate chain and a PEM private key from files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Identity {
            chain: parse_certs(
                &read(cert, "certificate chain")?,
                "certificate chain",
                &cert.display().to_string(),
            )?,
            key: PrivateKeyDer::from_pem_file(key)
                .map_err(|e| pem_error("private key", &key.display().to_string(), e))?,
        })
    }
}

/// Reads the CA certificates to trust from a PEM file.
pub fn roots_from_pem_file(path: &Path) -> Result<RootCertStore, TlsError> {
    roots_from_pem(&read(path, "CA certificates")?, &path.display().to_string())
}

/// Parses the CA certificates to trust from PEM text; `origin` names it in errors.
pub fn roots_from_pem(pem: &[u8], origin: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem, "CA certificates", origin)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "CA certificates",
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// QUIC transport settings shared by both ends.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// How often to send a keep-alive when the connection is otherwise quiet.
    pub keep_alive: Duration,
    /// After how long without any packet the peer is considered gone.
    pub idle_timeout: Duration,
    /// How many bidirectional streams the *peer* may have open at once.
    pub max_incoming_bidi_streams: u32,
}

impl Default for TransportSettings {
    fn default() -> Self {
        // 5 s / 15 s notices a dead peer in 15–20 s while costing next to nothing.
        TransportSettings {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            max_incoming_bidi_streams: 32,
        }
    }
}

impl TransportSettings {
    fn to_quinn(&self) -> Result<quinn::TransportConfig, TlsError> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(self.idle_timeout.try_into().map_err(|_| {
                TlsError::Config(format!("idle timeout {:?} is too long", self.idle_timeout))
            })?))
            .max_concurrent_bidi_streams(self.max_incoming_bidi_streams.into())
            .max_concurrent_uni_streams(0u32.into());
        Ok(transport)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's QUIC configuration: its identity, and the CA whose certificates agents must
/// present. A client without a certificate from that CA is refused in the handshake.
pub fn server_config(
    identity: Identity,
    client_roots: RootCertStore,
    transport: &TransportSettings,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| {
            TlsError::Config(format!(
                "server certificate and key do not fit together: {e}"
            ))
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport.to_quinn()?));
    Ok(config)
}

/// The agent's QUIC configuration: its identity, and the CA that signed the server's certificate.
pub fn client_config(
    identity: Identity,
    server_roots: RootCertStore,
    transport: &TransportSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(server_roots)
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(|e| {
            TlsError::Config(format!(
                "agent certificate and key do not fit together: {e}"
            ))
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport.to_quinn()?));
    Ok(config)
}

/// An endpoint configuration whose stateless-reset key and connection-id generator are derived
/// from `secret`. A server that keeps `secret` across restarts can answer packets of connections
/// it lost in a restart with a stateless reset, so agents notice within one keep-alive instead of
/// waiting for their idle timeout.
pub fn endpoint_config_from_secret(secret: &[u8; 32]) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &derive(secret, b"ferry stateless reset"),
    );
    let cid_key = u64::from_le_bytes(
        derive(secret, b"ferry connection ids")[..8]
            .try_into()
            .expect("eight bytes"),
    );
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

fn derive(secret: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, label)
        .as_ref()
        .try_into()
        .expect("SHA-256 output is 32 bytes")
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Pem {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn parse_certs(
    pem: &[u8],
    what: &'static str,
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, origin, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: origin.to_string(),
            reason: "no PEM certificate found".to_string(),
        });
    }
    Ok(certs)
}

fn pem_error(what: &'static str, origin: &str, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        what,
        path: origin.to_string(),
        reason: e.to_string(),
    }
}
