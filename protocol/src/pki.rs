//! Certificates for ferry's mutual TLS: a certificate authority that issues the server's and the
//! agents' certificates, and the on-disk layout `ferry dev` and `ferry server` use.
//!
//! `CertificateAuthority` (rcgen) issues certificates; `PkiDir` is the on-disk layout of a CA, the
//! server certificate and agent certificates. Keys are written 0600 through a temporary file and a
//! rename. `CertificateAuthority::sign_agent_csr` signs a CSR's public key (rcgen checks the CSR's
//! signature) into a certificate whose subject and `ferry://agent/<id>` SAN it sets itself,
//! whatever the CSR asked for.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::AgentId;

/// Certificates could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen failed (an invalid name, a key it cannot use, …).
    #[error("cannot make certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// "cannot read", "cannot write", …
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority that signs server and agent certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long `ferry dev` certificates are valid.
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

impl CertificateAuthority {
    /// Makes a new self-signed CA with a fresh key.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = pem_to_der(cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            der,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The SHA-256 fingerprint of the CA certificate, lower-case hex: what a new agent pins.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        names: &[String],
        validity: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("ferry server");
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.as_str().try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity);
        self.sign(params)
    }

    /// Issues an agent's client certificate; the agent id goes into a URI SAN.
    pub fn issue_agent(&self, id: &AgentId, validity: Duration) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(id.as_str());
        params.subject_alt_names = vec![SanType::URI(id.uri().as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity);
        self.sign(params)
    }

    /// Signs an agent's certificate signing request (DER) for agent `id`, valid for `validity`;
    /// returns the certificate, PEM. Only the CSR's public key (and its proof of possession,
    /// the CSR's signature) is used: the subject and the `ferry://agent/<id>` SAN are set here,
    /// whatever the CSR asks for.
    pub fn sign_agent_csr(
        &self,
        csr_der: &[u8],
        id: &AgentId,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(id.as_str());
        params.subject_alt_names = vec![SanType::URI(id.uri().as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity_with_slack(&mut params, validity, AGENT_CLOCK_SLACK.min(validity));
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    fn sign(&self, params: CertificateParams) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    // An hour of slack for hosts whose clocks run a little behind.
    set_validity_with_slack(params, validity, Duration::from_secs(3600));
}

/// How far back an enrolled agent's certificate is valid from (room for a clock stepped back
/// a little); never more than the certificate's own lifetime, so that short lifetimes stay short.
const AGENT_CLOCK_SLACK: Duration = Duration::from_secs(300);

fn set_validity_with_slack(params: &mut CertificateParams, validity: Duration, slack: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - slack;
    params.not_after = now + validity;
}

/// A new agent key pair and a certificate signing request for it, naming `id` (which the
/// server may replace): returns the key (PKCS#8 PEM) and the CSR (DER).
pub fn new_agent_key_and_csr(id: &AgentId) -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let csr = agent_csr(&key.serialize_pem(), id)?;
    Ok((key.serialize_pem(), csr))
}

/// A certificate signing request for the key `key_pem` (PKCS#8 PEM) naming `id`, DER.
pub fn agent_csr(key_pem: &str, id: &AgentId) -> Result<Vec<u8>, PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(id.as_str());
    params.subject_alt_names = vec![SanType::URI(id.uri().as_str().try_into()?)];
    Ok(params.serialize_request(&key)?.der().to_vec())
}

/// The public key (its raw subject-public-key bits) a certificate signing request carries;
/// the CSR's signature is checked first.
pub fn csr_public_key(csr_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
    Ok(csr.public_key.der_bytes().to_vec())
}

/// The public key (its raw subject-public-key bits) of a private key (PKCS#8 PEM).
pub fn key_public_key(key_pem: &str) -> Result<Vec<u8>, PkiError> {
    Ok(KeyPair::from_pem(key_pem)?.der_bytes().to_vec())
}

/// The public key (its raw subject-public-key bits) of a DER certificate.
pub fn cert_public_key(der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| PkiError::Generate(rcgen::Error::CouldNotParseCertificate))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// When a DER certificate stops being valid.
pub fn cert_not_after(der: &[u8]) -> Result<OffsetDateTime, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| PkiError::Generate(rcgen::Error::CouldNotParseCertificate))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// The SHA-256 fingerprint of a DER certificate, lower-case hex (what `ferry agent --join
/// --ca-fingerprint` takes).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    pem_to_der(pem)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|_| PkiError::Generate(rcgen::Error::CouldNotParseCertificate))
}

/// The certificate files of a development or single-host installation, under one directory:
///
/// ```text
/// ca.pem  ca.key  server.pem  server.key  agents/<id>.pem  agents/<id>.key
/// ```
///
/// Keys are written with mode 0600.
#[derive(Debug, Clone)]
pub struct PkiDir {
    dir: PathBuf,
}

