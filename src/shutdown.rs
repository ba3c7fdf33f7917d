//! The one-way switch with which the wiring tells tasks to stop (the listeners to drain, the
//! background tasks to end, a connection to close): a leaf, so that whoever must stop or be
//! stopped can hold one without importing the server.

use tokio::sync::watch;

/// A one-way switch that many tasks can wait for.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

impl Default for Trigger {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once [`Trigger::fire`] has been called (at once if it already was).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|fired| *fired).await;
        }
    }
}
