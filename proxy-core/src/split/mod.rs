//! Weighted traffic split: SMI `TrafficSplit` backends and Gateway API weighted
//! `backendRefs`.
//!
//! The router stores the matched route's [`Backends`] in the request's [`RouteContext`];
//! [`Split`] draws one backend per try, in proportion to the relative integer weights, and
//! stores its target for the picker below. It sits below retries, so a retry draws again and may land on
//! another backend. A backend with weight 0 gets nothing; a drawn backend that names no
//! configured service answers 500 `invalid-backend`, as Gateway API requires.

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::context::RouteContext;
use crate::error::{ProxyError, Reason};
use crate::filter::{BackendFilters, Filters};
use crate::BoxError;

/// One backend of a split.
#[derive(Debug)]
pub struct Backend<T> {
    /// Its name in config (for errors and logs).
    pub name: String,
    /// Its relative weight.
    pub weight: u32,
    /// Its target, or `None` when the name refers to no configured service.
    pub target: Option<T>,
    /// Its own filters (Gateway API `backendRefs[].filters`), applied to each try sent to
    /// it; `None`: none.
    pub filters: Option<Arc<Filters>>,
}

/// The backends of one route, with their weights.
#[derive(Debug)]
pub struct Backends<T> {
    entries: Vec<Backend<T>>,
    total: u64,
    // A plain service's one backend: no draw, no note.
    single: bool,
}

impl<T> Backends<T> {
    /// A split over `entries`.
    pub fn new(entries: Vec<Backend<T>>) -> Self {
        let total = entries.iter().map(|b| u64::from(b.weight)).sum();
        Self {
            entries,
            total,
            single: false,
        }
    }

    /// The one backend of a request sent to a service (no route, no split): `target`.
    pub fn single(name: impl Into<String>, target: T) -> Self {
        Self {
            entries: vec![Backend {
                name: name.into(),
                weight: 1,
                target: Some(target),
                filters: None,
            }],
            total: 1,
            single: true,
        }
    }

    /// The backends, in config order.
    pub fn entries(&self) -> &[Backend<T>] {
        &self.entries
    }

    /// The backend a uniform `draw` lands on.
    pub fn pick(&self, draw: u64) -> Result<&Backend<T>, ProxyError> {
        if self.total == 0 {
            return Err(ProxyError::new(
                Reason::InvalidBackend,
                "every backend of the route has weight 0",
            ));
        }
        let mut point = draw % self.total;
        for backend in &self.entries {
            let weight = u64::from(backend.weight);
            if point < weight {
                return Ok(backend);
            }
            point -= weight;
        }
        unreachable!("the draw is below the total weight")
    }
}

/// A route's backends as the split sees them, whatever their target type: the router stores
/// them in the [`RouteContext`] as `Arc<dyn Draw>`, so only the picker below needs to know
/// what a target is.
pub trait Draw: fmt::Debug + Send + Sync {
    /// Draws one backend with the uniform `draw`, notes its name, and stores its target in
    /// `extensions` for the picker.
    fn draw_into(&self, draw: u64, extensions: &mut http::Extensions) -> Result<(), ProxyError>;

    /// The backends as their concrete type, for code that knows it (tests, admin views).
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<T: Clone + fmt::Debug + Send + Sync + 'static> Draw for Backends<T> {
    fn draw_into(&self, draw: u64, extensions: &mut http::Extensions) -> Result<(), ProxyError> {
        let backend = match self.entries.as_slice() {
            // A plain service: nothing to draw, and nothing worth noting.
            [only] if self.single => only,
            _ => {
                let b = self.pick(draw)?;
                crate::notes::note(extensions, |n| n.backend = Some(b.name.clone()));
                b
            }
        };
        let target = backend.target.clone().ok_or_else(|| {
            ProxyError::new(
                Reason::InvalidBackend,
                format!("backend {} is not a configured service", backend.name),
            )
        })?;
        extensions.insert(target);
        // A retry draws again: the last try's backend filters must not stay behind.
        match &backend.filters {
            Some(filters) => extensions.insert(BackendFilters(filters.clone())),
            None => extensions.remove::<BackendFilters>(),
        };
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Draws a backend of the request's route for each try, then calls `S`.
#[derive(Clone, Debug)]
pub struct Split<S> {
    inner: S,
}

/// Applies [`Split`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SplitLayer;

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;

    fn layer(&self, inner: S) -> Split<S> {
        Split { inner }
    }
}

/// The future of [`Split`]: the inner future, or an `invalid-backend` (or `internal`)
/// rejection.
pub type ResponseFuture<F> = crate::future::MaybeRejected<F>;

impl<S, B> Service<Request<B>> for Split<S>
where
    S: Service<Request<B>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The backends are shared with the context (one reference count): the draw writes
        // into the extensions the context lives in.
        let backends = RouteContext::of(req.extensions(), "split").map(|ctx| ctx.backends.clone());
        let drawn = backends.and_then(|b| b.draw_into(crate::random_u64(), req.extensions_mut()));
        ResponseFuture::new(drawn.map(|()| self.inner.call(req)))
    }
}
