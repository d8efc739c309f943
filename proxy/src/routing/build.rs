//! Building targets from config: services with their endpoints and policies, and the routes
//! attached to them with their weighted backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use proxy_core::balance;
use proxy_core::breaker;
use proxy_core::classify::Classifier;
use proxy_core::fault;
use proxy_core::filter::{Filters, Mirror, MirrorSink};
use proxy_core::limit::{self, MaxInFlight, PerClientRateLimit, RateLimit};
use proxy_core::retry::{self, Backoff, BudgetParams};
use proxy_core::route::RouteSet;
use proxy_core::split::{Backend, Backends};
use proxy_core::timeout::Timeouts;
use proxy_core::Direction;
use proxy_metrics::http::{HttpFamilies, OutboundRoute, Protocol, TargetMetrics};

use super::{Policies, Route, ServiceTarget, Target};
use crate::config::{
    BreakerSpec, Dur, EndpointSource, FaultSpec, ProxySpec, RateLimitSpec, RetrySpec, RouteSpec,
    ServiceRoutes, ServiceSpec, TimeoutsSpec,
};
use crate::discovery::dns::Resolver;
use crate::discovery::endpoints::{BreakerConfig, Endpoints, Maker};
use crate::discovery::kubernetes::Kubernetes;
use crate::identity::Mesh;
use crate::upstream::mirror::ServiceMirror;
use crate::upstream::pool::{MeshPeer, Pools};

/// Clients tracked by one per-client rate limit before idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// What every builder needs.
pub(super) struct Context<'a> {
    pub(super) spec: &'a ProxySpec,
    pub(super) pools: &'a Arc<Pools>,
    pub(super) metrics: &'a Arc<HttpFamilies>,
    pub(super) mesh: Option<&'a Arc<Mesh>>,
    /// The Kubernetes API, for discovered services' endpoints.
    pub(super) kube: Option<&'a Arc<Kubernetes>>,
}

impl Context<'_> {
    /// Linkerd's labels of the Service `name` as the parent of routes.
    fn parent_labels(&self, name: &str, svc: &ServiceSpec) -> proxy_metrics::Labels {
        let namespace = svc.namespace.as_deref().unwrap_or(&self.spec.namespace);
        vec![
            ("parent_group", "core".to_owned()),
            ("parent_kind", "Service".to_owned()),
            ("parent_namespace", namespace.to_owned()),
            ("parent_name", name.to_owned()),
            ("parent_port", svc.port.to_string()),
            ("parent_section_name", String::new()),
        ]
    }

    fn authority(&self, name: &str, svc: &ServiceSpec) -> String {
        let namespace = svc.namespace.as_deref().unwrap_or(&self.spec.namespace);
        format!(
            "{name}.{namespace}.svc.{}:{}",
            self.spec.cluster_domain, svc.port
        )
    }
}

/// Builds service `name`, or keeps `old` when its config is unchanged.
pub(super) fn service(
    ctx: &Context<'_>,
    name: &str,
    svc: &ServiceSpec,
    old: Option<&Arc<ServiceTarget>>,
) -> Arc<ServiceTarget> {
    let name = svc.name.as_deref().unwrap_or(name);
    let authority = ctx.authority(name, svc);
    let identity = Some((svc.clone(), authority.clone()));
    // DNS endpoints also depend on `spec.dns`: a change there rebuilds them.
    let same_dns = |s: &&Arc<ServiceTarget>| {
        s.endpoints
            .dns_settings()
            .is_none_or(|dns| *dns == ctx.spec.dns)
    };
    if let Some(kept) = old.filter(|s| s.identity == identity).filter(same_dns) {
        return kept.clone();
    }
    let target_addr = format!("{name}:{}", svc.port);
    let outbound = OutboundRoute {
        protocol: Protocol::Http,
        parent: ctx.parent_labels(name, svc),
        route: vec![
            ("route_group", String::new()),
            ("route_kind", "default".to_owned()),
            ("route_namespace", String::new()),
            ("route_name", "default".to_owned()),
        ],
    };
    let metrics = ctx
        .metrics
        .outbound_target(&authority, &target_addr, None, &outbound);
    let metrics = match (&svc.identity, ctx.mesh) {
        (Some(id), Some(_)) => metrics.with_peer("server_id", &id.0.to_string()),
        _ => metrics,
    };
    // Endpoints (with their DNS answers, breaker states and load averages) outlive an edit of
    // the service's policies; only a new endpoint source or breaker rebuilds them.
    let same_endpoints = |old: &&Arc<ServiceTarget>| {
        old.identity.as_ref().is_some_and(|(spec, auth)| {
            spec.endpoints == svc.endpoints
                && same_dns(old)
                && spec.breaker == svc.breaker
                && spec.identity == svc.identity
                && spec.metric_labels == svc.metric_labels
                && *auth == authority
        })
    };
    let endpoints = match old.filter(same_endpoints) {
        Some(kept) => kept.endpoints.clone(),
        None => {
            let peer = svc
                .identity
                .as_ref()
                .and_then(|id| Some(ctx.mesh?.peer(&id.0)));
            endpoints(ctx, name, svc, peer, svc.breaker.as_ref(), &metrics)
        }
    };
    Arc::new(ServiceTarget {
        name: name.to_owned(),
        identity,
        inbound: None,
        endpoints,
        balance: svc.load_balancer.into(),
        policies: Policies {
            route: None,
            retry: svc.retry.as_ref().map(|r| retry_policy(r, &metrics)),
            timeouts: timeouts(&svc.timeouts),
            limits: limits(svc.rate_limit, svc.max_in_flight, None),
            fault: svc.fault.as_ref().map(|f| fault(f, &metrics)),
            metrics,
        },
    })
}

