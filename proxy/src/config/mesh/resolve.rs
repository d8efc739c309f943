//! Joining the mesh documents with the Proxy document's services: the routes attached to
//! each service, with their matches, weighted backends and policies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proxy_core::filter::Filters;

use proxy_core::route::{HttpMatch, PathMatch, ValueMatch};

use super::annotations;
use super::*;
use crate::config::{EndpointSource, ProxySpec, RetrySpec, ServiceSpec, TimeoutsSpec};

/// What Skiff adds to a route: its own policies, by route name, from the Proxy document's
/// `routePolicies`. Set fields replace the route's (or service's) own.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutePolicySpec {
    /// Deadlines (replacing an HTTPRoute rule's `timeouts` and the service's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// Retries (replacing an HTTPRoute rule's `retry` and the service's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Circuit breaking of the route's backends, for this route's requests only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSpec>,
    /// A rate limit on the route, on top of the service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// The most requests in flight on the route, on top of the service's cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<std::num::NonZeroUsize>,
    /// Faults injected into the route's requests (replacing the service's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<crate::config::FaultSpec>,
}

/// The routes attached to one service.
#[derive(Clone, Debug)]
pub struct ServiceRoutes {
    /// In config order (precedence is applied when the route table is built).
    pub routes: Vec<RouteSpec>,
    /// Whether unmatched requests go to the service itself (SMI) rather than 404 (Gateway).
    pub fallback_to_service: bool,
}

/// One route: its matches (any one suffices), its backends and its policies.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// Its name: the `route` metric label and the key of `routePolicies`.
    pub name: String,
    /// Its conditions.
    pub matches: Vec<HttpMatch>,
    /// Where matching requests go, by service name; empty means the parent service.
    pub backends: Vec<BackendSpec>,
    /// Timeouts from the route itself (HTTPRoute `timeouts`).
    pub timeouts: Option<TimeoutsSpec>,
    /// Retries from the route itself (HTTPRoute `retry`).
    pub retry: Option<RetrySpec>,
    /// Skiff's policies for it.
    pub policy: RoutePolicySpec,
    /// The rule's filters (header changes, redirect, rewrite).
    pub filters: Option<Arc<Filters>>,
    /// Where copies of its requests go (`RequestMirror`).
    pub mirrors: Vec<MirrorTarget>,
    /// The object it comes from, as Linkerd's route metrics name it.
    pub source: RouteSource,
}

/// The Kubernetes object a route comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSource {
    /// Its API group (`gateway.networking.k8s.io`, `split.smi-spec.io`, ...).
    pub group: String,
    /// Its kind (`HTTPRoute`, `GRPCRoute`, `TrafficSplit`).
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl RouteSource {
    fn of<S>(object: &super::Object<S>, namespace: &str) -> Self {
        let group = object.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Self {
            group: group.to_owned(),
            kind: object.kind.clone(),
            namespace: namespace.to_owned(),
            name: object.metadata.name.clone(),
        }
    }
}

/// A mirror of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorTarget {
    /// The backend's name as written.
    pub name: String,
    /// The configured service it names, or `None` (then nothing is sent).
    pub service: Option<String>,
    /// Mirrored share: `numerator` in `denominator`.
    pub numerator: u32,
    /// See `numerator`.
    pub denominator: u32,
}

/// One weighted backend of a route.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    /// The name as written.
    pub name: String,
    /// The configured service it names, or `None` when it names none (answers 500).
    pub service: Option<String>,
    /// Its relative weight.
    pub weight: u32,
    /// Its own filters (header changes).
    pub filters: Option<Arc<Filters>>,
}

/// The documents joined with the services.
#[derive(Debug)]
pub(in crate::config) struct Resolved {
    /// The routes attached to each service.
    pub(in crate::config) routes: BTreeMap<String, ServiceRoutes>,
    /// Routes refused alone for what Skiff does not implement (an unsupported filter).
    pub(in crate::config) refused: Vec<Problem>,
}

/// Where a service's routes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// An SMI TrafficSplit.
    Split,
    /// HTTPRoutes in the Service's namespace: for every caller.
    Producer,
    /// HTTPRoutes in this proxy's namespace for a Service of another: for this proxy's
    /// callers, instead of the producer's.
    Consumer,
}

