//! One listener per index (`[indexes]`): each serves that index's data plane, REST and gRPC
//! (HTTP/1.1 and h2c), with the same limits as `listen`, and forwards every request to the
//! index's host with the managed key ([`crate::proxy`]). The host is looked up at start (and
//! `/readyz` waits for it), and again after a connect failure.

use crate::api_key::source::KeySource;
use crate::config::{Config, IndexListen};
use crate::outbound::Outbound;
use crate::proxy::Proxy;
use crate::proxy::index_host::IndexHost;
use crate::serve::{self, BoundAddr, Listener, ServeOptions, Trigger};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How soon a failed lookup of a host is tried again at start.
const LOOKUP_RETRY: Duration = Duration::from_secs(2);

/// An index's listener, bound.
pub(crate) struct Bound {
    index: IndexListen,
    listener: Listener,
    pub(crate) addr: BoundAddr,
}

/// The index listeners at work.
pub(crate) struct Served {
    pub(crate) hosts: Vec<IndexHost>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    /// Each index's name and bound address.
    pub(crate) addrs: Vec<(String, BoundAddr)>,
}

/// Binds every index's listener; the first that cannot be bound is the error, with its key.
pub(crate) async fn bind(config: &Config) -> Result<Vec<Bound>, (String, String, std::io::Error)> {
    let mut bound = Vec::new();
    for index in &config.indexes {
        let listener = serve::bind(&index.listen, config.listen_mode)
            .await
            .map_err(|e| (format!("indexes.{}", index.name), index.listen.to_string(), e))?;
        let addr = listener.local_addr().expect("a bound listener has an address");
        bound.push(Bound { index: index.clone(), listener, addr });
    }
    Ok(bound)
}

/// Serves each bound listener with `proxy` made for its index, and starts looking its host
/// up. They stop with `stop` (the proxy's), draining like `listen`.
pub(crate) fn serve(
    bound: Vec<Bound>,
    proxy: &Proxy,
    keys: Option<&KeySource>,
    outbound: &Outbound,
    config: &Config,
    (options, stop): (&ServeOptions, &Trigger),
) -> Served {
    let mut served = Served { hosts: Vec::new(), tasks: Vec::new(), addrs: Vec::new() };
    // The configuration requires a managed key for any index listener.
    let Some(keys) = keys else { return served };
    for Bound { index, listener, addr } in bound {
        let listen = addr.to_string();
        let host = IndexHost::new(&index.name, &listen, outbound.clone(), keys.clone(), &config.upstream);
        tokio::spawn(host.clone().find(LOOKUP_RETRY));
        let service = proxy.for_index(host.clone());
        let task = serve::serve("index", listener, move |_| service.clone(), stop.wait(), options.clone());
        served.tasks.push(tokio::spawn(task));
        served.hosts.push(host);
        served.addrs.push((index.name, addr));
    }
    served
}