/// The endpoints of service `name`, each labelled with the service's destination labels
/// (and its Pod's, when discovered).
fn endpoints(
    ctx: &Context<'_>,
    name: &str,
    svc: &ServiceSpec,
    peer: Option<Arc<MeshPeer>>,
    breaker: Option<&BreakerSpec>,
    metrics: &Arc<TargetMetrics>,
) -> Arc<Endpoints> {
    let namespace = svc.namespace.as_deref().unwrap_or(&ctx.spec.namespace);
    let mut labels = vec![
        ("authority", ctx.authority(name, svc)),
        ("dst_service", name.to_owned()),
        ("dst_namespace", namespace.to_owned()),
        // The backend Service, for Linkerd's outbound route families.
        ("backend_group", "core".to_owned()),
        ("backend_kind", "Service".to_owned()),
        ("backend_namespace", namespace.to_owned()),
        ("backend_name", name.to_owned()),
        ("backend_port", svc.port.to_string()),
        ("backend_section_name", String::new()),
    ];
    labels.extend(svc.metric_labels.0.iter().cloned());
    let breaker = breaker.map(|b| breaker_config(b, metrics));
    let maker = Maker::new(ctx.pools, peer, breaker, labels);
    Arc::new(match &svc.endpoints {
        EndpointSource::Static(list) => Endpoints::fixed(list, maker),
        EndpointSource::Dns {
            host,
            port,
            refresh,
        } => Endpoints::dns(
            host.clone(),
            *port,
            refresh.map(|r| r.0),
            Arc::new(Resolver::new(&ctx.spec.dns)),
            maker,
        ),
        EndpointSource::Kubernetes {
            namespace,
            service,
            port_name,
        } => match ctx.kube {
            Some(kube) => Endpoints::kubernetes(
                kube.clone(),
                namespace.clone(),
                service.clone(),
                port_name.clone(),
                ctx.mesh.cloned(),
                maker,
            ),
            // Discovered services exist only while discovery runs.
            None => Endpoints::fixed(&[], maker),
        },
    })
}

/// Builds the routes attached to `apex`, in Gateway API precedence order.
///
/// A route whose config, service and backends are unchanged since the last generation is
/// kept from `cache` (its limits, retry budget and breaker states with it), and every route
/// built is recorded in `next`.
pub(super) fn route_set(
    ctx: &Context<'_>,
    apex: &Arc<ServiceTarget>,
    attached: &ServiceRoutes,
    services: &HashMap<String, Arc<ServiceTarget>>,
    cache: Option<&RouteCache>,
    next: &mut RouteCache,
) -> RouteSet<Arc<Route>> {
    let mut entries = Vec::new();
    for (index, spec) in attached.routes.iter().enumerate() {
        let key = (apex.name.clone(), index);
        let fingerprint = fingerprint(apex, spec, services);
        let route = match cache
            .and_then(|c| c.get(&key))
            .filter(|(f, _)| *f == fingerprint)
        {
            Some((_, kept)) => kept.clone(),
            None => Arc::new(route(ctx, apex, spec, services)),
        };
        next.insert(key, (fingerprint, route.clone()));
        for m in &spec.matches {
            entries.push((m.clone(), route.clone()));
        }
    }
    // SMI sends requests no match selects to the apex service, with its own policies.
    let fallback = attached.fallback_to_service.then(|| {
        let backends = Backends::new(vec![Backend {
            name: apex.name.clone(),
            weight: 1,
            target: Some(Target::Service(apex.clone())),
            filters: None,
        }]);
        Arc::new(apex.policies.route(Arc::new(backends)))
    });
    RouteSet::new(entries, fallback)
}

/// Routes of the last config generation, by service and position, with what they were
/// built from.
pub(super) type RouteCache = HashMap<(String, usize), (String, Arc<Route>)>;

