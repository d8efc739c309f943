//! Unit tests of routing: service reuse across reloads, and route selection.

use http::{HeaderMap, Method, Uri};

use super::*;
use crate::upstream::pool::Settings;
use proxy_core::context::RouteContext;

fn config(yaml: &str) -> crate::config::Config {
    crate::config::parse(yaml, None).unwrap()
}

fn services(yaml_services: &str) -> crate::config::Config {
    config(&format!(
        "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  services:\n{yaml_services}"
    ))
}

struct Fixture {
    pools: Arc<Pools>,
    metrics: Arc<HttpFamilies>,
}

impl Fixture {
    fn new() -> Self {
        let (metrics, _registry) = proxy_metrics::Metrics::new();
        Self {
            pools: Arc::new(Pools::new(Settings::default())),
            metrics: metrics.http,
        }
    }

    fn resolver(&self, c: &crate::config::Config) -> OutboundResolver {
        OutboundResolver::new(&c.proxy, &c.routes, &self.pools, &self.metrics, None)
    }
}

/// Resolves a request and returns its extensions.
fn resolve(
    r: &OutboundResolver,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<http::Extensions, ProxyError> {
    let uri: Uri = uri.parse().unwrap();
    let method: Method = method.parse().unwrap();
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let head = RequestHead {
        method: &method,
        uri: &uri,
        headers: &map,
    };
    let mut ext = http::Extensions::new();
    r.resolve(uri.authority(), &head, &mut ext).map(|()| ext)
}

/// The route context the router stored.
fn ctx(ext: &http::Extensions) -> Arc<RouteContext> {
    ext.get::<Arc<RouteContext>>()
        .cloned()
        .expect("a routed request")
}

/// The route's backends, as the router built them.
fn split_of(ctx: &RouteContext) -> &Backends<Target> {
    ctx.backends
        .as_any()
        .downcast_ref()
        .expect("backends of targets")
}

/// Where a try goes: the split's draw (the only backend, for a plain service).
fn target_of(ext: &http::Extensions) -> Target {
    let mut drawn = http::Extensions::new();
    ctx(ext).backends.draw_into(0, &mut drawn).unwrap();
    drawn.get::<Target>().cloned().unwrap()
}

fn service(r: &OutboundResolver, host: &str) -> Arc<ServiceTarget> {
    let ext = resolve(r, "GET", &format!("http://{host}/"), &[]).unwrap();
    match target_of(&ext) {
        Target::Service(s) => s,
        Target::Passthrough { .. } => panic!("not a service"),
    }
}

/// The backend names of the route a request lands on.
fn backends(
    r: &OutboundResolver,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Vec<String> {
    let ext = resolve(r, method, uri, headers).unwrap();
    let ctx = ctx(&ext);
    split_of(&ctx)
        .entries()
        .iter()
        .map(|b| format!("{}={}", b.name, b.weight))
        .collect()
}

#[test]
fn reloads_keep_unchanged_services_and_rebuild_changed_ones() {
    let f = Fixture::new();
    let before = services("    a: {endpoints: [127.0.0.1:1]}\n    b: {endpoints: [127.0.0.1:2]}\n");
    let r = f.resolver(&before);
    let (a1, b1) = (service(&r, "a"), service(&r, "b"));

    let after = services("    a: {endpoints: [127.0.0.1:1]}\n    b: {endpoints: [127.0.0.1:3]}\n");
    r.update(&after.proxy, &after.routes, &f.pools, &f.metrics, None);
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

#[tokio::test]
async fn a_change_of_spec_dns_rebuilds_dns_services_only() {
    let f = Fixture::new();
    let doc = |ttl: &str| {
        config(&format!(
            "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  dns: {{maxTtl: {ttl}}}\n  services:\n    fixed: {{endpoints: [127.0.0.1:1]}}\n    named: {{dns: 'localhost:2'}}\n"
        ))
    };
    let before = doc("60s");
    let r = f.resolver(&before);
    let (fixed, named) = (service(&r, "fixed"), service(&r, "named"));
    let same = doc("60s");
    r.update(&same.proxy, &same.routes, &f.pools, &f.metrics, None);
    assert!(
        Arc::ptr_eq(&named, &service(&r, "named")),
        "nothing changed"
    );
    let after = doc("30s");
    r.update(&after.proxy, &after.routes, &f.pools, &f.metrics, None);
    assert!(
        Arc::ptr_eq(&fixed, &service(&r, "fixed")),
        "fixed endpoints kept"
    );
    let rebuilt = service(&r, "named");
    assert!(!Arc::ptr_eq(&named, &rebuilt), "DNS service rebuilt");
    assert_eq!(
        rebuilt.endpoints.dns_settings().unwrap().max_ttl,
        after.proxy.dns.max_ttl
    );
}

const SERVICES: &str = "apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  services:
    web: {endpoints: [127.0.0.1:1]}
    web-v1: {endpoints: [127.0.0.1:2]}
    web-v2: {endpoints: [127.0.0.1:3]}
";

#[test]
fn http_routes_pick_by_precedence_and_refuse_unmatched_requests() {
    let f = Fixture::new();
    let c = config(&format!(
        "{SERVICES}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{group: '', kind: Service, name: web, port: 80}}]
  rules:
  - name: prefix
    matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backendRefs: [{{name: web-v1, port: 80}}]
  - name: exact
    matches: [{{path: {{type: Exact, value: /api/login}}}}]
    backendRefs: [{{name: web-v2, port: 80}}]
  - name: canary-header
    matches:
    - path: {{type: PathPrefix, value: /api}}
      headers: [{{name: x-canary, value: 'yes'}}]
    backendRefs: [{{name: web-v2, port: 80}}]
  - name: search
    matches: [{{path: {{value: /search}}, queryParams: [{{name: q, type: RegularExpression, value: '[a-z]+'}}], method: GET}}]
"
    ));
    let r = f.resolver(&c);
    assert_eq!(
        backends(&r, "GET", "http://web/api/users", &[]),
        ["web-v1=1"]
    );
    assert_eq!(
        backends(&r, "POST", "http://web/api/login", &[]),
        ["web-v2=1"]
    );
    assert_eq!(
        backends(&r, "GET", "http://web/api/users", &[("x-canary", "yes")]),
        ["web-v2=1"],
        "the header condition makes the longer match win over the plain prefix"
    );
    assert_eq!(
        backends(&r, "GET", "http://web/search?q=abc", &[]),
        ["web=1"],
        "no backendRefs: the parent"
    );
    for (method, uri) in [
        ("GET", "http://web/"),
        ("GET", "http://web/search?q=1"),
        ("POST", "http://web/search?q=abc"),
    ] {
        let err = resolve(&r, method, uri, &[]).unwrap_err();
        assert_eq!(err.reason(), Reason::NoRoute, "{method} {uri}");
    }
    // Services without routes are untouched.
    assert_eq!(service(&r, "web-v1").name, "web-v1");
}

#[test]
fn smi_splits_send_matching_requests_to_the_backends_and_the_rest_to_the_apex() {
    let f = Fixture::new();
    let c = config(&format!(
        "{SERVICES}---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {{name: routes}}
spec:
  matches:
  - {{name: firefox, headers: {{user-agent: '.*Firefox.*'}}}}
  - {{name: api, pathRegex: /api, methods: [GET]}}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {{name: canary}}
spec:
  service: web
  matches: [{{kind: HTTPRouteGroup, name: routes}}]
  backends:
  - {{service: web-v1, weight: 90}}
  - {{service: web-v2, weight: 10}}
  - {{service: web-gone, weight: 0}}
"
    ));
    let r = f.resolver(&c);
    let split = ["web-v1=90", "web-v2=10", "web-gone=0"];
    assert_eq!(backends(&r, "GET", "http://web/api/x", &[]), split);
    assert_eq!(
        backends(
            &r,
            "PUT",
            "http://web/",
            &[("user-agent", "Mozilla Firefox/1")]
        ),
        split
    );
    assert_eq!(
        backends(&r, "POST", "http://web/api/x", &[]),
        ["web=1"],
        "unmatched: the apex"
    );
    let ext = resolve(&r, "GET", "http://web/api/x", &[]).unwrap();
    let ctx = ctx(&ext);
    let b = split_of(&ctx);
    assert!(
        b.entries()[2].target.is_none(),
        "an unknown backend is kept, invalid"
    );
}

#[test]
fn a_route_breaker_gets_its_own_endpoint_states_and_other_routes_share_the_services() {
    let f = Fixture::new();
    let c = config(&format!(
        "{SERVICES}  routePolicies:
    web/guarded: {{breaker: {{consecutiveFailures: 2}}, maxInFlight: 3}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
  rules:
  - name: guarded
    matches: [{{path: {{value: /guarded}}}}]
    backendRefs: [{{name: web-v1}}]
  - name: open
    matches: [{{path: {{value: /open}}}}]
    backendRefs: [{{name: web-v1}}]
"
    ));
    let r = f.resolver(&c);
    let target = |path: &str| {
        let ext = resolve(&r, "GET", &format!("http://web{path}"), &[]).unwrap();
        let ctx = ctx(&ext);
        let limits = ctx.limits.clone();
        match split_of(&ctx).entries()[0].target.clone().unwrap() {
            Target::Service(s) => (s, limits),
            Target::Passthrough { .. } => unreachable!(),
        }
    };
    let (guarded, limits) = target("/guarded");
    let (open, no_limits) = target("/open");
    let shared = service(&r, "web-v1");
    assert!(
        Arc::ptr_eq(&open, &shared),
        "a route without a breaker uses the service as is"
    );
    assert!(
        !Arc::ptr_eq(&guarded.endpoints, &shared.endpoints),
        "own breaker states"
    );
    let (list, _) = guarded.endpoints.snapshot();
    assert!(
        list[0].gate.is_some(),
        "the route's breaker watches the endpoint"
    );
    assert_eq!(
        list[0].pool.addr(),
        shared.endpoints.snapshot().0[0].pool.addr()
    );
    assert!(limits.is_some_and(|l| l.max_in_flight.is_some()));
    assert!(no_limits.is_none());
}

#[test]
fn a_reload_keeps_unchanged_routes_and_rebuilds_changed_ones() {
    let f = Fixture::new();
    let yaml = |weight: u32| {
        format!(
            "{SERVICES}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
  rules:
  - name: steady
    matches: [{{path: {{value: /steady}}}}]
    backendRefs: [{{name: web-v1}}]
  - name: canary
    matches: [{{path: {{value: /canary}}}}]
    backendRefs: [{{name: web-v1, weight: 100}}, {{name: web-v2, weight: {weight}}}]
"
        )
    };
    let split = |r: &OutboundResolver, path: &str| {
        let ext = resolve(r, "GET", &format!("http://web{path}"), &[]).unwrap();
        ctx(&ext)
    };
    let first = config(&yaml(1));
    let r = f.resolver(&first);
    let (steady, canary) = (split(&r, "/steady"), split(&r, "/canary"));
    let second = config(&yaml(50));
    r.update(&second.proxy, &second.routes, &f.pools, &f.metrics, None);
    assert!(
        Arc::ptr_eq(&steady, &split(&r, "/steady")),
        "untouched route kept"
    );
    assert!(
        !Arc::ptr_eq(&canary, &split(&r, "/canary")),
        "reweighted route rebuilt"
    );
    assert_eq!(split_of(&split(&r, "/canary")).entries()[1].weight, 50);
}

#[test]
fn empty_rules_or_matches_match_every_request() {
    let f = Fixture::new();
    for rules in [
        "rules: []",
        "rules: [{matches: [], backendRefs: [{name: web-v1}]}]",
    ] {
        let c = config(&format!(
            "{SERVICES}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
  {rules}
"
        ));
        let r = f.resolver(&c);
        for path in ["/", "/any/thing"] {
            assert!(
                resolve(&r, "POST", &format!("http://web{path}"), &[]).is_ok(),
                "{rules}: {path}"
            );
        }
    }
}

/// Resolves a request that arrived on a connection redirected from `dst`.
fn resolve_redirected(
    r: &OutboundResolver,
    dst: &str,
    authority: Option<&str>,
) -> Result<Target, ProxyError> {
    let uri: Uri = match authority {
        Some(a) => format!("http://{a}/").parse().unwrap(),
        None => "/".parse().unwrap(),
    };
    let head = RequestHead {
        method: &Method::GET,
        uri: &uri,
        headers: &HeaderMap::new(),
    };
    let mut ext = http::Extensions::new();
    ext.insert(OriginalDst(dst.parse().unwrap()));
    r.resolve(uri.authority(), &head, &mut ext)?;
    Ok(target_of(&ext))
}

#[test]
fn redirected_connections_route_by_cluster_ip_then_authority_then_address() {
    let f = Fixture::new();
    let c = services(
        "    web:\n      clusterIP: 10.96.0.10\n      clusterIPs: ['fd00::10']\n      endpoints: [127.0.0.1:1]\n    api:\n      endpoints: [127.0.0.1:2]\n",
    );
    let r = f.resolver(&c);
    let name = |t: Target| match t {
        Target::Service(s) => s.name.clone(),
        Target::Passthrough { authority } => format!("passthrough {authority}"),
    };
    // The cluster IP wins over whatever the Host header says.
    let to_web = resolve_redirected(&r, "10.96.0.10:80", Some("api")).unwrap();
    assert_eq!(name(to_web), "web");
    assert_eq!(
        name(resolve_redirected(&r, "[fd00::10]:80", None).unwrap()),
        "web"
    );
    // Another port of the cluster IP is not the service.
    assert_eq!(
        name(resolve_redirected(&r, "10.96.0.10:8080", None).unwrap()),
        "passthrough 10.96.0.10:8080"
    );
    // An unknown address: the authority, if it names a service...
    assert_eq!(
        name(resolve_redirected(&r, "10.0.0.7:80", Some("api")).unwrap()),
        "api"
    );
    // ...else the address itself, even without passthrough and without a Host header.
    assert_eq!(
        name(resolve_redirected(&r, "10.0.0.7:80", Some("example.com")).unwrap()),
        "passthrough 10.0.0.7:80"
    );
    assert_eq!(
        name(resolve_redirected(&r, "[fd00::99]:80", None).unwrap()),
        "passthrough [fd00::99]:80"
    );
}

#[test]
fn a_cluster_ip_and_port_belong_to_one_service() {
    let err = crate::config::parse(
        "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  services:\n    a:\n      clusterIP: 10.96.0.10\n      endpoints: [127.0.0.1:1]\n    b:\n      clusterIP: 10.96.0.10\n      endpoints: [127.0.0.1:2]\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.services.b.clusterIP: 10.96.0.10 port 80 is also service a's"),
        "{err}"
    );
    for (written, says) in [
        ("None", "headless"),
        ("0.0.0.0", "not an address"),
        ("10.96.0", "not an IP"),
    ] {
        let err = crate::config::parse(
            &format!("apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  services:\n    a:\n      clusterIP: {written}\n      endpoints: [127.0.0.1:1]\n"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(says) && err.contains(":5:"),
            "{written}: {err}"
        );
    }
}

#[test]
fn redirected_inbound_connections_reach_the_app_on_their_original_port() {
    let f = Fixture::new();
    let c =
        config("apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  inbound: {appPort: 8080}\n");
    let r = InboundResolver::new(&c.proxy, &f.pools, &f.metrics);
    let target = |dst: Option<&str>| {
        let uri: Uri = "/".parse().unwrap();
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            headers: &HeaderMap::new(),
        };
        let mut ext = http::Extensions::new();
        if let Some(dst) = dst {
            ext.insert(OriginalDst(dst.parse().unwrap()));
        }
        r.resolve(None, &head, &mut ext).unwrap();
        match target_of(&ext) {
            Target::Service(s) => format!("app {}", s.endpoints.snapshot().0[0].pool.addr()),
            Target::Passthrough { authority } => format!("port {authority}"),
        }
    };
    assert_eq!(target(None), "app 127.0.0.1:8080");
    assert_eq!(target(Some("10.0.0.5:8080")), "app 127.0.0.1:8080");
    assert_eq!(target(Some("10.0.0.5:9090")), "port 127.0.0.1:9090");
}
