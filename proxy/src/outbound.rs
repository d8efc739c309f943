//! The outbound direction: the application's calls to other services.
//!
//! [`stack`] is the whole request path, one `ServiceBuilder` chain read top to bottom, boxed
//! once. Stacks are built per connection from the config of the moment, so limits changed by
//! a reload apply to new connections while routing changes apply to the very next request.
//! Outbound connections are plaintext from the application; see `server/` for how
//! they are accepted and detected.

use std::net::SocketAddr;

use proxy_core::breaker::BreakerLayer;
use proxy_core::fault::FaultLayer;
use proxy_core::filter::FilterLayer;
use proxy_core::limit::{Client, LimitLayer};
use proxy_core::normalize::NormalizeLayer;
use proxy_core::respond::RespondLayer;
use proxy_core::retry::RetryLayer;
use proxy_core::route::RouteLayer;
use proxy_core::split::SplitLayer;
use proxy_core::timeout::TimeoutLayer;
use proxy_metrics::http::MetricsLayer;
use tower::util::BoxCloneService;
use tower::ServiceBuilder;

use crate::routing::State;
use crate::server::{mark_connection, normalize_limits, HttpService};
use crate::upstream::forward::Forward;
use crate::upstream::pick::PickLayer;

/// The outbound chain for one connection, from `client`, redirected from `orig_dst`
/// (transparent mode) or made straight to the listener (`None`).
pub fn stack(
    state: &State,
    client: Client,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
) -> HttpService {
    let side = &state.outbound;
    // Each layer's comment says what it reads from the request and what it leaves for the
    // layers below; `ctx` is the `RouteContext` the router writes.
    let chain = ServiceBuilder::new()
        // Writes `Client` and `OriginalDst`.
        .map_request(mark_connection(client, orig_dst))
        // Writes the `MetricsSlot` (and `Notes` while tapped or traced); reads and writes
        // the trace context headers; reads `Reason` on responses.
        .layer(MetricsLayer::new(side.unrouted.clone(), side.observe.clone()).with_peer(peer))
        // Turns a `ProxyError` into the response the client sees (`skiff-error`).
        .layer(RespondLayer)
        // Writes the request's `Authority`.
        .layer(NormalizeLayer::new(normalize_limits(&state.spec.load())))
        // Reads `Authority`, `OriginalDst`; writes `ctx` and starts the `MetricsSlot`.
        .layer(RouteLayer::new(side.resolver.clone()))
        // Reads `ctx.filters`: answers a redirect, or rewrites and changes headers once.
        .layer(FilterLayer::rule())
        // Reads `ctx.limits` and `Client`.
        .layer(LimitLayer)
        // Reads `ctx.timeouts.request`.
        .layer(TimeoutLayer::request())
        // Reads `ctx.fault`: delays or answers a share of requests on purpose (above
        // retries, so an injected abort is never retried).
        .layer(FaultLayer)
        // Reads `ctx.retry`; each try below runs again from here.
        .layer(RetryLayer)
        // Reads `ctx.backends`; writes the drawn `Target` and its `BackendFilters`.
        .layer(SplitLayer)
        // Reads `BackendFilters`: the drawn backend's header changes, on each try.
        .layer(FilterLayer::backend())
        // Reads `Target`; writes the `Endpoint` and the breaker's `Admission`.
        .layer(PickLayer::new(state.pools.clone()))
        // Reads `Admission`.
        .layer(BreakerLayer)
        // Reads `ctx.timeouts.backend_request`.
        .layer(TimeoutLayer::backend())
        // Reads the `Endpoint`; sends the request over its pool.
        .service(Forward);
    BoxCloneService::new(chain)
}
