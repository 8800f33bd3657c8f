//! Noticing that a client went away while its request is still running.
//!
//! HTTP/1 servers only read a connection again after the response is written, so a client
//! that disconnects mid-request goes unnoticed and its generation would run to the end.
//! The acceptor keeps a second handle on each TCP socket; [`PeerWatch::closed`] watches its
//! readiness (never reading a byte) and resolves when the peer has closed the connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Open connections by peer address.
#[derive(Clone, Default)]
pub struct Connections(Arc<Mutex<HashMap<SocketAddr, Weak<PeerWatch>>>>);

impl Connections {
    /// The watch for the connection a request came in on, if it is a TCP connection.
    pub fn watch(&self, peer: &RemoteAddr) -> Option<Arc<PeerWatch>> {
        let addr = peer.as_socket_addr()?;
        self.0
            .lock()
            .expect("connections lock")
            .get(addr)?
            .upgrade()
    }
}

pub struct PeerWatch {
    probe: TcpStream,
}

impl PeerWatch {
    /// Resolves once the peer has closed its side (or the socket failed). Works under TLS
    /// too: the peer's FIN is seen even when unread bytes (a TLS close_notify, a pipelined
    /// request) wait in the socket buffer.
    pub async fn closed(&self) {
        loop {
            match self.probe.ready(Interest::READABLE).await {
                Ok(ready) if ready.is_read_closed() => return,
                Ok(_) => {
                    // Readable but open: bytes for the server. Look again later; the
                    // readiness stays set until the bytes are read, so poll gently.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => return,
            }
        }
    }
}

/// Wraps the TCP acceptor, registering a [`PeerWatch`] per connection.
pub struct WatchedAcceptor<A> {
    inner: A,
    connections: Connections,
}

impl<A> WatchedAcceptor<A> {
    pub fn new(inner: A, connections: Connections) -> Self {
        Self { inner, connections }
    }
}

impl<A: Acceptor<Io = TcpStream>> Acceptor for WatchedAcceptor<A> {
    type Io = WatchedIo;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (stream, local, remote, scheme) = self.inner.accept().await?;
        let watch = remote.as_socket_addr().copied().and_then(|addr| {
            let fd = stream.as_fd().try_clone_to_owned().ok()?;
            let std_stream = std::net::TcpStream::from(fd);
            std_stream.set_nonblocking(true).ok()?;
            let probe = TcpStream::from_std(std_stream).ok()?;
            let watch = Arc::new(PeerWatch { probe });
            self.connections
                .0
                .lock()
                .expect("connections lock")
                .insert(addr, Arc::downgrade(&watch));
            Some((addr, watch))
        });
        let io = WatchedIo {
            stream,
            watch,
            connections: self.connections.clone(),
        };
        Ok((io, local, remote, scheme))
    }
}

/// The connection's stream; unregisters its watch when the connection ends.
pub struct WatchedIo {
    stream: TcpStream,
    watch: Option<(SocketAddr, Arc<PeerWatch>)>,
    connections: Connections,
}

impl Drop for WatchedIo {
    fn drop(&mut self) {
        if let Some((addr, watch)) = self.watch.take() {
            let mut map = self.connections.0.lock().expect("connections lock");
            if map
                .get(&addr)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&watch)))
            {
                map.remove(&addr);
            }
        }
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
