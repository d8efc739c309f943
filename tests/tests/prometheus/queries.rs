//! The queries of `prometheus.rs`, with the counts the traffic should give. Most come from
//! a template of Linkerd's `viz/metrics-api` or Flagger's Linkerd observer, filled in as
//! `linkerd viz` or Flagger fills it for the deployments `web` and `api` in namespace
//! `demo`; the others group by the labels Linkerd's templates read. Templates that take
//! `increase()` or `irate()` read the counter instead (`prometheus.rs` says why).

use std::net::SocketAddr;

use super::checks::{label_set, row, Checks};
use super::{
    ALLOWED, API_AUTHORITY, API_ID, DENIED, FAIL, GONE, GRPC_OK, GRPC_UNAVAILABLE, INBOUND_FAILURE,
    INBOUND_SUCCESS, NS, OK, OUTBOUND_FAILURE, OUTBOUND_SUCCESS, WEB_ID,
};
use skiff_e2e::prometheus::Sample;

/// A label set as Prometheus's Go library prints it (`model.LabelSet.String()`), which is
/// how Linkerd puts selectors into its templates: the matchers sorted, comma-separated.
fn selector(matchers: &[&str]) -> String {
    let mut matchers: Vec<&str> = matchers.to_vec();
    matchers.sort_unstable();
    format!("{{{}}}", matchers.join(", "))
}

/// stat_summary.go `reqQuery`, over the counter:
/// `sum(increase(response_total%s[%s])) by (%s, classification, tls)`.
fn req_query(labels: &str, group_by: &str) -> String {
    format!("sum(response_total{labels}) by ({group_by}, classification, tls)")
}

/// `linkerd viz stat`: request counts by success and failure, as each view groups them.
pub(crate) async fn stat(checks: &mut Checks<'_>) {
    // `linkerd viz stat deploy/api -n demo`: inbound, by the scrape's own labels.
    let inbound = selector(&[
        r#"deployment="api""#,
        r#"direction="inbound""#,
        r#"namespace="demo""#,
    ]);
    // `linkerd viz stat deploy/web --to deploy/api -n demo` and
    // `linkerd viz stat deploy/api --from deploy/web -n demo`: web's outbound, by the
    // destination labels.
    let to_api = selector(&[
        r#"deployment="web""#,
        r#"direction="outbound""#,
        r#"dst_deployment="api""#,
        r#"dst_namespace="demo""#,
        r#"namespace="demo""#,
    ]);
    // `linkerd viz stat svc/api -n demo`: by authority (generateLabelStringWithRegex).
    let svc = selector(&[
        r#"authority=~"^api.demo.svc.cluster.local.*""#,
        r#"direction="outbound""#,
    ]);
    let inbound_counts = (INBOUND_SUCCESS, INBOUND_FAILURE);
    let outbound_counts = (OUTBOUND_SUCCESS, OUTBOUND_FAILURE);
    // What each view asks, how it groups, the group it should find, and its counts.
    let views = [
        (
            "stat deploy/api: api's inbound requests, refusals left out",
            &inbound,
            [("namespace", NS), ("deployment", "api")],
            inbound_counts,
        ),
        (
            "stat deploy/web --to deploy/api",
            &to_api,
            [("namespace", NS), ("deployment", "web")],
            outbound_counts,
        ),
        (
            "stat deploy/api --from deploy/web",
            &to_api,
            [("dst_namespace", NS), ("dst_deployment", "api")],
            outbound_counts,
        ),
        (
            "stat svc/api",
            &svc,
            [("dst_namespace", NS), ("dst_service", "api")],
            outbound_counts,
        ),
    ];
    for (what, labels, group, (success, failure)) in views {
        let group_by = format!("{}, {}", group[0].0, group[1].0);
        checks
            .exactly(
                what,
                &req_query(labels, &group_by),
                &meshed_rows(group, success, failure),
            )
            .await;
    }
    // `linkerd viz stat deploy/web --to svc/gone -n demo`: the refused connection. Its
    // `tls` (no identity was asked of gone) is not what this checks.
    let to_gone = selector(&[
        r#"deployment="web""#,
        r#"direction="outbound""#,
        r#"dst_namespace="demo""#,
        r#"dst_service="gone""#,
        r#"namespace="demo""#,
    ]);
    checks
        .holds(
            "stat deploy/web --to svc/gone: one failure, no success",
            &req_query(&to_gone, "namespace, deployment"),
            &format!("{GONE} failure"),
            |got| {
                let count = |c: &str| -> f64 {
                    got.iter()
                        .filter(|(l, _)| l.get("classification").map(String::as_str) == Some(c))
                        .map(|(_, v)| v)
                        .sum()
                };
                count("failure") == GONE as f64 && count("success") == 0.0
            },
        )
        .await;
}

