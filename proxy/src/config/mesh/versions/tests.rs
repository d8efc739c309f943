//! Each version of each kind, as its specification writes it, gives the same routes and
//! access rules as the version Skiff's model follows.

use super::parse_quantity;
use crate::config::{parse, Config};

const HEAD: &str = "apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  namespace: shop
  identity: {dir: /nonexistent, serviceAccount: api}
  services:
    web: {endpoints: [127.0.0.1:1]}
    web-v1: {endpoints: [127.0.0.1:2]}
    web-v2: {endpoints: [127.0.0.1:3]}
";

fn load(documents: &str) -> Config {
    parse(&format!("{HEAD}{documents}"), None).unwrap_or_else(|e| panic!("{e}\n{documents}"))
}

/// The routes and access rules of `documents`, printed (regular expressions print as their
/// patterns), for comparing two spellings of the same intent. Which object a route came
/// from (its kind and group, for metrics) is left out: the spellings differ in it.
fn outcome(documents: &str) -> String {
    let mut c = load(documents);
    for service in c.routes.values_mut() {
        for route in &mut service.routes {
            route.source = Default::default();
        }
    }
    format!("{:?}\n{:?}", c.routes, c.access.rules)
}

fn same(old: &str, new: &str) {
    assert_eq!(
        outcome(old),
        outcome(new),
        "\n{old}\nis not the same as\n{new}"
    );
}

#[test]
fn quantities_become_thousandths() {
    for (text, want) in [
        ("1", Some(1000)),
        ("500m", Some(500)),
        ("100m", Some(100)),
        ("10m", Some(10)),
        ("1500m", Some(1500)),
        ("1.5", Some(1500)),
        ("0", Some(0)),
        ("0m", Some(0)),
        ("1k", Some(1_000_000)),
        ("1Ki", Some(1_024_000)),
        ("1e3", Some(1_000_000)),
        ("1u", Some(1)),
        ("-1", None),
        ("1K", None),
        ("", None),
        ("abc", None),
        ("1E", None),
        ("1e2147483647", None),
        ("99999999999999999999999999999999Ki", None),
    ] {
        assert_eq!(parse_quantity(text), want, "{text:?}");
    }
}

const SPLIT_V1ALPHA4: &str = "---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary}
spec:
  service: web
  backends:
  - {service: web-v1, weight: 1000}
  - {service: web-v2, weight: 500}
";

#[test]
fn traffic_split_versions() {
    // v1alpha1: quantities, "1 = 1000m".
    same(
        "---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: canary}
spec:
  service: web
  backends:
  - {service: web-v1, weight: 1}
  - {service: web-v2, weight: 500m}
",
        SPLIT_V1ALPHA4,
    );
    for version in ["v1alpha2", "v1alpha3"] {
        same(&SPLIT_V1ALPHA4.replace("v1alpha4", version), SPLIT_V1ALPHA4);
    }
    // The root service may be written with its namespace, or whole.
    for written in ["web.shop", "web.shop.svc", "web.shop.svc.cluster.local"] {
        same(
            &SPLIT_V1ALPHA4.replace("service: web\n", &format!("service: {written}\n")),
            SPLIT_V1ALPHA4,
        );
    }
    let other = parse(
        &format!(
            "{HEAD}{}",
            SPLIT_V1ALPHA4.replace("service: web\n", "service: web.other\n")
        ),
        None,
    )
    .unwrap_err();
    assert!(other.to_string().contains("in namespace other"), "{other}");
}

const GROUP_V1ALPHA4: &str = "---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: the-routes}
spec:
  matches:
  - {name: metrics, pathRegex: /metrics, methods: [GET]}
  - {name: android, headers: {user-agent: '.*Android.*'}}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab}
spec:
  service: web
  matches: [{kind: HTTPRouteGroup, name: the-routes}]
  backends: [{service: web-v2, weight: 1}]
";

#[test]
fn http_route_group_versions() {
    // v1alpha1 and v1alpha2: matches at the top (v1alpha1 without headers).
    let top = "---
apiVersion: specs.smi-spec.io/VERSION
kind: HTTPRouteGroup
metadata: {name: the-routes}
matches:
- {name: metrics, pathRegex: /metrics, methods: [GET]}
- {name: android, headers: {user-agent: '.*Android.*'}}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab}
spec:
  service: web
  matches: [{kind: HTTPRouteGroup, name: the-routes}]
  backends: [{service: web-v2, weight: 1}]
";
    for version in ["v1alpha1", "v1alpha2"] {
        same(&top.replace("VERSION", version), GROUP_V1ALPHA4);
    }
    same(
        &GROUP_V1ALPHA4.replace("specs.smi-spec.io/v1alpha4", "specs.smi-spec.io/v1alpha3"),
        GROUP_V1ALPHA4,
    );
    // The CRD's spelling of headers, a list of maps, is the docs' map.
    same(
        &GROUP_V1ALPHA4.replace(
            "headers: {user-agent: '.*Android.*'}",
            "headers: [{user-agent: '.*Android.*'}]",
        ),
        GROUP_V1ALPHA4,
    );
}

const TARGET_V1ALPHA3: &str = "---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: the-routes}
spec:
  matches: [{name: metrics, pathRegex: /metrics, methods: [GET]}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: tcp}
spec: {matches: {ports: []}}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: path-specific}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop}
  rules:
  - {kind: HTTPRouteGroup, name: the-routes, matches: [metrics]}
  - {kind: TCPRoute, name: tcp}
  sources: [{kind: ServiceAccount, name: prometheus, namespace: shop}]
