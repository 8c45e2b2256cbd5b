//! Fetch streams: an agent opens one per package it needs, sends `Fetch { digest }`, and gets
//! `FetchReply { size }` followed by the package in `PackageChunk`s.
//!
//! The server sends what it stored, as stored; it does not vouch for the bytes on the way. The
//! agent checks the digest and the signature before it keeps any of them, so a package changed
//! on this server's disk is caught there (and reported back in a `PluginReport`).
//!
//! The package goes out in 256 KiB chunks. A stream whose first frame is not one `Fetch` within the
//! handshake timeout (garbage, a message of another role, an oversized length, silence) closes the
//! agent's connection with `PROTOCOL_ERROR`, since an agent could otherwise hold its stream slots
//! with idle streams.

use std::sync::Arc;

use ferry_protocol::{AgentId, Fetch, FetchReply, Message, PackageChunk, close, write_frame};
use tokio::io::AsyncReadExt;

use super::Shared;

/// Bytes per chunk: large enough that framing costs nothing, small enough to interleave with
/// other streams.
const CHUNK: usize = 256 * 1024;

/// Serves one fetch stream, whose `Fetch` the caller has read.
pub(crate) async fn serve(
    state: Arc<Shared>,
    agent: AgentId,
    mut send: quinn::SendStream,
    Fetch { digest }: Fetch,
) {
    let max_frame = state.config.max_frame_bytes;
    let reply = |size, error| Message::FetchReply(FetchReply { size, error });
    let opened = match state.plugins.package_path(&digest) {
        Some(path) => tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("the server cannot read package sha256:{digest}: {e}")),
        None => Err(format!(
            "this server has no package sha256:{digest}; it may have been pushed to another server"
        )),
    };
    let mut file = match opened {
        Ok(file) => file,
        Err(why) => {
            tracing::warn!(%agent, "fetch refused: {why}");
            let _ = write_frame(&mut send, &reply(None, Some(why)), max_frame).await;
            let _ = send.finish();
            return;
        }
    };
    let size = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(e) => {
            let why = format!("the server cannot read package sha256:{digest}: {e}");
            let _ = write_frame(&mut send, &reply(None, Some(why)), max_frame).await;
            let _ = send.finish();
            return;
        }
    };
    if write_frame(&mut send, &reply(Some(size), None), max_frame)
        .await
        .is_err()
    {
        return;
    }
    let chunk = CHUNK.min((max_frame as usize).saturating_sub(64)).max(1);
    let mut buf = vec![0u8; chunk];
    let mut sent = 0u64;
    while sent < size {
        let n = match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%agent, %digest, error = %e, "reading a package failed mid-fetch");
                let _ = send.reset(close::PROTOCOL_ERROR.into());
                return;
            }
        };
        let bytes = buf[..n].to_vec();
        if write_frame(
            &mut send,
            &Message::PackageChunk(PackageChunk { bytes }),
            max_frame,
        )
        .await
        .is_err()
        {
            return;
        }
        sent += n as u64;
    }
    let _ = send.finish();
    tracing::debug!(%agent, %digest, size, "package sent");
}
