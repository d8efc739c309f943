//! What requests are routed to, and the resolvers that pick it from the live config.
//!
//! Outbound, the [`OutboundResolver`] maps the request's authority to a configured service
//! (or, with `passthrough`, to the authority itself), then, when routes are attached to the
//! service, picks the first route matching the request and hands its weighted backends to
//! the split below retries. Inbound, the [`InboundResolver`] sends
//! everything to the local application. Both hold their state in an [`ArcSwap`], so a reload
//! swaps routing for the next request while requests in flight keep the target they got.

mod build;
pub(crate) mod reload;
pub(crate) mod state;

pub use state::State;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::Authority;
use proxy_core::balance;
use proxy_core::context::RouteContext;
use proxy_core::filter::Filters;
use proxy_core::limit;
use proxy_core::retry;
use proxy_core::route::{RequestHead, Resolve, RouteSet, Table};
use proxy_core::split::{Backends, Draw};
use proxy_core::timeout::Timeouts;
use proxy_core::{ProxyError, Reason};
use proxy_metrics::http::{ConnectionSeries, HttpFamilies, MetricsSlot, TargetMetrics};

use crate::config::{InboundSpec, ProxySpec, ServiceRoutes, ServiceSpec};
use crate::discovery::endpoints::Endpoints;
use crate::discovery::kubernetes::Kubernetes;
use crate::identity::Mesh;
use crate::upstream::pool::Pools;

/// A service requests can be sent to.
#[derive(Debug)]
pub(crate) struct ServiceTarget {
    /// Its name in config.
    pub name: String,
    /// Its config and fully qualified authority, to tell whether a reload changed it.
    identity: Option<(ServiceSpec, String)>,
    /// For the inbound app target: the inbound config it was built from.
    inbound: Option<InboundSpec>,
    /// Its endpoints, shared with the next config generation when only its policies change.
    pub endpoints: Arc<Endpoints>,
    /// How its endpoints are chosen.
    pub balance: balance::Strategy,
    /// What requests sent straight to it (not through a route) get.
    pub policies: Policies,
}

/// What the layers below the router apply to a request: its metric handles, retries,
/// deadlines and limits. A service has one set; each of its routes has its own.
#[derive(Clone, Debug)]
pub(crate) struct Policies {
    /// The route's name, for a route.
    pub route: Option<Arc<str>>,
    /// Metric handles (labelled with the route, for a route).
    pub metrics: Arc<TargetMetrics>,
    /// The retry policy, with its live budget.
    pub retry: Option<Arc<retry::Policy>>,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Faults injected on purpose.
    pub fault: Option<Arc<proxy_core::fault::Policy>>,
    /// Rate and concurrency limits.
    pub limits: Option<Arc<limit::Policy>>,
}

impl Policies {
    /// The route (or service default) that applies these policies to `backends`.
    fn route(&self, backends: Arc<dyn Draw>) -> Route {
        self.route_with(backends, None)
    }

    /// [`Policies::route`], with the rule's filters.
    fn route_with(&self, backends: Arc<dyn Draw>, filters: Option<Arc<Filters>>) -> Route {
        Route {
            context: Arc::new(RouteContext {
                name: self.route.clone(),
                backends,
                retry: self.retry.clone(),
                timeouts: self.timeouts,
                limits: self.limits.clone(),
                filters,
                fault: self.fault.clone(),
            }),
            metrics: self.metrics.clone(),
        }
    }

    /// The route sending to `target` alone, under these policies.
    fn route_to(&self, name: &str, target: Target) -> Route {
        self.route(Arc::new(Backends::single(name, target)))
    }
}

/// Where a connection redirected to Skiff (transparent mode) was going, read with
/// `SO_ORIGINAL_DST`. Carried on each of its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OriginalDst(pub SocketAddr);

/// Where one try goes.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A configured service (outbound) or the local app (inbound).
    Service(Arc<ServiceTarget>),
    /// An unknown authority, forwarded to itself because `passthrough` is on.
    Passthrough {
        /// The authority to resolve and connect to.
        authority: Authority,
    },
}

