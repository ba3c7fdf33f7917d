//! Wiring: builds the outbound stack, token engine, proxy and ops services from a [`Config`],
//! binds both listeners, and runs the shutdown sequence.
//!
//! [`start`] binds and spawns everything and returns a [`Running`] handle (tests use it
//! with port 0); [`run`] is `start` plus waiting for the caller's shutdown future. The
//! library never listens for OS signals: `main` passes them in (STYLE.md habit 7).

use crate::api_key::admin::AdminKeys;
use crate::api_key::engine::{Keeper, KeyPlan};
use crate::api_key::fleet::KeyCache;
use crate::api_key::lease::Lease;
use crate::api_key::source::KeySource;
use crate::config::Config;
use crate::config::Limits;
use crate::credentials::Credentials;
use crate::index_listeners;
use crate::limits::HeadBudget;
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::outbound::{Outbound, Settings};
use crate::proxy::Proxy;
use crate::serve::{self, BoundAddr, ServeOptions, Trigger};
use crate::token::shared::SharedCache;
use crate::token::{HttpFetcher, Refresher, TokenSource};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often credential files are polled. Kubernetes updates secret volumes within its
/// sync period (about a minute); this adds at most two seconds (a change must read the
/// same twice) and keeps within the 5 s the rotation contract promises.
const CREDENTIAL_POLL: Duration = Duration::from_secs(1);

/// Why the proxy could not start (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}{}", bind_hint(key, source))]
    Bind { key: String, addr: String, source: std::io::Error },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    SharedCache(String),
}

/// What to do about a port that cannot be bound: a port in use is most often another
/// instance, which holds both of its ports.
fn bind_hint(key: &str, source: &std::io::Error) -> &'static str {
    match (source.kind(), key) {
        (std::io::ErrorKind::AddrInUse, "listen") => {
            "; another process listens there (another pinecone-admin-proxy?): choose another with --listen, and \
             another --ops-listen too, since each instance needs its own ops port"
        }
        (std::io::ErrorKind::AddrInUse, _) => {
            "; another process listens there (another pinecone-admin-proxy?): choose another with --ops-listen"
        }
        (std::io::ErrorKind::PermissionDenied, _) => "; ports below 1024 need privileges: choose a higher one",
        _ => "",
    }
}

/// A started proxy.
#[derive(Debug)]
pub struct Running {
    /// Where applications connect.
    pub listen: BoundAddr,
    /// Where the ops endpoints answer.
    pub ops: BoundAddr,
    /// Each index's listener (`[indexes]`): its name and address.
    pub indexes: Vec<(String, BoundAddr)>,
    pub tokens: TokenSource,
    /// The managed key, with `[api_key]`.
    pub keys: Option<KeySource>,
    pub metrics: Arc<Metrics>,
    pub credentials: Credentials,
    quit: Trigger,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts the shutdown sequence (what SIGTERM and `/quitquitquit` do).
    pub fn shutdown(&self) {
        self.quit.fire();
    }

    /// A trigger that starts the shutdown sequence when fired.
    pub fn quit_trigger(&self) -> Trigger {
        self.quit.clone()
    }

