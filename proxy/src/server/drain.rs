//! Graceful shutdown: one signal that every listener and connection watches, and a count of
//! who is still working, so shutdown can wait for in-flight requests and no longer.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by every listener and connection task; drain waits until all are dropped.
#[derive(Clone, Debug)]
pub(crate) struct Drain {
    signal: watch::Receiver<bool>,
    // Never sent on: its only job is to be dropped. When the last clone goes, the
    // controller's receiver sees the channel close.
    _alive: mpsc::Sender<()>,
}

impl Drain {
    /// Resolves once draining has started.
    pub(crate) async fn signaled(&mut self) {
        // An error means the controller is gone, which also means "stop".
        let _ = self.signal.wait_for(|draining| *draining).await;
    }

    /// Whether draining has started.
    #[cfg(test)]
    fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }
}

/// Starts the drain and waits for it.
#[derive(Debug)]
pub(crate) struct Controller {
    signal: watch::Sender<bool>,
    alive_tx: mpsc::Sender<()>,
    alive_rx: mpsc::Receiver<()>,
}

impl Controller {
    /// A new controller, not draining.
    pub(crate) fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        Self {
            signal,
            alive_tx,
            alive_rx,
        }
    }

    /// A handle for a listener or connection.
    pub(crate) fn handle(&self) -> Drain {
        Drain {
            signal: self.signal.subscribe(),
            _alive: self.alive_tx.clone(),
        }
    }

    /// Signals every handle, then waits up to `grace` for all of them to be dropped.
    /// Returns whether everything finished in time.
    pub(crate) async fn drain(self, grace: Duration) -> bool {
        let Self {
            signal,
            alive_tx,
            mut alive_rx,
        } = self;
        let _ = signal.send(true);
        drop(alive_tx);
        tokio::time::timeout(grace, alive_rx.recv()).await.is_ok()
    }
}

impl Default for Controller {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_handles_then_gives_up_at_grace() {
        let c = Controller::new();
        let mut h = c.handle();
        let worker = tokio::spawn(async move {
            h.signaled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(h);
        });
        assert!(c.drain(Duration::from_secs(5)).await);
        worker.await.unwrap();

        let c = Controller::new();
        let stuck = c.handle();
        assert!(!c.drain(Duration::from_secs(5)).await);
        assert!(stuck.is_draining());
    }
}