/// A route of a service, or a service's default route: the [`RouteContext`] the layers below
/// the router read, and the metric handles its requests count under.
#[derive(Debug)]
pub(crate) struct Route {
    /// What the layers below apply (built once per config generation, shared per request).
    pub context: Arc<RouteContext>,
    /// Metric handles (labelled with the route, for a route).
    pub metrics: Arc<TargetMetrics>,
}

impl Route {
    /// Hands the route to the layers below: its context in the request's extensions, its
    /// metric handles counting the request from here on (so refusals further in, by limits
    /// or deadlines, are labelled with the target too), and its name in the notes.
    fn apply(&self, extensions: &mut http::Extensions) {
        if let Some(slot) = extensions.get::<MetricsSlot>() {
            slot.start(&self.metrics);
        }
        if let Some(route) = &self.context.name {
            proxy_core::notes::note(extensions, |n| n.route = Some(route.clone()));
        }
        extensions.insert(self.context.clone());
    }
}

/// A service as the router sees it: the service, its default route (straight to the
/// service, under its own policies) and the routes attached to it.
#[derive(Debug)]
struct Apex {
    service: Arc<ServiceTarget>,
    default: Route,
    routes: Option<RouteSet<Arc<Route>>>,
}

impl Apex {
    fn new(service: Arc<ServiceTarget>, routes: Option<RouteSet<Arc<Route>>>) -> Self {
        let default = service
            .policies
            .route_to(&service.name, Target::Service(service.clone()));
        Self {
            service,
            default,
            routes,
        }
    }
}

/// Outbound routing state for one config generation.
#[derive(Debug)]
struct Routes {
    table: Table<Arc<Apex>>,
    // Services by cluster IP and port, for redirected connections.
    by_vip: HashMap<SocketAddr, Arc<Apex>>,
    by_name: HashMap<String, Arc<ServiceTarget>>,
    routes: build::RouteCache,
    // Where passthrough's per-authority (capped) handles come from.
    families: Arc<HttpFamilies>,
    passthrough: bool,
}

/// Routes outbound requests by authority, then by the routes attached to the service.
#[derive(Debug)]
pub struct OutboundResolver {
    routes: ArcSwap<Routes>,
    kube: Option<Arc<Kubernetes>>,
}

impl OutboundResolver {
    /// Builds the routing state for `spec` and the routes attached to its services.
    pub fn new(
        spec: &ProxySpec,
        routes: &BTreeMap<String, ServiceRoutes>,
        pools: &Arc<Pools>,
        metrics: &Arc<HttpFamilies>,
        mesh: Option<&Arc<Mesh>>,
    ) -> Self {
        let ctx = build::Context {
            spec,
            pools,
            metrics,
            mesh,
            kube: None,
        };
        Self {
            routes: ArcSwap::from_pointee(build_routes(&ctx, routes, None)),
            kube: None,
        }
    }

    /// Services discovered from the Kubernetes API get their endpoints from `kube`.
    pub(crate) fn with_kubernetes(mut self, kube: Option<Arc<Kubernetes>>) -> Self {
        self.kube = kube;
        self
    }

    /// Replaces the routing state (a config reload). Services whose config is unchanged are
    /// kept as they are, with their endpoints, DNS answers and balancing state.
    pub fn update(
        &self,
        spec: &ProxySpec,
        routes: &BTreeMap<String, ServiceRoutes>,
        pools: &Arc<Pools>,
        metrics: &Arc<HttpFamilies>,
        mesh: Option<&Arc<Mesh>>,
    ) {
        let ctx = build::Context {
            spec,
            pools,
            metrics,
            mesh,
            kube: self.kube.as_ref(),
        };
        let old = self.routes.load();
        self.routes
            .store(Arc::new(build_routes(&ctx, routes, Some(&old))));
    }
}

