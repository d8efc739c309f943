//! Load balancing across a service's endpoints.
//!
//! The default is Linkerd's choice: power of two choices over peak-EWMA load. Two endpoints
//! are drawn at random and the less loaded one wins, where load is an exponentially weighted
//! moving average of response latency that jumps up at once on a slow response and decays
//! slowly (the "peak"), multiplied by the requests in flight plus one. A slow or overloaded
//! endpoint therefore sheds traffic quickly, without the herd behaviour of always picking
//! the single best. `round-robin` and `least-request` are there for those who want them.
//!
//! Endpoints ejected by a circuit breaker are skipped: the caller passes an `admit` check.

mod ewma;
#[cfg(test)]
mod tests;

pub use ewma::{InFlight, Load, FAILURE_PENALTY};

/// How to choose among endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Power of two choices over peak-EWMA load.
    #[default]
    P2c,
    /// Each endpoint in turn.
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastRequest,
}

/// Chooses an endpoint of `items`, skipping those `admit` refuses. `load` gives each item's
/// load tracker; `turn` is a counter the caller advances per request (round-robin position,
/// and the fallback scan's start).
pub fn choose<T>(
    strategy: Strategy,
    items: &[T],
    turn: usize,
    load: impl Fn(&T) -> &Load,
    mut admit: impl FnMut(&T) -> bool,
) -> Option<&T> {
    let n = items.len();
    match (strategy, n) {
        (_, 0) => None,
        (_, 1) => Some(&items[0]).filter(|i| admit(i)),
        (Strategy::RoundRobin, _) => scan(items, turn, admit),
        (Strategy::LeastRequest, _) => {
            // Rank first, then ask `admit` in rank order: admitting has effects (a breaker
            // hands out its one probe), so only the endpoint actually used may be asked.
            // Ties keep their order from `turn`, so load spreads.
            let mut ranked: Vec<&T> = (0..n).map(|i| &items[(turn + i) % n]).collect();
            ranked.sort_by_key(|item| load(item).in_flight());
            ranked.into_iter().find(|item| admit(item))
        }
        (Strategy::P2c, _) => {
            let a = (crate::random_u64() as usize) % n;
            let b = (a + 1 + (crate::random_u64() as usize) % (n - 1)) % n;
            let (first, second) = if load(&items[a]).cost() <= load(&items[b]).cost() {
                (&items[a], &items[b])
            } else {
                (&items[b], &items[a])
            };
            if admit(first) {
                return Some(first);
            }
            if admit(second) {
                return Some(second);
            }
            scan(items, turn, admit)
        }
    }
}

fn scan<T>(items: &[T], start: usize, mut admit: impl FnMut(&T) -> bool) -> Option<&T> {
    (0..items.len())
        .map(|i| &items[(start + i) % items.len()])
        .find(|i| admit(i))
}