    /// Waits until the shutdown sequence has finished.
    pub async fn wait(self) {
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Connections on the ops listener: probes and scrapes, a few at a time; room enough that
/// eviction of the longest idle one rarely needs to happen.
const OPS_MAX_CONNECTIONS: usize = 256;
/// Connections on the ops listener from one IP address: a kubelet's probes and a
/// Prometheus's scrapes need a few; one peer may not take the room of the others.
const OPS_PER_PEER: usize = 16;
/// The ops listener's own time limits (at most these, shorter if `[limits]` says so): a
/// probe sends its request at once, so a connection that has sent nothing (or half a head)
/// after 2 s is not a probe, and one idle 10 s has no business left.
const OPS_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
const OPS_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept besides `listen`'s and the upstream pool's connections: the ops
/// listener's, token requests, credential files, logs, the runtime's own.
pub const RESERVED_FILES: u64 = OPS_MAX_CONNECTIONS as u64 + 32;

/// The connections each of `listeners` listeners may hold within `files` open files: what
/// is left after [`RESERVED_FILES`] and each listener's upstream pool (`listen`'s, and each
/// index's data pool), shared out evenly.
fn room_per_listener(files: u64, listeners: u64, upstream_connections: u64) -> u64 {
    let listeners = listeners.max(1);
    (files.saturating_sub(RESERVED_FILES + upstream_connections * listeners) / listeners).max(1)
}

/// Raises the soft limit of open files to the hard limit (as Go's runtime and systemd's
/// services do), and lowers `limits.max_connections` (per listener: `listen` and each
/// index's) to what the limit leaves room for, so that a full listener pauses accepting
/// before any accept, upstream connect or file open fails with EMFILE.
fn fit_to_open_files(mut limits: Limits, upstream_connections: usize, listeners: usize) -> Limits {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; limits.max_connections is not checked against it");
            return limits;
        }
    };
    let mut files = soft;
    if soft < hard {
        match rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard) {
            Ok(()) => files = hard,
            Err(e) => tracing::debug!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    let room = room_per_listener(files, listeners as u64, upstream_connections as u64);
    if limits.max_connections as u64 > room {
        tracing::warn!(
            max_connections = limits.max_connections,
            open_file_limit = files,
            accepting_at_most = room,
            "limits.max_connections is more than the open-file limit leaves room for; raise LimitNOFILE \
             (ulimit -n) or lower limits.max_connections",
        );
        limits.max_connections = room as usize;
    }
    limits
}

/// How `listen` and the index listeners serve: `[limits]`, with `max_connections` fitted to
/// the open-file limit (and shown in the `max_connections` gauge), and one `head_memory`
/// budget for all of them.
fn proxy_options(config: &Config, metrics: &Arc<Metrics>) -> ServeOptions {
    let listeners = 1 + config.indexes.len();
    let limits = fit_to_open_files(config.limits.clone(), config.upstream.max_connections, listeners);
    metrics.max_connections.set(i64::try_from(limits.max_connections).unwrap_or(i64::MAX));
    ServeOptions {
        metrics: Some(metrics.clone()),
        heads: Some(HeadBudget::new(limits.head_memory)),
        limits,
        ..ServeOptions::new(config.shutdown.grace)
    }
}

/// How the ops listener serves: its own connections (a client that fills `listen` never
/// blinds the probes), at most [`OPS_PER_PEER`] from one address, the longest idle one
/// closed when it is full, and short time limits ([`crate::admission`]).
fn ops_options(limits: &Limits) -> ServeOptions {
    let limits = Limits {
        max_connections: OPS_MAX_CONNECTIONS,
        first_byte_timeout: limits.first_byte_timeout.min(OPS_HEAD_TIMEOUT),
        header_read_timeout: limits.header_read_timeout.min(OPS_HEAD_TIMEOUT),
        idle_timeout: limits.idle_timeout.min(OPS_IDLE_TIMEOUT),
        ..limits.clone()
    };
    ServeOptions {
        grace: Duration::from_secs(1),
        limits,
        metrics: None,
        per_peer: Some(OPS_PER_PEER),
        evict_idle: true,
        heads: None,
    }
}

/// Binds the listeners and starts the token engine, the credential watcher and both
/// servers. The first token request goes out at once.
pub async fn start(config: &Config, credentials: Credentials) -> Result<Running, StartError> {
    let bind = |listen, key: &'static str| async move {
        serve::bind(listen, config.listen_mode).await.map_err(|source| StartError::Bind {
            key: key.to_owned(),
            addr: listen.to_string(),
            source,
        })
    };
    let proxy_listener = bind(&config.listen, "listen").await?;
    let ops_listener = bind(&config.ops_listen, "ops_listen").await?;
    let index_listeners =
        index_listeners::bind(config).await.map_err(|(key, addr, source)| StartError::Bind { key, addr, source })?;
    let listen = proxy_listener.local_addr().expect("a bound listener has an address");
    let ops_addr = ops_listener.local_addr().expect("a bound listener has an address");

    let metrics = Arc::new(Metrics::new());
    crate::limits::show_at_zero(&metrics);
    let outbound = Outbound::new(Settings::new(&config.upstream)?);
    let tokens = TokenSource::new(metrics.clone(), config.token.timeout);
    let refresher = refresher(config, &outbound, &tokens, &credentials, &metrics)?;
    let keeper = keeper(config, &outbound, &tokens, &credentials, &metrics)?;
    let keys = keeper.as_ref().map(|(keys, _)| keys.clone());
    let proxy = Proxy::new(
        outbound.pool(&config.upstream.scheme, &config.upstream.authority)?,
        tokens.clone(),
        metrics.clone(),
        &config.upstream,
        &config.limits,
        config.policy.clone(),
        keys.clone(),
    );
    let (stop_proxy, stop_ops) = (Trigger::default(), Trigger::default());
    let proxy_options = proxy_options(config, &metrics);
    let serving = (&proxy_options, &stop_proxy);
    let indexes = index_listeners::serve(index_listeners, &proxy, keys.as_ref(), &outbound, config, serving);
    let quit = Trigger::default();
    let sources = (tokens.clone(), keys.clone(), indexes.hosts.clone());
    let ops = Ops::new(sources, metrics.clone(), credentials.clone(), config.upstream.url.to_string(), quit.clone());

