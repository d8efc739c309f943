//! The outbound direction: the application's calls to other services.
//!
//! [`stack`] is the whole request path, one `ServiceBuilder` chain read top to bottom, boxed
//! once. Stacks are built per connection from the config of the moment, so limits changed by
//! a reload apply to new connections while routing changes apply to the very next request.
//! Outbound connections are plaintext from the application; see [`crate::server`] for how
//! they are accepted and detected.

use std::net::SocketAddr;

use proxy_core::breaker::BreakerLayer;
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

use crate::routing::{State, Target};
use crate::server::{mark_connection, normalize_limits, HttpService};
use crate::upstream::forward::Forward;
use crate::upstream::pick::PickLayer;

/// The outbound chain for one connection, from `client`, redirected from `orig_dst`
/// (transparent mode) or made straight to the listener (`None`).
pub fn stack(state: &State, client: Client, orig_dst: Option<SocketAddr>) -> HttpService {
    let side = &state.outbound;
    let chain = ServiceBuilder::new()
        .map_request(mark_connection(client, orig_dst))
        .layer(MetricsLayer::new(
            side.unrouted.clone(),
            side.observe.clone(),
        ))
        .layer(RespondLayer)
        .layer(NormalizeLayer::new(normalize_limits(&state.spec.load())))
        .layer(RouteLayer::new(side.resolver.clone()))
        .layer(LimitLayer)
        .layer(TimeoutLayer::request())
        .layer(RetryLayer)
        .layer(SplitLayer::<Target>::new())
        .layer(PickLayer::new(state.pools.clone()))
        .layer(BreakerLayer)
        .layer(TimeoutLayer::backend())
        .service(Forward);
    BoxCloneService::new(chain)
}
