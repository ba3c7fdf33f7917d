//! pinecone-admin-proxy: a local HTTP proxy that holds a Pinecone service account's client
//! credentials, keeps a valid Admin API access token, and forwards plain-HTTP requests to
//! the Pinecone Admin API with `Authorization` and `X-Pinecone-Api-Version` added.
//!
//! The crate map:
//!
//! - [`config`]: defaults, file, environment and flags into a validated [`config::Config`].
//! - [`credentials`]: where the client id and secret come from; noticing that they changed.
//! - [`secret`]: values that are never printed, and their fingerprints.
//! - [`token`]: what a token is, how one is fetched, when the next one is fetched, and the
//!   engine that hands usable tokens to requests.
//! - [`body`]: the body type every request and response shares.
//! - [`client`]: the rustls HTTP client of the token requests, and the TLS trust both clients use.
//! - [`upstream`]: the forwarding client: a pool of hyper HTTP/1.1 and HTTP/2 connections to the upstream.
//! - [`proxy`]: forwarding: the request rewrite, header policy, streaming, proxy errors.
//! - [`policy`]: the Admin API's route table (from its OpenAPI specifications) and the
//!   `[policy]` that narrows what the proxy forwards.
//! - [`replay`]: request bodies kept in memory for one replay after an upstream 401.
//! - [`ops`]: health, readiness, startup, metrics, status and quit endpoints.
//! - [`metrics`]: the one `Metrics` struct that owns the Prometheus registry.
//! - [`net`]: addresses (`Listen`) and the loopback rules, one of each.
//! - [`serve`]: listeners (TCP, Unix), the accept loop, graceful shutdown.
//! - [`shutdown`]: the one-way switch that tells tasks to stop (re-exported as `serve::Trigger`).
//! - [`limits`]: what one inbound connection may take in time, and the lines and counts when a limit bites.
//! - [`admission`]: who gets a connection on a crowded ops listener (per-peer caps, the
//!   longest idle evicted).
//! - [`app`]: wiring it all together; `start` and `run`.
//! - [`wait`]: the `wait` command: poll a running proxy's `/readyz`.
//! - [`fake`]: the fake Pinecone (token endpoint and in-memory Admin API) for `demo`,
//!   `fake-pinecone` and the tests.
//! - [`logging`]: the text and JSON log output (tracing-subscriber's).

pub(crate) mod admission;
pub mod app;
pub mod body;
pub(crate) mod client;
pub mod config;
pub mod credentials;
pub mod fake;
pub(crate) mod limits;
pub mod logging;
pub mod metrics;
pub(crate) mod net;
pub(crate) mod ops;
pub mod policy;
pub(crate) mod proxy;
pub(crate) mod replay;
pub mod secret;
pub mod serve;
pub(crate) mod shutdown;
pub mod token;
pub(crate) mod upstream;
pub mod wait;

/// The crate version, sent as `User-Agent` and shown in `/status` and `build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
