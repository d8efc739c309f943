//! Deadlines on requests, in Gateway API's two flavours: `request`, the whole request
//! including retries, and `backendRequest`, each try.
//!
//! The durations come from the [`Timeouts`] of the request's [`RouteContext`], so each
//! service (or route) carries its own. A deadline runs until the response headers
//! arrive (so `backendRequest` is also the response-headers timeout); after them, the
//! optional `streamIdle` deadline ends a response body that pauses too long between frames.
//! An expired `request` deadline answers 504 `request-timeout`, an expired `backendRequest`
//! deadline 504 `upstream-timeout`, which a retry may follow.

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::time::{sleep, Sleep};
use tower::{Layer, Service};

use crate::body::{Body, Guarded};
use crate::context::RouteContext;
use crate::error::{ProxyError, Reason};
use crate::BoxError;

/// A target's deadlines; `None` (or `0s` in config) means no deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, retries and backoff included.
    pub request: Option<Duration>,
    /// Each try.
    pub backend_request: Option<Duration>,
    /// The longest pause between two frames of the response body (long streams).
    pub stream_idle: Option<Duration>,
}

/// Responses whose body the request deadline can watch for idleness.
pub trait IdleGuard {
    /// Ends the body with `upstream-timeout` when no frame arrives for `idle`.
    fn guard_idle(self, idle: Duration) -> Self;
}

impl IdleGuard for http::Response<Body> {
    fn guard_idle(self, idle: Duration) -> Self {
        self.map(|b| crate::body::boxed(Guarded::response(b, idle)))
    }
}

/// Which deadline a [`Timeout`] enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// [`Timeouts::request`].
    Request,
    /// [`Timeouts::backend_request`].
    Backend,
}

/// Enforces one of the request's [`Timeouts`] on `S`.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    scope: Scope,
}

/// Applies [`Timeout`].
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    scope: Scope,
}

impl TimeoutLayer {
    /// The whole-request deadline (place above retries).
    pub fn request() -> Self {
        Self {
            scope: Scope::Request,
        }
    }

    /// The per-try deadline (place below retries).
    pub fn backend() -> Self {
        Self {
            scope: Scope::Backend,
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            scope: self.scope,
        }
    }
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Error = BoxError>,
    S::Response: IdleGuard,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let layer = match self.scope {
            Scope::Request => "request timeout",
            Scope::Backend => "per-try timeout",
        };
        let t = match RouteContext::of(req.extensions(), layer) {
            Ok(ctx) => ctx.timeouts,
            Err(e) => return ResponseFuture::new(Err(e)),
        };
        // The whole request also watches the response body's pauses; a try does not.
        let (limit, stream_idle) = match self.scope {
            Scope::Request => (t.request, t.stream_idle),
            Scope::Backend => (t.backend_request, None),
        };
        ResponseFuture::new(Ok(Deadline {
            inner: self.inner.call(req),
            sleep: limit.map(sleep),
            limit,
            scope: self.scope,
            stream_idle,
        }))
    }
}

pin_project_lite::pin_project! {
    /// A request under its deadline.
    #[derive(Debug)]
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        limit: Option<Duration>,
        scope: Scope,
        stream_idle: Option<Duration>,
    }
}

/// The future of [`Timeout`]: the request under its deadline, or an `internal` refusal when
/// the router did not run above.
pub type ResponseFuture<F> = crate::future::MaybeRejected<Deadline<F>>;

impl<F, T> Future for Deadline<F>
where
    F: Future<Output = Result<T, BoxError>>,
    T: IdleGuard,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(match *this.stream_idle {
                Some(idle) => result.map(|rsp| rsp.guard_idle(idle)),
                None => result,
            });
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            std::task::ready!(sleep.poll(cx));
            let limit = this.limit.unwrap_or_default();
            let err = match this.scope {
                Scope::Request => ProxyError::new(
                    Reason::RequestTimeout,
                    format!("no response within the request timeout of {limit:?}"),
                )
                .with_status(StatusCode::GATEWAY_TIMEOUT),
                Scope::Backend => ProxyError::new(
                    Reason::UpstreamTimeout,
                    format!("the upstream did not answer within {limit:?}"),
                ),
            };
            return Poll::Ready(Err(Box::new(err)));
        }
        Poll::Pending
    }
}
