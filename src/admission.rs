//! Who gets a connection when a listener is crowded, for listeners that must keep answering
//! whoever holds their connections: the ops listener, whose probes decide whether
//! Kubernetes restarts the pod, and which the shipped Deployment publishes to the cluster.
//!
//! Two rules, both chosen by the listener's options (`ServeOptions` in serve.rs):
//!
//! - **Per peer**: at most `per_peer` connections from one IP address; one more is closed at
//!   once. An attacker from one pod cannot take the room that the kubelet's probes need.
//! - **Evict the longest idle**: when the listener is full, the connection that has been
//!   idle longest (nothing in flight: sending nothing, a slow head, or kept alive between
//!   requests) is closed to make room, instead of the newcomer waiting in the backlog. A
//!   connection with a request in flight is never evicted. A probe, which sends its request
//!   as soon as it connects, is answered however many connections others hold.
//!
//! What "idle" means is [`crate::limits::ConnState`]'s; closing is the accept loop's.

use crate::limits::ConnState;
use crate::shutdown::Trigger;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The open connections of one listener, as far as admission needs them.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    per_peer: Option<usize>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    peers: HashMap<IpAddr, usize>,
    next_id: u64,
    /// Each connection's state, and the trigger that closes it.
    open: HashMap<u64, (Arc<ConnState>, Trigger)>,
}

/// A connection's place, given up when dropped (when its task ends).
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    id: u64,
    peer: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut inner = self.admission.inner.lock();
        inner.open.remove(&self.id);
        if let Some(ip) = self.peer
            && let Some(n) = inner.peers.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                inner.peers.remove(&ip);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(per_peer: Option<usize>) -> Arc<Self> {
        Arc::new(Self { per_peer, inner: Mutex::default() })
    }

    /// Admits a connection from `peer` (`None`: a Unix socket, never limited per peer),
    /// closed when `close` fires; `None` if its peer already has `per_peer` connections.
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        conn: Arc<ConnState>,
        close: Trigger,
    ) -> Option<Admitted> {
        let mut inner = self.inner.lock();
        if let (Some(ip), Some(cap)) = (peer, self.per_peer) {
            let n = inner.peers.entry(ip).or_insert(0);
            if *n >= cap {
                return None;
            }
            *n += 1;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, (conn, close));
        Some(Admitted { admission: self.clone(), id, peer: if self.per_peer.is_some() { peer } else { None } })
    }

    /// Closes the connection that has been idle longest, if any is idle; whether one was.
    pub(crate) fn evict_longest_idle(&self) -> bool {
        let inner = self.inner.lock();
        let victim = inner
            .open
            .values()
            .filter_map(|(conn, close)| Some((conn.idle_since()?, close)))
            .filter(|(_, close)| !close.fired())
            .min_by_key(|(since, _)| *since);
        match victim {
            Some((_, close)) => {
                close.fire();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::HeadBudget;

    #[test]
    fn a_peer_gets_at_most_its_share_and_gets_it_back() {
        let admission = Admission::new(Some(2));
        let heads = HeadBudget::new(1 << 20);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let conn = || ConnState::new(heads.clone());
        let first = admission.admit(Some(a), conn(), Trigger::default()).unwrap();
        let _second = admission.admit(Some(a), conn(), Trigger::default()).unwrap();
        assert!(admission.admit(Some(a), conn(), Trigger::default()).is_none(), "a third from the same peer");
        assert!(admission.admit(Some(b), conn(), Trigger::default()).is_some(), "another peer");
        assert!(admission.admit(None, conn(), Trigger::default()).is_some(), "a Unix socket");
        drop(first);
        assert!(admission.admit(Some(a), conn(), Trigger::default()).is_some(), "room again once one closes");
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_connection_is_evicted_never_one_in_flight() {
        let admission = Admission::new(None);
        let heads = HeadBudget::new(1 << 20);
        let (old, busy) = (ConnState::new(heads.clone()), ConnState::new(heads.clone()));
        let triggers = [Trigger::default(), Trigger::default(), Trigger::default()];
        let _ = busy.request_started();
        let _a = admission.admit(None, busy.clone(), triggers[2].clone());
        let _b = admission.admit(None, old, triggers[0].clone());
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let _c = admission.admit(None, ConnState::new(heads.clone()), triggers[1].clone());
        assert!(admission.evict_longest_idle());
        assert!(triggers[0].fired() && !triggers[1].fired(), "the oldest idle one");
        assert!(admission.evict_longest_idle());
        assert!(triggers[1].fired(), "then the next");
        assert!(!admission.evict_longest_idle(), "one in flight is never evicted");
        assert!(!triggers[2].fired());
    }
}
