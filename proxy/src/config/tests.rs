//! Unit tests for config parsing: typed values, defaults, and error positions.

use std::path::Path;
use std::time::Duration;

use super::*;

pub(super) fn ok(text: &str) -> Config {
    parse(text, Some(Path::new("skiff.yaml"))).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> Vec<ConfigError> {
    parse(text, Some(Path::new("skiff.yaml")))
        .expect_err("rejected")
        .0
}

/// The first error for `text`, which must contain `needle`.
pub(super) fn rejected(text: &str, needle: &str) -> ConfigError {
    let e = err(text).remove(0);
    assert!(e.message.contains(needle), "{}", e.message);
    e
}

pub(super) const HEAD: &str = "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\n";

#[test]
fn minimal_document_gets_defaults() {
    let c = ok(HEAD);
    assert_eq!(c.proxy.outbound.listen, "127.0.0.1:4140".parse().unwrap());
    assert_eq!(c.proxy.inbound.listen, "0.0.0.0:4143".parse().unwrap());
    assert_eq!(c.proxy.admin.listen, "127.0.0.1:4191".parse().unwrap());
    assert_eq!(
        c.proxy.limits.header_read_timeout.0,
        Duration::from_secs(10)
    );
    assert_eq!(c.proxy.shutdown.grace_period.0, Duration::from_secs(30));
}

#[test]
fn services_parse_into_endpoint_sources() {
    let c = ok(&format!(
        "{HEAD}spec:\n  services:\n    web:\n      port: 8080\n      endpoints: [127.0.0.1:9001, 127.0.0.1:9002]\n    db:\n      dns: db-headless.prod.svc.cluster.local:5432\n      dnsRefresh: 2s\n"
    ));
    let web = &c.proxy.services["web"];
    assert_eq!(web.port, 8080);
    assert_eq!(
        web.endpoints,
        EndpointSource::Static(vec![
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap()
        ])
    );
    assert_eq!(
        c.proxy.services["db"].endpoints,
        EndpointSource::Dns {
            host: "db-headless.prod.svc.cluster.local".into(),
            port: 5432,
            refresh: Some(Dur::secs(2))
        }
    );
}

#[test]
fn unknown_field_reports_line_column_and_path() {
    let e = err(&format!(
        "{HEAD}spec:\n  limits:\n    headerReadTimeot: 5s\n"
    ));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].file, "skiff.yaml");
    assert_eq!(e[0].line, Some(5));
    assert!(e[0].message.contains("spec.limits"), "{}", e[0].message);
    assert!(
        e[0].message.contains("headerReadTimeot"),
        "{}",
        e[0].message
    );
}

#[test]
fn bad_values_report_their_field() {
    let e = err(&format!(
        "{HEAD}spec:\n  limits:\n    connectTimeout: 5 seconds\n"
    ));
    assert_eq!(e[0].line, Some(5));
    assert!(
        e[0].message.contains("spec.limits.connectTimeout"),
        "{}",
        e[0].message
    );
    assert!(
        e[0].message.contains("invalid duration"),
        "{}",
        e[0].message
    );

    let e = err(&format!(
        "{HEAD}spec:\n  outbound:\n    listen: localhost-ish\n"
    ));
    assert_eq!(e[0].line, Some(5));
    assert!(
        e[0].message.contains("spec.outbound.listen"),
        "{}",
        e[0].message
    );
}

#[test]
fn service_needs_exactly_one_endpoint_source() {
    let e = err(&format!(
        "{HEAD}spec:\n  services:\n    web:\n      port: 80\n"
    ));
    assert!(
        e[0].message.contains("spec.services.web"),
        "{}",
        e[0].message
    );
    assert!(
        e[0].message.contains("needs `endpoints`"),
        "{}",
        e[0].message
    );
    assert!(e[0].line.is_some());

    rejected(
        &format!(
            "{HEAD}spec:\n  services:\n    web:\n      endpoints: [127.0.0.1:1]\n      dns: a:1\n"
        ),
        "not both",
    );
}

#[test]
fn every_bad_document_is_reported() {
    let text = format!(
        "{HEAD}spec:\n  bogus: 1\n---\napiVersion: split.smi-spec.io/v1alpha4\nkind: Mystery\n---\nfoo: bar\n"
    );
    let e = err(&text);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[1].message.contains("Mystery"));
    assert_eq!(e[1].line, Some(5), "the document's own line");
}