    let background = Trigger::default();
    let refresher_task = tokio::spawn(refresher.run(background.wait()));
    let watcher_task = tokio::spawn(credentials.clone().watch(CREDENTIAL_POLL, background.wait()));
    let stop_keeper = Trigger::default();
    let keeper_task = keeper.map(|(_, keeper)| tokio::spawn(keeper.run(stop_keeper.wait(), config.shutdown.grace)));

    let ops_options = ops_options(&proxy_options.limits);
    let proxy_task =
        tokio::spawn(serve::serve("proxy", proxy_listener, move |_| proxy.clone(), stop_proxy.wait(), proxy_options));
    let ops_task =
        tokio::spawn(serve::serve("ops", ops_listener, move |peer| ops.for_peer(peer), stop_ops.wait(), ops_options));

    announce(config, &listen, &ops_addr, &credentials);

    let sequence = Shutdown {
        delay: config.shutdown.delay,
        grace: config.shutdown.grace,
        stop_proxy,
        proxy: proxy_task,
        indexes: indexes.tasks,
        stop_keeper,
        keeper: keeper_task,
        stop_ops,
        background,
        rest: [ops_task, refresher_task, watcher_task],
    };
    let task = tokio::spawn(sequence.run(quit.wait()));

    Ok(Running { listen, ops: ops_addr, indexes: indexes.addrs, tokens, keys, metrics, credentials, quit, task })
}

/// The line that says the proxy started, with the addresses it bound (tests read them
/// from it), and a warning for each unknown `PINECONE_PROXY_…` variable.
fn announce(config: &Config, listen: &BoundAddr, ops_addr: &BoundAddr, credentials: &Credentials) {
    let shared_cache = config.token.shared_cache.as_ref().map_or("off", |c| c.shown.as_str());
    let api_key = config.api_key.as_ref().map_or("off", |k| k.project_id.as_str());
    tracing::info!(
        listen = %listen,
        ops_listen = %ops_addr,
        upstream = %config.upstream.url,
        token_url = %config.token.url,
        credentials = %credentials.describe(),
        policy = if config.policy.is_some() { "on" } else { "off" },
        shared_cache,
        api_key,
        version = crate::VERSION,
        "pinecone-admin-proxy started",
    );
    for name in &config.unknown_env {
        tracing::warn!(variable = %name, "environment variable starts with PINECONE_PROXY_ but sets no configuration key; ignored");
    }
}

/// The least time the managed key's deletion gets at shutdown, even when the drain took all
/// of `shutdown.grace`: one Admin API call, usually a few hundred milliseconds.
const KEY_DELETE_AT_LEAST: Duration = Duration::from_secs(2);

/// The shutdown sequence: what it stops, in its order.
struct Shutdown {
    delay: Duration,
    /// `shutdown.grace`: the drain and the key's deletion together, at least
    /// [`KEY_DELETE_AT_LEAST`] for the deletion.
    grace: Duration,
    stop_proxy: Trigger,
    proxy: JoinHandle<()>,
    /// The index listeners, which drain with the proxy.
    indexes: Vec<JoinHandle<()>>,
    /// The managed key's keeper, which deletes its keys when stopped.
    stop_keeper: Trigger,
    keeper: Option<JoinHandle<()>>,
    stop_ops: Trigger,
    /// The refresher and the credential watcher.
    background: Trigger,
    /// The ops server, the refresher and the watcher.
    rest: [JoinHandle<()>; 3],
}

impl Shutdown {
    /// Once `quit` resolves: still accepting for `shutdown.delay`, then the proxy drains,
    /// then the managed key is deleted (no request carries it any more; the token it takes
    /// is still held), then the ops listener and the background tasks stop.
    async fn run(self, quit: impl Future<Output = ()>) {
        quit.await;
        if !self.delay.is_zero() {
            let delay = crate::logging::Human(self.delay);
            tracing::info!(delay = %delay, "shutting down: still accepting requests for shutdown.delay");
            tokio::time::sleep(self.delay).await;
        }
        tracing::info!("shutting down: no longer accepting; letting requests in flight finish");
        let draining = tokio::time::Instant::now();
        self.stop_proxy.fire();
        let _ = self.proxy.await;
        for index in self.indexes {
            let _ = index.await;
        }
        self.stop_keeper.fire();
        if let Some(keeper) = self.keeper {
            let left = self.grace.saturating_sub(draining.elapsed()).max(KEY_DELETE_AT_LEAST);
            let abort = keeper.abort_handle();
            if tokio::time::timeout(left, keeper).await.is_err() {
                abort.abort();
                tracing::warn!(
                    "managed API key: not deleted within shutdown.grace; the janitor deletes it once its lease and grace have passed"
                );
            }
        }
        self.stop_ops.fire();
        self.background.fire();
        let [ops, refresher, watcher] = self.rest;
        let _ = tokio::join!(ops, refresher, watcher);
        tracing::info!("shutdown complete");
    }
}

