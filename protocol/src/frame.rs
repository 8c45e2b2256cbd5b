//! Length-prefixed framing: a `u32` big-endian length, then one CBOR-encoded [`Message`].
//!
//! The length is checked against the maximum *before* anything is allocated for the body, so a
//! peer cannot make the receiver reserve memory by announcing a large frame.
//!
//! `encode_frame` and `decode_frame` are pure functions, for tests and fuzzing. `FrameReader` is
//! buffered and **cancel-safe**: its only await is one `read_buf`, and a partial frame stays in its
//! buffer, so it can sit in `tokio::select!` beside timers and cancel signals. The buffer grows
//! with the bytes that actually arrive (`READ_CHUNK`, 64 KiB, at a time), not with the length a
//! peer announces. `with_stall_limit` bounds how long a frame may take once its first bytes arrived
//! (`FrameError::Stalled`); when they arrived is kept in the reader, so the bound holds across
//! cancelled `next()` calls.

use std::time::Duration;

#[cfg(feature = "io")]
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
#[cfg(feature = "io")]
use tokio::time::Instant;

use crate::codec::{self, CodecError};
use crate::message::Message;

/// The default largest frame: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced or actual length exceeds the limit.
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; raise `max_frame_bytes` on both sides if such messages are expected"
    )]
    TooLarge {
        /// The frame's length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: expected {expected} more bytes, got {got}")]
    Truncated {
        /// Bytes the frame still needed.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The body is not a valid message.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A frame begun did not arrive whole within the reader's stall limit
    /// ([`FrameReader::with_stall_limit`]).
    #[error("a frame stayed incomplete for {limit:?} ({got} bytes of it arrived)")]
    Stalled {
        /// The limit in force.
        limit: Duration,
        /// Bytes of the frame that arrived.
        got: usize,
    },
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` as a complete frame (prefix and body), refusing one over `max`.
pub fn encode_frame(message: &Message, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(128);
    encode_frame_into(message, max, &mut out)?;
    Ok(out)
}

/// Appends `message` as a complete frame to `out`, so frames ready together can leave in one
/// write; on error `out` is as it was.
pub fn encode_frame_into(message: &Message, max: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = codec::encode_into(message, out) {
        out.truncate(start);
        return Err(e.into());
    }
    let len = (out.len() - start - HEADER_LEN) as u64;
    if len > u64::from(max) {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Takes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold a whole frame yet, or the message and how many
/// bytes it used. Never panics, whatever `buf` holds.
pub fn decode_frame(buf: &[u8], max: u32) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header.try_into().expect("four bytes"));
    if len > max {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max,
        });
    }
    let end = HEADER_LEN + len as usize;
    let Some(body) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    Ok(Some((codec::decode(body)?, end)))
}

/// Reads frames from a stream.
///
/// Cancel-safe: bytes read are kept in the reader's buffer, so `next()` can sit in a
/// `tokio::select!` beside other branches without losing half a frame when another branch wins.
/// The buffer grows with the data that actually arrives (never ahead of it by more than
/// [`READ_CHUNK`]), so a peer that announces a large frame and sends nothing costs nothing.
#[cfg(feature = "io")]
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: u32,
    stall_limit: Option<Duration>,
    /// When the first bytes of the frame in `buf` arrived; kept across cancelled `next()`s.
    begun: Option<Instant>,
}

/// The most the reader reserves ahead of data that has not arrived yet.
pub const READ_CHUNK: usize = 64 * 1024;

#[cfg(feature = "io")]
impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader that refuses frames over `max` bytes.
    pub fn new(inner: R, max: u32) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            max,
            stall_limit: None,
            begun: None,
        }
    }

    /// Bounds how long a frame may take to arrive whole once its first bytes have: `next()`
    /// then fails with [`FrameError::Stalled`]. A stream that stays idle between frames is
    /// not bounded. For long-lived streams, where a peer could otherwise park half a frame and
    /// hold the stream without ever sending anything the reader acts on.
    pub fn with_stall_limit(mut self, limit: Duration) -> Self {
        self.set_stall_limit(limit);
        self
    }

    /// [`with_stall_limit`](Self::with_stall_limit) on a reader already in use: a frame
    /// already begun is timed from now. For a stream whose first frames have another bound (a
    /// handshake deadline), where two timers racing would give the same late frame two
    /// different reasons.
    pub fn set_stall_limit(&mut self, limit: Duration) {
        self.stall_limit = Some(limit);
        if !self.buf.is_empty() {
            self.begun = Some(Instant::now());
        }
    }

    /// The next message; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            if let Some((message, used)) = decode_frame(&self.buf, self.max)? {
                self.buf.drain(..used);
                // Bytes already here begin the next frame, timed from now.
                self.begun = (!self.buf.is_empty()).then(Instant::now);
                return Ok(Some(message));
            }
            if !self.buf.is_empty() {
                self.begun.get_or_insert_with(Instant::now);
            }
            let stall_at = self.stall_limit.zip(self.begun);
            let wanted = match self.buf.get(..HEADER_LEN) {
                Some(header) => {
                    HEADER_LEN + u32::from_be_bytes(header.try_into().expect("four bytes")) as usize
                }
                None => HEADER_LEN,
            };
            self.buf.reserve((wanted - self.buf.len()).min(READ_CHUNK));
            let spare = self.buf.capacity() - self.buf.len();
            let mut inner = (&mut self.inner).take(spare as u64);
            let read = inner.read_buf(&mut self.buf);
            let n = match stall_at {
                Some((limit, begun)) => match tokio::time::timeout_at(begun + limit, read).await {
                    Ok(n) => n?,
                    Err(_) => {
                        return Err(FrameError::Stalled {
                            limit,
                            got: self.buf.len(),
                        });
                    }
                },
                None => read.await?,
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(FrameError::Truncated {
                    expected: wanted,
                    got: self.buf.len(),
                });
            }
        }
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

#[cfg(feature = "io")]
/// Writes one frame in a single write, so a QUIC stream sends it in as few packets as it can.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
    max: u32,
) -> Result<(), FrameError> {
    let frame = encode_frame(message, max)?;
    writer.write_all(&frame).await?;
    Ok(())
}
