//! A plugin's stdout and stderr, turned into log lines of its command.
//!
//! Plugins should log through `context.log`, but panics, `println!` debugging and libraries
//! write to stdio, and those lines are often what explains a crash. Each line goes to the
//! command's events as it completes; the total is bounded so a plugin that prints in a loop
//! cannot flood the connection, and what is cut is counted and reported once at the end.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::{CommandEvents, LogLevel};

/// A line longer than this is forwarded in pieces.
const MAX_LINE: usize = 4096;
/// How many of the last stderr lines are kept to explain a crash.
const TAIL_LINES: usize = 4;
/// How much the guest may write in one go; WASI streams conventionally offer about this much.
const WRITE_PERMIT: usize = 64 * 1024;

/// One captured stream (stdout or stderr) of one invocation. Cheap to clone: the guest may
/// open the stream several times, and every handle writes to the same capture.
#[derive(Clone)]
pub(crate) struct Captured {
    inner: Arc<Mutex<Capture>>,
}

struct Capture {
    stream: &'static str,
    level: LogLevel,
    events: Arc<dyn CommandEvents>,
    /// Bytes this capture may still forward.
    budget: usize,
    /// Bytes the guest wrote past the budget.
    dropped: u64,
    /// The current, unfinished line.
    line: Vec<u8>,
    /// The last few complete lines.
    tail: VecDeque<String>,
}

impl Captured {
    /// A capture that forwards lines of `stream` ("stdout", "stderr") at `level`, up to `limit`
    /// bytes in all.
    pub(crate) fn new(
        stream: &'static str,
        level: LogLevel,
        events: Arc<dyn CommandEvents>,
        limit: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Capture {
                stream,
                level,
                events,
                budget: limit,
                dropped: 0,
                line: Vec::new(),
                tail: VecDeque::new(),
            })),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let (events, level, lines) = {
            let mut c = self.inner.lock();
            let take = bytes.len().min(c.budget);
            c.budget -= take;
            c.dropped += (bytes.len() - take) as u64;
            let mut lines = Vec::new();
            for &b in &bytes[..take] {
                if b == b'\n' {
                    lines.push(c.take_line());
                } else {
                    c.line.push(b);
                    if c.line.len() >= MAX_LINE {
                        lines.push(c.take_line());
                    }
                }
            }
            (c.events.clone(), c.level, lines)
        };
        // Outside the lock: the events sink is someone else's code.
        for line in lines {
            events.log(level, line);
        }
    }

    /// Forwards the unfinished last line and reports what was dropped; called once the
    /// invocation is over, however it ended.
    pub(crate) fn finish(&self) {
        let (events, level, last, note) = {
            let mut c = self.inner.lock();
            let last = (!c.line.is_empty()).then(|| c.take_line());
            let note = (c.dropped > 0).then(|| {
                format!(
                    "{} more bytes the plugin wrote to {} were dropped: the agent forwards only so much of a \
                     plugin's output; plugins should log with context.log",
                    c.dropped, c.stream
                )
            });
            c.dropped = 0;
            (c.events.clone(), c.level, last, note)
        };
        if let Some(last) = last {
            events.log(level, last);
        }
        if let Some(note) = note {
            events.log(LogLevel::Warn, note);
        }
    }

    /// The last few non-empty lines, oldest first.
    pub(crate) fn tail(&self) -> Vec<String> {
        let c = self.inner.lock();
        let mut tail: Vec<String> = c.tail.iter().cloned().collect();
        if !c.line.is_empty() {
            tail.push(String::from_utf8_lossy(&c.line).into_owned());
        }
        tail
    }
}

impl Capture {
    fn take_line(&mut self) -> String {
        let mut line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if line.ends_with('\r') {
            line.pop();
        }
        if !line.trim().is_empty() {
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(line.clone());
        }
        line
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

// Writes never fail and never block: past the budget, bytes are counted and dropped, so that
// a chatty plugin is not crashed by its own logging.
impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        Captured::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