#[test]
fn missing_or_duplicate_proxy_document() {
    assert!(err("")[0].message.contains("no `kind: Proxy`"));
    let e = err(&format!("{HEAD}---\n{HEAD}"));
    assert!(e[0].message.contains("more than one"));
}

#[test]
fn syntax_errors_have_positions() {
    let e = err(&format!("{HEAD}spec:\n  services: [\n"));
    assert!(e[0].line.is_some(), "{e:?}");
    assert!(e[0].to_string().starts_with("skiff.yaml:"));
}

fn service_error(fields: &str) -> String {
    let e = err(&format!(
        "{HEAD}spec:\n  services:\n    web:\n      endpoints: [127.0.0.1:1]\n{fields}"
    ));
    assert!(e[0].line.is_some(), "{e:?}");
    e[0].message.clone()
}

#[test]
fn policies_reject_values_the_middleware_cannot_take() {
    let cases = [
        (
            "      retry: {budget: {ttl: 0s}}\n",
            "ttl must be between 1s and 60s",
        ),
        (
            "      retry: {budget: {ratio: 11}}\n",
            "ratio must be between 0 and 10",
        ),
        ("      retry: {codes: [700]}\n", "700 is not an HTTP status"),
        (
            "      retry: {backoff: 1s, maxBackoff: 10ms}\n",
            "backoff must not exceed",
        ),
        ("      breaker: {consecutiveFailures: 0}\n", "at least 1"),
        (
            "      breaker: {failureRate: {threshold: 1.5}}\n",
            "threshold must be over 0",
        ),
        (
            "      rateLimit: {requestsPerSecond: 0}\n",
            "requestsPerSecond must be more than 0",
        ),
        ("      loadBalancer: random\n", "unknown variant `random`"),
        ("      maxInFlight: 0\n", "spec.services.web"),
    ];
    for (fields, expected) in cases {
        let msg = service_error(fields);
        assert!(msg.contains(expected), "{fields:?}: {msg}");
        assert!(msg.starts_with("spec.services.web"), "{msg}");
    }
}

#[test]
fn policies_parse_with_their_defaults() {
    let c = ok(&format!(
        "{HEAD}spec:\n  services:\n    web:\n      endpoints: [127.0.0.1:1]\n      retry: {{}}\n      breaker: {{}}\n      rateLimit: {{requestsPerSecond: 2.5}}\n"
    ));
    let web = &c.proxy.services["web"];
    let retry = web.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 2);
    assert_eq!(
        retry.codes.iter().map(|c| c.0).collect::<Vec<_>>(),
        [502, 503, 504]
    );
    assert_eq!(retry.budget.ttl, Dur::secs(10));
    assert_eq!(web.breaker.as_ref().unwrap().consecutive_failures, 7);
    assert_eq!(
        web.rate_limit.unwrap().burst,
        3,
        "one second's worth, rounded up"
    );
    assert_eq!(web.load_balancer, LoadBalancer::P2c);
}

pub(super) const MESH_HEAD: &str = "apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  services:
    web: {endpoints: [127.0.0.1:1]}
    web-v2: {endpoints: [127.0.0.1:2]}
";