/// The two rows of `reqQuery` for meshed traffic grouped by `group`: its successes and failures.
fn meshed_rows(group: [(&str, &str); 2], success: usize, failure: usize) -> [Sample; 2] {
    let of = |classification, count| {
        let mut pairs = group.to_vec();
        pairs.extend([("classification", classification), ("tls", "true")]);
        row(&pairs, count)
    };
    [of("success", success), of("failure", failure)]
}

/// The labels each side writes, grouped by them directly: who called whom, under which
/// identity, and how each response ended.
pub(crate) async fn label_values(checks: &mut Checks<'_>, app: SocketAddr) {
    let app = app.to_string();
    checks
        .exactly(
            "api's inbound series name the Host, the app, and web's identity",
            r#"sum(response_total{direction="inbound", deployment="api"}) by (authority, target_addr, tls, client_id, no_tls_reason)"#,
            &[row(
                &[
                    ("authority", "api"),
                    ("target_addr", &app),
                    ("tls", "true"),
                    ("client_id", WEB_ID),
                ],
                ALLOWED,
            )],
        )
        .await;
    checks
        .exactly(
            "api's inbound responses by status, gRPC status and classification",
            r#"sum(response_total{direction="inbound", deployment="api"}) by (status_code, grpc_status, classification, error)"#,
            &[
                row(&[("status_code", "200"), ("classification", "success")], OK),
                row(&[("status_code", "500"), ("classification", "failure")], FAIL),
                row(
                    &[("status_code", "200"), ("grpc_status", "0"), ("classification", "success")],
                    GRPC_OK,
                ),
                row(
                    &[("status_code", "200"), ("grpc_status", "14"), ("classification", "failure")],
                    GRPC_UNAVAILABLE,
                ),
            ],
        )
        .await;
    checks
        .exactly(
            "api's inbound request_total leaves refusals out",
            r#"sum(request_total{direction="inbound", deployment="api"})"#,
            &[row(&[], ALLOWED)],
        )
        .await;
    checks
        .exactly(
            "web's outbound series name api by its authority, identity and workload",
            r#"sum(response_total{direction="outbound", deployment="web", dst_service="api"}) by (authority, tls, server_id, dst_service, dst_namespace, dst_deployment, dst_serviceaccount)"#,
            &[row(
                &[
                    ("authority", API_AUTHORITY),
                    ("tls", "true"),
                    ("server_id", API_ID),
                    ("dst_service", "api"),
                    ("dst_namespace", NS),
                    ("dst_deployment", "api"),
                    ("dst_serviceaccount", "api"),
                ],
                OUTBOUND_SUCCESS + OUTBOUND_FAILURE,
            )],
        )
        .await;
}

