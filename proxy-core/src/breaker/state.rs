//! The circuit breaker's state machine, without I/O: what to admit, and what an outcome does.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// When an endpoint is ejected and for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Optionally, a failure rate over a sliding window that opens it.
    pub failure_rate: Option<FailureRate>,
    /// The first ejection's length; each further trip doubles it (with jitter).
    pub backoff: Duration,
    /// The longest ejection.
    pub max_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            failure_rate: None,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// A failure-rate trigger.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailureRate {
    /// The failure fraction (0 to 1) that opens the circuit.
    pub threshold: f64,
    /// Fewer requests than this in the window never open it.
    pub min_requests: u32,
    /// The sliding window.
    pub window: Duration,
}

/// The standard three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Traffic flows; outcomes are counted.
    Closed,
    /// The endpoint is ejected until the instant given.
    Open {
        /// When a probe may be tried.
        until: Instant,
    },
    /// One probe decides: success closes, failure opens again for longer.
    HalfOpen {
        /// Whether the probe is in flight.
        probing: bool,
    },
}

impl State {
    /// The state's standard name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "Closed",
            Self::Open { .. } => "Open",
            Self::HalfOpen { .. } => "HalfOpen",
        }
    }
}

/// A state change and why it happened, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub to: State,
    /// Why.
    pub reason: String,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    state: State,
    // Bumped on every state change; an outcome from an earlier generation (a request
    // admitted before a trip, finishing during the next HalfOpen) is ignored.
    generation: u64,
    consecutive: u32,
    trips: u32,
    // One-second buckets of (successes, failures), newest last.
    buckets: VecDeque<(Instant, u32, u32)>,
}

impl Machine {
    /// A closed breaker.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            state: State::Closed,
            generation: 0,
            consecutive: 0,
            trips: 0,
            buckets: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The current generation (see [`Machine::record`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a request may go to the endpoint now, and if so the generation its outcome
    /// must be recorded with. An expired ejection turns into HalfOpen and admits exactly one
    /// probe.
    pub fn admit(&mut self, now: Instant) -> (Option<u64>, Option<Transition>) {
        match self.state {
            State::Closed => (Some(self.generation), None),
            State::Open { until } if now >= until => {
                self.set(State::HalfOpen { probing: true });
                let t = Transition {
                    to: self.state,
                    reason: "ejection over; sending one probe".into(),
                };
                (Some(self.generation), Some(t))
            }
            State::Open { .. } | State::HalfOpen { probing: true } => (None, None),
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                (Some(self.generation), None)
            }
        }
    }

    /// A request admitted in `generation` ended without an outcome (cancelled): if it was
    /// the probe, the slot is freed so another request can probe.
    pub fn release(&mut self, generation: u64) {
        if generation == self.generation && self.state == (State::HalfOpen { probing: true }) {
            self.state = State::HalfOpen { probing: false };
        }
    }

    fn set(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
    }

    /// Records the outcome of a request admitted in `generation`; `jitter` (in `[0, 1)`,
    /// asked for only on a trip) spreads ejections of many endpoints apart.
    pub fn record(
        &mut self,
        success: bool,
        generation: u64,
        now: Instant,
        jitter: impl FnOnce() -> f64,
    ) -> Option<Transition> {
        if generation != self.generation {
            return None;
        }
        match self.state {
            State::Open { .. } => None, // a request admitted before the trip
            State::HalfOpen { .. } if success => {
                self.set(State::Closed);
                self.trips = 0;
                self.consecutive = 0;
                self.buckets.clear();
                Some(Transition {
                    to: State::Closed,
                    reason: "probe succeeded".into(),
                })
            }
            State::HalfOpen { .. } => Some(self.trip(now, jitter, "probe failed".into())),
            State::Closed => {
                self.count(success, now);
                if success {
                    self.consecutive = 0;
                    return None;
                }
                self.consecutive += 1;
                if self.consecutive >= self.settings.consecutive_failures {
                    let why = format!("{} consecutive failures", self.consecutive);
                    return Some(self.trip(now, jitter, why));
                }
                let rate = self.settings.failure_rate?;
                let (ok, failed) = self.window_totals(now, rate.window);
                let total = ok + failed;
                if total >= rate.min_requests
                    && f64::from(failed) / f64::from(total) > rate.threshold
                {
                    let why = format!(
                        "{failed} of {total} requests failed within {:?}",
                        rate.window
                    );
                    return Some(self.trip(now, jitter, why));
                }
                None
            }
        }
    }

    fn trip(&mut self, now: Instant, jitter: impl FnOnce() -> f64, reason: String) -> Transition {
        let exp = self
            .settings
            .backoff
            .saturating_mul(1u32 << self.trips.min(16))
            .min(self.settings.max_backoff);
        // Up to 10% extra, so endpoints ejected together do not return together.
        let ejection = exp + exp.mul_f64(0.1 * jitter().clamp(0.0, 1.0));
        self.trips += 1;
        self.consecutive = 0;
        self.buckets.clear();
        self.set(State::Open {
            until: now + ejection,
        });
        Transition {
            to: self.state,
            reason: format!("{reason}; ejected for {ejection:?}"),
        }
    }

    fn count(&mut self, success: bool, now: Instant) {
        let Some(rate) = self.settings.failure_rate else {
            return;
        };
        while self
            .buckets
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) >= rate.window)
        {
            self.buckets.pop_front();
        }
        match self.buckets.back_mut() {
            Some((t, ok, failed)) if now.duration_since(*t) < Duration::from_secs(1) => {
                *if success { ok } else { failed } += 1;
            }
            _ => self
                .buckets
                .push_back((now, u32::from(success), u32::from(!success))),
        }
    }

    fn window_totals(&self, now: Instant, window: Duration) -> (u32, u32) {
        self.buckets
            .iter()
            .filter(|(t, _, _)| now.duration_since(*t) < window)
            .fold((0, 0), |(a, b), (_, ok, failed)| (a + ok, b + failed))
    }
}
