//! Local rate limits and concurrency limits.
//!
//! A target's [`Limits`] come from the request's extensions (the router puts them there):
//! a token bucket refills at `rate` requests a second up to `burst`; a request finding it
//! empty is refused with 429 `rate-limited` and a `Retry-After` saying when a token will be
//! there. A cap on requests in flight sheds load beyond it with 503 `load-shed`; a request
//! holds its slot until its response body ends. Refused requests never reach an upstream.

#[cfg(test)]
mod tests;

use std::future::Future;
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
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `per_second` tokens a second (more than 0), holding at most `burst` (at least 1).
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn acquire(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(state.1).as_secs_f64() * self.per_second;
        state.0 = (state.0 + refill).min(self.burst);
        state.1 = now;
        // A hair under 1 is rounding error from summing refills (ten 0.1s make 0.999...).
        if state.0 >= 1.0 - 1e-9 {
            state.0 = (state.0 - 1.0).max(0.0);
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - state.0) / self.per_second))
        }
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
pub struct Limits {
    /// Requests a second.
    pub rate: Option<RateLimit>,
    /// Requests at once.
    pub max_in_flight: Option<MaxInFlight>,
}

impl Limits {
    fn admit(&self) -> Result<Option<Slot>, ProxyError> {
        // The in-flight cap first: a request shed there must not spend a rate token.
        let slot = match &self.max_in_flight {
            None => None,
            Some(cap) => Some(cap.acquire().ok_or_else(|| {
                ProxyError::new(
                    Reason::LoadShed,
                    format!("{} requests already in flight", cap.max),
                )
            })?),
        };
        if let Some(rate) = &self.rate {
            rate.acquire().map_err(|wait| {
                ProxyError::new(Reason::RateLimited, "the rate limit is reached")
                    .with_retry_after(wait)
            })?;
        }
        Ok(slot)
    }
}

/// Enforces the request's [`Limits`] before `S`.
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
        let admitted = match req.extensions().get::<Arc<Limits>>() {
            None => Ok(None),
            Some(limits) => limits.admit(),
        };
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
    #[project = Proj]
    #[derive(Debug)]
    pub enum ResponseFuture<F> {
        /// Passed on, holding its in-flight slot (if any).
        Admitted { #[pin] future: F, slot: Option<Slot> },
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