/// A problem joining the documents: the document's index and what is wrong.
pub(in crate::config) type Problem = (usize, String);

/// Joins mesh documents (with their index in the file) with the Proxy document's services.
pub(in crate::config) fn resolve(
    proxy: &ProxySpec,
    documents: &[(usize, Document)],
) -> Result<Resolved, Vec<Problem>> {
    let mut problems = Vec::new();
    // Routes that are valid but use what Skiff does not implement: refused alone.
    let mut refused = Vec::new();
    let local_ns = proxy.namespace.as_str();
    let in_namespace =
        |s: &ServiceSpec, namespace: &str| s.namespace.as_deref().unwrap_or(local_ns) == namespace;
    // Every service of that name in that namespace, on `port` when given: one written in
    // the file (keyed by its name) and the ports of one discovered from the Kubernetes API
    // (keyed `name.namespace:port`, one entry per port), in port order.
    let find_services = |name: &str, namespace: &str, port: Option<u16>| -> Vec<String> {
        let mut found: Vec<(u16, &String)> = proxy
            .services
            .iter()
            .filter(|(key, s)| {
                s.name.as_deref().unwrap_or(key.as_str()) == name
                    && in_namespace(s, namespace)
                    && port.is_none_or(|p| s.port == p)
            })
            .map(|(key, s)| (s.port, key))
            .collect();
        found.sort();
        found.into_iter().map(|(_, key)| key.clone()).collect()
    };
    // A backend named without a port: the port of the same number as its parent's (SMI
    // and Gateway API both expect a Service's backends to mirror its ports), else the lowest.
    let find_backend = |name: &str, namespace: &str, port: Option<u16>, parent: &str| {
        let found = find_services(name, namespace, port);
        let parent_port = proxy.services.get(parent).map(|s| s.port);
        found
            .iter()
            .find(|key| proxy.services.get(*key).map(|s| s.port) == parent_port)
            .or(found.first())
            .cloned()
    };
    let mut groups: HashMap<(String, String), &Object<HttpRouteGroupSpec>> = HashMap::new();
    for (_, doc) in documents {
        if let Document::HttpRouteGroup(g) = doc {
            let ns = g
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| local_ns.into());
            groups.insert((ns, g.metadata.name.clone()), g);
        }
    }
    let mut out: BTreeMap<String, (usize, Origin, ServiceRoutes)> = BTreeMap::new();
    let mut attach = |index: usize, service: String, origin: Origin, routes: Vec<RouteSpec>| {
        let entry = |routes| {
            (
                index,
                origin,
                ServiceRoutes {
                    routes,
                    fallback_to_service: origin == Origin::Split,
                },
            )
        };
        match out.get_mut(&service) {
            None => {
                out.insert(service, entry(routes));
                Ok(())
            }
            Some((_, was, existing)) if *was == origin && origin != Origin::Split => {
                existing.routes.extend(routes);
                Ok(())
            }
            // GAMMA: for callers in its namespace, a consumer route replaces the producer's
            // routes (and SMI split) of the Service.
            Some(slot) if origin == Origin::Consumer => {
                *slot = entry(routes);
                Ok(())
            }
            Some((_, Origin::Consumer, _)) => Ok(()),
            Some((first, was, _)) => Err(format!(
                "service {service} already has {} (document {}); a service takes either \
                 HTTPRoutes or one TrafficSplit",
                if *was == Origin::Split {
                    "a TrafficSplit"
                } else {
                    "HTTPRoutes"
                },
                *first + 1
            )),
        }
    };
    for (index, doc) in documents {
        let index = *index;
        match doc {
            Document::HttpRouteGroup(_) | Document::TrafficTarget(_) | Document::TcpRoute(_) => {}
            Document::TrafficSplit(split) => {
                let ns = split.metadata.namespace.as_deref().unwrap_or(local_ns);
                // `name`, `name.ns` or the whole name: a Service of the split's namespace.
                let named = |written: &str, field: &str, problems: &mut Vec<Problem>| {
                    super::versions::split_service(written, ns)
                        .map_err(|e| problems.push((index, format!("{field}: {e}"))))
                        .ok()
                        .map(str::to_owned)
                };
                let Some(apex_name) = named(&split.spec.service, "spec.service", &mut problems)
                else {
                    continue;
                };
                let apexes = find_services(&apex_name, ns, None);
                if apexes.is_empty() {
                    problems.push((
                        index,
                        format!(
                            "spec.service: no service {} in namespace {ns} in the Proxy document",
                            apex_name
                        ),
                    ));
                    continue;
                }
                // A Service with several ports is split on each, to the backends' same port.
                for apex in apexes {
                    let weights = split.spec.weights();
                    let backends: Vec<BackendSpec> = split
                        .spec
                        .backends
                        .iter()
                        .zip(&weights)
                        .enumerate()
                        .map(|(j, (b, weight))| {
                            let field = format!("spec.backends[{j}].service");
                            let name = named(&b.service, &field, &mut problems);
                            BackendSpec {
                                name: b.service.clone(),
                                service: name.and_then(|n| find_backend(&n, ns, None, &apex)),
                                weight: *weight,
                                filters: None,
                            }
                        })
                        .collect();
                    let mut routes = Vec::new();
                    let source = RouteSource::of(split, ns);
                    if split.spec.matches.is_empty() {
                        routes.push(route(
                            &split.metadata.name,
                            vec![HttpMatch::default()],
                            &backends,
                            &source,
                        ));
                    }
                    for (i, m) in split.spec.matches.iter().enumerate() {
                        let Some(group) = groups.get(&(ns.to_owned(), m.name.clone())) else {
                            problems.push((
                                index,
                                format!(
                                    "spec.matches[{i}]: no HTTPRouteGroup {} in namespace {ns}",
                                    m.name
                                ),
                            ));
                            continue;
                        };
                        for gm in &group.spec.matches {
                            let name = format!("{}/{}", group.metadata.name, gm.name);
                            routes.push(route(&name, smi_matches(gm), &backends, &source));
                        }
                    }
                    if let Err(e) = attach(index, apex, Origin::Split, routes) {
                        problems.push((index, format!("spec.service: {e}")));
                    }
                }
            }
            Document::HttpRoute(r) => {
                let ns = r.metadata.namespace.as_deref().unwrap_or(local_ns);
                // An annotation Skiff cannot read, like a filter it does not implement,
                // refuses the route alone: honouring the rest would drop its retries or
                // timeouts without a word.
                let linkerd = match annotations::linkerd(&r.metadata.annotations) {
                    Ok(policy) => policy,
                    Err(e) => {
                        refused.push((index, e));
                        continue;
                    }
                };
                let mut routes = Vec::new();
                // Gateway API: no rules, or a rule without matches, match every request.
                let default_rules = super::default_rules();
                let rules = if r.spec.rules.is_empty() {
                    &default_rules
                } else {
                    &r.spec.rules
                };
                // A filter Skiff does not implement (on the rule, or one only the rule may
                // have on a backend) refuses the route, alone.
                let unsupported = rules.iter().enumerate().find_map(|(i, rule)| {
                    rule.filters
                        .unsupported
                        .clone()
                        .map(|why| format!("spec.rules[{i}].{why}"))
                        .or_else(|| {
                            rule.backend_refs.iter().enumerate().find_map(|(j, b)| {
                                b.filters.backend_problem().map(|why| {
                                    format!("spec.rules[{i}].backendRefs[{j}].filters: {why}")
                                })
                            })
                        })
                });
                if let Some(why) = unsupported {
                    refused.push((index, why));
                    continue;
                }
                for (i, rule) in rules.iter().enumerate() {
                    let name = match &rule.name {
                        Some(rule) => format!("{}/{rule}", r.metadata.name),
                        None => r.metadata.name.clone(),
                    };
                    let matches = if rule.matches.is_empty() {
                        vec![gateway_match(&GatewayMatch::default())]
                    } else {
                        rule.matches.iter().map(gateway_match).collect()
                    };
                    // A match without a path (or a rule without matches) is Gateway API's
                    // default, PathPrefix `/`.
                    let prefixes: Vec<String> = if rule.matches.is_empty() {
                        vec!["/".to_owned()]
                    } else {
                        rule.matches
                            .iter()
                            .filter_map(|m| match m.path.as_ref().map(|p| &p.0) {
                                Some(PathMatch::Prefix(p)) => Some(p.clone()),
                                None => Some("/".to_owned()),
                                _ => None,
                            })
                            .collect()
                    };
                    if rule.filters.redirects() && !rule.backend_refs.is_empty() {
                        problems.push((
                            index,
                            format!("spec.rules[{i}]: a rule with a RequestRedirect has no backendRefs (the redirect is its answer)"),
                        ));
                    }
                    let filters = rule.filters.build(&prefixes).unwrap_or_else(|e| {
                        problems.push((index, format!("spec.rules[{i}].filters: {e}")));
                        None
                    });
                    // Which service each backend is depends on the parent's port: found below.
                    let backends = rule
                        .backend_refs
                        .iter()
                        .map(|b| BackendSpec {
                            name: b.name.clone(),
                            service: None,
                            weight: b.weight,
                            filters: b.filters.build(&[]).ok().flatten(),
                        })
                        .collect();
                    let timeouts = linkerd.timeouts_over(rule.timeouts.map(|t| TimeoutsSpec {
                        request: t.request,
                        backend_request: t.backend_request,
                        stream_idle: None,
                    }));
                    if let Some(Err(e)) = timeouts.as_ref().map(TimeoutsSpec::check) {
                        problems.push((index, format!("spec.rules[{i}].{e}")));
                    }
                    let retry = linkerd.retry.clone().or_else(|| {
                        rule.retry.as_ref().map(|g| {
                            let mut spec = RetrySpec::default();
                            if !g.codes.is_empty() {
                                spec.codes.clone_from(&g.codes);
                            }
                            if let Some(a) = g.attempts {
                                spec.attempts = a;
                            }
                            if let Some(b) = g.backoff {
                                spec.backoff = b;
                                spec.max_backoff = spec.max_backoff.max(b);
                            }
                            spec
                        })
                    });
                    routes.push(RouteSpec {
                        name,
                        matches,
                        backends,
                        timeouts,
                        retry,
                        policy: RoutePolicySpec::default(),
                        filters,
                        mirrors: Vec::new(),
                        source: RouteSource::of(r, ns),
                    });
                }
                for (i, parent) in r.spec.parent_refs.iter().enumerate() {
                    let pns = parent.namespace.as_deref().unwrap_or(ns);
                    // GAMMA: a route beside its Service is the producer's, for every caller;
                    // one in another namespace is that namespace's callers' own (a consumer
                    // route), and means nothing to the callers of any other.
                    let origin = if pns == ns {
                        Origin::Producer
                    } else if ns == local_ns {
                        Origin::Consumer
                    } else {
                        continue;
                    };
                    // No port: every port of the Service (Gateway API's mesh semantics);
                    // a `sectionName` is the name of one (known for discovered Services).
                    let mut parents = find_services(&parent.name, pns, parent.port);
                    if let Some(section) = &parent.section_name {
                        parents.retain(|key| {
                            matches!(&proxy.services[key].endpoints,
                                EndpointSource::Kubernetes { port_name: Some(p), .. } if p == section)
                        });
                    }
                    if parents.is_empty() {
                        problems.push((
                            index,
                            format!(
                                "spec.parentRefs[{i}]: no service {} in namespace {pns}{}{} in the Proxy document",
                                parent.name,
                                parent.port.map(|p| format!(" on port {p}")).unwrap_or_default(),
                                parent.section_name.as_ref().map(|p| format!(" with a port named {p}")).unwrap_or_default()
                            ),
                        ));
                        continue;
                    }
                    for service in parents {
                        let mut routes = routes.clone();
                        for (route, rule) in routes.iter_mut().zip(rules) {
                            for (backend, b) in route.backends.iter_mut().zip(&rule.backend_refs) {
                                let bns = b.namespace.as_deref().unwrap_or(ns);
                                backend.service = find_backend(&b.name, bns, b.port, &service);
                            }
                            route.mirrors = rule
                                .filters
                                .mirrors
                                .iter()
                                .map(|m| {
                                    let b = &m.backend;
                                    let bns = b.namespace.as_deref().unwrap_or(ns);
                                    MirrorTarget {
                                        name: b.name.clone(),
                                        service: find_backend(&b.name, bns, b.port, &service),
                                        numerator: m.numerator,
                                        denominator: m.denominator,
                                    }
                                })
                                .collect();
                        }
                        if let Err(e) = attach(index, service, origin, routes) {
                            problems.push((index, format!("spec.parentRefs[{i}]: {e}")));
                        }
                    }
                }
            }
        }
    }
    // Skiff's own policies, by route name.
    let mut known: Vec<&str> = Vec::new();
    let mut out: BTreeMap<String, ServiceRoutes> =
        out.into_iter().map(|(k, (_, _, v))| (k, v)).collect();
    for routes in out.values_mut() {
        for r in &mut routes.routes {
            if let Some(p) = proxy.route_policies.get(&r.name) {
                r.policy = p.clone();
            }
        }
    }
    for (name, p) in &proxy.route_policies {
        let checks = [
            p.timeouts.as_ref().map(TimeoutsSpec::check),
            p.retry.as_ref().map(RetrySpec::check),
        ];
        for e in checks.into_iter().flatten().filter_map(Result::err) {
            problems.push((usize::MAX, format!("spec.routePolicies.{name}.{e}")));
        }
    }
    for routes in out.values() {
        known.extend(routes.routes.iter().map(|r| r.name.as_str()));
    }
    // With discovery, routes also come from the Kubernetes API: a policy may name one that
    // is not applied yet.
    let routes_from_api = proxy.discovery.kubernetes.is_some();
    for name in proxy.route_policies.keys() {
        if !routes_from_api && !known.contains(&name.as_str()) {
            problems.push((
                usize::MAX,
                format!("routePolicies.{name}: no route of that name (routes are named `<HTTPRoute>` or `<HTTPRoute>/<rule>`, `<HTTPRouteGroup>/<match>`, or the TrafficSplit's name)"),
            ));
        }
    }
    if problems.is_empty() {
        Ok(Resolved {
            routes: out,
            refused,
        })
    } else {
        Err(problems)
    }
}

