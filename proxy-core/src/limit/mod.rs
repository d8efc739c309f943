//! Local rate limits and concurrency limits.
//!
//! A target's limits ([`Policy`]) come from the request's [`crate::context::RouteContext`]:
//! a token bucket refills at `rate` requests a second up to `burst`; a request finding it
//! empty is refused with 429 `rate-limited` and a `Retry-After` saying when a token will be
//! there. A bucket may be kept per [`Client`] instead, so one noisy caller cannot spend
//! everyone's share; a route's limits apply on top of its service's. A cap on requests in flight sheds load beyond it with 503 `load-shed`; a request
//! holds its slot until its response body ends. Refused requests never reach an upstream.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::{self, Body};
use crate::error::{ProxyError, Reason};
use crate::BoxError;

/// A token bucket.
#[derive(Debug)]
pub struct RateLimit {
    params: BucketParams,
    state: Mutex<Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct BucketParams {
    per_second: f64,
    burst: f64,
}

/// Tokens left, and when they were counted.
#[derive(Clone, Copy, Debug)]
struct Bucket(f64, Instant);

impl BucketParams {
    fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
        }
    }

    fn full(self) -> Bucket {
        Bucket(self.burst, Instant::now())
    }

    /// Takes a token from `bucket`, or says how long until one is there.
    fn take(self, bucket: &mut Bucket, now: Instant) -> Result<(), Duration> {
        let refill = now.duration_since(bucket.1).as_secs_f64() * self.per_second;
        bucket.0 = (bucket.0 + refill).min(self.burst);
        bucket.1 = now;
        // A hair under 1 is rounding error from summing refills (ten 0.1s make 0.999...).
        if bucket.0 >= 1.0 - 1e-9 {
            bucket.0 = (bucket.0 - 1.0).max(0.0);
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.0) / self.per_second))
        }
    }

    /// Whether `bucket` would be full by `now`: such a bucket is no different from a new one.
    fn refilled(self, bucket: Bucket, now: Instant) -> bool {
        bucket.0 + now.duration_since(bucket.1).as_secs_f64() * self.per_second >= self.burst
    }
}

impl RateLimit {
    /// `per_second` tokens a second (more than 0), holding at most `burst` (at least 1).
    pub fn new(per_second: f64, burst: u32) -> Self {
        let params = BucketParams::new(per_second, burst);
        Self {
            params,
            state: Mutex::new(params.full()),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn acquire(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.params.take(&mut state, Instant::now())
    }
}

/// Who sent a request, as far as per-client limits care: the peer's verified identity when
/// the connection is mutually authenticated, else its IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// A verified peer identity (a SPIFFE ID).
    Identity(Arc<str>),
    /// The peer's address, when it has no identity.
    Addr(IpAddr),
    /// Every client beyond the tracked maximum, sharing one bucket.
    Other,
}

/// A token bucket per client, bounded in memory: once `max_clients` buckets are tracked,
/// buckets that have refilled (idle clients) are dropped, and if none has, further clients
/// share one overflow bucket rather than growing the map.
#[derive(Debug)]
pub struct PerClientRateLimit {
    params: BucketParams,
    max_clients: usize,
    buckets: Mutex<HashMap<Client, Bucket>>,
}

impl PerClientRateLimit {
    /// `per_second` tokens a second for each client, holding at most `burst`.
    pub fn new(per_second: f64, burst: u32, max_clients: usize) -> Self {
        Self {
            params: BucketParams::new(per_second, burst),
            max_clients: max_clients.max(1),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token from `client`'s bucket, or says how long until one is there.
    pub fn acquire(&self, client: &Client) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(client) {
            return self.params.take(bucket, now);
        }
        if buckets.len() >= self.max_clients {
            let params = self.params;
            buckets.retain(|_, b| !params.refilled(*b, now));
        }
        let key = if buckets.len() >= self.max_clients {
            Client::Other
        } else {
            client.clone()
        };
        let params = self.params;
        let bucket = buckets.entry(key).or_insert_with(|| params.full());
        params.take(bucket, now)
    }

    /// How many clients have a bucket.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A cap on requests in flight.
#[derive(Debug)]
pub struct MaxInFlight {
    max: usize,
    current: Arc<AtomicUsize>,
}

impl MaxInFlight {
    /// At most `max` requests at once.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            current: Arc::default(),
        }
    }