#[test]
fn smi_and_gateway_spec_examples_parse() {
    // The examples of the SMI spec (headers as a map, and as the CRD's list) and of the
    // Gateway API mesh docs, against services of those names.
    let c = ok(&format!(
        "{MESH_HEAD}  routePolicies:
    website-canary: {{rateLimit: {{requestsPerSecond: 5, perClient: true}}}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {{name: api-routes, namespace: default, labels: {{app: web}}}}
spec:
  matches:
  - {{name: api, pathRegex: \"/api/.*\", methods: [\"*\"]}}
  - {{name: metrics, pathRegex: \"/metrics\", methods: [GET]}}
  - {{name: firefox, headers: {{user-agent: \".*Firefox.*\"}}}}
  - {{name: listed, headers: [{{x-a: \"1\"}}, {{x-b: \"2\"}}]}}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {{name: canary, namespace: default}}
spec:
  service: web
  matches: [{{kind: HTTPRouteGroup, name: api-routes}}]
  backends:
  - {{service: web, weight: 900}}
  - {{service: web-v2, weight: 100}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: website-canary, namespace: default}}
spec:
  parentRefs: [{{group: core, kind: Service, name: web-v2, port: 80}}]
  rules:
  - backendRefs:
    - {{name: web, port: 80, weight: 90}}
    - {{name: web-v2, port: 80, weight: 10}}
    timeouts: {{request: 10s, backendRequest: 2s}}
    retry: {{codes: [500, 503], attempts: 3, backoff: 100ms}}
"
    ));
    let split = &c.routes["web"];
    assert!(
        split.fallback_to_service,
        "SMI: unmatched requests go to the apex"
    );
    let names: Vec<&str> = split.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "api-routes/api",
            "api-routes/metrics",
            "api-routes/firefox",
            "api-routes/listed"
        ]
    );
    assert_eq!(
        split.routes[3].matches.len(),
        2,
        "a list of header maps is alternatives"
    );
    let route = &c.routes["web-v2"].routes[0];
    assert!(!c.routes["web-v2"].fallback_to_service);
    assert_eq!(route.name, "website-canary");
    let weights: Vec<(Option<&str>, u32)> = route
        .backends
        .iter()
        .map(|b| (b.service.as_deref(), b.weight))
        .collect();
    assert_eq!(weights, [(Some("web"), 90), (Some("web-v2"), 10)]);
    let retry = route.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.codes.len(), retry.backoff),
        (3, 2, Dur::millis(100))
    );
    assert_eq!(
        route.timeouts.as_ref().unwrap().request,
        Some(Dur::secs(10))
    );
    assert!(route.policy.rate_limit.unwrap().per_client);
    assert_eq!(c.mesh_documents.len(), 3, "kept as written for /config");
}

#[test]
fn mesh_document_errors_name_the_line_and_field() {
    let bad_regex = err(&format!(
        "{MESH_HEAD}---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {{name: g}}
spec:
  matches:
  - name: broken
    pathRegex: \"/api/(\"
"
    ));
    assert_eq!(bad_regex[0].line, Some(13));
    assert!(
        bad_regex[0]
            .message
            .starts_with("spec.matches[0].pathRegex"),
        "{}",
        bad_regex[0].message
    );

    let filters = rejected(
        &format!(
            "{MESH_HEAD}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
  rules:
  - filters: [{{type: RequestHeaderModifier}}]
"
        ),
        "type RequestHeaderModifier needs `requestHeaderModifier`",
    );
    assert_eq!(filters.line, Some(14));

    let parent = err(&format!(
        "{MESH_HEAD}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{kind: Service, name: nowhere}}]
"
    ));
    assert_eq!(parent[0].line, Some(7), "the document's first line");
    assert!(
        parent[0]
            .message
            .starts_with("spec.parentRefs[0]: no service nowhere"),
        "{}",
        parent[0].message
    );

    rejected(
        &format!(
            "{MESH_HEAD}---
apiVersion: split.smi-spec.io/v1beta1
kind: TrafficSplit
metadata: {{name: s}}
spec: {{service: web, backends: []}}
"
        ),
        "split.smi-spec.io/v1alpha1, split.smi-spec.io/v1alpha2",
    );

    let policy = err(&format!("{MESH_HEAD}  routePolicies:\n    ghost: {{}}\n"));
    assert!(
        policy[0]
            .message
            .starts_with("routePolicies.ghost: no route"),
        "{}",
        policy[0].message
    );

    let both = err(&format!(
        "{MESH_HEAD}---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {{name: s}}
spec: {{service: web, backends: [{{service: web-v2, weight: 1}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
"
    ));
    assert!(
        both[0]
            .message
            .contains("either HTTPRoutes or one TrafficSplit"),
        "{}",
        both[0].message
    );

    rejected(
        &format!(
            "{MESH_HEAD}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{kind: Service, name: web}}]
  rules:
  - matches: [{{method: FETCH}}]
"
        ),
        "FETCH",
    );
}

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 2, "examples/ holds the dev and canary configs");
    // The demo's embedded configs, both sides of its meshed hop.
    let demo = crate::tools::demo::config();
    assert!(demo.proxy.services["echo-mesh"].identity.is_some());
    assert!(crate::tools::demo::peer_config().access.rules.is_some());
    let canary = load_file(&dir.join("canary.yaml")).unwrap();
    let routes = &canary.routes["web"].routes;
    assert_eq!(routes[0].policy.max_in_flight.map(|m| m.get()), Some(100));
}

#[test]
fn traffic_targets_resolve_for_this_workload_only_and_check_their_references() {
    let head = "apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  namespace: shop
  identity: {dir: /nonexistent, serviceAccount: api}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: g}
spec:
  matches:
  - {name: m, pathRegex: /x, headers: [{x-a: '1'}, {x-b: '2'}]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: db}
spec: {matches: {ports: [5432]}}
";
    let tt = |dest: &str, rules: &str| {
        format!(
            "---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {{name: t}}
spec:
  destination: {{kind: ServiceAccount, name: {dest}}}
  rules: [{rules}]
  sources: [{{kind: ServiceAccount, name: web}}]
"
        )
    };
    let none = ok(&format!(
        "{head}{}",
        tt("other", "{kind: HTTPRouteGroup, name: g}")
    ));
    assert!(
        none.access.rules.is_none(),
        "a TrafficTarget for another workload"
    );
    let c = ok(&format!(
        "{head}{}",
        tt(
            "api",
            "{kind: HTTPRouteGroup, name: g, matches: [m]}, {kind: TCPRoute, name: db}"
        )
    ));
    let rules = c.access.rules.unwrap();
    assert_eq!(rules[0].sources, ["spiffe://cluster.local/ns/shop/sa/web"]);
    assert_eq!(rules[0].routes.len(), 2, "one per header alternative");
    assert_eq!(rules[0].ports, [5432]);

    rejected(
        &format!("{head}{}", tt("api", "{kind: HTTPRouteGroup, name: nope}")),
        "no HTTPRouteGroup nope",
    );
    rejected(
        &format!(
            "{head}{}",
            tt("api", "{kind: HTTPRouteGroup, name: g, matches: [zzz]}")
        ),
        "has no match zzz",
    );
    rejected(
        &format!("{HEAD}{}", tt("api", "{kind: HTTPRouteGroup, name: g}")),
        "needs `spec.identity`",
    );
}

#[test]
fn smi_header_names_are_checked_at_load() {
    rejected(
        &format!(
            "{MESH_HEAD}---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {{name: g}}
spec:
  matches:
  - {{name: m, headers: {{'bad header': '.*'}}}}
"
        ),
        "is not a header name",
    );
}

#[test]
fn an_endpoints_idle_timeout_under_a_second_is_refused_with_its_line() {
    let text =
        format!("{HEAD}spec:\n  discovery:\n    kubernetes:\n      endpointsIdleTimeout: 300ms\n");
    let e = rejected(&text, "at least 1s");
    assert_eq!(e.line, Some(6), "{e:?}");
    let c = ok(&format!(
        "{HEAD}spec:\n  discovery:\n    kubernetes: {{endpointsIdleTimeout: 2s}}\n"
    ));
    let kube = c.proxy.discovery.kubernetes.unwrap();
    assert_eq!(kube.endpoints_idle_timeout, Dur::secs(2));
}

#[test]
fn a_default_policy_that_denies_needs_an_identity() {
    rejected(
        &format!("{HEAD}spec:\n  inbound: {{defaultPolicy: deny}}\n"),
        "need this proxy's own `spec.identity`",
    );
    ok(&format!(
        "{HEAD}spec:\n  inbound: {{defaultPolicy: allow}}\n"
    ));
}

#[test]
fn a_services_metric_labels_become_destination_labels_and_unknown_keys_are_refused() {
    let svc = "spec:\n  services:\n    web:\n      endpoints: [127.0.0.1:8080]\n";
    let c = ok(&format!(
        "{HEAD}{svc}      metricLabels: {{deployment: web, job: nightly, serviceaccount: web-sa}}\n"
    ));
    // A Job is Linkerd's `dst_k8s_job` (`job` is Prometheus's own label).
    assert_eq!(
        c.proxy.services["web"].metric_labels.0,
        [
            ("dst_deployment", "web".to_owned()),
            ("dst_k8s_job", "nightly".to_owned()),
            ("dst_serviceaccount", "web-sa".to_owned())
        ]
    );
    let e = rejected(
        &format!("{HEAD}{svc}      metricLabels: {{app: web}}\n"),
        "`metricLabels` has no key \"app\"",
    );
    assert_eq!(e.line, Some(5), "{e:?}");
}

#[test]
fn federated_trust_domains_are_read_and_an_invalid_one_is_refused() {
    let id = "spec:\n  identity:\n    federatedTrustDomains: ";
    let c = ok(&format!("{HEAD}{id}[partner.example]\n"));
    let identity = c.proxy.identity.unwrap();
    assert_eq!(identity.federated_trust_domains, ["partner.example"]);
    rejected(
        &format!("{HEAD}{id}[Partner.Example]\n"),
        "spec.identity.federatedTrustDomains",
    );
}
