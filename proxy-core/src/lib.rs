//! Skiff's protocol middleware: the pieces of the request path that do not own sockets.
//!
//! Each behaviour lives in its own module, in tower's shape (`Foo<S>`, `FooLayer`, a
//! `ResponseFuture` where the layer needs one, and a typed error):
//!
//! - [`authz`]: who may call which route (SMI TrafficTarget), 403 `forbidden` otherwise.
//! - [`normalize`]: one authority per request, hop-by-hop stripping, header limits, body guards.
//! - [`route`]: picks the logical service a request is for, by its authority, and the route
//!   within it, by method, path, headers and query.
//! - [`context`]: the one value the router hands the layers below it (route, backends,
//!   retry policy, deadlines, limits).
//! - [`split`]: weighted traffic split between a route's backends.
//! - [`timeout`]: the whole-request and per-try deadlines.
//! - [`retry`]: retries with a replay buffer, backoff and a budget.
//! - [`balance`]: choosing an endpoint (P2C over peak-EWMA, round-robin, least-request).
//! - [`breaker`]: circuit breaking per endpoint (Closed, Open, HalfOpen).
//! - [`limit`]: local rate limits (429) and concurrency limits (503 load-shed).
//! - [`notes`]: why a request went where it did, for the tap and the access log.
//! - [`respond`]: turns a failed request into the response the client sees (`skiff-error`).
//! - [`future`]: the future of layers that pass a request on or refuse it.
//! - [`error`]: the proxy's error type: what went wrong, who caused it, whether a retry may help.
//! - [`classify`]: the one success / failure / retryable classifier that metrics, tap,
//!   retries and the circuit breaker share.
//! - [`direction`]: outbound or inbound, spelled once.
//! - [`body`]: the boxed body type the stack passes around, and the downstream body guard.
//!
//! The binary (`skiff`) assembles these into one `ServiceBuilder` chain per direction.

pub mod authz;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod classify;
pub mod context;
pub mod direction;
pub mod error;
pub mod fault;
pub mod filter;
pub mod future;
pub mod io;
pub mod limit;
pub mod normalize;
pub mod notes;
pub mod respond;
pub mod retry;
pub mod route;
pub mod split;
pub mod timeout;

/// The error type crossing service boundaries; leaves use typed errors and box them here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP service of the stack, type-erased: what a layer holds when its own future must be
/// an `async` block (generic inner futures there trip the compiler's `Send` inference).
pub type BoxHttpService =
    tower::util::BoxCloneService<http::Request<Body>, http::Response<Body>, BoxError>;

pub use body::Body;
pub use direction::Direction;

/// A random number without a dependency: the std hasher's per-process random keys over a
/// counter. Good enough for jitter and load-balancer draws; not for anything secret.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}
pub use error::{Blame, ProxyError, Reason};
