//! The connection to the shared cache's Redis: TCP (or TLS with rustls) opened by us and
//! handed to redis-rs, which does the protocol (RESP, `AUTH`, `SELECT`), through
//! [`Bounded`], which caps what one reply may make the proxy read.
//!
//! redis-rs reads a reply whole before it hands it over, however large: a Redis (or whoever
//! answers in its place) that sends hundreds of MiB for a `GETRANGE` would make the proxy
//! hold them. So the stream under redis-rs carries an [`Allowance`], set before each command
//! by [`crate::token::shared`]: a read past it is refused (the connection fails, and is
//! counted), and a read is never offered more buffer than is left, so what redis-rs can
//! buffer is bounded by the allowance, not by what arrives. The refresher runs one command
//! at a time, so an allowance per command is an allowance per reply.
//!
//! Deadlines are the caller's (every command is under 500 ms); this file only connects.

use redis::aio::MultiplexedConnection;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the connection may still read before the next command resets it.
#[derive(Debug, Default)]
pub struct Allowance {
    left: AtomicUsize,
    exceeded: AtomicBool,
}

impl Allowance {
    /// Allows `bytes` more (for the next command's reply), forgetting what was left.
    pub fn reset(&self, bytes: usize) {
        self.left.store(bytes, Ordering::Release);
        self.exceeded.store(false, Ordering::Release);
    }

    /// Whether the last failure was a reply over the allowance.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Acquire)
    }
}

/// A stream that reads at most what its [`Allowance`] has left.
#[derive(Debug)]
pub struct Bounded<S> {
    io: S,
    allowance: Arc<Allowance>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let left = self.allowance.left.load(Ordering::Acquire);
        if left == 0 {
            self.allowance.exceeded.store(true, Ordering::Release);
            return Poll::Ready(Err(io::Error::other("Redis sent more than one reply may hold")));
        }
        // Offer no more room than is left: what redis-rs buffers stays within the allowance.
        // (Initialising that room costs a memset of a few KiB, a few times per refresh.)
        let room = buf.remaining().min(left);
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        self.allowance.left.fetch_sub(n, Ordering::AcqRel);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How to reach Redis: where, with TLS or not, and as whom.
pub struct Target {
    host: String,
    port: u16,
    /// `rediss://`: the TLS connector and the name the certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    settings: redis::RedisConnectionInfo,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The settings hold the password.
        f.debug_struct("Target").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Target {
    /// From a `redis://` or `rediss://` URL (checked by the configuration), trusting `roots`
    /// for TLS, or the web PKI when there are none.
    pub fn new(url: &str, roots: &[CertificateDer<'static>]) -> Result<Self, String> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| format!("not a Redis URL the client can use ({:?})", e.kind()))?;
        let settings = info.redis_settings().clone();
        match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Ok(Self { host: host.clone(), port: *port, tls: None, settings }),
            redis::ConnectionAddr::TcpTls { host, port, insecure: false, .. } => {
                let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host} is not a TLS name: {e}"))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(roots)?));
                Ok(Self { host: host.clone(), port: *port, tls: Some((connector, name)), settings })
            }
            _ => Err("only redis:// and rediss:// URLs with certificate checks are supported".into()),
        }
    }

    /// The password the URL carries, to scrub from error messages.
    pub fn password(&self) -> Option<&str> {
        self.settings.password()
    }

    /// Connects, and sets up the connection (`AUTH`, `SELECT`) through `allowance`. The
    /// returned task drives the connection; it ends when the connection is dropped.
    pub async fn connect(
        &self,
        config: redis::AsyncConnectionConfig,
        allowance: &Arc<Allowance>,
    ) -> Result<(MultiplexedConnection, tokio::task::JoinHandle<()>), redis::RedisError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.set_up(tcp, config, allowance).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                self.set_up(tls, config, allowance).await
            }
        }
    }

    async fn set_up<S>(
        &self,
        io: S,
        config: redis::AsyncConnectionConfig,
        allowance: &Arc<Allowance>,
    ) -> Result<(MultiplexedConnection, tokio::task::JoinHandle<()>), redis::RedisError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let stream = Bounded { io, allowance: allowance.clone() };
        let (connection, driver) = MultiplexedConnection::new_with_config(&self.settings, stream, config).await?;
        Ok((connection, tokio::spawn(driver)))
    }
}

/// rustls with `roots` (a private CA), or the web PKI roots when there are none.
fn tls_config(roots: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    let mut store = rustls::RootCertStore::empty();
    if roots.is_empty() {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in roots {
        store.add(cert.clone()).map_err(|e| format!("token.shared_cache_ca_file: {e}"))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_reply_is_read_only_up_to_the_allowance() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let allowance = Arc::new(Allowance::default());
        let mut bounded = Bounded { io: near, allowance: allowance.clone() };
        far.write_all(&vec![b'x'; 100_000]).await.unwrap();
        allowance.reset(1000);
        let mut buf = vec![0u8; 64 << 10];
        let mut read = 0;
        let error = loop {
            match bounded.read(&mut buf).await {
                Ok(n) => read += n,
                Err(e) => break e,
            }
        };
        assert_eq!(read, 1000, "never more than the allowance, even with room in the buffer");
        assert!(allowance.exceeded());
        assert!(error.to_string().contains("more than one reply"), "{error}");
        // The next command gets a new allowance.
        allowance.reset(10);
        assert_eq!(bounded.read(&mut buf).await.unwrap(), 10);
        assert!(!allowance.exceeded());
    }
}
