//! Request normalisation: the HTTP hygiene a proxy owes its upstreams and hyper leaves to us.
//!
//! After [`Normalize`] a request has exactly one authority (in the [`Authority`] extension;
//! the `Host` header is removed and written back by the client side in the upstream's
//! protocol), no hop-by-hop headers, no client-supplied `skiff-*` headers, headers within the
//! configured limits, and a body guarded against decoding errors and stalls. Anything that
//! cannot be normalised is refused with a downstream-blamed [`ProxyError`] before it can reach
//! an upstream.
//!
//! [`Authority`]: http::uri::Authority

mod headers;
#[cfg(test)]
mod tests;

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use tower::{Layer, Service};

use crate::body::{self, Body, Guarded};
use crate::error::ProxyError;
use crate::BoxError;

pub use headers::{strip_hop_by_hop, strip_response_headers, strip_skiff_headers};

/// Marks a request as a WebSocket upgrade (HTTP/1.1 `Upgrade: websocket`), the one upgrade
/// Skiff forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebSocketUpgrade;

/// Header and body limits enforced on every request.
#[derive(Clone, Debug)]
pub struct HeaderLimits {
    /// Most header fields a request may carry (431 beyond).
    pub max_header_count: usize,
    /// Most bytes of header names and values a request may carry (431 beyond).
    pub max_header_bytes: usize,
    /// Longest pause allowed between two frames of a request body.
    pub body_idle_timeout: Duration,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            max_header_count: 100,
            max_header_bytes: 32 * 1024,
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Normalises requests before handing them to `S`.
#[derive(Clone, Debug)]
pub struct Normalize<S> {
    inner: S,
    limits: HeaderLimits,
}

/// Applies [`Normalize`].
#[derive(Clone, Debug)]
pub struct NormalizeLayer {
    limits: HeaderLimits,
}

impl NormalizeLayer {
    /// A layer enforcing `limits`.
    pub fn new(limits: HeaderLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for NormalizeLayer {
    type Service = Normalize<S>;

    fn layer(&self, inner: S) -> Normalize<S> {
        Normalize {
            inner,
            limits: self.limits.clone(),
        }
    }
}

impl<S, B> Service<Request<B>> for Normalize<S>
where
    S: Service<Request<Body>, Error = BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ResponseFuture::new(normalize(req, &self.limits).map(|req| self.inner.call(req)))
    }
}

/// Normalises one request (see the module docs).
pub fn normalize<B>(req: Request<B>, limits: &HeaderLimits) -> Result<Request<Body>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    headers::check_limits(&parts.headers, limits)?;
    headers::check_method(&parts)?;
    let authority = headers::authority(&mut parts)?;
    let upgrade = headers::websocket_upgrade(&parts);
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_skiff_headers(&mut parts.headers);
    if upgrade {
        headers::restore_websocket(&mut parts.headers);
        parts.extensions.insert(WebSocketUpgrade);
    }
    if let Some(authority) = authority {
        parts.extensions.insert(authority);
    }
    // Empty bodies (most GETs) skip the guard: there is nothing to watch.
    let body = if body.is_end_stream() {
        body::empty()
    } else {
        body::boxed(Guarded::new(body, limits.body_idle_timeout))
    };
    // The original version stays: the client side uses it to pick the upstream protocol.
    debug_assert!(parts.version != Version::HTTP_3);
    Ok(Request::from_parts(parts, body))
}

/// The future of [`Normalize`]: the inner future, or the rejection of a malformed request.
pub type ResponseFuture<F> = crate::future::MaybeRejected<F>;