fn build_routes(
    ctx: &build::Context<'_>,
    attached: &BTreeMap<String, ServiceRoutes>,
    old: Option<&Routes>,
) -> Routes {
    let spec = ctx.spec;
    let mut by_name = HashMap::new();
    for (name, svc) in &spec.services {
        let old = old.and_then(|o| o.by_name.get(name));
        by_name.insert(name.clone(), build::service(ctx, name, svc, old));
    }
    let mut table = Table::new(spec.cluster_domain.clone(), spec.namespace.clone());
    let mut by_vip = HashMap::new();
    let mut route_cache = build::RouteCache::new();
    for (key, svc) in &spec.services {
        // A discovered service's key also names its namespace and port; its name is its own.
        let name = svc.name.as_deref().unwrap_or(key);
        let namespace = svc.namespace.as_deref().unwrap_or(&spec.namespace);
        let service = by_name[key].clone();
        let routes = attached.get(key).map(|r| {
            let old = old.map(|o| &o.routes);
            build::route_set(ctx, &service, r, &by_name, old, &mut route_cache)
        });
        let apex = Arc::new(Apex::new(service, routes));
        for ip in &svc.cluster_ips {
            by_vip.insert(SocketAddr::new(*ip, svc.port), apex.clone());
        }
        table.insert(name, namespace, svc.port, apex);
    }
    Routes {
        table,
        by_vip,
        by_name,
        routes: route_cache,
        families: ctx.metrics.clone(),
        passthrough: spec.outbound.passthrough,
    }
}

