//! TLS and QUIC configuration for both ends: TLS 1.3 only, mutual authentication, ALPN `ferry/1`.
//!
//! rustls runs on the ring provider. The server's endpoint config derives its stateless-reset and
//! connection-id keys from a persisted secret, so a restarted server answers packets of the
//! connections it lost with a stateless reset, and their agents notice within one keep-alive rather
//! than at their idle timeout. The server offers ALPN `ferry/1` and `ferry-enroll/1`. A client
//! certificate is optional in the handshake (one that does not chain to the CA is still refused
//! there); the listener serves a connection without one nothing but enrollment.
//! `enroll_client_config` is the enrolling agent's: no client certificate, and a verifier that
//! accepts the server only if its chain holds a CA with the pinned SHA-256 fingerprint and its
//! certificate verifies against that CA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol id of ferry's v1 protocol.
pub const ALPN: &[u8] = b"ferry/1";

/// The ALPN protocol id of enrollment: a new agent, without a certificate yet, trades a join
/// token and a certificate signing request for its certificate. A connection without a client
/// certificate is served this and nothing else.
pub const ENROLL_ALPN: &[u8] = b"ferry-enroll/1";

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
/// present. A client certificate that does not chain to that CA is refused in the handshake.
/// A client *without* a certificate completes the handshake (it may be a new agent coming to
/// enroll, ALPN [`ENROLL_ALPN`]); the server must then serve it enrollment only, and close a
/// `ferry/1` connection without a certificate at once.
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
    .allow_unauthenticated()
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
    tls.alpn_protocols = vec![ALPN.to_vec(), ENROLL_ALPN.to_vec()];
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

/// The ALPN protocol a connection negotiated (`None` without ALPN).
pub fn alpn_of(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The enrolling agent's QUIC configuration: no client certificate (it has none yet), ALPN
/// [`ENROLL_ALPN`], and the server accepted only if the chain it sends holds a CA certificate
/// whose SHA-256 fingerprint is `ca_fingerprint` (hex) and its certificate verifies against
/// that CA for the server name. A wrong fingerprint fails the handshake, before the agent
/// has sent anything.
pub fn enroll_client_config(
    ca_fingerprint: &str,
    transport: &TransportSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let pinned = parse_fingerprint(ca_fingerprint)?;
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { pinned, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport.to_quinn()?));
    Ok(config)
}

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally `sha256:`-prefixed and with `:`
/// between bytes, in either case.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let digits: String = text
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    hex::decode(&digits)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| {
            TlsError::Config(format!(
                "'{text}' is not a CA fingerprint: give the 64 hex digits `ferry token create` prints (the SHA-256 of the server's CA certificate)"
            ))
        })
}

/// Accepts a server whose chain holds the pinned CA and whose certificate that CA signed.
#[derive(Debug)]
struct PinnedCa {
    pinned: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest as _;
        let ca = intermediates
            .iter()
            .find(|c| sha2::Sha256::digest(c.as_ref()).as_slice() == self.pinned)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's CA does not have the pinned fingerprint {}: check --ca-fingerprint against what `ferry token create` printed on the server (this may not be your server)",
                    hex::encode(self.pinned)
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is not usable: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_usual_spellings() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let bytes = parse_fingerprint(hex).unwrap();
        assert_eq!(parse_fingerprint(&hex.to_uppercase()).unwrap(), bytes);
        assert_eq!(parse_fingerprint(&format!("sha256:{hex}")).unwrap(), bytes);
        let colons: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), bytes);
        for bad in [
            "",
            "abc",
            &hex[..62],
            &format!("{hex}00"),
            &hex.replace('9', "g"),
        ] {
            let err = parse_fingerprint(bad).unwrap_err().to_string();
            assert!(err.contains("ferry token create"), "{err}");
        }
    }
}