    fn acquire(&self) -> Option<Slot> {
        let taken = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        taken.ok().map(|_| Slot(self.current.clone()))
    }
}

/// A request's place under a [`MaxInFlight`] cap, released on drop.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A target's limits.
#[derive(Debug, Default)]
pub struct Policy {
    /// Requests a second.
    pub rate: Option<RateLimit>,
    /// Requests a second from each client.
    pub per_client: Option<PerClientRateLimit>,
    /// Requests at once.
    pub max_in_flight: Option<MaxInFlight>,
    /// The limits of the enclosing target (a route's service), enforced first.
    pub parent: Option<Arc<Policy>>,
}

/// The in-flight slots an admitted request holds (its own and its parent's).
#[derive(Debug)]
struct Slots(Option<Slot>, Option<Slot>);

impl Policy {
    fn admit(&self, client: Option<&Client>) -> Result<Slots, ProxyError> {
        // In-flight caps first: a request shed there must not spend a rate token.
        let parent_slot = match &self.parent {
            Some(parent) => parent.hold_slot()?,
            None => None,
        };
        let slot = self.hold_slot()?;
        if let Some(parent) = &self.parent {
            parent.take_tokens(client)?;
        }
        self.take_tokens(client)?;
        Ok(Slots(slot, parent_slot))
    }

    fn hold_slot(&self) -> Result<Option<Slot>, ProxyError> {
        let Some(cap) = &self.max_in_flight else {
            return Ok(None);
        };
        let slot = cap.acquire().ok_or_else(|| {
            ProxyError::new(
                Reason::LoadShed,
                format!("{} requests already in flight", cap.max),
            )
        })?;
        Ok(Some(slot))
    }

    fn take_tokens(&self, client: Option<&Client>) -> Result<(), ProxyError> {
        if let Some(rate) = &self.rate {
            rate.acquire().map_err(|wait| {
                ProxyError::new(Reason::RateLimited, "the rate limit is reached")
                    .with_retry_after(wait)
            })?;
        }
        if let Some(per_client) = &self.per_client {
            let client = client.unwrap_or(&Client::Other);
            per_client.acquire(client).map_err(|wait| {
                ProxyError::new(
                    Reason::RateLimited,
                    "the rate limit for this client is reached",
                )
                .with_retry_after(wait)
            })?;
        }
        Ok(())
    }
}

/// Enforces the request's [`Policy`] before `S`.
#[derive(Clone, Debug)]
pub struct Limit<S> {
    inner: S,
}

/// Applies [`Limit`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LimitLayer;

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit { inner }
    }
}

impl<S, B> Service<Request<B>> for Limit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let context = crate::context::RouteContext::of(req.extensions(), "limit");
        let admitted = context.and_then(|ctx| match &ctx.limits {
            None => Ok(None),
            Some(limits) => limits
                .admit(req.extensions().get::<Client>())
                .map(|slots| (slots.0.is_some() || slots.1.is_some()).then_some(slots)),
        });
        match admitted {
            Ok(slot) => ResponseFuture::Admitted {
                future: self.inner.call(req),
                slot,
            },
            Err(error) => ResponseFuture::Refused { error: Some(error) },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Limit`].
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on variant fields
    #[project = Proj]
    #[derive(Debug)]
    pub enum ResponseFuture<F> {
        /// Passed on, holding its in-flight slot (if any).
        Admitted { #[pin] future: F, slot: Option<Slots> },
        /// Refused.
        Refused { error: Option<ProxyError> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Refused { error } => Poll::Ready(Err(Box::new(
                error.take().expect("polled after completion"),
            ))),
            Proj::Admitted { future, slot } => {
                let rsp = std::task::ready!(future.poll(cx))?;
                let Some(slot) = slot.take() else {
                    return Poll::Ready(Ok(rsp));
                };
                // The slot is held until the body ends: a long stream is still in flight.
                Poll::Ready(Ok(rsp.map(|b| body::hold_until_end(b, slot))))
            }
        }
    }
}