";

#[test]
fn traffic_target_and_tcp_route_versions() {
    // TCPRoute before v1alpha4 has no matches: every port.
    same(
        &TARGET_V1ALPHA3.replace(
            "apiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: {name: tcp}\nspec: {matches: {ports: []}}",
            "apiVersion: specs.smi-spec.io/v1alpha3\nkind: TCPRoute\nmetadata: {name: tcp}\nspec: {}",
        ),
        TARGET_V1ALPHA3,
    );
    for version in ["v1alpha1", "v1alpha2"] {
        same(
            &TARGET_V1ALPHA3.replace(
                "apiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: {name: tcp}\nspec: {matches: {ports: []}}",
                &format!("apiVersion: specs.smi-spec.io/{version}\nkind: TCPRoute\nmetadata: {{name: tcp}}"),
            ),
            TARGET_V1ALPHA3,
        );
    }
    // v1alpha1: no spec, and `specs` for `rules`.
    let v1alpha1 = TARGET_V1ALPHA3.replace(
        "apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: path-specific}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop}
  rules:
  - {kind: HTTPRouteGroup, name: the-routes, matches: [metrics]}
  - {kind: TCPRoute, name: tcp}
  sources: [{kind: ServiceAccount, name: prometheus, namespace: shop}]",
        "apiVersion: access.smi-spec.io/v1alpha1
kind: TrafficTarget
metadata: {name: path-specific}
destination: {kind: ServiceAccount, name: api, namespace: shop}
specs:
- {kind: HTTPRouteGroup, name: the-routes, matches: [metrics]}
- {kind: TCPRoute, name: tcp}
sources: [{kind: ServiceAccount, name: prometheus, namespace: shop}]",
    );
    same(&v1alpha1, TARGET_V1ALPHA3);
    same(
        &TARGET_V1ALPHA3.replace("access.smi-spec.io/v1alpha3", "access.smi-spec.io/v1alpha2"),
        TARGET_V1ALPHA3,
    );
    // v1alpha2's destination port is the one port TCP may use.
    let with_port = load(
        &TARGET_V1ALPHA3
            .replace("access.smi-spec.io/v1alpha3", "access.smi-spec.io/v1alpha2")
            .replace(
                "name: api, namespace: shop}",
                "name: api, namespace: shop, port: 8080}",
            ),
    );
    let rules = with_port.access.rules.unwrap();
    assert_eq!(
        (rules[0].ports.clone(), rules[0].any_port),
        (vec![8080], false)
    );
}

const HTTPROUTE_V1: &str = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-route}
spec:
  parentRefs: [{group: core, kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web-v2, port: 80}]
";

#[test]
fn http_route_versions_including_linkerds() {
    for api_version in [
        "gateway.networking.k8s.io/v1beta1",
        "policy.linkerd.io/v1beta3",
        "policy.linkerd.io/v1beta2",
    ] {
        same(
            &HTTPROUTE_V1.replace("gateway.networking.k8s.io/v1", api_version),
            HTTPROUTE_V1,
        );
    }
    // Linkerd's first versions have no weights; every backend weighs 1.
    for api_version in ["policy.linkerd.io/v1alpha1", "policy.linkerd.io/v1beta1"] {
        same(
            &HTTPROUTE_V1.replace("gateway.networking.k8s.io/v1", api_version),
            HTTPROUTE_V1,
        );
    }
}

#[test]
fn grpc_routes_route_as_http_routes_on_the_grpc_path() {
    let grpc = "---
apiVersion: gateway.networking.k8s.io/VERSION
kind: GRPCRoute
metadata: {name: grpc}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - matches:
    - method: {service: echo.Echo, method: Say}
      headers: [{name: x-test-case, value: set}]
    - method: {service: echo.Echo}
    - method: {type: RegularExpression, method: 'S.*'}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-header-set, value: v}]}
    backendRefs: [{name: web-v1, port: 80, weight: 70}, {name: web-v2, port: 80, weight: 30}]
";
    let http = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: grpc}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
  - matches:
    - path: {type: Exact, value: /echo.Echo/Say}
      headers: [{name: x-test-case, value: set}]
    - path: {type: PathPrefix, value: /echo.Echo}
    - path: {type: RegularExpression, value: '/(?:[^/]+)/(?:S.*)'}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-header-set, value: v}]}
    backendRefs: [{name: web-v1, port: 80, weight: 70}, {name: web-v2, port: 80, weight: 30}]
";
    for version in ["v1", "v1alpha2"] {
        same(&grpc.replace("VERSION", version), http);
    }
    // Each keeps the object it came from, which its metrics name.
    let source = |documents: &str| {
        let c = load(documents);
        let route = &c.routes.values().next().unwrap().routes[0];
        let s = &route.source;
        format!("{} {} {}/{}", s.group, s.kind, s.namespace, s.name)
    };
    assert_eq!(
        source(&grpc.replace("VERSION", "v1")),
        "gateway.networking.k8s.io GRPCRoute shop/grpc"
    );
    assert_eq!(
        source(http),
        "gateway.networking.k8s.io HTTPRoute shop/grpc"
    );
    let bad = parse(
        &format!(
            "{HEAD}{}",
            grpc.replace("VERSION", "v1")
                .replace("service: echo.Echo}", "service: 'not a name'}")
        ),
        None,
    )
    .unwrap_err();
    assert!(
        bad.to_string().contains("is not a gRPC service name"),
        "{bad}"
    );
}
