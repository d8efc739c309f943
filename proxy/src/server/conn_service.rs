//! Hands a connection's requests to its tower stack. hyper calls services through `&self`
//! and tower through `&mut self`; hyper-util's adapter bridges the two by cloning the whole
//! stack for every request, which for a boxed stack is an allocation and a reference-count
//! update per layer. One stack per connection behind an (uncontended) lock does the same
//! job without either.

use std::sync::{Mutex, PoisonError};
use std::task::{Context, Waker};

use http::Request;
use hyper::body::Incoming;
use tower::Service;

/// A connection's stack, callable by hyper.
#[derive(Debug)]
pub(crate) struct ConnService<S>(Mutex<S>);

impl<S> ConnService<S> {
    /// Serves a connection with `stack`.
    pub(crate) fn new(stack: S) -> Self {
        Self(Mutex::new(stack))
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut stack = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Every layer of Skiff's stacks is ready at once: none holds capacity for a request
        // between `poll_ready` and `call`, and limits and breakers refuse a request in `call`
        // with a response that says why. Readiness is still asked for, as tower requires,
        // with a waker nobody needs.
        if stack
            .poll_ready(&mut Context::from_waker(Waker::noop()))
            .is_pending()
        {
            tracing::error!("a connection's stack was not ready; calling it anyway");
        }
        stack.call(req)
    }
}