fn route(
    name: &str,
    matches: Vec<HttpMatch>,
    backends: &[BackendSpec],
    source: &RouteSource,
) -> RouteSpec {
    RouteSpec {
        name: name.to_owned(),
        matches,
        backends: backends.to_vec(),
        timeouts: None,
        retry: None,
        policy: RoutePolicySpec::default(),
        filters: None,
        mirrors: Vec::new(),
        source: source.clone(),
    }
}

pub(super) fn smi_matches(m: &GroupMatch) -> Vec<HttpMatch> {
    let methods: Vec<http::Method> = if m.methods.iter().any(|m| m.0.is_none()) {
        Vec::new()
    } else {
        m.methods.iter().filter_map(|m| m.0.clone()).collect()
    };
    let header = |(k, v): (&HeaderName, &WholeRegex)| (k.0.clone(), ValueMatch::Regex(v.0.clone()));
    let base = HttpMatch {
        path: m.path_regex.as_ref().map(|r| PathMatch::Regex(r.0.clone())),
        methods,
        headers: Vec::new(),
        query: Vec::new(),
    };
    match &m.headers {
        None => vec![base],
        Some(SmiHeaders::Map(map)) => vec![HttpMatch {
            headers: map.iter().map(header).collect(),
            ..base
        }],
        // Each map of the list is an alternative, as the CRD's array suggests.
        Some(SmiHeaders::List(list)) if list.is_empty() => vec![base],
        Some(SmiHeaders::List(list)) => list
            .iter()
            .map(|map| HttpMatch {
                headers: map.iter().map(header).collect(),
                ..base.clone()
            })
            .collect(),
    }
}

fn gateway_match(m: &GatewayMatch) -> HttpMatch {
    HttpMatch {
        path: m.path.as_ref().map(|p| p.0.clone()),
        methods: m.method.iter().map(|m| m.0.clone()).collect(),
        headers: m
            .headers
            .iter()
            .map(|h| (h.name.0.clone(), h.value.clone()))
            .collect(),
        query: m
            .query_params
            .iter()
            .map(|q| (q.name.clone(), q.value.clone()))
            .collect(),
    }
}
