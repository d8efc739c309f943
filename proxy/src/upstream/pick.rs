//! Picking the endpoint for one try, with the service's balancing strategy (P2C over
//! peak-EWMA by default), skipping any endpoint whose circuit breaker has ejected it. The
//! chosen [`Endpoint`] (and its breaker admission) go in the request's extensions for the breaker
//! and the forwarder below; the try's latency feeds the endpoint's load.
//!
//! Sits below retries, so each retry picks again and usually lands elsewhere.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use pin_project_lite::pin_project;
use proxy_core::balance::{self, InFlight, Load};
use proxy_core::breaker::Admission;
use proxy_core::error::find_cause;
use proxy_core::future::MaybeRejected;
use proxy_core::{Body, BoxError, BoxHttpService, ProxyError, Reason};
use proxy_metrics::http::MetricsSlot;
use tower::{Layer, Service};

use crate::discovery::endpoints::Endpoint;
use crate::routing::{ServiceTarget, Target};
use crate::upstream::forward::{needs_priming, prime_chunked};
use crate::upstream::pool::Pools;

/// Picks an endpoint, then calls the service below.
#[derive(Clone, Debug)]
pub(crate) struct Pick<S> {
    inner: S,
    pools: Arc<Pools>,
}

/// Applies [`Pick`].
#[derive(Clone, Debug)]
pub(crate) struct PickLayer {
    pools: Arc<Pools>,
}

impl PickLayer {
    /// Passthrough targets draw their pools from `pools`.
    pub(crate) fn new(pools: Arc<Pools>) -> Self {
        Self { pools }
    }
}

impl<S> Layer<S> for PickLayer {
    type Service = Pick<S>;

    fn layer(&self, inner: S) -> Pick<S> {
        Pick {
            inner,
            pools: self.pools.clone(),
        }
    }
}

impl<S> Service<Request<Body>> for Pick<S>
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Most requests are to a service and carry no chunked body to look at first: the
        // endpoint is picked here and the call goes straight on, with nothing boxed.
        let Some(target) = req.extensions().get::<Target>().cloned() else {
            let e = ProxyError::new(Reason::Internal, "request reached the picker unrouted");
            return MaybeRejected::new(Err(e));
        };
        if let Target::Service(service) = &target {
            if !needs_priming(&req) && service.endpoints.is_synced() {
                return match choose(service) {
                    Ok((endpoint, admission)) => {
                        let flight = send_to(&mut req, endpoint, admission);
                        MaybeRejected::new(Ok(Picked::Direct {
                            inner: self.inner.call(req),
                            flight: Some(flight),
                        }))
                    }
                    Err(e) => MaybeRejected::new(Err(e)),
                };
            }
        }
        // The rest (passthrough names to resolve, chunked bodies to prime) wait first, so
        // they take a ready clone of the inner service along.
        let clone = self.inner.clone();
        let inner = BoxHttpService::new(std::mem::replace(&mut self.inner, clone));
        let pools = self.pools.clone();
        let inner = Box::pin(pick_later(inner, pools, target, req));
        MaybeRejected::new(Ok(Picked::Slow { inner }))
    }
}

/// How long a request to a service whose endpoints are not known yet (a Kubernetes Service
/// called for the first time, or after being idle) waits for the first answer before
/// 503 `no-endpoints`.
pub(crate) const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(5);

async fn pick_later(
    mut inner: BoxHttpService,
    pools: Arc<Pools>,
    target: Target,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    // Before an endpoint is chosen: a client slow to send its first chunk must not count
    // against the endpoint's breaker, latency or per-try deadline.
    let mut req = prime_chunked(req).await?;
    let (endpoint, admission) = match target {
        Target::Service(service) => {
            // Endpoints watched from the first request: wait (bounded) for their answer.
            service.endpoints.synced(FIRST_ANSWER_WAIT).await;
            choose(&service)?
        }
        Target::Passthrough { authority } => {
            let endpoint = Endpoint {
                pool: pools.get(resolve(&authority).await?),
                gate: None,
                load: Default::default(),
                destination: None,
            };
            (Arc::new(endpoint), None)
        }
    };
    let flight = send_to(&mut req, endpoint, admission);
    let result = inner.call(req).await;
    settle(&result, &flight);
    result
}

