//! Plugin packages: a manifest and a component in one content-addressed, signed unit.
//!
//! A package is the CBOR encoding of [`Package`]. Its [`Digest`] is the sha256 of exactly the
//! bytes the server stores and serves, and the server signs that digest with its ed25519
//! [`SigningKey`]. An agent checks the digest and the signature against the [`PublicKey`] it was
//! given with its credentials *before* it writes or decodes a byte of the package
//! ([`verify`]): a package changed on the server's disk, on the way, or in the agent's own
//! cache is refused.
//!
//! The signature is over `"ferry plugin package v1\0" ‖ digest`. `verify` checks the digest, then
//! the signature, and only then decodes. This lives in the protocol crate because both ends must
//! agree on it byte for byte.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::pki::{PkiError, write_file};

/// The package format this build writes and reads.
pub const PACKAGE_FORMAT: u32 = 1;

/// What a signature covers besides the digest, so that a ferry package signature can never be
/// mistaken for (or replayed as) a signature over anything else made with the same key.
const SIGNING_CONTEXT: &[u8] = b"ferry plugin package v1\0";

/// A plugin package: its manifest (`ferry.toml`, as text) and its wasm component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// [`PACKAGE_FORMAT`].
    pub format: u32,
    /// The manifest, as TOML.
    pub manifest: String,
    /// The wasm component.
    #[serde(with = "serde_bytes")]
    pub component: Vec<u8>,
}

/// A package is malformed, or fails verification.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The bytes are not a package.
    #[error("not a ferry plugin package: {0}")]
    Malformed(String),
    /// A package format this build does not know.
    #[error(
        "plugin package format {found} is not supported (this build reads format {PACKAGE_FORMAT}); upgrade ferry"
    )]
    Format {
        /// The format the package says it has.
        found: u32,
    },
    /// The bytes do not hash to the digest they were sent under.
    #[error(
        "the package's digest is sha256:{actual}, not the sha256:{expected} it was assigned as; it was changed after it was signed"
    )]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// The signature does not verify with the pinned key.
    #[error(
        "the signature of package sha256:{0} does not verify with this agent's plugin signing key; the package was not signed by its server"
    )]
    BadSignature(Digest),
    /// A digest, key or signature in text form is malformed.
    #[error("{0}")]
    Parse(String),
    /// A key file could not be read or written.
    #[error(transparent)]
    Io(#[from] PkiError),
}

impl Package {
    /// A package of the current format.
    pub fn new(manifest: String, component: Vec<u8>) -> Package {
        Package {
            format: PACKAGE_FORMAT,
            manifest,
            component,
        }
    }

    /// The package's bytes: what is stored, served and hashed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.component.len() + self.manifest.len() + 64);
        ciborium::into_writer(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Decodes a package; trailing bytes and unknown formats are errors.
    pub fn decode(bytes: &[u8]) -> Result<Package, PackageError> {
        let mut rest = bytes;
        let package: Package =
            ciborium::from_reader(&mut rest).map_err(|e| PackageError::Malformed(describe(e)))?;
        if !rest.is_empty() {
            return Err(PackageError::Malformed(format!(
                "{} unexpected bytes after the package",
                rest.len()
            )));
        }
        if package.format != PACKAGE_FORMAT {
            return Err(PackageError::Format {
                found: package.format,
            });
        }
        Ok(package)
    }
}

/// What is wrong with bytes that do not decode as a package, in words: ciborium's own
/// `Display` is its debug text (`Io(Error { kind: UnexpectedEof … })`), which says nothing to
/// whoever pushed the package.
fn describe(e: ciborium::de::Error<std::io::Error>) -> String {
    use ciborium::de::Error;
    const MAKE: &str = "`ferry plugin push` packs a plugin's manifest and component into one";
    match e {
        Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("the bytes end in the middle of the package (cut short, or empty); {MAKE}")
        }
        Error::Io(e) => format!("reading the package failed: {e}"),
        Error::Syntax(at) => format!("the bytes are not CBOR (at byte {at}); {MAKE}"),
        Error::Semantic(_, what) => {
            format!("the bytes are CBOR but not a package ({what}); {MAKE}")
        }
        Error::RecursionLimitExceeded => {
            format!("the bytes nest deeper than any package does; {MAKE}")
        }
    }
}

/// Checks that `bytes` hash to `digest` and that `signature` is the server's over it, then
/// decodes the package. Nothing is decoded before both checks pass.
pub fn verify(
    bytes: &[u8],
    digest: &Digest,
    signature: &[u8],
    key: &PublicKey,
) -> Result<Package, PackageError> {
    let actual = Digest::of(bytes);
    if &actual != digest {
        return Err(PackageError::DigestMismatch {
            expected: *digest,
            actual,
        });
    }
    key.verify(digest, signature)?;
    Package::decode(bytes)
}

pub use crate::digest::Digest;

