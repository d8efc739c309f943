//! Routing: which logical service, and which of its routes, a request is for.
//!
//! [`Route`] asks a [`Resolve`] implementation to route the request (by the authority that
//! [`crate::normalize`] settled on, then by method, path, headers and query): it stores the
//! target and its policies in the request's extensions for the layers below, or refuses the
//! request with `no-route`. [`Table`] is the name lookup most resolvers use: it knows the
//! Kubernetes spellings of a service name. [`RouteSet`] holds a service's HTTP routes in
//! Gateway API precedence order.

mod matcher;
mod table;

use std::task::{Context, Poll};

use http::uri::Authority;
use http::Request;
use tower::{Layer, Service};

use crate::error::ProxyError;
use crate::BoxError;

pub(crate) use matcher::prefix_matches;
pub use matcher::{anchored, Anchor, HttpMatch, PathMatch, RequestHead, RouteSet, ValueMatch};
pub use table::Table;

/// Finds the target of a request. Implemented by the binary over its live configuration, so a
/// reload changes routing for the next request without touching open connections.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves a request with the given authority (none for HTTP/1.0 without `Host`) and
    /// head, storing in `extensions` what the layers below need: the target, and its
    /// policies (a [`crate::retry::Policy`], [`crate::timeout::Timeouts`], limits, a split).
    fn resolve(
        &self,
        authority: Option<&Authority>,
        head: &RequestHead<'_>,
        extensions: &mut http::Extensions,
    ) -> Result<(), ProxyError>;
}

/// Routes requests to the target their authority names.
#[derive(Debug)]
pub struct Route<S, R> {
    inner: S,
    resolver: std::sync::Arc<R>,
}

impl<S: Clone, R> Clone for Route<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            resolver: self.resolver.clone(),
        }
    }
}

/// Applies [`Route`].
#[derive(Debug)]
pub struct RouteLayer<R> {
    resolver: std::sync::Arc<R>,
}

impl<R> Clone for RouteLayer<R> {
    fn clone(&self) -> Self {
        Self {
            resolver: self.resolver.clone(),
        }
    }
}

impl<R> RouteLayer<R> {
    /// A layer routing with `resolver`.
    pub fn new(resolver: std::sync::Arc<R>) -> Self {
        Self { resolver }
    }
}

impl<S, R> Layer<S> for RouteLayer<R> {
    type Service = Route<S, R>;

    fn layer(&self, inner: S) -> Route<S, R> {
        Route {
            inner,
            resolver: self.resolver.clone(),
        }
    }
}

/// The future of [`Route`]: the inner future, or a `no-route` rejection.
pub type ResponseFuture<F> = crate::future::MaybeRejected<F>;

impl<S, R, B> Service<Request<B>> for Route<S, R>
where
    S: Service<Request<B>, Error = BoxError>,
    R: Resolve,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let authority = parts.extensions.get::<Authority>().cloned();
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        let routed = self
            .resolver
            .resolve(authority.as_ref(), &head, &mut parts.extensions);
        let req = Request::from_parts(parts, body);
        ResponseFuture::new(routed.map(|()| self.inner.call(req)))
    }
}
