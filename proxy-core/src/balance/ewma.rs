//! Peak-EWMA load per endpoint.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How fast the average forgets: after this long, an old sample weighs 1/e.
const DECAY: Duration = Duration::from_secs(10);
/// The cost assumed for an endpoint never measured, so new endpoints get traffic but are not
/// swamped.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// One endpoint's load: a latency average that jumps up on peaks and decays slowly, and the
/// requests in flight.
#[derive(Debug)]
pub struct Load {
    ewma: Mutex<(f64, Instant)>,
    in_flight: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            ewma: Mutex::new((DEFAULT_RTT.as_nanos() as f64, Instant::now())),
            in_flight: AtomicU64::new(0),
        }
    }
}

impl Load {
    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The load P2C compares: the decayed latency average times (in flight + 1).
    pub fn cost(&self) -> f64 {
        let (avg, at) = *self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let decayed = decay(avg, Instant::now().duration_since(at));
        decayed * (self.in_flight() + 1) as f64
    }

    /// Counts a request in flight until the returned guard is dropped; call
    /// [`InFlight::observe`] first to feed its latency into the average.
    pub fn start(&self) -> InFlight<&Self> {
        InFlight::start(self)
    }

    fn observe(&self, rtt: Duration) {
        let mut guard = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let rtt = rtt.as_nanos() as f64;
        let decayed = decay(guard.0, now.duration_since(guard.1));
        // Peak: a slower sample replaces the average outright; a faster one pulls it down by
        // the weight time has earned it (`decayed` is the old average times that same decay).
        let w = (-(now.duration_since(guard.1).as_secs_f64()) / DECAY.as_secs_f64()).exp();
        guard.0 = if rtt > decayed {
            rtt
        } else {
            decayed + rtt * (1.0 - w)
        };
        guard.1 = now;
    }
}

fn decay(avg: f64, elapsed: Duration) -> f64 {
    // Let an old peak fade towards nothing so a recovered endpoint gets traffic again.
    avg * (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

/// A request in flight to an endpoint, holding its [`Load`] through `L`: a reference, or an
/// owning handle when the guard must live in a future of its own.
#[derive(Debug)]
pub struct InFlight<L: Deref<Target = Load>> {
    load: L,
    started: Instant,
}

/// The latency charged for a connection that could not be made: high enough that P2C
/// steers away from the endpoint, and like any peak it fades with time.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

impl<L: Deref<Target = Load>> InFlight<L> {
    /// Counts a request in flight on `load` until the guard is dropped.
    pub fn start(load: L) -> Self {
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            load,
            started: Instant::now(),
        }
    }

    /// Feeds the time since the request started into the endpoint's average.
    pub fn observe(&self) {
        self.load.observe(self.started.elapsed());
    }

    /// Charges [`FAILURE_PENALTY`]: the endpoint failed without telling how slow it is.
    pub fn penalize(&self) {
        self.load.observe(FAILURE_PENALTY);
    }
}

impl<L: Deref<Target = Load>> Drop for InFlight<L> {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
