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
use std::task::{Context, Poll};

use http::uri::Authority;
use http::{Request, Response};
use proxy_core::balance;
use proxy_core::breaker::Admission;
use proxy_core::error::find_cause;
use proxy_core::{Body, BoxError, BoxHttpService, ProxyError, Reason};
use tower::{Layer, Service};

use crate::client::Pools;
use crate::endpoints::Endpoint;
use crate::forward::prime_chunked;
use crate::target::{Service as TargetService, Target};

/// Picks an endpoint, then calls the service below.
#[derive(Clone, Debug)]
pub struct Pick {
    inner: BoxHttpService,
    pools: Arc<Pools>,
}

/// Applies [`Pick`].
#[derive(Clone, Debug)]
pub struct PickLayer {
    pools: Arc<Pools>,
}

impl PickLayer {
    /// Passthrough targets draw their pools from `pools`.
    pub fn new(pools: Arc<Pools>) -> Self {
        Self { pools }
    }
}

impl<S> Layer<S> for PickLayer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Service = Pick;

    fn layer(&self, inner: S) -> Pick {
        Pick {
            inner: BoxHttpService::new(inner),
            pools: self.pools.clone(),
        }
    }
}

impl Service<Request<Body>> for Pick {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let pools = self.pools.clone();
        Box::pin(async move {
            let target = req.extensions().get::<Target>().cloned().ok_or_else(|| {
                ProxyError::new(Reason::Internal, "request reached the picker unrouted")
            })?;
            // Before an endpoint is chosen: a client slow to send its first chunk must not
            // count against the endpoint's breaker, latency or per-try deadline.
            let mut req = prime_chunked(req).await?;
            let (endpoint, admission) = match &target {
                Target::Service(service) => choose(service)?,
                Target::Passthrough { authority } => {
                    let endpoint = Endpoint {
                        pool: pools.get(resolve(authority).await?),
                        gate: None,
                        load: Default::default(),
                    };
                    (Arc::new(endpoint), None)
                }
            };
            proxy_core::notes::note(req.extensions(), |n| {
                n.tries += 1;
                n.endpoint = Some(endpoint.pool.addr());
                n.breaker = endpoint.gate.as_ref().map(|g| g.state().as_str());
            });
            if let Some(admission) = admission {
                req.extensions_mut().insert(admission);
            }
            req.extensions_mut().insert(endpoint.clone());
            let flight = endpoint.load.start();
            let result = inner.call(req).await;
            // Responses and timeouts say how slow the endpoint is; a refused connection says
            // it is unusable, and is charged a penalty so P2C steers away from it.
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
            drop(flight);
            result
        })
    }
}

fn choose(service: &TargetService) -> Result<(Arc<Endpoint>, Option<Admission>), ProxyError> {
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
