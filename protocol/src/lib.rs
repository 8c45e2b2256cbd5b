//! ferry's wire protocol, shared by the server and the agent.
//!
//! - [`message`]: the v1 message types and the allowlist of who may send what where.
//! - [`codec`]: CBOR encoding of one message; trailing bytes are an error.
//! - [`frame`]: `u32` big-endian length-prefixed frames, the limit checked before allocation.
//! - [`version`]: protocol-version negotiation.
//! - [`identity`]: agent ids, read from the agent's certificate.
//! - [`tls`]: rustls/quinn configuration for mutual TLS with ALPN `ferry/1`.
//! - [`pki`]: a certificate authority and the on-disk certificate layout.
//! - [`package`]: plugin packages, their digests and ed25519 signatures.
//!
//! The crate does no I/O policy of its own: both sides decide when to read and write.
//!
//! Without its default `io` feature the crate is only the message types, the codec and version
//! negotiation, with no tokio, quinn, rustls or ring: what `ferry-lifecycle` builds on.
//! `FrameReader`/`write_frame`, `tls`, `pki`, `package` and reading an id from a certificate need
//! `io`. Package digests live in `digest`, apart from `package`, because messages carry them.

/// QUIC application close codes ferry uses.
pub mod close {
    /// A normal, intended close.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol (a malformed frame, a message not allowed from it).
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The server refused the agent (see the `Reject` frame sent before).
    pub const REJECTED: u32 = 2;
    /// The agent connected again; this older connection is replaced.
    pub const REPLACED: u32 = 3;
    /// The peer is shutting down.
    pub const SHUTDOWN: u32 = 4;
}

/// The `ferry:plugin` WIT world versions this release of ferry defines, oldest first: the one
/// list the agent advertises, the server gates assignments on, the host binds and `ferry
/// plugin new` copies. Each released version stays, frozen, under `wit/<version>/`
/// (`host/tests/host/wit.rs` holds each one's digest); new interfaces go into the next.
pub const WIT_VERSIONS: &[&str] = &["0.1.0"];

/// The newest of [`WIT_VERSIONS`]: what new plugins are built against.
pub const WIT_LATEST: &str = WIT_VERSIONS[WIT_VERSIONS.len() - 1];

pub mod codec;
pub mod digest;
pub mod frame;
pub mod identity;
pub mod message;
#[cfg(feature = "io")]
pub mod package;
#[cfg(feature = "io")]
pub mod pki;
#[cfg(feature = "io")]
pub mod tls;
pub mod version;

pub use frame::{DEFAULT_MAX_FRAME, FrameError};
#[cfg(feature = "io")]
pub use frame::{FrameReader, write_frame};
pub use identity::AgentId;
pub use message::*;
pub use version::{PROTOCOL_VERSION, SUPPORTED, VersionRange};
