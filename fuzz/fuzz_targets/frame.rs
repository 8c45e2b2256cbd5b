//! Frame decoding: `decode_frame` over the whole input and the cancel-safe `FrameReader` fed
//! the same bytes in chunks of arbitrary sizes must agree frame by frame, never panic, and
//! never allocate out of proportion to the input (a length prefix is a claim, not a fact).
//!
//! Input: one byte choosing the frame limit, one seeding the chunk sizes, then the stream.

#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ferry_fuzz::{allocation_bound, block_on, largest_allocation};
use ferry_protocol::codec;
use ferry_protocol::frame::{FrameError, FrameReader, decode_frame};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// What one pass over the stream saw: each frame's message (re-encoded, so that NaN floats
/// compare equal), then how it ended.
#[derive(Debug, PartialEq)]
enum Seen {
    Frame(Vec<u8>),
    End,
    Truncated,
    TooLarge,
    Malformed,
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let max = match limit % 3 {
        0 => 16,
        1 => 1024,
        _ => ferry_protocol::DEFAULT_MAX_FRAME,
    };
    let (whole, largest) = largest_allocation(|| by_decode_frame(stream, max));
    assert!(
        largest <= allocation_bound(data.len()),
        "decode_frame allocated {largest} bytes at once for {} bytes of input",
        data.len()
    );
    let (read, largest) = largest_allocation(|| by_reader(stream, max, *seed));
    assert!(
        largest <= allocation_bound(data.len()),
        "FrameReader allocated {largest} bytes at once for {} bytes of input",
        data.len()
    );
    assert_eq!(whole, read, "decode_frame and FrameReader disagree");
});

fn by_decode_frame(mut stream: &[u8], max: u32) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        match decode_frame(stream, max) {
            Ok(Some((message, used))) => {
                assert!(
                    used > 0 && used <= stream.len(),
                    "used {used} of {}",
                    stream.len()
                );
                seen.push(Seen::Frame(
                    codec::encode(&message).expect("a decoded message encodes"),
                ));
                stream = &stream[used..];
            }
            Ok(None) if stream.is_empty() => {
                seen.push(Seen::End);
                return seen;
            }
            Ok(None) => {
                seen.push(Seen::Truncated);
                return seen;
            }
            Err(e) => {
                seen.push(classify(e));
                return seen;
            }
        }
    }
}

fn by_reader(stream: &[u8], max: u32, seed: u8) -> Vec<Seen> {
    let mut reader = FrameReader::new(Chunked::new(stream, seed), max);
    let mut seen = Vec::new();
    loop {
        match block_on(reader.next()) {
            Ok(Some(message)) => seen.push(Seen::Frame(
                codec::encode(&message).expect("a decoded message encodes"),
            )),
            Ok(None) => {
                seen.push(Seen::End);
                return seen;
            }
            Err(e) => {
                seen.push(classify(e));
                return seen;
            }
        }
    }
}

fn classify(error: FrameError) -> Seen {
    match error {
        FrameError::Truncated { .. } => Seen::Truncated,
        FrameError::TooLarge { .. } => Seen::TooLarge,
        FrameError::Codec(_) => Seen::Malformed,
        FrameError::Io(e) => panic!("an in-memory stream failed: {e}"),
        FrameError::Stalled { .. } => panic!("stalled, though the reader has no stall limit"),
    }
}

/// A stream that hands out its bytes in chunks of pseudo-random sizes (1 to 64 bytes, or
/// everything left), as a network would.
struct Chunked<'a> {
    rest: &'a [u8],
    state: u32,
}

impl<'a> Chunked<'a> {
    fn new(rest: &'a [u8], seed: u8) -> Self {
        Chunked {
            rest,
            state: u32::from(seed) | 0x100,
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // xorshift: cheap, and the same seed cuts the stream the same way every run.
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        let chunk = match x % 8 {
            0 => usize::MAX,
            _ => 1 + (x >> 3) as usize % 64,
        };
        let n = chunk.min(self.rest.len()).min(buf.remaining());
        buf.put_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Poll::Ready(Ok(()))
    }
}
