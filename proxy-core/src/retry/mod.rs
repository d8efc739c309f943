//! Retries: a failed try is sent again, within limits that keep a failing upstream from being
//! hammered.
//!
//! The [`Policy`] comes from the request's [`RouteContext`] (the router's choice for the
//! route or service); a route without one is tried once. A retry happens only when:
//! - the result is retryable (see [`Policy::is_retryable`]: connect failures always, since
//!   nothing was sent; resets, per-try timeouts and the configured statuses only for
//!   idempotent methods, gRPC, or when `nonIdempotent` is set),
//! - the request body could be kept for replay (empty, or a known length up to
//!   [`Policy::max_replay_bytes`]; a larger or streamed body is sent once, never truncated),
//! - tries remain, and the budget allows another (retries add at most the configured ratio of
//!   extra load).
//!
//! The decision is made on the response headers, before anything reaches the client, so a
//! response that has started streaming is never retried.

mod policy;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use crate::body::{self, Body};
use crate::context::RouteContext;
use crate::error::ProxyError;
use crate::{BoxError, BoxHttpService};

pub use policy::{Backoff, BudgetParams, Policy, RetryObserver, DEFAULT_MAX_REPLAY_BYTES};

/// Retries requests to the inner service under their [`Policy`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
}

/// Applies [`Retry`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryLayer;

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Retry`].
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on variant fields
    #[project = Proj]
    pub enum ResponseFuture<F> {
        /// No retry policy: the one try, as it is.
        Once { #[pin] inner: F },
        /// No route context: refused (`internal`).
        Refused { error: Option<ProxyError> },
        /// Tries under a policy.
        Retrying { inner: Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            Proj::Once { inner } => inner.poll(cx),
            Proj::Refused { error } => Poll::Ready(Err(Box::new(
                error.take().expect("polled after completion"),
            ))),
            Proj::Retrying { inner } => inner.as_mut().poll(cx),
        }
    }
}

impl<S> Service<Request<Body>> for Retry<S>
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
        let policy = match RouteContext::of(req.extensions(), "retry") {
            Ok(ctx) => ctx.retry.clone(),
            Err(e) => return ResponseFuture::Refused { error: Some(e) },
        };
        let Some(policy) = policy else {
            return ResponseFuture::Once {
                inner: self.inner.call(req),
            };
        };
        // The loop outlives this call: it takes the service made ready, and leaves a clone
        // (made ready in turn) for the next request.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        // Boxed: the loop is generic code the compiler cannot prove `Send` for every
        // inner service (a limitation with higher-ranked lifetimes in async functions).
        ResponseFuture::Retrying {
            inner: Box::pin(run(BoxHttpService::new(ready), req, policy)),
        }
    }
}

async fn run(
    mut svc: BoxHttpService,
    req: Request<Body>,
    policy: Arc<Policy>,
) -> Result<Response<Body>, BoxError> {
    policy.deposit();
    let (parts, b) = req.into_parts();
    let bytes = match replayable(b, policy.max_replay_bytes).await? {
        Ok(bytes) => bytes,
        Err(streaming) => return svc.call(Request::from_parts(parts, streaming)).await,
    };
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let idempotent = policy.non_idempotent || grpc || parts.method.is_idempotent();

    let mut retries = 0;
    loop {
        let attempt = Request::from_parts(parts.clone(), body::full(bytes.clone()));
        let result = svc.call(attempt).await;
        if retries >= policy.retries
            || !policy.is_retryable(&result, idempotent)
            || !policy.withdraw()
        {
            return result;
        }
        retries += 1;
        drop(result);
        tokio::time::sleep(policy.backoff.delay(retries)).await;
        svc.ready().await?;
    }
}

/// The body's bytes if it can be replayed (`Ok`), or the body untouched (`Err`).
async fn replayable(b: Body, max: usize) -> Result<Result<Bytes, Body>, BoxError> {
    if b.is_end_stream() {
        return Ok(Ok(Bytes::new()));
    }
    match b.size_hint().exact() {
        Some(n) if n <= max as u64 => Ok(Ok(b.collect().await?.to_bytes())),
        _ => Ok(Err(b)),
    }
}
