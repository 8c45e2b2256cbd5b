//! CBOR encoding of [`Message`]s.
//!
//! The codec is ciborium. A frame body must hold exactly one message: trailing bytes are an error,
//! not ignored. Payloads are `serde_bytes` byte strings, not arrays of numbers.

use crate::message::Message;

/// A frame body could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid CBOR encoding of a known message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message was followed by more bytes inside the same frame.
    #[error("malformed message: {0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// Encoding failed (only an I/O-level failure of the in-memory writer can cause this).
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Encodes a message as one CBOR value.
pub fn encode(message: &Message) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    encode_into(message, &mut out)?;
    Ok(out)
}

/// Appends the CBOR encoding of `message` to `out`.
pub fn encode_into(message: &Message, out: &mut Vec<u8>) -> Result<(), CodecError> {
    ciborium::into_writer(message, out).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes exactly one message from `bytes`; anything after it is an error, because
/// `ciborium::from_reader` alone would silently ignore it.
pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
    let mut rest = bytes;
    let message: Message =
        ciborium::from_reader(&mut rest).map_err(|e| CodecError::Malformed(describe(e)))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(message)
}

fn describe<T: std::fmt::Debug>(error: ciborium::de::Error<T>) -> String {
    match error {
        ciborium::de::Error::Io(e) => format!("truncated or unreadable CBOR ({e:?})"),
        ciborium::de::Error::Syntax(at) => format!("invalid CBOR at byte {at}"),
        ciborium::de::Error::Semantic(at, msg) => match at {
            Some(at) => format!("{msg} (at byte {at})"),
            None => msg,
        },
        ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_string(),
    }
}
