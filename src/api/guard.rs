//! Connection guard: bounds what a client may make the server hold before a request exists.
//!
//! poem serves connections with hyper's defaults and no timer, so a client that sends half
//! a request line keeps its connection for as long as it likes (slowloris), and hyper
//! answers a header flood with a bare `431` that is not our error body. The guard sits on
//! each connection's decrypted bytes (below hyper, above TLS) and watches HTTP/1 request
//! heads:
//!
//! - a head must be complete (`\r\n\r\n`) within `[server] header_timeout_secs` of its first
//!   byte (of the accept, for a connection's first request); else a `408` error body if some
//!   of it came, and the connection is closed;
//! - a head larger than `max_header_bytes` or with more than `max_headers` header lines gets
//!   a `431` error body and the connection is closed;
//! - a connection whose last I/O was the server writing (a response) and that stays silent
//!   for `idle_timeout_secs` is closed (keep-alive idle). A request being processed (the
//!   last I/O was reading it) is never timed out here; SSE streams write keep-alives.
//!
//! HTTP/2 connections (the client preface) pass through untouched: h2 frames its own
//! limits. Request bodies are bounded in time by [`super::middleware::limit_body`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use poem_openapi::types::ToJSON;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// `[server]` limits on connections.
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

pub struct GuardedAcceptor<A> {
    inner: A,
    limits: GuardLimits,
}

impl<A> GuardedAcceptor<A> {
    pub fn new(inner: A, limits: GuardLimits) -> Self {
        Self { inner, limits }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let limits = self.limits;
        let io = GuardedIo {
            io,
            limits,
            phase: Phase::Head(Head::new()),
            timer: Box::pin(tokio::time::sleep(limits.header_timeout)),
            first: true,
            expect_continue: false,
            last_write: Instant::now(),
            reply: None,
        };
        Ok((io, local, remote, scheme))
    }
}

/// Scanning a request head.
#[derive(Debug)]
struct Head {
    bytes: usize,
    lines: usize,
    /// The last bytes seen, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    /// The header line being read, lower-cased, up to 32 bytes (to spot `expect:`).
    line: Vec<u8>,
    expect_continue: bool,
}

impl Head {
    fn new() -> Self {
        Self {
            bytes: 0,
            lines: 0,
            tail: [0; 3],
            line: Vec::new(),
            expect_continue: false,
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Waiting for (the rest of) a head; the timer runs.
    Head(Head),
    /// A request is in: reading its body or processing it. No timer.
    Request,
    /// The server wrote last; the idle timer runs until the client sends again.
    Idle,
    /// HTTP/2 or a finished rejection: bytes pass through.
    Pass,
    /// Timed out before a request began: reads end of input from now on.
    Closed,
}

enum Scan {
    More,
    /// The head ended after this many bytes of the buffer.
    Done,
    TooLarge,
}

pub struct GuardedIo<IO> {
    io: IO,
    limits: GuardLimits,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    first: bool,
    expect_continue: bool,
    /// The server's last write while [`Phase::Idle`]: the idle timer is moved to it only
    /// when it fires, not on every write.
    last_write: Instant,
    /// Our error response being written before the connection closes.
    reply: Option<(Vec<u8>, usize)>,
}

fn canned(error: ApiError, status_line: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&error.body().to_json()).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

fn too_large(limits: &GuardLimits) -> Vec<u8> {
    let e = ApiError::new(
        poem::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!(
            "request head too large: at most {} bytes and {} header lines",
            limits.max_header_bytes, limits.max_headers
        ),
    );
    canned(e, "431 Request Header Fields Too Large")
}

fn timed_out(limits: &GuardLimits) -> Vec<u8> {
    let e = ApiError::new(
        poem::http::StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request head did not arrive within {} s",
            limits.header_timeout.as_secs()
        ),
    );
    canned(e, "408 Request Timeout")
}

impl<IO> GuardedIo<IO> {
    fn scan(&mut self, data: &[u8]) -> Scan {
        let limits = self.limits;
        let Phase::Head(head) = &mut self.phase else {
            return Scan::More;
        };
        for &b in data {
            head.bytes += 1;
            let done = head.tail == *b"\r\n\r" && b == b'\n';
            head.tail = [head.tail[1], head.tail[2], b];
            if b == b'\n' {
                head.lines += 1;
                if head.line.starts_with(b"expect:") && head.line.ends_with(b"100-continue\r") {
                    head.expect_continue = true;
                }
                head.line.clear();
            } else if head.line.len() < 32 {
                head.line.push(b.to_ascii_lowercase());
            }
            if done {
                return Scan::Done;
            }
            // The request line is not a header line; the empty line ends the head.
            if head.bytes > limits.max_header_bytes || head.lines > limits.max_headers + 1 {
                return Scan::TooLarge;
            }
        }
        Scan::More
    }

