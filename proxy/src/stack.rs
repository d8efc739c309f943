//! The HTTP stack of each direction, as one `ServiceBuilder` chain, boxed once.
//!
//! Read top to bottom, a chain is the path a request takes (DESIGN.md section 3). Stacks are
//! built per connection from the config of the moment, so limits changed by a reload apply
//! to new connections while routing changes apply to the very next request.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use proxy_core::authz::AuthorizeLayer;
use proxy_core::breaker::BreakerLayer;
use proxy_core::limit::{Client, LimitLayer};
use proxy_core::normalize::{Limits, NormalizeLayer};
use proxy_core::respond::RespondLayer;
use proxy_core::retry::RetryLayer;
use proxy_core::route::RouteLayer;
use proxy_core::split::SplitLayer;
use proxy_core::timeout::TimeoutLayer;
use proxy_core::Body;
use proxy_metrics::http::MetricsLayer;
use tower::util::BoxCloneService;
use tower::ServiceBuilder;

use crate::config::ProxySpec;
use crate::forward::Forward;
use crate::pick::PickLayer;
use crate::state::State;
use crate::target::{OriginalDst, Target};

/// A direction's HTTP service, type-erased.
pub type HttpService = BoxCloneService<Request<Incoming>, Response<Body>, Infallible>;

/// The outbound chain: the app's calls to other services, from `client`, on a connection
/// redirected from `orig_dst` (transparent mode) or made straight to the listener (`None`).
pub fn outbound(state: &State, client: Client, orig_dst: Option<SocketAddr>) -> HttpService {
    let chain = ServiceBuilder::new()
        .map_request(from(client, orig_dst))
        .layer(MetricsLayer::new(
            state.unrouted_outbound.clone(),
            state.outbound_observe.clone(),
        ))
        .layer(RespondLayer)
        .layer(NormalizeLayer::new(limits(&state.spec.load())))
        .layer(RouteLayer::new(state.outbound.clone()))
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

/// The inbound chain: other workloads' calls to the local app, from `client`, sent to
/// `orig_dst` when the connection was redirected.
pub fn inbound(state: &State, client: Client, orig_dst: Option<SocketAddr>) -> HttpService {
    let peer_metrics = match &client {
        Client::Identity(id) => Some(state.inbound.peer_metrics(id)),
        _ => None,
    };
    let chain = ServiceBuilder::new()
        .map_request(from(client, orig_dst))
        .layer(MetricsLayer::new(
            state.unrouted_inbound.clone(),
            state.inbound_observe.clone(),
        ))
        .map_request(move |mut req: Request<Incoming>| {
            if let Some(m) = &peer_metrics {
                req.extensions_mut().insert(m.clone());
            }
            req
        })
        .layer(RespondLayer)
        .layer(NormalizeLayer::new(limits(&state.spec.load())))
        .layer(AuthorizeLayer::new(
            state.authz.clone(),
            state.metrics.identity.clone(),
        ))
        .layer(RouteLayer::new(state.inbound.clone()))
        .layer(LimitLayer)
        .layer(PickLayer::new(state.pools.clone()))
        .service(Forward);
    BoxCloneService::new(chain)
}

/// Marks each request of a connection with who sent it (for per-client limits and
/// authorization) and where the connection was going (for routing). A peer proxy's note
/// that the request began as HTTP/1 is read here, before normalisation strips every
/// `skiff-*` header.
fn from(
    client: Client,
    orig_dst: Option<SocketAddr>,
) -> impl Fn(Request<Incoming>) -> Request<Incoming> + Clone {
    let meshed = matches!(client, Client::Identity(_));
    move |mut req| {
        if meshed {
            crate::forward::take_orig_proto(&mut req);
        }
        req.extensions_mut().insert(client.clone());
        if let Some(dst) = orig_dst {
            req.extensions_mut().insert(OriginalDst(dst));
        }
        req
    }
}

fn limits(spec: &ProxySpec) -> Limits {
    Limits {
        max_header_count: spec.limits.max_header_count.get(),
        max_header_bytes: spec.limits.max_header_bytes.get(),
        body_idle_timeout: spec.limits.body_idle_timeout.0,
    }
}
