//! The inbound direction: other workloads' calls to the local application.
//!
//! [`stack`] is the whole request path, one `ServiceBuilder` chain read top to bottom, boxed
//! once. Connection policy lives in [`crate::server`]: with a mesh identity, inbound
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
use proxy_metrics::http::MetricsLayer;
use tower::util::BoxCloneService;
use tower::ServiceBuilder;

use crate::routing::State;
use crate::server::{mark_connection, normalize_limits, HttpService};
use crate::upstream::forward::Forward;
use crate::upstream::pick::PickLayer;

/// The inbound chain for one connection, from `client`, sent to `orig_dst`'s port on the
/// application when the connection was redirected.
pub fn stack(state: &State, client: Client, orig_dst: Option<SocketAddr>) -> HttpService {
    let side = &state.inbound;
    // A meshed caller's requests are also counted on the app's per-caller series.
    let peer_metrics = match &client {
        Client::Identity(id) => Some(side.resolver.peer_metrics(id)),
        _ => None,
    };
    let chain = ServiceBuilder::new()
        .map_request(mark_connection(client, orig_dst))
        .layer(MetricsLayer::new(
            side.unrouted.clone(),
            side.observe.clone(),
        ))
        .map_request(move |mut req: Request<Incoming>| {
            if let Some(m) = &peer_metrics {
                req.extensions_mut().insert(m.clone());
            }
            req
        })
        .layer(RespondLayer)
        .layer(NormalizeLayer::new(normalize_limits(&state.spec.load())))
        .layer(AuthorizeLayer::new(
            state.authz.clone(),
            state.metrics.identity.clone(),
        ))
        .layer(RouteLayer::new(side.resolver.clone()))
        .layer(LimitLayer)
        .layer(PickLayer::new(state.pools.clone()))
        .service(Forward);
    BoxCloneService::new(chain)
}