/// The TCP series: Linkerd's stat and edges queries, the connections the test opened, and
/// the refused connect.
pub(crate) async fn tcp(checks: &mut Checks<'_>, api_inbound: SocketAddr, dead: SocketAddr) {
    let inbound = selector(&[
        r#"deployment="api""#,
        r#"direction="inbound""#,
        r#"namespace="demo""#,
    ]);
    // `linkerd viz stat deploy/api -n demo` (`tcpConnectionsQuery` is a gauge, as is; the
    // bytes of `tcpReadBytesQuery` and `tcpWriteBytesQuery` over the counters, with
    // `peer="src"` as buildTCPStatsRequestLabels adds it).
    let api_row = [("namespace", NS), ("deployment", "api")];
    checks
        .holds(
            "stat deploy/api: open connections",
            &format!("sum(tcp_open_connections{inbound}) by (namespace, deployment)"),
            "one row, at least 1",
            |got| matches!(got, [(l, v)] if *l == label_set(&api_row) && *v >= 1.0),
        )
        .await;
    let inbound_src = selector(&[
        r#"deployment="api""#,
        r#"direction="inbound""#,
        r#"namespace="demo""#,
        r#"peer="src""#,
    ]);
    for counter in ["tcp_read_bytes_total", "tcp_write_bytes_total"] {
        checks
            .holds(
                &format!("stat deploy/api: {counter}"),
                &format!("sum({counter}{inbound_src}) by (namespace, deployment)"),
                "one row, more than 0",
                |got| matches!(got, [(l, v)] if *l == label_set(&api_row) && *v > 0.0),
            )
            .await;
    }
    // `linkerd viz stat deploy/web --to deploy/api -n demo`: the connections web's proxy
    // opened, by their destination labels.
    let to_api = selector(&[
        r#"deployment="web""#,
        r#"direction="outbound""#,
        r#"dst_deployment="api""#,
        r#"dst_namespace="demo""#,
        r#"namespace="demo""#,
    ]);
    let web_row = [("namespace", NS), ("deployment", "web")];
    checks
        .holds(
            "stat deploy/web --to deploy/api: open connections",
            &format!("sum(tcp_open_connections{to_api}) by (namespace, deployment)"),
            "one row, at least 1",
            |got| matches!(got, [(l, v)] if *l == label_set(&web_row) && *v >= 1.0),
        )
        .await;
    // `linkerd viz edges deploy -n demo` (edges.go `edgesQuery`, a gauge, as is, with
    // generateLabelStringWithExclusion): web -> api, with api's identity.
    let edges = selector(&[
        r#"direction="outbound""#,
        r#"deployment!="""#,
        r#"dst_deployment!="""#,
    ]);
    let edge = label_set(&[
        ("deployment", "web"),
        ("dst_deployment", "api"),
        ("pod", "web-1"),
        ("server_id", API_ID),
        ("namespace", NS),
        ("dst_namespace", NS),
    ]);
    checks
        .holds(
            "edges deploy: web -> api over mTLS",
            &format!("sum(tcp_open_connections{edges}) by (deployment, dst_deployment, pod, server_id, namespace, dst_namespace, no_tls_reason)"),
            "one edge",
            |got| matches!(got, [(l, _)] if *l == edge),
        )
        .await;

    checks
        .exactly(
            "connections accepted by web's outbound listener: the test's three",
            r#"sum(tcp_open_total{direction="outbound", peer="src", deployment="web"})"#,
            &[row(&[], 3)],
        )
        .await;
    let inbound_peer = label_set(&[("tls", "true"), ("client_id", WEB_ID)]);
    checks
        .holds(
            "connections accepted by api's inbound listener: all from web, over mTLS",
            r#"sum(tcp_open_total{direction="inbound", peer="src", deployment="api"}) by (tls, client_id)"#,
            "one row, at least 1",
            |got| matches!(got, [(l, v)] if *l == inbound_peer && *v >= 1.0),
        )
        .await;
    let api_endpoint = api_inbound.to_string();
    let to_api_labels = label_set(&[
        ("authority", API_AUTHORITY),
        ("target_addr", &api_endpoint),
        ("tls", "true"),
        ("server_id", API_ID),
        ("dst_namespace", NS),
        ("dst_deployment", "api"),
    ]);
    checks
        .holds(
            "connections web's proxy opened to api",
            r#"sum(tcp_open_total{direction="outbound", peer="dst", dst_service="api"}) by (authority, target_addr, tls, server_id, dst_namespace, dst_deployment)"#,
            "one row, at least 1",
            |got| matches!(got, [(l, v)] if *l == to_api_labels && *v >= 1.0),
        )
        .await;
    checks
        .exactly(
            "the refused connect to gone",
            r#"sum(tcp_close_total{direction="outbound", peer="dst", errno="ECONNREFUSED", classification="failure"}) by (dst_service, target_addr)"#,
            &[row(&[("dst_service", "gone"), ("target_addr", &dead.to_string())], GONE)],
        )
        .await;
}

