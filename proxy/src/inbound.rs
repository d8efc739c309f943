//! The inbound direction: other workloads' calls to the local application.
//!
//! [`stack`] is the whole request path, one `ServiceBuilder` chain read top to bottom, boxed
//! once. Connection policy lives in `server/`: with a mesh identity, inbound
//! connections may be mutual TLS (the caller's SPIFFE ID becomes the request's
//! [`Client::Identity`]); with `mtls: strict` plaintext connections are closed.

use std::net::SocketAddr;

use http::Request;
use hyper::body::Incoming;
use proxy_core::authz::AuthorizeLayer;
use proxy_core::limit::{Client, LimitLayer};
use proxy_core::normalize::NormalizeLayer;
use proxy_core::respond::RespondLayer;
use proxy_core::route::RouteLayer;
use proxy_core::split::SplitLayer;
use proxy_metrics::http::MetricsLayer;
use tower::util::BoxCloneService;
use tower::ServiceBuilder;

use crate::routing::State;
use crate::server::{mark_connection, normalize_limits, HttpService};
use crate::upstream::forward::Forward;
use crate::upstream::pick::PickLayer;

/// The inbound chain for one connection, from `client`, sent to `orig_dst`'s port on the
/// application when the connection was redirected.
pub fn stack(
    state: &State,
    client: Client,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
) -> HttpService {
    let side = &state.inbound;
    // The app's series for this connection's caller (by identity, when meshed).
    let peer_metrics = side.resolver.peer_metrics(&client);
    // Each layer's comment says what it reads from the request and what it leaves for the
    // layers below; `ctx` is the `RouteContext` the router writes.
    let chain = ServiceBuilder::new()
        // Writes `Client` (the caller's address, or its verified identity) and `OriginalDst`.
        .map_request(mark_connection(client, orig_dst))
        // Writes the `MetricsSlot` (and `Notes` while tapped or traced); reads and writes
        // the trace context headers; reads `Reason` on responses.
        .layer(MetricsLayer::new(side.unrouted.clone(), side.observe.clone()).with_peer(peer))
        // Writes `PeerMetrics`: the app's series for this connection's caller.
        .map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(peer_metrics.clone());
            req
        })
        // Turns a `ProxyError` into the response the client sees (`skiff-error`).
        .layer(RespondLayer)
        // Writes the request's `Authority`.
        .layer(NormalizeLayer::new(normalize_limits(&state.spec.load())))
        // Reads `Client`: TrafficTarget authorization (403 `forbidden`).
        .layer(AuthorizeLayer::new(
            state.authz.clone(),
            state.metrics.identity.clone(),
        ))
        // Reads `OriginalDst` and `PeerMetrics`; writes `ctx` (the app, or the app's port
        // the connection was redirected to) and starts the `MetricsSlot`.
        .layer(RouteLayer::new(side.resolver.clone()))
        // Reads `ctx.limits` and `Client`.
        .layer(LimitLayer)
        // Reads `ctx.backends` (the app); writes the `Target`.
        .layer(SplitLayer)
        // Reads `Target`; writes the `Endpoint`.
        .layer(PickLayer::new(state.pools.clone()))
        // Reads the `Endpoint`; sends the request to the app.
        .service(Forward);
    BoxCloneService::new(chain)
}