/// The token refresher, sharing tokens through the fleet's cache when one is set.
fn refresher(
    config: &Config,
    outbound: &Outbound,
    tokens: &TokenSource,
    credentials: &Credentials,
    metrics: &Arc<Metrics>,
) -> Result<Refresher<HttpFetcher>, StartError> {
    let fetcher = HttpFetcher::new(outbound.clone(), &config.token, config.upstream.api_version.clone());
    let refresher = Refresher::new(tokens.clone(), fetcher, credentials.clone(), &config.token);
    let Some(cache) = &config.token.shared_cache else { return Ok(refresher) };
    let shared = SharedCache::new(cache, &config.token.audience, config.token.timeout, metrics.clone())
        .map_err(StartError::SharedCache)?;
    if cache.clear_text_password {
        tracing::warn!(
            shared_cache = %cache.shown,
            "the Redis password travels in clear text to a host off this machine; use rediss:// (the token itself is encrypted)",
        );
    }
    tracing::info!(shared_cache = %cache.shown, "tokens are shared with the fleet through Redis");
    Ok(refresher.with_shared_cache(shared))
}

/// The managed key's source and keeper, with `[api_key]`; shared with the fleet through
/// `token.shared_cache` when it is set.
fn keeper(
    config: &Config,
    outbound: &Outbound,
    tokens: &TokenSource,
    credentials: &Credentials,
    metrics: &Arc<Metrics>,
) -> Result<Option<(KeySource, Keeper<AdminKeys>)>, StartError> {
    let Some(c) = config.api_key.as_ref() else { return Ok(None) };
    let wait = config.token.timeout;
    let source = KeySource::new(&c.project_id, &c.roles, wait, metrics.register_api_key());
    let lease = Lease { lifetime: c.lifetime, rotate_at: c.rotate_at, grace: c.grace };
    let shared = config.token.shared_cache.as_ref();
    if shared.is_some() && c.delete_on_shutdown {
        tracing::info!(
            "api_key.delete_on_shutdown is ignored with token.shared_cache: the fleet's key outlives one proxy"
        );
    }
    let plan = KeyPlan {
        project: c.project_id.clone(),
        roles: c.roles.clone(),
        prefix: c.name_prefix.clone(),
        lease,
        max_creates_per_hour: c.max_creates_per_hour,
        delete_on_shutdown: c.delete_on_shutdown && shared.is_none(),
    };
    let admin = AdminKeys::new(outbound.clone(), tokens.clone(), &config.upstream);
    tracing::info!(project = %c.project_id, roles = %c.roles.join(","), "a managed API key is kept for the control plane");
    let keeper = Keeper::new(source.clone(), admin, plan);
    let Some(cache) = shared else { return Ok(Some((source, keeper))) };
    // The lock is held while one proxy creates the key: an Admin API call.
    let lock_ttl = config.upstream.timeout + config.token.timeout;
    let redis =
        SharedCache::new(cache, &config.token.audience, lock_ttl, metrics.clone()).map_err(StartError::SharedCache)?;
    let fleet = KeyCache::new(redis, credentials.clone(), &c.project_id, &c.roles, &c.name_prefix, lease);
    tracing::info!(shared_cache = %cache.shown, "the managed API key is shared with the fleet through Redis");
    Ok(Some((source, keeper.with_fleet(fleet))))
}

/// Starts the proxy and runs it until `shutdown` resolves (or `/quitquitquit`), then shuts
/// down gracefully.
pub async fn run(
    config: &Config,
    credentials: Credentials,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let running = start(config, credentials).await?;
    let quit = running.quit_trigger();
    tokio::select! {
        () = shutdown => quit.fire(),
        () = quit.wait() => {}
    }
    running.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_are_shared_out_among_the_listeners() {
        // The systemd unit's 4096: listen alone keeps 416 back (README, systemd).
        assert_eq!(room_per_listener(4096, 1, 128), 4096 - 416);
        // listen and two indexes: each has its pool of 128, and a third of the rest.
        assert_eq!(room_per_listener(4096, 3, 128), (4096 - 288 - 3 * 128) / 3);
        assert_eq!(room_per_listener(100, 3, 128), 1, "never 0: a listener accepts one at least");
    }
}
