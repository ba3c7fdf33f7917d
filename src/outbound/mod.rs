//! The one outbound HTTP stack: token requests and forwarded requests alike go through it,
//! to as many hosts as they name, over HTTP/1.1 or HTTP/2 (with trailers) as ALPN decides.
//!
//! - [`Outbound`]: the hosts' pools, by scheme and authority, made on first use and kept
//!   (the hosts are the configuration's: the token endpoint, the API, later each index's).
//! - `pool`: one host's connections (the cap, the idle handling, the retries), and why it
//!   is a pool of our own (measured against hyper-util's).
//! - `bodies`: the response bodies that give connections back.
//!
//! Trust is the built-in web PKI roots plus `upstream.ca_file`. Plain `http://` is reachable
//! only because configuration allows it for loopback hosts alone, and `localhost` must
//! resolve to loopback addresses at each connect ([`crate::net::check_resolved`]): a token
//! request carries the client secret, a forwarded one the token.

mod bodies;
mod pool;

pub(crate) use pool::Pool;

use crate::body::Body;
use crate::config::UpstreamConfig;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long an idle HTTP/1.1 connection is kept: shorter than the 120 s or so after which
/// cloud load balancers drop idle connections, so we close first and never write a request
/// into a connection that is about to die.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most idle HTTP/1.1 connections kept once a burst is over: a bound on the sockets a
/// burst leaves behind. Connections beyond it are closed after [`EXCESS_IDLE`], not at
/// once: under steady load every connection is idle for microseconds between requests, and
/// closing the ones over the cap would open a new connection for nearly every request
/// (measured at 64 connections: 265,000 new connections in 40 s; BENCHMARKS.md).
pub(crate) const MAX_IDLE: usize = 32;
/// How long a connection beyond [`MAX_IDLE`] may stay idle. Not less: with 64 client
/// connections the requests actually in flight swing well below the pool's size, and a
/// 1 s grace still closed and reopened 156 connections in 40 s (BENCHMARKS.md).
pub(crate) const EXCESS_IDLE: Duration = Duration::from_secs(10);

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No response headers within the timeout.
    Timeout,
    /// Not sent, or the connection failed: one line for the client.
    Unreachable(String),
}

/// What every host's pool shares.
#[derive(Clone)]
pub(crate) struct Settings {
    /// rustls, with ALPN offering HTTP/2 and HTTP/1.1.
    pub(crate) tls: tokio_rustls::TlsConnector,
    pub(crate) connect_timeout: Duration,
    /// Connections to one host, busy and idle together (`upstream.max_connections`).
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
    pub(crate) excess_idle: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("connect_timeout", &self.connect_timeout)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle", &self.max_idle)
            .field("excess_idle", &self.excess_idle)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The settings of `[upstream]`, with the idle limits above.
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Self, rustls::Error> {
        let mut tls = tls_config(cfg)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            connect_timeout: cfg.connect_timeout,
            max_connections: cfg.max_connections,
            idle_timeout: IDLE_TIMEOUT,
            max_idle: MAX_IDLE,
            excess_idle: EXCESS_IDLE,
        })
    }
}

/// The stack: one [`Pool`] per host. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    settings: Arc<Settings>,
    pools: Arc<Mutex<HashMap<(Scheme, Authority), Pool>>>,
}

impl Outbound {
    pub(crate) fn new(settings: Settings) -> Self {
        Self { settings: Arc::new(settings), pools: Arc::default() }
    }

    /// The pool of a host, made on first use. The request path holds its pool and never
    /// comes here; token requests do, a few times an hour.
    pub(crate) fn pool(&self, scheme: &Scheme, authority: &Authority) -> Result<Pool, rustls::Error> {
        let mut pools = self.pools.lock();
        if let Some(pool) = pools.get(&(scheme.clone(), authority.clone())) {
            return Ok(pool.clone());
        }
        let pool = Pool::new(scheme, authority, &self.settings, false)?;
        pools.insert((scheme.clone(), authority.clone()), pool.clone());
        Ok(pool)
    }

    /// The pool of an index host's data plane: HTTP/2 by ALPN over TLS, and HTTP/2 with
    /// prior knowledge (h2c) over plain TCP (a loopback fake), since gRPC needs HTTP/2. Not
    /// shared with [`Outbound::pool`]'s.
    pub(crate) fn data_pool(&self, scheme: &Scheme, authority: &Authority) -> Result<Pool, rustls::Error> {
        Pool::new(scheme, authority, &self.settings, true)
    }

    /// Sends a request to the host its absolute URI names, and returns the response
    /// headers within `timeout`; the body streams from the connection.
    pub(crate) async fn send(&self, request: Request<Body>, timeout: Duration) -> Result<Response<Body>, SendError> {
        let uri = request.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::Unreachable(format!("{uri} is not an absolute URL")));
        };
        let pool = self.pool(scheme, authority).map_err(|e| SendError::Unreachable(e.to_string()))?;
        pool.send(request, timeout, false).await
    }
}

/// How many of `max` connections requests with streaming bodies may hold at once: all but
/// a quarter (at least one), so that slow uploads never take the last connections.
pub(crate) fn streaming_share(max: usize) -> usize {
    if max <= 1 { max } else { max - (max / 4).max(1) }
}

/// The rustls configuration: the web PKI roots plus `upstream.ca_file`.
fn tls_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &cfg.extra_roots {
        roots.add(cert.clone())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The error and its causes in one line ("client error (Connect): tcp connect error:
/// Connection refused"), for logs and error bodies. hyper's errors carry no request data.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