    fn reject(&mut self, reply: Vec<u8>) {
        self.reply = Some((reply, 0));
        self.phase = Phase::Pass;
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> GuardedIo<IO> {
    /// Writes our error response; then the connection reads as closed.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((data, written)) = &mut self.reply {
            if *written == data.len() {
                let _ = Pin::new(&mut self.io).poll_flush(cx);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &data[*written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.reply.is_some() {
            // Rejected: send our answer, then end of input (hyper closes quietly).
            return this.poll_reply(cx);
        }
        if matches!(this.phase, Phase::Closed) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => {
                let timed = matches!(this.phase, Phase::Head(_) | Phase::Idle);
                if timed && this.timer.as_mut().poll(cx).is_ready() {
                    if matches!(this.phase, Phase::Idle) {
                        let deadline = this.last_write + this.limits.idle_timeout;
                        if deadline > Instant::now() {
                            // The server wrote since the timer was set: wait from there.
                            this.timer.as_mut().reset(deadline);
                            let _ = this.timer.as_mut().poll(cx);
                            return Poll::Pending;
                        }
                    }
                    let started = matches!(&this.phase, Phase::Head(h) if h.bytes > 0);
                    if started {
                        let reply = timed_out(&this.limits);
                        this.reject(reply);
                        return this.poll_reply(cx);
                    }
                    // Nothing of a request came: close without a word.
                    this.phase = Phase::Closed;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
            other => return other,
        }
        if buf.filled().len() == before || matches!(this.phase, Phase::Request | Phase::Pass) {
            return Poll::Ready(Ok(()));
        }
        let read = &buf.filled()[before..];
        if matches!(this.phase, Phase::Idle) {
            // A new request begins: its head has header_timeout from now.
            this.phase = Phase::Head(Head::new());
            let deadline = Instant::now() + this.limits.header_timeout;
            this.timer.as_mut().reset(deadline);
        }
        if this.first && matches!(&this.phase, Phase::Head(h) if h.bytes == 0) {
            this.first = false;
            if read.starts_with(b"PRI * HTTP/2.0") {
                this.phase = Phase::Pass;
                return Poll::Ready(Ok(()));
            }
        }
        match this.scan(read) {
            Scan::More => {}
            Scan::Done => {
                if let Phase::Head(h) = &this.phase {
                    this.expect_continue = h.expect_continue;
                }
                this.phase = Phase::Request;
            }
            Scan::TooLarge => {
                // hyper must not see this head: hand it nothing, answer ourselves.
                buf.set_filled(before);
                let reply = too_large(&this.limits);
                this.reject(reply);
                return this.poll_reply(cx);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.phase {
            Phase::Request if this.expect_continue && data.starts_with(b"HTTP/1.1 100") => {
                // The body follows the interim response: still the same request.
                this.expect_continue = false;
            }
            Phase::Request => {
                this.phase = Phase::Idle;
                this.last_write = Instant::now();
                this.timer
                    .as_mut()
                    .reset(this.last_write + this.limits.idle_timeout);
            }
            Phase::Idle => this.last_write = Instant::now(),
            _ => {}
        }
        Pin::new(&mut this.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> GuardedIo<()> {
        GuardedIo {
            io: (),
            limits: GuardLimits {
                header_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
                max_header_bytes: 200,
                max_headers: 3,
            },
            phase: Phase::Head(Head::new()),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            first: true,
            expect_continue: false,
            last_write: Instant::now(),
            reply: None,
        }
    }

    #[tokio::test]
    async fn heads_end_at_the_blank_line_across_reads() {
        let mut g = io();
        assert!(matches!(g.scan(b"GET / HTTP/1.1\r\nHost: a\r"), Scan::More));
        assert!(matches!(g.scan(b"\n\r"), Scan::More));
        assert!(matches!(g.scan(b"\n"), Scan::Done));
    }

    #[tokio::test]
    async fn too_many_lines_or_bytes_are_refused() {
        let mut g = io();
        let four = b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\n\r\n";
        assert!(matches!(g.scan(four), Scan::TooLarge));
        let mut g = io();
        let three = b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\n\r\n";
        assert!(matches!(g.scan(three), Scan::Done));
        let mut g = io();
        assert!(matches!(g.scan(&[b'x'; 201]), Scan::TooLarge));
    }

    #[tokio::test]
    async fn expect_continue_is_noticed() {
        let mut g = io();
        g.scan(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        let Phase::Head(h) = &g.phase else { panic!() };
        assert!(h.expect_continue);
    }
}