impl OutboundResolver {
    /// For an opaque connection sent to `dst`: when `dst` is the cluster IP and port of a
    /// meshed service, one of its endpoints (chosen as for a request); `None` otherwise.
    pub(crate) async fn meshed_endpoint(
        &self,
        dst: SocketAddr,
    ) -> Option<Result<Arc<crate::discovery::endpoints::Endpoint>, ProxyError>> {
        let service = self.routes.load().by_vip.get(&dst)?.service.clone();
        service
            .endpoints
            .synced(crate::upstream::pick::FIRST_ANSWER_WAIT)
            .await;
        match crate::upstream::pick::choose(&service) {
            Ok((endpoint, _)) if endpoint.pool.is_meshed() => Some(Ok(endpoint)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl Resolve for OutboundResolver {
    fn resolve(
        &self,
        authority: Option<&Authority>,
        head: &RequestHead<'_>,
        extensions: &mut http::Extensions,
    ) -> Result<(), ProxyError> {
        // A redirected connection goes where the app sent it: to the service owning that
        // cluster IP, else to the service its authority names, else to the address itself.
        let orig_dst = extensions.get::<OriginalDst>().map(|d| d.0);
        let routes = self.routes.load();
        let apex = orig_dst
            .and_then(|dst| routes.by_vip.get(&dst))
            .or_else(|| authority.and_then(|a| routes.table.lookup(a)));
        if let Some(apex) = apex {
            let Some(set) = &apex.routes else {
                apex.default.apply(extensions);
                return Ok(());
            };
            let route = set.find(head).ok_or_else(|| {
                ProxyError::new(
                    Reason::NoRoute,
                    format!(
                        "no route of service {} matches {} {}",
                        apex.service.name,
                        head.method,
                        head.uri.path()
                    ),
                )
            })?;
            route.apply(extensions);
            return Ok(());
        }
        let destination = match (orig_dst, authority) {
            (Some(dst), _) => address_authority(dst),
            (None, Some(a)) if routes.passthrough => a.clone(),
            // With discovery on, a name nobody knows is a service without endpoints, as
            // the cluster's DNS would say: the caller may have named a Service that is
            // not there (yet).
            (None, Some(a)) if self.kube.is_some() => {
                return Err(ProxyError::new(
                    Reason::NoEndpoints,
                    format!("no service {a} in the config or the Kubernetes API"),
                ))
            }
            (None, Some(a)) => {
                return Err(ProxyError::new(
                    Reason::NoRoute,
                    format!("no service matches authority {a}"),
                ))
            }
            (None, None) => {
                return Err(ProxyError::new(
                    Reason::NoRoute,
                    "the request names no authority (no Host header)",
                ))
            }
        };
        let label = authority.unwrap_or(&destination);
        let policies = Policies {
            route: None,
            metrics: routes.families.passthrough(label.as_str()),
            retry: None,
            timeouts: Timeouts::default(),
            limits: None,
            fault: None,
        };
        let name = destination.to_string();
        let target = Target::Passthrough {
            authority: destination,
        };
        policies.route_to(&name, target).apply(extensions);
        Ok(())
    }
}

/// `ip:port` as an authority (IPv6 in brackets).
fn address_authority(addr: SocketAddr) -> Authority {
    Authority::try_from(addr.to_string()).expect("a socket address is a valid authority")
}

/// The application's series for one inbound connection (its caller's identity, when
/// meshed), carried on its requests.
#[derive(Clone, Debug)]
pub struct PeerMetrics(Arc<ConnectionSeries>);

/// Sends every inbound request to the local application.
#[derive(Debug)]
pub struct InboundResolver {
    app: ArcSwap<Apex>,
}

impl InboundResolver {
    /// Targets the application `spec` names.
    pub fn new(spec: &ProxySpec, pools: &Arc<Pools>, metrics: &Arc<HttpFamilies>) -> Self {
        Self {
            app: ArcSwap::from_pointee(Apex::new(build::app(spec, pools, metrics), None)),
        }
    }

    /// Follows a config reload; an unchanged app target is kept, with its limits' state.
    pub fn update(&self, spec: &ProxySpec, pools: &Arc<Pools>, metrics: &Arc<HttpFamilies>) {
        if self.app.load().service.inbound.as_ref() != Some(&spec.inbound) {
            let app = build::app(spec, pools, metrics);
            self.app.store(Arc::new(Apex::new(app, None)));
        }
    }

    /// The application's series for a connection from `client` (resolved once per
    /// connection): a verified peer's are labelled with its identity.
    pub fn peer_metrics(&self, client: &limit::Client) -> PeerMetrics {
        let app = &self.app.load().default.metrics;
        let base = match client {
            limit::Client::Identity(id) => app.with_peer("client_id", id),
            _ => app.clone(),
        };
        PeerMetrics(Arc::new(ConnectionSeries::new(base)))
    }

    /// The application's address.
    pub fn app_addr(&self) -> SocketAddr {
        let (list, _) = self.app.load().service.endpoints.snapshot();
        list[0].pool.addr()
    }
}

impl Resolve for InboundResolver {
    fn resolve(
        &self,
        authority: Option<&Authority>,
        _head: &RequestHead<'_>,
        extensions: &mut http::Extensions,
    ) -> Result<(), ProxyError> {
        let app = self.app.load();
        // Requests count under the caller's identity and the authority they name (the slot
        // keeps the first target set).
        if let (Some(PeerMetrics(series)), Some(slot)) = (
            extensions.get::<PeerMetrics>(),
            extensions.get::<MetricsSlot>(),
        ) {
            let authority = authority.map_or("", Authority::as_str);
            let authorized = extensions.get::<proxy_core::authz::Authorized>();
            slot.start(&series.for_request(authority, authorized));
        }
        // A redirected connection goes to the port it was sent to; the app may listen on
        // several.
        let elsewhere = extensions.get::<OriginalDst>().and_then(|dst| {
            let addr = app.service.endpoints.snapshot().0.first()?.pool.addr();
            (dst.0.port() != addr.port()).then(|| SocketAddr::new(addr.ip(), dst.0.port()))
        });
        match elsewhere {
            Some(addr) => {
                let authority = address_authority(addr);
                let name = authority.to_string();
                let route = app
                    .service
                    .policies
                    .route_to(&name, Target::Passthrough { authority });
                route.apply(extensions);
            }
            None => app.default.apply(extensions),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