/// `linkerd viz routes deploy/web --to svc/api` and the authorization policy stats.
pub(crate) async fn routes_and_policy(checks: &mut Checks<'_>, app: SocketAddr) {
    // top_routes.go `routeReqQuery` over the counter,
    // `sum(increase(route_response_total%s[%s])) by (%s, dst, classification)` with
    // `rt_route` grouped, and `dstLabel` naming the service profile's FQDN.
    let routes = selector(&[
        r#"deployment="web""#,
        r#"direction="outbound""#,
        r#"dst=~"(api.demo.svc.cluster.local)(:\\d+)?""#,
        r#"namespace="demo""#,
    ]);
    let route = |name, classification| {
        [
            ("rt_route", name),
            ("dst", API_AUTHORITY),
            ("classification", classification),
        ]
    };
    checks
        .exactly(
            "routes deploy/web --to svc/api",
            &format!("sum(route_response_total{routes}) by (rt_route, dst, classification)"),
            &[
                row(&route("api-ok", "success"), OK),
                row(&route("api-default", "success"), GRPC_OK + DENIED),
                row(&route("api-default", "failure"), FAIL + GRPC_UNAVAILABLE),
            ],
        )
        .await;
    for family in ["route_request_total", "route_response_latency_ms_count"] {
        checks
            .exactly(
                &format!("{family} by route"),
                &format!("sum({family}{routes}) by (rt_route, dst)"),
                &[
                    row(&[("rt_route", "api-ok"), ("dst", API_AUTHORITY)], OK),
                    row(
                        &[("rt_route", "api-default"), ("dst", API_AUTHORITY)],
                        FAIL + DENIED + GRPC_OK + GRPC_UNAVAILABLE,
                    ),
                ],
            )
            .await;
    }

    // policy.go: `httpAuthzAllowQuery` over the counter, in the shape of
    // `linkerd viz stat authorizationpolicy/<name>` (by namespace and authz_name), with
    // Skiff's kind of authorization, the TrafficTarget.
    let allow = selector(&[
        r#"authz_kind="traffictarget""#,
        r#"authz_name="web-to-api""#,
        r#"namespace="demo""#,
    ]);
    checks
        .exactly(
            "stat authorization: requests TrafficTarget web-to-api allowed",
            &format!("sum(inbound_http_authz_allow_total{allow}) by (namespace, authz_name)"),
            &[row(
                &[("namespace", NS), ("authz_name", "web-to-api")],
                ALLOWED,
            )],
        )
        .await;
    // `httpAuthzDenyQuery` in the shape of `linkerd viz stat httproute -n demo`, whose
    // grouping names route_name twice, as buildServerRequestLabels writes it.
    checks
        .holds(
            "stat httproute: requests denied",
            r#"sum(inbound_http_authz_deny_total{namespace="demo"}) by (srv_name, srv_kind, route_name, route_kind, namespace, route_name)"#,
            &format!("{DENIED} in all, each row with a server and a route"),
            |got| {
                let named = got.iter().all(|(l, _)| {
                    ["srv_name", "srv_kind", "route_name", "route_kind"]
                        .iter()
                        .all(|k| l.contains_key(*k))
                });
                named && got.iter().map(|(_, v)| v).sum::<f64>() == DENIED as f64
            },
        )
        .await;
    let app = app.to_string();
    checks
        .exactly(
            "denials: to the app, from web's identity",
            r#"sum(inbound_http_authz_deny_total{deployment="api"}) by (target_addr, tls, client_id)"#,
            &[row(
                &[("target_addr", &app), ("tls", "true"), ("client_id", WEB_ID)],
                DENIED,
            )],
        )
        .await;
    checks
        .exactly(
            "allowances: the TrafficTarget named, to the app, from web's identity",
            r#"sum(inbound_http_authz_allow_total{deployment="api"}) by (authz_group, authz_kind, authz_name, target_addr, tls, client_id)"#,
            &[row(
                &[
                    ("authz_group", "access.smi-spec.io"),
                    ("authz_kind", "traffictarget"),
                    ("authz_name", "web-to-api"),
                    ("target_addr", &app),
                    ("tls", "true"),
                    ("client_id", WEB_ID),
                ],
                ALLOWED,
            )],
        )
        .await;
}