/// Everything a route is built from, as text: its spec (regexes print their patterns) and
/// the specs of the services it sends to.
fn fingerprint(
    apex: &ServiceTarget,
    spec: &RouteSpec,
    services: &HashMap<String, Arc<ServiceTarget>>,
) -> String {
    let backends: Vec<_> = spec
        .backends
        .iter()
        .map(|b| {
            b.service
                .as_ref()
                .and_then(|s| services.get(s))
                .map(|s| &s.identity)
        })
        .collect();
    format!("{spec:?}|{:?}|{backends:?}", apex.identity)
}

fn route(
    ctx: &Context<'_>,
    apex: &Arc<ServiceTarget>,
    spec: &RouteSpec,
    services: &HashMap<String, Arc<ServiceTarget>>,
) -> Route {
    let apex_spec = apex.identity.as_ref().map(|(s, _)| s);
    let authority = apex_spec.map_or_else(String::new, |s| ctx.authority(&apex.name, s));
    let target_addr = apex_spec.map_or_else(String::new, |s| format!("{}:{}", apex.name, s.port));
    let metrics = match apex_spec {
        Some(parent) => {
            let source = &spec.source;
            let outbound = OutboundRoute {
                protocol: if source.kind == "GRPCRoute" {
                    Protocol::Grpc
                } else {
                    Protocol::Http
                },
                parent: ctx.parent_labels(&apex.name, parent),
                route: vec![
                    ("route_group", source.group.clone()),
                    ("route_kind", source.kind.clone()),
                    ("route_namespace", source.namespace.clone()),
                    ("route_name", source.name.clone()),
                ],
            };
            ctx.metrics
                .outbound_target(&authority, &target_addr, Some(&spec.name), &outbound)
        }
        None => ctx.metrics.target(
            Direction::Outbound,
            &authority,
            &target_addr,
            Some(&spec.name),
        ),
    };
    let policy = &spec.policy;
    // The route's own policies win over the service's; Skiff's `routePolicies` win over both.
    let retry = match policy.retry.as_ref().or(spec.retry.as_ref()) {
        Some(r) => Some(retry_policy(r, &metrics)),
        None => apex.policies.retry.clone(),
    };
    let timeouts = match policy.timeouts.as_ref().or(spec.timeouts.as_ref()) {
        Some(t) => self::timeouts(t),
        None => apex.policies.timeouts,
    };
    let limits = limits(
        policy.rate_limit,
        policy.max_in_flight,
        apex.policies.limits.clone(),
    )
    .or_else(|| apex.policies.limits.clone());
    let backend = |service: &Arc<ServiceTarget>| match &policy.breaker {
        // A route's own breaker watches the backend's endpoints for this route's requests
        // only: the same addresses and pooled connections, separate breaker states.
        Some(b) => {
            let spec = service.identity.as_ref().map(|(s, _)| s);
            let endpoints = spec.map_or_else(
                || service.endpoints.clone(),
                |spec| {
                    let peer = spec
                        .identity
                        .as_ref()
                        .and_then(|id| Some(ctx.mesh?.peer(&id.0)));
                    endpoints(ctx, &service.name, spec, peer, Some(b), &metrics)
                },
            );
            Arc::new(ServiceTarget {
                name: service.name.clone(),
                identity: None,
                inbound: None,
                endpoints,
                balance: service.balance,
                policies: service.policies.clone(),
            })
        }
        None => service.clone(),
    };
    let entries = if spec.backends.is_empty() {
        // A rule without backendRefs sends to the service it is attached to.
        vec![Backend {
            name: apex.name.clone(),
            weight: 1,
            target: Some(Target::Service(backend(apex))),
            filters: None,
        }]
    } else {
        spec.backends
            .iter()
            .map(|b| Backend {
                name: b.name.clone(),
                weight: b.weight,
                target: b
                    .service
                    .as_ref()
                    .and_then(|s| services.get(s))
                    .map(|s| Target::Service(backend(s))),
                filters: b.filters.clone(),
            })
            .collect()
    };
    // A route's faults replace the service's.
    let fault = match &policy.fault {
        Some(f) => Some(self::fault(f, &metrics)),
        None => apex.policies.fault.clone(),
    };
    let policies = Policies {
        route: Some(spec.name.as_str().into()),
        metrics,
        retry,
        timeouts,
        limits,
        fault,
    };
    let filters = with_mirrors(ctx, spec, services);
    policies.route_with(Arc::new(Backends::new(entries)), filters)
}

