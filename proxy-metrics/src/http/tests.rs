//! Unit tests for the HTTP series: what `/stats` makes of each target's labels, and one
//! classification for `response_total`, `/stats` and tap's end event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use proxy_core::classify::Classification;
use proxy_core::{Body, BoxError, Direction, Reason};
use serde_json::Value;
use tower::{Layer, ServiceExt};

use super::*;
use crate::stats::Summary;
use crate::tap::{EndEvent, Event, Filter, TapHub};

fn families() -> Arc<HttpFamilies> {
    Arc::new(HttpFamilies::register(&mut Registry::default()))
}

/// The label keys and values of a `/stats` row (its JSON without the numbers).
fn row_labels(row: &crate::stats::Row) -> BTreeMap<String, String> {
    let Ok(Value::Object(numbers)) = serde_json::to_value(Summary::default()) else {
        panic!("a summary is an object");
    };
    let Ok(Value::Object(fields)) = serde_json::to_value(row) else {
        panic!("a row is an object");
    };
    fields
        .into_iter()
        .filter(|(k, _)| !numbers.contains_key(k))
        .map(|(k, v)| (k, v.as_str().expect("labels are strings").to_owned()))
        .collect()
}

#[tokio::test]
async fn stats_rows_carry_every_non_empty_label_of_their_target() {
    let f = families();
    let authority = "web.default.svc.cluster.local:80";
    let service = f.target(Direction::Outbound, authority, "web:80", None);
    let route = f.target(Direction::Outbound, authority, "web:80", Some("web/api"));
    let meshed = route.with_peer("server_id", "spiffe://td/ns/a/sa/web");
    let app = f.target(Direction::Inbound, "", "127.0.0.1:8080", None);
    let caller = app.with_peer("client_id", "spiffe://td/ns/b/sa/client");
    let unrouted = f.target(Direction::Outbound, "", "", None);
    for t in [&service, &route, &meshed, &app, &caller, &unrouted] {
        t.window(Classification::Success, 1.0);
    }
    let want: BTreeSet<BTreeMap<String, String>> = f
        .windows
        .lock()
        .unwrap()
        .keys()
        .map(|labels| {
            // `target_ip` and `target_port` repeat `target_addr`, which the row has.
            labels
                .iter()
                .filter(|(k, v)| !v.is_empty() && !matches!(*k, "target_ip" | "target_port"))
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        })
        .collect();
    assert_eq!(want.len(), 6);
    let report = f.stats();
    let have: BTreeSet<_> = report.stats.iter().map(row_labels).collect();
    assert_eq!(have, want, "no label lost or invented on the way to /stats");
}

/// A response that answers as scripted: a status, maybe a `grpc-status` header, maybe the
/// `Reason` Respond leaves on the responses Skiff makes itself.
fn scripted(status: u16, grpc: Option<&str>, reason: Option<Reason>) -> Response<Body> {
    let mut rsp = Response::new(proxy_core::body::full(Bytes::from_static(b"ok")));
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(g) = grpc {
        rsp.headers_mut().insert("grpc-status", g.parse().unwrap());
    }
    if let Some(r) = reason {
        rsp.extensions_mut().insert(r);
    }
    rsp
}

#[tokio::test]
async fn metrics_stats_and_tap_report_one_classification() {
    let f = families();
    let tap = Arc::new(TapHub::new(Counter::default()));
    let mut sub = tap.subscribe(Filter::from_query("max_rate=100000").unwrap());
    let observe = Arc::new(Observe::new(
        Direction::Outbound,
        tap.clone(),
        Arc::default(),
        Arc::default(),
        None,
    ));
    let cases = [
        (200, None, None, Classification::Success),
        (404, None, None, Classification::Success),
        (500, None, None, Classification::Failure),
        (200, Some("14"), None, Classification::Failure),
        (200, Some("0"), None, Classification::Success),
        (
            502,
            None,
            Some(Reason::UpstreamConnect),
            Classification::Failure,
        ),
    ];
    for (i, (status, grpc, reason, want)) in cases.into_iter().enumerate() {
        // One target per case, so each one's counts can be read on their own.
        let target = f.target(Direction::Outbound, &format!("case{i}"), "x:80", None);
        let layer = MetricsLayer::new(target, observe.clone());
        let svc = layer.layer(tower::service_fn(move |_req: Request<Body>| async move {
            Ok::<_, BoxError>(scripted(status, grpc, reason))
        }));
        let rsp = svc
            .oneshot(Request::new(proxy_core::body::empty()))
            .await
            .unwrap();
        let _ = rsp.into_body().collect().await.unwrap();

        let mut end: Option<EndEvent> = None;
        while end.is_none() {
            let line = sub.events.recv().await.expect("an event");
            if let Some(Event::End(e)) = Event::from_line(&line) {
                end = Some(e);
            }
        }
        let end = end.expect("the end event");
        assert_eq!(end.classification, want, "case {i}: tap");
        let row = f
            .stats()
            .stats
            .into_iter()
            .find(|r| r.authority.as_deref() == Some(&format!("case{i}")))
            .expect("a row");
        let counted = (row.summary.success_count, row.summary.failure_count);
        let expected = if want.is_success() { (1, 0) } else { (0, 1) };
        assert_eq!(counted, expected, "case {i}: /stats");
        let mut labels: Labels = vec![
            ("direction", "outbound".into()),
            ("authority", format!("case{i}")),
            ("target_addr", "x:80".into()),
            ("tls", "disabled".into()),
        ];
        labels.push(("status_code", status.to_string()));
        labels.push(("classification", want.as_str().into()));
        labels.push(("grpc_status", grpc.unwrap_or("").into()));
        labels.push(("error", reason.map_or("", Reason::as_str).into()));
        assert_eq!(
            f.responses.get_or_create(&labels).get(),
            1,
            "case {i}: response_total under classification={}",
            want.as_str()
        );
    }
}

