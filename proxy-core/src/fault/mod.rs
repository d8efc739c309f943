//! Fault injection: failing or slowing a share of a route's requests on purpose, so a team
//! can see how its callers cope (timeouts, retries, fallbacks) without breaking a backend.
//!
//! The [`Policy`] comes from the request's [`RouteContext`] (`fault` on a service or in
//! `routePolicies`). A delayed request waits, then goes on; an aborted one is answered by
//! Skiff with the configured status (for gRPC, a `grpc-status` if one is configured) and
//! `skiff-error: fault-injected`, so nobody takes it for a real failure. The layer sits
//! above retries and the breaker: an injected abort is never retried and never counts
//! against an endpoint, and an injected delay counts towards the request's deadline, as a
//! slow backend would. A request with no policy pays one lookup.

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use crate::body::{self, Body};
use crate::context::RouteContext;
use crate::error::{ProxyError, Reason};
use crate::BoxError;

/// What kind of fault was injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request was answered by Skiff instead of its backend.
    Abort,
    /// The request waited before going on.
    Delay,
}

impl Kind {
    /// Its name in metrics and tap (`abort`, `delay`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Abort => "abort",
            Self::Delay => "delay",
        }
    }
}

/// Told of every fault injected (metrics).
pub trait FaultObserver: Send + Sync + std::fmt::Debug {
    /// A fault of `kind` was injected into a request.
    fn injected(&self, kind: Kind);
}

/// Aborts a share of requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Abort {
    /// The share of requests, 0 to 100 percent.
    pub percent: f64,
    /// The status they are answered with.
    pub status: StatusCode,
    /// For gRPC requests, the `grpc-status` they are answered with (HTTP 200, trailers
    /// only); `None`: `status`, as for other requests.
    pub grpc_status: Option<u16>,
}

/// Delays a share of requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delay {
    /// The share of requests, 0 to 100 percent.
    pub percent: f64,
    /// How long they wait.
    pub duration: Duration,
}

/// A route's faults.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Requests answered by Skiff.
    pub abort: Option<Abort>,
    /// Requests slowed down (before any abort).
    pub delay: Option<Delay>,
    /// Where injected faults are counted.
    pub observer: Option<Arc<dyn FaultObserver>>,
}

/// Whether a draw falls in `percent` of all draws.
fn hit(percent: f64) -> bool {
    // Parts per million: 0.0001% is the finest share.
    let threshold = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u64;
    crate::random_u64() % 1_000_000 < threshold
}

impl Policy {
    fn count(&self, kind: Kind) {
        if let Some(o) = &self.observer {
            o.injected(kind);
        }
    }
}

/// Injects the faults of the request's route into `S`.
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
}

/// Applies [`Fault`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultLayer;

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault { inner }
    }
}

impl<S> Service<Request<Body>> for Fault<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let policy = match RouteContext::of(req.extensions(), "fault") {
            Ok(ctx) => ctx.fault.clone(),
            Err(e) => {
                return ResponseFuture::Faulted {
                    faulted: Box::pin(std::future::ready(Err(e.into()))),
                }
            }
        };
        let Some(policy) = policy else {
            return ResponseFuture::Inner {
                inner: self.inner.call(req),
            };
        };
        let delay = policy.delay.filter(|d| hit(d.percent)).map(|d| d.duration);
        let abort = policy.abort.filter(|a| hit(a.percent));
        if delay.is_none() && abort.is_none() {
            return ResponseFuture::Inner {
                inner: self.inner.call(req),
            };
        }
        let noted = match (delay, abort) {
            (Some(d), Some(a)) => format!("delay:{d:?},abort:{}", a.status.as_u16()),
            (Some(d), None) => format!("delay:{d:?}"),
            (None, Some(a)) => format!("abort:{}", a.status.as_u16()),
            (None, None) => unreachable!("one of them is set"),
        };
        crate::notes::note(req.extensions(), |n| n.fault = Some(noted));
        // The service this layer was readied with goes with the request; a clone stays.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let sleep = delay.map(|d| {
            policy.count(Kind::Delay);
            Box::pin(tokio::time::sleep(d))
        });
        let faulted: Boxed = match abort {
            Some(abort) => {
                policy.count(Kind::Abort);
                Box::pin(Delayed {
                    sleep,
                    then: std::future::ready(aborted(&req, abort)),
                })
            }
            None => Box::pin(Delayed {
                sleep,
                then: inner.oneshot(req),
            }),
        };
        ResponseFuture::Faulted { faulted }
    }
}

pin_project_lite::pin_project! {
    /// Waits out a delay (if any), then runs `then`.
    struct Delayed<F> {
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        #[pin]
        then: F,
    }
}

impl<F: Future> Future for Delayed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Some(sleep) = this.sleep {
            std::task::ready!(sleep.as_mut().poll(cx));
            *this.sleep = None;
        }
        this.then.poll(cx)
    }
}

/// The answer to an aborted request.
fn aborted(req: &Request<Body>, abort: Abort) -> Result<Response<Body>, BoxError> {
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    match abort.grpc_status {
        Some(code) if grpc => {
            // Trailers-only, as a gRPC server answers a call it fails at once.
            let mut rsp = Response::new(body::empty());
            let h = rsp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(code));
            h.insert("grpc-message", HeaderValue::from_static("fault%20injected"));
            h.insert(
                crate::respond::SKIFF_ERROR,
                HeaderValue::from_static(Reason::FaultInjected.as_str()),
            );
            rsp.extensions_mut().insert(Reason::FaultInjected);
            Ok(rsp)
        }
        _ => Err(Box::new(
            ProxyError::new(
                Reason::FaultInjected,
                "the route's fault policy aborted this request",
            )
            .with_status(abort.status),
        )),
    }
}

/// A boxed response future.
type Boxed = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`Fault`]. (Its variants' fields are named by the variants' docs.)
    #[project = Projected]
    #[allow(missing_docs)]
    pub enum ResponseFuture<F> {
        /// No fault: the inner service's future.
        Inner { #[pin] inner: F },
        /// A delayed or aborted request (or a missing route context), boxed: only requests
        /// a fault was drawn for pay for it.
        Faulted { faulted: Boxed },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Inner { .. } => "ResponseFuture::Inner",
            Self::Faulted { .. } => "ResponseFuture::Faulted",
        })
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Inner { inner } => inner.poll(cx),
            Projected::Faulted { faulted } => faulted.as_mut().poll(cx),
        }
    }
}