/// The route's filters, with a sink for each of its mirrors.
fn with_mirrors(
    ctx: &Context<'_>,
    spec: &RouteSpec,
    services: &HashMap<String, Arc<ServiceTarget>>,
) -> Option<Arc<Filters>> {
    if spec.mirrors.is_empty() {
        return spec.filters.clone();
    }
    let mut filters = spec.filters.as_deref().cloned().unwrap_or_default();
    filters.mirrors = spec
        .mirrors
        .iter()
        .map(|m| Mirror {
            name: m.name.clone(),
            sink: m.service.as_ref().and_then(|s| services.get(s)).map(|s| {
                Arc::new(ServiceMirror::new(
                    &spec.name,
                    &m.name,
                    s.clone(),
                    ctx.pools,
                    ctx.metrics,
                )) as Arc<dyn MirrorSink>
            }),
            numerator: m.numerator,
            denominator: m.denominator,
        })
        .collect();
    Some(Arc::new(filters))
}

/// The inbound target: the local application.
pub(super) fn app(
    spec: &ProxySpec,
    pools: &Arc<Pools>,
    metrics: &Arc<HttpFamilies>,
) -> Arc<ServiceTarget> {
    let addr = SocketAddr::new(spec.inbound.app_host, spec.inbound.app_port);
    Arc::new(ServiceTarget {
        name: "app".into(),
        identity: None,
        inbound: Some(spec.inbound.clone()),
        balance: balance::Strategy::RoundRobin,
        endpoints: Arc::new(Endpoints::fixed(
            &[addr],
            Maker::new(pools, None, None, Vec::new()),
        )),
        policies: Policies {
            route: None,
            limits: limits(spec.inbound.rate_limit, spec.inbound.max_in_flight, None),
            retry: None,
            timeouts: Timeouts::default(),
            fault: None,
            metrics: metrics.target(Direction::Inbound, "", &addr.to_string(), None),
        },
    })
}

fn retry_policy(spec: &RetrySpec, metrics: &Arc<TargetMetrics>) -> Arc<retry::Policy> {
    let classifier = Classifier {
        retryable_statuses: spec.codes.iter().map(|c| c.0).collect(),
        retryable_grpc: spec.grpc_codes.clone(),
    };
    let backoff = Backoff {
        base: spec.backoff.0,
        max: spec.max_backoff.0,
    };
    let budget = BudgetParams {
        ratio: spec.budget.ratio,
        min_per_second: spec.budget.min_per_second,
        ttl: spec.budget.ttl.0,
    };
    Arc::new(retry::Policy::new(
        spec.attempts,
        classifier,
        backoff,
        spec.non_idempotent,
        budget,
        metrics.clone(),
    ))
}

fn breaker_config(spec: &BreakerSpec, metrics: &Arc<TargetMetrics>) -> BreakerConfig {
    BreakerConfig {
        settings: breaker::Settings {
            consecutive_failures: spec.consecutive_failures,
            failure_rate: spec.failure_rate.map(|r| breaker::FailureRate {
                threshold: r.threshold,
                min_requests: r.min_requests,
                window: r.window.0,
            }),
            backoff: spec.backoff.0,
            max_backoff: spec.max_backoff.0,
        },
        observer: metrics.clone(),
    }
}

fn limits(
    rate: Option<RateLimitSpec>,
    max_in_flight: Option<NonZeroUsize>,
    parent: Option<Arc<limit::Policy>>,
) -> Option<Arc<limit::Policy>> {
    if rate.is_none() && max_in_flight.is_none() {
        return None;
    }
    let shared = rate.filter(|r| !r.per_client);
    let per_client = rate.filter(|r| r.per_client);
    Some(Arc::new(limit::Policy {
        rate: shared.map(|r| RateLimit::new(r.requests_per_second, r.burst)),
        per_client: per_client
            .map(|r| PerClientRateLimit::new(r.requests_per_second, r.burst, MAX_TRACKED_CLIENTS)),
        max_in_flight: max_in_flight.map(|m| MaxInFlight::new(m.get())),
        parent,
    }))
}

fn fault(spec: &FaultSpec, metrics: &Arc<TargetMetrics>) -> Arc<fault::Policy> {
    Arc::new(fault::Policy {
        abort: spec.abort.map(|a| fault::Abort {
            percent: a.percent.0,
            status: http::StatusCode::from_u16(a.status.0)
                .expect("the config admits statuses 100-599 only"),
            grpc_status: a.grpc_status.map(|c| c.0),
        }),
        delay: spec.delay.map(|d| fault::Delay {
            percent: d.percent.0,
            duration: d.duration.0,
        }),
        observer: Some(metrics.clone()),
    })
}

fn timeouts(spec: &TimeoutsSpec) -> Timeouts {
    // `0s` means no deadline, as in Gateway API.
    let enabled = |d: Option<Dur>| d.map(|d| d.0).filter(|d| !d.is_zero());
    Timeouts {
        request: enabled(spec.request),
        backend_request: enabled(spec.backend_request),
        stream_idle: enabled(spec.stream_idle),
    }
}