/// Flagger's Linkerd checks of a canary `api` in `demo` (`{{ target }}` is `api`,
/// `{{ interval }}` `1m`).
pub(crate) async fn flagger(checks: &mut Checks<'_>) {
    // request-success-rate, over the counters.
    let rate = 100.0 * INBOUND_SUCCESS as f64 / ALLOWED as f64;
    checks
        .holds(
            "Flagger request-success-rate",
            r#"sum(response_total{namespace="demo", deployment=~"api", classification!="failure", direction="inbound"}) / sum(response_total{namespace="demo", deployment=~"api", direction="inbound"}) * 100"#,
            &format!("{rate:.3}"),
            |got| matches!(got, [(_, v)] if (v - rate).abs() < 1e-9),
        )
        .await;
    // request-duration, Flagger's template on one line: loopback calls take well under a
    // second.
    checks
        .holds(
            "Flagger request-duration (p99, real form)",
            r#"histogram_quantile(0.99, sum(rate(response_latency_ms_bucket{namespace="demo", deployment=~"api", direction="inbound"}[1m])) by (le))"#,
            "between 0 and 1000 ms",
            |got| matches!(got, [(_, v)] if *v > 0.0 && *v <= 1000.0),
        )
        .await;
    checks
        .exactly(
            "api's inbound latency histogram counts what reached the app",
            r#"sum(response_latency_ms_count{namespace="demo", deployment="api", direction="inbound"})"#,
            &[row(&[], ALLOWED)],
        )
        .await;
}

/// `linkerd viz stat-inbound deploy/api` and `linkerd viz authz deploy/api`: the inbound
/// series carry the server, route and authorization that let each request through.
pub(crate) async fn inbound_policy(checks: &mut Checks<'_>) {
    // stat-inbound.go, over the counter: `response_total{direction="inbound", deployment,
    // namespace}` by (srv_name, srv_kind, route_name, route_kind, classification,
    // target_port, namespace, deployment).
    let app_port = |class| {
        [
            ("srv_name", "all-unauthenticated"),
            ("srv_kind", "default"),
            ("route_name", "api-routes"),
            ("route_kind", "httproutegroup"),
            ("classification", class),
            ("namespace", NS),
            ("deployment", "api"),
        ]
    };
    checks
        .holds(
            "stat-inbound deploy/api: by server and route",
            r#"sum(response_total{direction="inbound", deployment="api", namespace="demo"}) by (srv_name, srv_kind, route_name, route_kind, classification, target_port, namespace, deployment)"#,
            &format!(
                "{INBOUND_SUCCESS} successes and {INBOUND_FAILURE} failures on route \
                 api-routes of the default server, with the app's port"
            ),
            |got| {
                let count = |class| {
                    got.iter()
                        .filter(|(l, _)| {
                            app_port(class).iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
                                && l.get("target_port").is_some_and(|p| !p.is_empty())
                        })
                        .map(|(_, v)| *v)
                        .sum::<f64>()
                };
                count("success") == INBOUND_SUCCESS as f64
                    && count("failure") == INBOUND_FAILURE as f64
            },
        )
        .await;
    // authz.go, over the counters: response_total and inbound_http_authz_allow_total by
    // (route_kind, route_name, authz_kind, authz_name, srv_kind, srv_name).
    let by = "route_kind, route_name, authz_kind, authz_name, srv_kind, srv_name";
    let authz_row = [
        ("route_kind", "httproutegroup"),
        ("route_name", "api-routes"),
        ("authz_kind", "traffictarget"),
        ("authz_name", "web-to-api"),
        ("srv_kind", "default"),
        ("srv_name", "all-unauthenticated"),
    ];
    checks
        .exactly(
            "authz deploy/api: requests per authorization",
            &format!(
                r#"sum(response_total{{direction="inbound", deployment="api", namespace="demo"}}) by ({by})"#
            ),
            &[row(&authz_row, ALLOWED)],
        )
        .await;
    checks
        .exactly(
            "authz deploy/api: allowances per authorization",
            &format!(
                r#"sum(inbound_http_authz_allow_total{{deployment="api", namespace="demo"}}) by ({by})"#
            ),
            &[row(&authz_row, ALLOWED)],
        )
        .await;
}

