//! Circuit breaking per endpoint (failure accrual): an endpoint that keeps failing is ejected
//! for a while, then one probe decides whether it comes back.
//!
//! Each endpoint of a service has a [`Gate`]. Whoever picks the endpoint asks the gate to
//! [`Gate::admit`] the request (an ejected endpoint is skipped; when every endpoint refuses,
//! the request fails fast with 503 `circuit-open`) and puts the [`Admission`] in the
//! request's extensions; [`Breaker`] then records the outcome there, classified by the shared
//! default [`Classifier`] (responses and errors alike). Failures the client caused (a
//! malformed body, say) are not held against the endpoint.
//!
//! States use the standard names: Closed (traffic flows), Open (ejected), HalfOpen (one
//! probe in flight). The pure state machine is in [`state`].

pub mod state;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::Body;
use crate::classify::Classifier;
use crate::error::{find_cause, Blame, ProxyError};
use crate::BoxError;

pub use state::{FailureRate, Settings, State, Transition};

/// Told about state changes, for metrics.
pub trait BreakerObserver: Send + Sync + std::fmt::Debug {
    /// The gate of `endpoint` changed to `to`.
    fn transition(&self, endpoint: &str, to: State);
}

/// One endpoint's circuit breaker, shared by the picker and [`Breaker`].
#[derive(Debug)]
pub struct Gate {
    endpoint: String,
    machine: Mutex<state::Machine>,
    observer: Arc<dyn BreakerObserver>,
}

impl Gate {
    /// A closed gate for `endpoint` (its name in logs and metrics).
    pub fn new(endpoint: String, settings: Settings, observer: Arc<dyn BreakerObserver>) -> Self {
        observer.transition(&endpoint, State::Closed);
        Self {
            endpoint,
            machine: Mutex::new(state::Machine::new(settings)),
            observer,
        }
    }

    /// Admits a request to the endpoint now, or refuses (`None`) while it is ejected.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let (generation, transition) = self.lock().admit(Instant::now());
        self.announce(transition);
        generation.map(|generation| Admission {
            gate: self.clone(),
            generation,
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lock().state()
    }

    fn record(&self, success: bool, generation: u64) {
        let transition = self
            .lock()
            .record(success, generation, Instant::now(), jitter);
        self.announce(transition);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, state::Machine> {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn announce(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        tracing::info!(endpoint = %self.endpoint, state = t.to.as_str(), reason = %t.reason, "circuit breaker");
        self.observer.transition(&self.endpoint, t.to);
    }
}

fn jitter() -> f64 {
    (crate::random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A request let through a [`Gate`]: where [`Breaker`] records its outcome.
#[derive(Clone, Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    generation: u64,
}

impl Admission {
    fn record(self, success: bool) {
        self.gate.record(success, self.generation);
    }

    fn release(self) {
        self.gate.lock().release(self.generation);
    }
}

/// Records each request's outcome on the [`Admission`] found in its extensions.
#[derive(Clone, Debug)]
pub struct Breaker<S> {
    inner: S,
}

/// Applies [`Breaker`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BreakerLayer;

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker { inner }
    }
}

impl<S, B> Service<Request<B>> for Breaker<S>
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
        let admission = req.extensions().get::<Admission>().cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            outcome: Outcome { admission },
        }
    }
}

/// Releases an admitted request's slot if it ends without an outcome.
#[derive(Debug)]
struct Outcome {
    admission: Option<Admission>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.release();
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Breaker`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        outcome: Outcome,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(admission) = this.outcome.admission.take() {
            match &result {
                Ok(rsp) => {
                    let class = Classifier::standard().classify_response(rsp);
                    admission.record(class.is_success());
                }
                Err(e) => match find_cause::<ProxyError>(e.as_ref()).map(ProxyError::blame) {
                    // The client's own failures say nothing about the endpoint.
                    Some(Blame::Downstream) => admission.release(),
                    _ => {
                        let class = Classifier::standard().classify_error(e.as_ref());
                        admission.record(class.is_success());
                    }
                },
            }
        }
        Poll::Ready(result)
    }
}
