//! The outbound HTTP client of the token requests: hyper-util's pooled client over rustls
//! (forwarded requests use the one-upstream [`crate::upstream`] pool), and the TLS
//! configuration both share.
//!
//! Trust is the built-in web PKI roots plus `upstream.ca_file`. HTTP/1.1 and HTTP/2 are
//! offered by ALPN; plain `http://` is reachable only because configuration allows it for
//! loopback hosts alone, and `localhost` must resolve to loopback addresses at each connect.

use crate::body::Body;
use crate::config::UpstreamConfig;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector<LoopbackChecked>>, Body>;

/// hyper-util's resolver, with `localhost` held to loopback addresses
/// ([`crate::net::check_resolved`]): the token request carries the client secret.
#[derive(Debug, Clone)]
pub(crate) struct LoopbackChecked(GaiResolver);

impl tower::Service<Name> for LoopbackChecked {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolving = self.0.call(name.clone());
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving.await?.collect();
            crate::net::check_resolved(name.as_str(), &addrs).map_err(std::io::Error::other)?;
            Ok(addrs.into_iter())
        })
    }
}

/// How long an idle upstream connection is kept. Shorter than the 120 s or so after which
/// cloud load balancers drop idle connections, so we close first and never write a request
/// into a dead socket.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Builds the client. Fails only if the TLS configuration cannot be built.
pub(crate) fn build(cfg: &UpstreamConfig) -> Result<HttpClient, rustls::Error> {
    let tls = tls_config(cfg)?;

    let mut http = HttpConnector::new_with_resolver(LoopbackChecked(GaiResolver::new()));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

/// The rustls configuration: the web PKI roots plus `upstream.ca_file`, no ALPN (each
/// connector sets its own).
pub(crate) fn tls_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, rustls::Error> {
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
