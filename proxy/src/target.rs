//! What requests are routed to, and the resolvers that pick it from the live config.
//!
//! Outbound, the [`OutboundResolver`] maps the request's authority to a configured service
//! (or, with `passthrough`, to the authority itself). Inbound, the [`InboundResolver`] sends
//! everything to the local application. Both hold their state in an [`ArcSwap`], so a reload
//! swaps routing for the next request while requests in flight keep the target they got.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::Authority;
use proxy_core::balance;
use proxy_core::breaker;
use proxy_core::classify::Classifier;
use proxy_core::limit::{Limits, MaxInFlight, RateLimit};
use proxy_core::retry::{self, Backoff, BudgetParams};
use proxy_core::route::{Resolve, Table};
use proxy_core::timeout::Timeouts;
use proxy_core::{ProxyError, Reason};
use proxy_metrics::http::{HttpFamilies, MetricsSlot, TargetMetrics};

use crate::client::Pools;
use crate::config::{
    BreakerSpec, Dur, EndpointSource, InboundSpec, ProxySpec, RateLimitSpec, RetrySpec,
    ServiceSpec, TimeoutsSpec,
};
use crate::endpoints::{BreakerConfig, Endpoints};

/// A service requests can be sent to.
#[derive(Debug)]
pub struct Service {
    /// Its name in config.
    pub name: String,
    /// Its config and fully qualified authority, to tell whether a reload changed it.
    identity: Option<(ServiceSpec, String)>,
    /// For the inbound app target: the inbound config it was built from.
    inbound: Option<InboundSpec>,
    /// Its endpoints, shared with the next config generation when only its policies change.
    pub endpoints: Arc<Endpoints>,
    /// Its metric handles.
    pub metrics: Arc<TargetMetrics>,
    /// Its retry policy, with the live budget.
    pub retry: Option<Arc<retry::Policy>>,
    /// Its deadlines.
    pub timeouts: Timeouts,
    /// How its endpoints are chosen.
    pub balance: balance::Strategy,
    /// Its rate and concurrency limits.
    pub limits: Option<Arc<Limits>>,
}

/// Where one request goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// A configured service (outbound) or the local app (inbound).
    Service(Arc<Service>),
    /// An unknown authority, forwarded to itself because `passthrough` is on.
    Passthrough {
        /// The authority to resolve and connect to.
        authority: Authority,
        /// The shared metric handles of passthrough traffic.
        metrics: Arc<TargetMetrics>,
    },
}

impl Target {
    /// The metric handles of this target.
    pub fn metrics(&self) -> &Arc<TargetMetrics> {
        match self {
            Self::Service(s) => &s.metrics,
            Self::Passthrough { metrics, .. } => metrics,
        }
    }
}

/// Outbound routing state for one config generation.
#[derive(Debug)]
struct Routes {
    table: Table<Arc<Service>>,
    by_name: HashMap<String, Arc<Service>>,
    passthrough: Option<Arc<TargetMetrics>>,
}

/// Routes outbound requests by authority.
#[derive(Debug)]
pub struct OutboundResolver {
    routes: ArcSwap<Routes>,
}

impl OutboundResolver {
    /// Builds the routing state for `spec`.
    pub fn new(spec: &ProxySpec, pools: &Arc<Pools>, metrics: &Arc<HttpFamilies>) -> Self {
        Self {
            routes: ArcSwap::from_pointee(build_routes(spec, None, pools, metrics)),
        }
    }

    /// Replaces the routing state (a config reload). Services whose config is unchanged are
    /// kept as they are, with their endpoints, DNS answers and balancing state.
    pub fn update(&self, spec: &ProxySpec, pools: &Arc<Pools>, metrics: &Arc<HttpFamilies>) {
        let old = self.routes.load();
        self.routes
            .store(Arc::new(build_routes(spec, Some(&old), pools, metrics)));
    }
}