/// `linkerd viz stat-outbound deploy/web`: Linkerd's newer outbound route families, over
/// the counters, grouped as stat-outbound.go groups them.
pub(crate) async fn stat_outbound(checks: &mut Checks<'_>) {
    let route = |route: &'static str, kind: &'static str, status: &'static str| {
        let mut pairs: Vec<(&'static str, &'static str)> =
            vec![("parent_name", "api"), ("parent_port", "80")];
        pairs.extend([("route_name", route), ("route_kind", kind)]);
        pairs.push(("http_status", status));
        pairs
    };
    let ok_route = route("api-ok", "HTTPRoute", "200");
    let default_200 = route("api-default", "HTTPRoute", "200");
    let default_500 = route("api-default", "HTTPRoute", "500");
    let default_403 = route("api-default", "HTTPRoute", "403");
    // The unreachable service: its default route, failed by Skiff with Linkerd's error.
    let gone = [
        ("parent_name", "gone"),
        ("parent_port", "80"),
        ("route_name", "default"),
        ("route_kind", "default"),
        ("error", "IO"),
    ];
    checks
        .exactly(
            "stat-outbound deploy/web: requests per route, status and error",
            r#"sum(outbound_http_route_request_statuses_total{deployment="web", namespace="demo"}) by (parent_name, parent_port, route_name, route_kind, http_status, error)"#,
            &[
                row(&ok_route, OK),
                row(&default_200, GRPC_OK + GRPC_UNAVAILABLE),
                row(&default_500, FAIL),
                row(&default_403, DENIED),
                row(&gone, GONE),
            ],
        )
        .await;
    let backend = |mut pairs: Vec<(&'static str, &'static str)>| {
        pairs.extend([("backend_name", "api"), ("backend_port", "80")]);
        pairs
    };
    checks
        .exactly(
            "stat-outbound deploy/web: responses per route and backend",
            r#"sum(outbound_http_route_backend_response_statuses_total{deployment="web", namespace="demo"}) by (parent_name, parent_port, backend_name, backend_port, route_name, route_kind, http_status, error)"#,
            &[
                row(&backend(ok_route.clone()), OK),
                row(&backend(default_200.clone()), GRPC_OK + GRPC_UNAVAILABLE),
                row(&backend(default_500.clone()), FAIL),
                row(&backend(default_403.clone()), DENIED),
                // Its endpoint was tried (the connect refused), so its backend counts it.
                row(
                    &[
                        &gone[..],
                        &[("backend_name", "gone"), ("backend_port", "80")],
                    ]
                    .concat(),
                    GONE,
                ),
            ],
        )
        .await;
    checks
        .exactly(
            "stat-outbound deploy/web: request durations counted per route",
            r#"sum(outbound_http_route_request_duration_seconds_count{deployment="web", namespace="demo"}) by (parent_name, route_name)"#,
            &[
                row(&[("parent_name", "api"), ("route_name", "api-ok")], OK),
                row(
                    &[("parent_name", "api"), ("route_name", "api-default")],
                    FAIL + DENIED + GRPC_OK + GRPC_UNAVAILABLE,
                ),
                row(&[("parent_name", "gone"), ("route_name", "default")], GONE),
            ],
        )
        .await;
}
