//! Retries: a failed try is sent again, within limits that keep a failing upstream from being
//! hammered.
//!
//! The [`Policy`] comes from the request's extensions (the router puts the target's policy
//! there); a request without one passes straight through. A retry happens only when:
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
use crate::{BoxError, BoxHttpService};

pub use policy::{Backoff, BudgetParams, Policy, RetryObserver, DEFAULT_MAX_REPLAY_BYTES};

/// Retries requests to the inner service under their [`Policy`].
#[derive(Clone, Debug)]
pub struct Retry {
    inner: BoxHttpService,
}

/// Applies [`Retry`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryLayer;

impl<S> Layer<S> for RetryLayer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Service = Retry;

    fn layer(&self, inner: S) -> Retry {
        Retry {
            inner: BoxHttpService::new(inner),
        }
    }
}

/// The future of [`Retry`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl Service<Request<Body>> for Retry {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        let Some(policy) = req.extensions().get::<Arc<Policy>>().cloned() else {
            return self.inner.call(req);
        };
        // The loop outlives this call: it takes the service made ready, and leaves a clone
        // (made ready in turn) for the next request.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(run(ready, req, policy))
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