fn build_routes(
    spec: &ProxySpec,
    old: Option<&Routes>,
    pools: &Arc<Pools>,
    metrics: &Arc<HttpFamilies>,
) -> Routes {
    let mut table = Table::new(spec.cluster_domain.clone(), spec.namespace.clone());
    let mut by_name = HashMap::new();
    for (name, svc) in &spec.services {
        let namespace = svc.namespace.as_deref().unwrap_or(&spec.namespace);
        let authority = format!(
            "{name}.{namespace}.svc.{}:{}",
            spec.cluster_domain, svc.port
        );
        let identity = Some((svc.clone(), authority.clone()));
        if let Some(kept) = old
            .and_then(|o| o.by_name.get(name))
            .filter(|s| s.identity == identity)
        {
            table.insert(name, namespace, svc.port, kept.clone());
            by_name.insert(name.clone(), kept.clone());
            continue;
        }
        let target_addr = format!("{name}:{}", svc.port);
        let target_metrics = metrics.target("outbound", &authority, &target_addr);
        // Endpoints (with their DNS answers, breaker states and load averages) outlive an
        // edit of the service's policies; only a new endpoint source or breaker rebuilds them.
        let same_endpoints = |old: &&Arc<Service>| {
            old.identity.as_ref().is_some_and(|(spec, auth)| {
                spec.endpoints == svc.endpoints && spec.breaker == svc.breaker && *auth == authority
            })
        };
        let endpoints = match old.and_then(|o| o.by_name.get(name)).filter(same_endpoints) {
            Some(kept) => kept.endpoints.clone(),
            None => {
                let breaker = svc
                    .breaker
                    .as_ref()
                    .map(|b| breaker_config(b, &target_metrics));
                Arc::new(match &svc.endpoints {
                    EndpointSource::Static(list) => Endpoints::fixed(list, pools, breaker),
                    EndpointSource::Dns {
                        host,
                        port,
                        refresh,
                    } => Endpoints::dns(host.clone(), *port, refresh.0, pools, breaker),
                })
            }
        };
        let service = Arc::new(Service {
            name: name.clone(),
            identity,
            inbound: None,
            endpoints,
            retry: svc.retry.as_ref().map(|r| retry_policy(r, &target_metrics)),
            timeouts: timeouts(&svc.timeouts),
            balance: svc.load_balancer.into(),
            limits: limits(svc.rate_limit, svc.max_in_flight),
            metrics: target_metrics,
        });
        table.insert(name, namespace, svc.port, service.clone());
        by_name.insert(name.clone(), service);
    }
    let passthrough = spec
        .outbound
        .passthrough
        .then(|| metrics.target("outbound", "passthrough", "passthrough"));
    Routes {
        table,
        by_name,
        passthrough,
    }
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

fn limits(rate: Option<RateLimitSpec>, max_in_flight: Option<NonZeroUsize>) -> Option<Arc<Limits>> {
    if rate.is_none() && max_in_flight.is_none() {
        return None;
    }
    Some(Arc::new(Limits {
        rate: rate.map(|r| RateLimit::new(r.requests_per_second, r.burst)),
        max_in_flight: max_in_flight.map(|m| MaxInFlight::new(m.get())),
    }))
}

fn timeouts(spec: &TimeoutsSpec) -> Timeouts {
    // `0s` means no deadline, as in Gateway API.
    let enabled = |d: Option<Dur>| d.map(|d| d.0).filter(|d| !d.is_zero());
    Timeouts {
        request: enabled(spec.request),
        backend_request: enabled(spec.backend_request),
    }
}

/// Stores the target and counts the request against it from here on, so refusals further
/// in (limits, deadlines) are labelled with the target too.
fn routed(extensions: &mut http::Extensions, target: Target) {
    if let Some(slot) = extensions.get::<MetricsSlot>() {
        slot.start(target.metrics());
    }
    extensions.insert(target);
}

impl Resolve for OutboundResolver {
    fn resolve(
        &self,
        authority: Option<&Authority>,
        extensions: &mut http::Extensions,
    ) -> Result<(), ProxyError> {
        let Some(authority) = authority else {
            return Err(ProxyError::new(
                Reason::NoRoute,
                "the request names no authority (no Host header)",
            ));
        };
        let routes = self.routes.load();
        if let Some(service) = routes.table.lookup(authority) {
            if let Some(retry) = &service.retry {
                extensions.insert(retry.clone());
            }
            if let Some(limits) = &service.limits {
                extensions.insert(limits.clone());
            }
            extensions.insert(service.timeouts);
            routed(extensions, Target::Service(service.clone()));
            return Ok(());
        }
        match &routes.passthrough {
            Some(metrics) => {
                let target = Target::Passthrough {
                    authority: authority.clone(),
                    metrics: metrics.clone(),
                };
                routed(extensions, target);
                Ok(())
            }
            None => Err(ProxyError::new(
                Reason::NoRoute,
                format!("no service matches authority {authority}"),
            )),
        }
    }
}

/// Sends every inbound request to the local application.
#[derive(Debug)]
pub struct InboundResolver {
    app: ArcSwap<Service>,
}

impl InboundResolver {
    /// Targets the application `spec` names.
    pub fn new(spec: &ProxySpec, pools: &Arc<Pools>, metrics: &Arc<HttpFamilies>) -> Self {
        Self {
            app: ArcSwap::new(build_app(spec, pools, metrics)),
        }
    }

    /// Follows a config reload; an unchanged app target is kept, with its limits' state.
    pub fn update(&self, spec: &ProxySpec, pools: &Arc<Pools>, metrics: &Arc<HttpFamilies>) {
        if self.app.load().inbound.as_ref() != Some(&spec.inbound) {
            self.app.store(build_app(spec, pools, metrics));
        }
    }

    /// The application's address.
    pub fn app_addr(&self) -> SocketAddr {
        let (list, _) = self.app.load().endpoints.snapshot();
        list[0].pool.addr()
    }
}

fn build_app(spec: &ProxySpec, pools: &Arc<Pools>, metrics: &Arc<HttpFamilies>) -> Arc<Service> {
    let addr = SocketAddr::new(spec.inbound.app_host, spec.inbound.app_port);
    Arc::new(Service {
        name: "app".into(),
        identity: None,
        inbound: Some(spec.inbound.clone()),
        limits: limits(spec.inbound.rate_limit, spec.inbound.max_in_flight),
        retry: None,
        timeouts: Timeouts::default(),
        balance: balance::Strategy::RoundRobin,
        endpoints: Arc::new(Endpoints::fixed(&[addr], pools, None)),
        metrics: metrics.target("inbound", "", &addr.to_string()),
    })
}

impl Resolve for InboundResolver {
    fn resolve(
        &self,
        _authority: Option<&Authority>,
        extensions: &mut http::Extensions,
    ) -> Result<(), ProxyError> {
        let app = self.app.load_full();
        if let Some(limits) = &app.limits {
            extensions.insert(limits.clone());
        }
        routed(extensions, Target::Service(app));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Settings;

    fn spec(yaml_services: &str) -> ProxySpec {
        let text = format!(
            "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  services:\n{yaml_services}"
        );
        crate::config::parse(&text, None).unwrap().proxy
    }

    fn service(r: &OutboundResolver, host: &str) -> Arc<Service> {
        let mut ext = http::Extensions::new();
        r.resolve(Some(&host.parse().unwrap()), &mut ext).unwrap();
        match ext.remove::<Target>().unwrap() {
            Target::Service(s) => s,
            Target::Passthrough { .. } => panic!("not a service"),
        }
    }

    #[test]
    fn reloads_keep_unchanged_services_and_rebuild_changed_ones() {
        let pools = Arc::new(Pools::new(Settings::default()));
        let (metrics, _registry) = proxy_metrics::Metrics::new();
        let before = spec("    a: {endpoints: [127.0.0.1:1]}\n    b: {endpoints: [127.0.0.1:2]}\n");
        let r = OutboundResolver::new(&before, &pools, &metrics.http);
        let (a1, b1) = (service(&r, "a"), service(&r, "b"));

        let after = spec("    a: {endpoints: [127.0.0.1:1]}\n    b: {endpoints: [127.0.0.1:3]}\n");
        r.update(&after, &pools, &metrics.http);
        assert!(
            Arc::ptr_eq(&a1, &service(&r, "a")),
            "unchanged service kept"
        );
        assert!(
            !Arc::ptr_eq(&b1, &service(&r, "b")),
            "changed service rebuilt"
        );
        assert_eq!(
            service(&r, "b").endpoints.snapshot().0[0]
                .pool
                .addr()
                .port(),
            3
        );
    }
}