/// The server's package signing key (ed25519).
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads the key from `path` (PKCS#8, hex), or makes one and writes it there (mode 0600)
    /// and its public half to `public_path`.
    pub fn load_or_create(path: &Path, public_path: &Path) -> Result<SigningKey, PackageError> {
        let key = match std::fs::read_to_string(path) {
            Ok(text) => {
                let der = hex::decode(text.trim()).map_err(|_| {
                    PackageError::Parse(format!(
                        "{}: not a ferry signing key (expected hex-encoded PKCS#8); restore it from a backup — deleting it makes a new key that agents will not trust",
                        path.display()
                    ))
                })?;
                SigningKey::from_pkcs8(&der)
                    .map_err(|e| PackageError::Parse(format!("{}: {e}", path.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| PackageError::Parse("cannot generate an ed25519 key".into()))?;
                write_file(path, hex::encode(der.as_ref()).as_bytes(), true)?;
                SigningKey::from_pkcs8(der.as_ref())?
            }
            Err(e) => {
                return Err(PackageError::Parse(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let public = key.public_key().to_string();
        if std::fs::read_to_string(public_path).ok().as_deref() != Some(public.as_str()) {
            write_file(public_path, public.as_bytes(), false)?;
        }
        Ok(key)
    }

    /// A key from its PKCS#8 encoding.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, PackageError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| PackageError::Parse(format!("not an ed25519 PKCS#8 key: {e}")))?;
        Ok(SigningKey { pair })
    }

    /// A fresh key, for tests.
    pub fn generate() -> SigningKey {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("the system random source works");
        SigningKey::from_pkcs8(der.as_ref()).expect("a fresh key parses")
    }

    /// Signs a package digest.
    pub fn sign(&self, digest: &Digest) -> Vec<u8> {
        self.pair.sign(&signed_message(digest)).as_ref().to_vec()
    }

    /// The public half, which agents pin.
    pub fn public_key(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }
}

/// A package signing public key; its text form is `ed25519:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Checks `signature` over `digest`.
    pub fn verify(&self, digest: &Digest, signature: &[u8]) -> Result<(), PackageError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&signed_message(digest), signature)
            .map_err(|_| PackageError::BadSignature(*digest))
    }

    /// Reads a key file written by the server (`plugin-signing.pub`).
    pub fn from_file(path: &Path) -> Result<PublicKey, PackageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PackageError::Parse(format!("cannot read {}: {e}", path.display())))?;
        text.trim()
            .parse()
            .map_err(|e| PackageError::Parse(format!("{}: {e}", path.display())))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = PackageError;

    fn from_str(s: &str) -> Result<PublicKey, PackageError> {
        let bad = || {
            PackageError::Parse(format!(
                "'{s}' is not a plugin signing key: expected 'ed25519:' and 64 hex digits"
            ))
        };
        let hex_part = s.strip_prefix("ed25519:").ok_or_else(bad)?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut key).map_err(|_| bad())?;
        Ok(PublicKey(key))
    }
}

fn signed_message(digest: &Digest) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + 32);
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(&digest.0);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Digest) {
        let bytes = Package::new("[plugin]\nname = \"x\"\n".into(), b"\0asm....".to_vec()).encode();
        let digest = Digest::of(&bytes);
        (bytes, digest)
    }

    #[test]
    fn a_signed_package_verifies_and_decodes() {
        let key = SigningKey::generate();
        let (bytes, digest) = sample();
        let signature = key.sign(&digest);
        let package = verify(&bytes, &digest, &signature, &key.public_key()).unwrap();
        assert_eq!(package.component, b"\0asm....");
    }

    #[test]
    fn one_flipped_bit_anywhere_is_refused() {
        let key = SigningKey::generate();
        let (bytes, digest) = sample();
        let signature = key.sign(&digest);
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            let err = verify(&tampered, &digest, &signature, &key.public_key()).unwrap_err();
            assert!(matches!(err, PackageError::DigestMismatch { .. }), "{err}");
        }
    }

    #[test]
    fn a_signature_by_another_key_or_over_another_digest_is_refused() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let (bytes, digest) = sample();
        let forged = other.sign(&digest);
        let err = verify(&bytes, &digest, &forged, &key.public_key()).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        let unrelated = key.sign(&Digest::of(b"something else"));
        assert!(verify(&bytes, &digest, &unrelated, &key.public_key()).is_err());
        assert!(verify(&bytes, &digest, &[], &key.public_key()).is_err());
    }

    #[test]
    fn keys_and_digests_round_trip_as_text() {
        let key = SigningKey::generate().public_key();
        assert_eq!(key.to_string().parse::<PublicKey>().unwrap(), key);
        let (_, digest) = sample();
        assert_eq!(digest.to_string().parse::<Digest>().unwrap(), digest);
        assert_eq!(
            format!("sha256:{digest}").parse::<Digest>().unwrap(),
            digest
        );
        assert!("ed25519:zz".parse::<PublicKey>().is_err());
        assert!("abc".parse::<Digest>().is_err());
    }

    #[test]
    fn a_key_is_made_once_and_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = (dir.path().join("k"), dir.path().join("k.pub"));
        let first = SigningKey::load_or_create(&path, &public).unwrap();
        let again = SigningKey::load_or_create(&path, &public).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(PublicKey::from_file(&public).unwrap(), first.public_key());
    }

    #[test]
    fn garbage_and_other_formats_are_not_packages() {
        assert!(Package::decode(b"\xff\x00garbage").is_err());
        let mut future = Package::new(String::new(), Vec::new());
        future.format = 2;
        let err = Package::decode(&future.encode()).unwrap_err();
        assert!(err.to_string().contains("format 2"), "{err}");
        let mut trailing = sample().0;
        trailing.push(0);
        assert!(Package::decode(&trailing).is_err());
    }
}