/// Records the pick on the request (for the breaker, the forwarder and tap) and starts
/// counting the request against the endpoint's load.
fn send_to(
    req: &mut Request<Body>,
    endpoint: Arc<Endpoint>,
    admission: Option<Admission>,
) -> InFlight<EndpointLoad> {
    proxy_core::notes::note(req.extensions(), |n| {
        n.tries += 1;
        n.endpoint = Some(endpoint.pool.addr());
        n.peer_identity = endpoint.pool.peer_id().map(|id| id.to_string().into());
        n.breaker = endpoint.gate.as_ref().map(|g| g.state().as_str());
    });
    if let (Some(dst), Some(slot)) = (&endpoint.destination, req.extensions().get::<MetricsSlot>())
    {
        slot.endpoint(dst);
    }
    if let Some(admission) = admission {
        req.extensions_mut().insert(admission);
    }
    req.extensions_mut().insert(endpoint.clone());
    InFlight::start(EndpointLoad(endpoint))
}

/// Responses and timeouts say how slow the endpoint is; a refused connection says it is
/// unusable, and is charged a penalty so P2C steers away from it.
fn settle(result: &Result<Response<Body>, BoxError>, flight: &InFlight<EndpointLoad>) {
    let failure = result
        .as_ref()
        .err()
        .and_then(|e| find_cause::<ProxyError>(e.as_ref()))
        .map(ProxyError::reason);
    match failure {
        None | Some(Reason::UpstreamTimeout) => flight.observe(),
        Some(Reason::UpstreamConnect) => flight.penalize(),
        Some(_) => {}
    }
}

/// An endpoint's load, held through the endpoint so it can live in a future.
#[derive(Debug)]
pub(crate) struct EndpointLoad(Arc<Endpoint>);

impl std::ops::Deref for EndpointLoad {
    type Target = Load;

    fn deref(&self) -> &Load {
        &self.0.load
    }
}

/// The future of [`Pick`]: refused on the spot (no endpoint to try), or [`Picked`].
pub(crate) type ResponseFuture<F> = MaybeRejected<Picked<F>>;

/// A boxed response future, for the picks that wait first.
type BoxResponse = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

pin_project! {
    /// A request on its way to the endpoint picked for it.
    #[project = Proj]
    pub enum Picked<F> {
        /// Sent at once.
        Direct { #[pin] inner: F, flight: Option<InFlight<EndpointLoad>> },
        /// Waiting for something before the pick.
        Slow { inner: BoxResponse },
    }
}

impl<F> Future for Picked<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Direct { inner, flight } => {
                let result = ready!(inner.poll(cx));
                if let Some(flight) = flight.take() {
                    settle(&result, &flight);
                }
                Poll::Ready(result)
            }
            Proj::Slow { inner } => inner.as_mut().poll(cx),
        }
    }
}

pub(crate) fn choose(
    service: &ServiceTarget,
) -> Result<(Arc<Endpoint>, Option<Admission>), ProxyError> {
    let (list, turn) = service.endpoints.snapshot();
    if list.is_empty() {
        return Err(ProxyError::new(
            Reason::NoEndpoints,
            format!("service {} has no endpoints", service.name),
        ));
    }
    let mut admission = None;
    let admit = |e: &Arc<Endpoint>| match &e.gate {
        None => true,
        Some(gate) => {
            admission = gate.admit();
            admission.is_some()
        }
    };
    let chosen = balance::choose(service.balance, &list, turn, |e| &e.load, admit).cloned();
    chosen.map(|e| (e, admission)).ok_or_else(|| {
        ProxyError::new(
            Reason::CircuitOpen,
            format!(
                "every endpoint of service {} is ejected by its circuit breaker",
                service.name
            ),
        )
    })
}

/// Resolves a passthrough authority (port 80 when none is given).
async fn resolve(authority: &Authority) -> Result<SocketAddr, ProxyError> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            ProxyError::new(
                Reason::UpstreamConnect,
                format!("cannot resolve passthrough authority {authority}"),
            )
        })
}
