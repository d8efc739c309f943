//! Where a route's `RequestMirror` copies go: an endpoint of the mirror's service, picked
//! and called as a try of its own would be (its balancer, pools, breaker gates), in a task
//! of its own, at most [`MAX_IN_FLIGHT`] at a time. The outcome is counted
//! (`skiff_mirror_requests_total`) and the response dropped; nothing waits for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use proxy_core::breaker::{Breaker, BreakerLayer};
use proxy_core::filter::MirrorSink;
use proxy_core::{Body, BoxError};
use proxy_metrics::http::HttpFamilies;
use proxy_metrics::mirror::MirrorResult;
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

use crate::routing::{ServiceTarget, Target};
use crate::upstream::forward::Forward;
use crate::upstream::pick::{Pick, PickLayer};
use crate::upstream::pool::Pools;

/// The longest a copy may take before it counts as failed (and is dropped).
const MIRROR_DEADLINE: Duration = Duration::from_secs(10);

/// The most copies in flight to one mirror of one route: beyond it, copies are skipped, so
/// a slow mirror holds a bounded amount of memory and connections.
const MAX_IN_FLIGHT: usize = 100;

/// Sends copies to one service.
pub(crate) struct ServiceMirror {
    route: String,
    backend: String,
    service: Arc<ServiceTarget>,
    send: Pick<Breaker<Forward>>,
    metrics: Arc<HttpFamilies>,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for ServiceMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMirror")
            .field("route", &self.route)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl ServiceMirror {
    /// Copies of `route`'s requests to `service` (named `backend` in the route).
    pub(crate) fn new(
        route: &str,
        backend: &str,
        service: Arc<ServiceTarget>,
        pools: &Arc<Pools>,
        metrics: &Arc<HttpFamilies>,
    ) -> Self {
        // The breaker layer settles the admission the pick takes: without it, a copy that
        // took an endpoint's half-open probe would hold it for ever.
        let send = PickLayer::new(pools.clone()).layer(BreakerLayer.layer(Forward));
        Self {
            route: route.to_owned(),
            backend: backend.to_owned(),
            service,
            send,
            metrics: metrics.clone(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl MirrorSink for ServiceMirror {
    fn send(&self, mut req: Request<Body>) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.skipped();
            return;
        };
        req.extensions_mut()
            .insert(Target::Service(self.service.clone()));
        // Boxed here, where its types are concrete: the compiler cannot prove the pick's
        // future `Send` for every lifetime inside a spawned block.
        let call: Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>> =
            Box::pin(self.send.clone().oneshot(req));
        let metrics = self.metrics.clone();
        let (route, backend) = (self.route.clone(), self.backend.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let answered = tokio::time::timeout(MIRROR_DEADLINE, async move {
                let rsp = call.await?;
                // Read to the end so the connection goes back to its pool.
                http_body_util::BodyExt::collect(rsp.into_body()).await?;
                Ok::<_, BoxError>(())
            })
            .await;
            let result = match answered {
                Ok(Ok(())) => MirrorResult::Answered,
                Ok(Err(_)) | Err(_) => MirrorResult::Failed,
            };
            metrics.mirror().ended(&route, &backend, result);
        });
    }

    fn skipped(&self) {
        self.metrics
            .mirror()
            .ended(&self.route, &self.backend, MirrorResult::Skipped);
    }
}