impl PkiDir {
    /// Opens `dir`, creating the CA and a server certificate (for `localhost`, `127.0.0.1`, `::1`
    /// and `extra_server_names`) the first time.
    pub fn open_or_create(dir: &Path, extra_server_names: &[String]) -> Result<Self, PkiError> {
        let pki = PkiDir {
            dir: dir.to_path_buf(),
        };
        create_dir(&pki.dir.join("agents"))?;
        if !pki.ca_cert_path().exists() || !pki.ca_key_path().exists() {
            let ca = CertificateAuthority::generate("ferry CA")?;
            write_file(&pki.ca_key_path(), ca.key_pem.as_bytes(), true)?;
            write_file(&pki.ca_cert_path(), ca.cert_pem.as_bytes(), false)?;
            // A new CA invalidates any server certificate signed by an old one.
            let _ = fs::remove_file(pki.server_cert_path());
        }
        if !pki.server_cert_path().exists() || !pki.server_key_path().exists() {
            let ca = pki.ca()?;
            let mut names = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            names.extend(extra_server_names.iter().cloned());
            let server = ca.issue_server(&names, DEV_CERT_VALIDITY)?;
            write_file(&pki.server_key_path(), server.key_pem.as_bytes(), true)?;
            write_file(&pki.server_cert_path(), server.cert_pem.as_bytes(), false)?;
        }
        Ok(pki)
    }

    /// Loads the CA.
    pub fn ca(&self) -> Result<CertificateAuthority, PkiError> {
        CertificateAuthority::from_pem(
            &read_file(&self.ca_cert_path())?,
            &read_file(&self.ca_key_path())?,
        )
    }

    /// Makes a certificate for agent `id` unless one exists; returns its (certificate, key) paths.
    pub fn ensure_agent(&self, id: &AgentId) -> Result<(PathBuf, PathBuf), PkiError> {
        let (cert, key) = self.agent_paths(id);
        if !cert.exists() || !key.exists() {
            let issued = self.ca()?.issue_agent(id, DEV_CERT_VALIDITY)?;
            write_file(&key, issued.key_pem.as_bytes(), true)?;
            write_file(&cert, issued.cert_pem.as_bytes(), false)?;
        }
        Ok((cert, key))
    }

    /// Where agent `id`'s certificate and key are kept.
    pub fn agent_paths(&self, id: &AgentId) -> (PathBuf, PathBuf) {
        let base = self.dir.join("agents");
        (
            base.join(format!("{id}.pem")),
            base.join(format!("{id}.key")),
        )
    }

    /// The CA certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The CA key.
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// The server certificate.
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// The server key.
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        action: "cannot create",
        path: dir.display().to_string(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "cannot read",
        path: path.display().to_string(),
        source,
    })
}

/// Writes `contents` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written key; `private` files get mode 0600 from the moment they exist.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        action: "cannot write",
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::agent_id_from_cert;

    #[test]
    fn agent_certificates_carry_their_id() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let id = AgentId::new("edge-7").unwrap();
        let issued = ca.issue_agent(&id, Duration::from_secs(60)).unwrap();
        let der = pem_to_der(&issued.cert_pem).unwrap();
        assert_eq!(agent_id_from_cert(&der).unwrap(), id);
    }

    #[test]
    fn a_csr_is_signed_for_the_id_the_ca_chooses_and_only_with_a_valid_signature() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let (key, csr) = new_agent_key_and_csr(&AgentId::new("victim").unwrap()).unwrap();
        let chosen = AgentId::new("chosen").unwrap();
        let pem = ca
            .sign_agent_csr(&csr, &chosen, Duration::from_secs(60))
            .unwrap();
        let der = pem_to_der(&pem).unwrap();
        assert_eq!(agent_id_from_cert(&der).unwrap(), chosen);
        assert_eq!(
            cert_public_key(&der).unwrap(),
            key_public_key(&key).unwrap()
        );
        assert_eq!(csr_public_key(&csr).unwrap(), key_public_key(&key).unwrap());
        let left = cert_not_after(&der).unwrap() - OffsetDateTime::now_utc();
        assert!(
            left <= time::Duration::seconds(60) && left > time::Duration::seconds(50),
            "{left}"
        );
        let mut forged = csr.clone();
        let last = forged.len() - 3;
        forged[last] ^= 0x55;
        assert!(
            ca.sign_agent_csr(&forged, &chosen, Duration::from_secs(60))
                .is_err()
        );
        assert!(
            ca.sign_agent_csr(b"junk", &chosen, Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn a_pki_dir_is_created_once_with_private_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = PkiDir::open_or_create(tmp.path(), &[]).unwrap();
        let ca_before = fs::read(pki.ca_cert_path()).unwrap();
        let pki = PkiDir::open_or_create(tmp.path(), &[]).unwrap();
        assert_eq!(
            fs::read(pki.ca_cert_path()).unwrap(),
            ca_before,
            "the CA must be kept"
        );
        let (_, key) = pki.ensure_agent(&AgentId::new("a1").unwrap()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for k in [pki.ca_key_path(), pki.server_key_path(), key] {
                assert_eq!(
                    fs::metadata(&k).unwrap().permissions().mode() & 0o777,
                    0o600,
                    "{}",
                    k.display()
                );
            }
        }
    }
}