/// The value of `family`'s series with exactly `labels`, without creating it.
fn count(family: &Family<Labels, Counter>, labels: &Labels) -> Option<u64> {
    let text = {
        let mut registry = Registry::default();
        registry.register("probe", "", family.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    };
    let want: String = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(",");
    text.lines()
        .find(|l| l.starts_with(&format!("probe_total{{{want}}} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Sends one request through a metrics layer whose inner service routes it to `target`,
/// picks the endpoint `dst` (when given) and answers `status`; returns the response.
async fn through(
    unrouted: Arc<TargetMetrics>,
    target: Option<Arc<TargetMetrics>>,
    dst: Option<Arc<Destination>>,
    status: u16,
    reason: Option<Reason>,
) {
    let observe = Arc::new(Observe::new(
        Direction::Outbound,
        Arc::new(TapHub::new(Counter::default())),
        Arc::default(),
        Arc::default(),
        None,
    ));
    let svc =
        MetricsLayer::new(unrouted, observe).layer(tower::service_fn(move |req: Request<Body>| {
            let (target, dst) = (target.clone(), dst.clone());
            async move {
                let slot = req.extensions().get::<MetricsSlot>().unwrap();
                if let Some(t) = &target {
                    slot.start(t);
                }
                if let Some(d) = &dst {
                    slot.endpoint(d);
                }
                Ok::<_, BoxError>(scripted(status, None, reason))
            }
        }));
    let rsp = svc
        .oneshot(Request::new(proxy_core::body::empty()))
        .await
        .unwrap();
    let _ = rsp.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn a_request_counts_under_the_endpoint_it_went_to_with_its_identity() {
    let f = families();
    f.set_identity(true);
    let auth = "web.shop.svc.cluster.local:80";
    let service = f.target(Direction::Outbound, auth, "web:80", None);
    let base = [
        ("direction", "outbound"),
        ("authority", auth),
        ("target_addr", "web:80"),
        ("tls", "no_identity"),
        ("no_tls_reason", "not_provided_by_service_discovery"),
    ];
    let pod = Arc::new(Destination::new(labels(&[
        ("dst_service", "web"),
        ("dst_namespace", "shop"),
        ("dst_pod", "web-1"),
        ("dst_deployment", "web"),
        ("server_id", "spiffe://td/ns/shop/sa/web"),
    ])));
    let unrouted = f.target(Direction::Outbound, "", "", None);
    for _ in 0..3 {
        through(
            unrouted.clone(),
            Some(service.clone()),
            Some(pod.clone()),
            200,
            None,
        )
        .await;
    }
    through(
        unrouted.clone(),
        Some(service.clone()),
        None,
        503,
        Some(Reason::NoEndpoints),
    )
    .await;

    // A verified endpoint: `tls="true"` and its `server_id`, the plaintext reason gone.
    let meshed = labels(&[
        ("direction", "outbound"),
        ("authority", auth),
        ("target_addr", "web:80"),
        ("tls", "true"),
        ("dst_service", "web"),
        ("dst_namespace", "shop"),
        ("dst_pod", "web-1"),
        ("dst_deployment", "web"),
        ("server_id", "spiffe://td/ns/shop/sa/web"),
    ]);
    assert_eq!(count(&f.requests, &meshed), Some(3));
    let mut ok = meshed.clone();
    ok.extend(labels(&[
        ("status_code", "200"),
        ("classification", "success"),
        ("grpc_status", ""),
        ("error", ""),
    ]));
    assert_eq!(count(&f.responses, &ok), Some(3));
    // No endpoint: the service's own series, plaintext as the proxy has an identity.
    assert_eq!(count(&f.requests, &labels(&base)), Some(1));
    // Linkerd's route family counts every request of the service once, with no `rt_route`
    // for the service's default route.
    let route = labels(&[("direction", "outbound"), ("dst", auth)]);
    assert_eq!(count(&f.routes.requests, &route), Some(4));
    // One `/stats` row: the endpoint's series share their target's window.
    let rows: Vec<_> = f
        .stats()
        .stats
        .into_iter()
        .filter(|r| r.authority.as_deref() == Some(auth))
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].summary.success_count + rows[0].summary.failure_count,
        4
    );
}

#[tokio::test]
async fn denied_requests_are_not_counted_as_requests_or_responses() {
    let f = families();
    let app = f.target(Direction::Inbound, "", "127.0.0.1:8080", None);
    through(app.clone(), None, None, 403, Some(Reason::Forbidden)).await;
    through(app.clone(), None, None, 200, None).await;
    let base = labels(&[
        ("direction", "inbound"),
        ("authority", ""),
        ("target_addr", "127.0.0.1:8080"),
        ("target_ip", "127.0.0.1"),
        ("target_port", "8080"),
        ("tls", "disabled"),
    ]);
    assert_eq!(count(&f.requests, &base), Some(1), "the allowed one only");
    let mut forbidden = base.clone();
    forbidden.extend(labels(&[
        ("status_code", "403"),
        ("classification", "failure"),
        ("grpc_status", ""),
        ("error", "forbidden"),
    ]));
    assert_eq!(count(&f.responses, &forbidden), None);
}

#[tokio::test]
async fn inbound_authorities_and_endpoints_fold_into_other_beyond_the_cap() {
    let f = families();
    f.limits().set(2, std::time::Duration::from_secs(600));
    let app = f.target(Direction::Inbound, "", "127.0.0.1:8080", None);
    let conn = ConnectionSeries::new(app.with_peer("client_id", "spiffe://td/ns/a/sa/b"));
    let seen: Vec<String> = ["API:80", "api:80", "b", "c", "d"]
        .iter()
        .map(|a| {
            let m = conn.for_request(a, None);
            m.base
                .iter()
                .find(|(k, _)| *k == "authority")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(seen, ["api:80", "api:80", "b", OTHER, OTHER]);
    let tls: Vec<_> = conn
        .for_request("b", None)
        .base
        .iter()
        .filter(|(k, _)| matches!(*k, "tls" | "client_id"))
        .cloned()
        .collect();
    assert_eq!(
        tls,
        labels(&[("tls", "true"), ("client_id", "spiffe://td/ns/a/sa/b")])
    );

    let service = f.target(
        Direction::Outbound,
        "web.shop.svc.cluster.local:80",
        "web:80",
        None,
    );
    let pods: Vec<String> = (0..4)
        .map(|i| {
            let d = Destination::new(labels(&[("dst_pod", &format!("web-{i}"))]));
            let m = d.series(&service);
            m.base
                .iter()
                .find(|(k, _)| *k == "dst_pod")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(pods, ["web-0", "web-1", OTHER, OTHER]);
}

#[tokio::test]
async fn a_caller_let_in_by_two_policies_is_one_stats_row() {
    let f = families();
    let app = f.target(Direction::Inbound, "", "127.0.0.1:8080", None);
    let conn = ConnectionSeries::new(app.with_peer("client_id", "spiffe://td/ns/a/sa/b"));
    let by = |rule: &str| proxy_core::authz::Authorized {
        rule: Some(rule.into()),
        route: Some(format!("{rule}-routes/all").into()),
        default: proxy_core::authz::DefaultPolicy::Allow,
        audited: false,
    };
    for rule in ["reads", "writes"] {
        let series = conn.for_request("api:80", Some(&by(rule)));
        series.window(Classification::Success, 1.0);
        let authz = series
            .base
            .iter()
            .find(|(k, _)| *k == "authz_name")
            .unwrap();
        assert_eq!(authz.1, rule, "each policy labels its own series");
    }
    let rows: Vec<_> = f
        .stats()
        .stats
        .into_iter()
        .filter(|r| r.authority.as_deref() == Some("api:80"))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].summary.success_count, 2);
}
