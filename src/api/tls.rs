//! TLS with rustls: TLS 1.2 minimum (1.3 preferred, or required with `min_version = "1.3"`),
//! ALPN `h2` and `http/1.1`. The handshake runs lazily on the connection's own task, so a
//! slow or hostile client never blocks the accept loop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// Builds the rustls server configuration from the PEM files named in `[server.tls]`.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.as_str() {
        "1.3" => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| format!("reading certificate {}", tls.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("reading private key {}", tls.key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Wraps a plain acceptor (TCP) into a TLS one.
pub struct TlsAcceptor<A> {
    inner: A,
    tls: tokio_rustls::TlsAcceptor,
}

impl<A> TlsAcceptor<A> {
    pub fn new(inner: A, config: Arc<ServerConfig>) -> Self {
        Self {
            inner,
            tls: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

impl<A: Acceptor> Acceptor for TlsAcceptor<A> {
    type Io = LazyTls<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, _) = self.inner.accept().await?;
        let handshake = self.tls.accept(io);
        Ok((
            LazyTls::Handshaking(Box::pin(handshake)),
            local,
            remote,
            Scheme::HTTPS,
        ))
    }
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

/// A TLS stream whose handshake completes on first use.
pub enum LazyTls<S> {
    Handshaking(Handshake<S>),
    Ready(Box<TlsStream<S>>),
}

impl<S> LazyTls<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut TlsStream<S>>> {
        if let LazyTls::Handshaking(fut) = self {
            match fut.as_mut().poll(cx) {
                Poll::Ready(Ok(stream)) => *self = LazyTls::Ready(Box::new(stream)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        match self {
            LazyTls::Ready(stream) => Poll::Ready(Ok(stream)),
            LazyTls::Handshaking(_) => unreachable!("handshake finished above"),
        }
    }
}

impl<S> AsyncRead for LazyTls<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().poll_ready(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_read(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> AsyncWrite for LazyTls<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().poll_ready(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_ready(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().poll_ready(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_shutdown(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}
