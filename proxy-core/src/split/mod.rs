//! Weighted traffic split: SMI `TrafficSplit` backends and Gateway API weighted
//! `backendRefs`.
//!
//! The router stores the matched route's [`Backends`] in the request's extensions; [`Split`]
//! draws one backend per try, in proportion to the relative integer weights, and stores its
//! target for the picker below. It sits below retries, so a retry draws again and may land on
//! another backend. A backend with weight 0 gets nothing; a drawn backend that names no
//! configured service answers 500 `invalid-backend`, as Gateway API requires.

#[cfg(test)]
mod tests;

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::error::{ProxyError, Reason};
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
}

/// The backends of one route, with their weights.
#[derive(Debug)]
pub struct Backends<T> {
    entries: Vec<Backend<T>>,
    total: u64,
}

impl<T> Backends<T> {
    /// A split over `entries`.
    pub fn new(entries: Vec<Backend<T>>) -> Self {
        let total = entries.iter().map(|b| u64::from(b.weight)).sum();
        Self { entries, total }
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

/// Draws a backend for each request carrying [`Backends`], then calls `S`.
#[derive(Debug)]
pub struct Split<S, T> {
    inner: S,
    _target: PhantomData<fn() -> T>,
}

impl<S: Clone, T> Clone for Split<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _target: PhantomData,
        }
    }
}

/// Applies [`Split`] for targets of type `T`.
#[derive(Debug)]
pub struct SplitLayer<T>(PhantomData<fn() -> T>);

impl<T> SplitLayer<T> {
    /// A split layer for targets of type `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for SplitLayer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for SplitLayer<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<S, T> Layer<S> for SplitLayer<T> {
    type Service = Split<S, T>;

    fn layer(&self, inner: S) -> Split<S, T> {
        Split {
            inner,
            _target: PhantomData,
        }
    }
}

/// The future of [`Split`]: the inner future, or an `invalid-backend` rejection.
pub type ResponseFuture<F> = crate::future::MaybeRejected<F>;

impl<S, T, B> Service<Request<B>> for Split<S, T>
where
    S: Service<Request<B>, Error = BoxError>,
    T: Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(backends) = req.extensions().get::<Arc<Backends<T>>>().cloned() else {
            return ResponseFuture::new(Ok(self.inner.call(req)));
        };
        let chosen = backends.pick(crate::random_u64()).and_then(|b| {
            crate::notes::note(req.extensions(), |n| n.backend = Some(b.name.clone()));
            b.target.clone().ok_or_else(|| {
                ProxyError::new(
                    Reason::InvalidBackend,
                    format!("backend {} is not a configured service", b.name),
                )
            })
        });
        ResponseFuture::new(chosen.map(|target| {
            req.extensions_mut().insert(target);
            self.inner.call(req)
        }))
    }
}
