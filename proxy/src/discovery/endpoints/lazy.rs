//! A Kubernetes Service's endpoints, watched only while the service is in use: from its
//! first request until it has gone unused for `endpointsIdleTimeout`. Kept apart from the
//! endpoint lists because starting and stopping a watch while requests arrive is where the
//! races are, and they are settled here in one place.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use super::AbortOnDrop;
use super::Endpoint;

/// Endpoints watched while in use: the watch starts at the first request and stops after
/// the idle timeout.
///
/// Starting and stopping happen under one gate, and the timer re-checks the last use after
/// marking the watch stopped: a request that notes its use while the timer stops the
/// watch then finds it stopped and starts a new one (waiting for its first answer), never
/// picking from endpoints that are being forgotten.
pub(super) struct Lazy {
    pub(super) shared: Arc<LazyShared>,
    // Starts the watch (with its generation) and its idle timer; returns the timer's task.
    pub(super) start: Box<dyn Fn(u64) -> JoinHandle<()> + Send + Sync>,
    pub(super) task: Mutex<Option<AbortOnDrop>>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Lazy {
    /// Notes a use, and starts the watch if it is not running.
    pub(super) fn use_now(&self) {
        self.shared.touch();
        if self.shared.running.load(Ordering::SeqCst) {
            return;
        }
        let _gate = self.shared.gate.lock().unwrap_or_else(|e| e.into_inner());
        if !self.shared.running.swap(true, Ordering::SeqCst) {
            self.shared.gave_up.store(false, Ordering::Release);
            let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
            let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
            *task = Some(AbortOnDrop((self.start)(generation)));
        }
    }
}

/// What the watch, its idle timer and the request path share.
#[derive(Debug)]
pub(super) struct LazyShared {
    // Held to start a watch, to stop one, and to publish an answer.
    gate: Mutex<()>,
    running: AtomicBool,
    // Which watch is current: answers of an older one are dropped.
    generation: AtomicU64,
    // A request waited for the first answer until its bound, in this watch's life.
    pub(super) gave_up: AtomicBool,
    // Requests waiting for the first answer now.
    waiting: AtomicUsize,
    pub(super) synced: tokio::sync::watch::Sender<bool>,
    // Milliseconds since `epoch` at the last use.
    last_use: AtomicU64,
    epoch: tokio::time::Instant,
    idle: Duration,
}

impl LazyShared {
    pub(super) fn new(idle: Duration) -> Self {
        Self {
            gate: Mutex::new(()),
            running: Default::default(),
            generation: Default::default(),
            gave_up: Default::default(),
            waiting: Default::default(),
            synced: tokio::sync::watch::channel(false).0,
            last_use: Default::default(),
            epoch: tokio::time::Instant::now(),
            idle,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_use.store(ms, Ordering::SeqCst);
    }

    /// Applies an answer of the watch of `generation` with `apply`, and marks the
    /// endpoints synced; drops it when that watch was stopped by the idle timer (its
    /// endpoints were forgotten, and a newer watch may be answering by now).
    pub(super) fn publish(&self, generation: u64, apply: impl FnOnce()) {
        let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::SeqCst) == generation {
            apply();
            self.synced.send_replace(true);
        }
    }

    /// How long the service has gone unused: zero while a request waits for an answer.
    fn idle_for(&self) -> Duration {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_use.load(Ordering::SeqCst));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Keeps `watch` running until the service has been idle for the timeout, then stops
    /// it and forgets the endpoints: the next request starts a new watch and waits for its
    /// first answer, rather than being sent to addresses nobody kept current.
    pub(super) async fn expire(
        self: Arc<Self>,
        watch: JoinHandle<()>,
        current: Arc<ArcSwap<Vec<Arc<Endpoint>>>>,
    ) {
        let _watch = AbortOnDrop(watch);
        loop {
            {
                let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
                // Stopped first, then the last use read: a use noted after this read
                // sees the watch stopped, and waits at the gate to start a new one.
                self.running.store(false, Ordering::SeqCst);
                let idle = self.idle_for();
                if idle >= self.idle {
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    self.synced.send_replace(false);
                    current.store(Arc::default());
                    return;
                }
                self.running.store(true, Ordering::SeqCst);
            }
            let left = self.idle.saturating_sub(self.idle_for());
            tokio::time::sleep(left.max(Duration::from_millis(10))).await;
        }
    }
}

/// A request waiting for a lazily watched service's first answer; on leaving, it counts
/// as a use.
pub(super) struct Waiting<'a>(&'a LazyShared);

impl<'a> Waiting<'a> {
    pub(super) fn new(shared: &'a LazyShared) -> Self {
        shared.waiting.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
