//! Distributed tracing end to end: real proxies export spans over OTLP/HTTP to a real
//! receiver that decodes them with the official OpenTelemetry protobuf definitions
//! (`skiff_e2e::otlp`). Two meshed hops make one client and one server span, linked as
//! parent and child, with the attributes the docs promise; a caller's context (W3C or B3)
//! is continued; a ratio of 0 exports nothing; a collector that never answers changes no
//! response and is counted.
//!
//! Without Python's `opentelemetry-proto` the checks cannot run, and must not pass as if
//! they had: this file has its own harness (libtest-mimic) and reports them as ignored,
//! saying why. With `SKIFF_REQUIRE_OTLP` set, as `.ci/run` sets it, they fail instead.

use std::process::ExitCode;
use std::time::Duration;

use http::{Request, StatusCode};
use libtest_mimic::{Arguments, Completion, Trial};
use proxy_tls::devca::DevCa;
use serde_json::{json, Value};
use skiff_e2e::mesh::{client_config, credentials, identity};
use skiff_e2e::otlp::Receiver;
use skiff_e2e::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(10);

/// A test of this file: an async function, boxed.
type Test = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests: [(&str, Test); 4] = [
        (
            "two_meshed_hops_make_a_client_and_a_server_span_linked_as_parent_and_child",
            || Box::pin(two_meshed_hops()),
        ),
        (
            "a_callers_context_is_continued_and_failures_are_marked",
            || Box::pin(callers_context_and_failures()),
        ),
        (
            "a_sampling_ratio_of_zero_exports_nothing_but_the_decision_travels",
            || Box::pin(ratio_zero()),
        ),
        (
            "a_collector_that_never_answers_changes_no_response_and_is_counted",
            || Box::pin(silent_collector()),
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            Trial::ignorable_test(name, move || {
                if let Some(why) = Receiver::unavailable() {
                    eprintln!("SKIPPED {name}: {why}");
                    return Ok(Completion::ignored_with(why));
                }
                block_on_two_workers(test());
                Ok(Completion::Completed)
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// `spec.tracing` sending to `receiver` as `service`, flushing often so tests wait little.
fn tracing(url: &str, service: &str, more: Value) -> Value {
    let mut t = json!({ "collector": url, "serviceName": service, "flushInterval": "20ms" });
    if let (Some(t), Value::Object(more)) = (t.as_object_mut(), more) {
        t.extend(more);
    }
    json!({ "tracing": t })
}

/// A caller's W3C context for `TRACE`, its span `SPAN`, sampled.
fn sampled() -> String {
    format!("00-{TRACE}-{SPAN}-01")
}

/// `GET path` to `host` with `headers`.
fn with_headers(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<TestBody> {
    let mut req = Request::get(path).header("host", host);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(text("")).unwrap()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn header(seen: &Seen, name: &str) -> String {
    seen.headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} reached the app"))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn two_meshed_hops() {
    let receiver = Receiver::start().await;
    let ca = DevCa::new("cluster.local").unwrap();
    let app = backend(|_req| async { ok("api") }).await;
    let api_dir = credentials(&ca, "shop", "api");
    let b = ProxyConfig::new(app.addr.port())
        .spec(identity(&api_dir, "shop", "api"))
        .spec(tracing(&receiver.url(), "api", json!({})))
        .start()
        .await;
    let web_dir = credentials(&ca, "shop", "web");
    let a = client_config(&web_dir, "web", b.inbound_addr, "api", json!({}))
        .spec(tracing(&receiver.url(), "web", json!({})))
        .start()
        .await;

    let rsp = h1(a.outbound_addr)
        .await
        .send_request(get("api", "/orders?id=7"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(body_text(rsp).await, "api");

    let spans = receiver.spans(2, WAIT).await;
    assert_eq!(spans.len(), 2, "one span per hop: {spans:#?}");
    let kind = |k: &str| {
        spans
            .iter()
            .find(|s| s["kind"] == k)
            .unwrap_or_else(|| panic!("a {k} span in {spans:#?}"))
    };
    let (client, server) = (kind("SPAN_KIND_CLIENT"), kind("SPAN_KIND_SERVER"));

    // One trace: web's client span is the root, api's server span its child, and the app
    // sees api's server span as its parent.
    let trace = client["trace_id"].as_str().unwrap();
    assert_eq!(trace.len(), 32);
    assert_eq!(server["trace_id"], trace);
    assert_eq!(
        client["parent_span_id"], "",
        "a new trace starts at web's proxy"
    );
    assert_eq!(server["parent_span_id"], client["span_id"]);
    let server_span = server["span_id"].as_str().unwrap();
    assert_eq!(
        header(&app.last(), "traceparent"),
        format!("00-{trace}-{server_span}-01")
    );

    // The HTTP attributes, and Skiff's own.
    for span in [client, server] {
        assert_eq!(span["name"], "GET");
        assert_eq!(attr(span, "http.request.method"), "GET");
        assert_eq!(attr(span, "url.path"), "/orders");
        assert_eq!(attr(span, "http.response.status_code"), 200);
        assert_eq!(attr(span, "server.address"), "api");
        assert_eq!(span["status"]["code"], "STATUS_CODE_UNSET");
        assert_eq!(span["scope"]["name"], "skiff");
        let (start, end) = (
            span["start_time_unix_nano"].as_u64().unwrap(),
            span["end_time_unix_nano"].as_u64().unwrap(),
        );
        assert!(start > 0 && start <= end, "{span}");
    }
    assert_eq!(attr(client, "skiff.direction"), "outbound");
    assert_eq!(attr(client, "skiff.tries"), 1);
    assert_eq!(*attr(client, "skiff.endpoint"), b.inbound_addr.to_string());
    assert_eq!(
        attr(client, "network.peer.port"),
        i64::from(b.inbound_addr.port())
    );
    assert_eq!(
        attr(client, "skiff.peer.identity"),
        "spiffe://cluster.local/ns/shop/sa/api",
        "the identity web's proxy required of the endpoint"
    );
    assert_eq!(client["resource"]["service.name"], "web");
    assert_eq!(attr(server, "skiff.direction"), "inbound");
    assert_eq!(
        attr(server, "skiff.peer.identity"),
        "spiffe://cluster.local/ns/shop/sa/web",
        "the caller's verified identity"
    );
    assert_eq!(attr(server, "client.address"), "127.0.0.1");
    assert_eq!(*attr(server, "skiff.endpoint"), app.addr.to_string());
    assert_eq!(server["resource"]["service.name"], "api");
    // The server span lies within the client span (1 ms for the two clocks' rounding).
    let at = |s: &Value, k: &str| s[k].as_u64().unwrap();
    assert!(at(server, "start_time_unix_nano") + 1_000_000 >= at(client, "start_time_unix_nano"));
    assert!(at(server, "end_time_unix_nano") <= at(client, "end_time_unix_nano") + 1_000_000);
}

async fn callers_context_and_failures() {
    let receiver = Receiver::start().await;
    let app = backend(|_req| async { ok("web") }).await;
    let gone = dead_addr();
    let hang = backend(|_req| std::future::pending()).await;
    let a = ProxyConfig::new(1)
        .service("web", &[app.addr])
        .service("gone", &[gone.addr])
        .service("hang", &[hang.addr])
        .spec(tracing(
            &receiver.url(),
            "client",
            json!({ "sampling": 0.0 }),
        ))
        .spec(json!({"routePolicies": {
            "web/broken": {"fault": {"abort": {"percent": 100, "status": 503}}},
        }}))
        .document(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web"},
            "spec": {"parentRefs": [{"kind": "Service", "name": "web"}], "rules": [
                {"name": "broken", "matches": [{"path": {"value": "/broken"}}]},
                {"name": "rest", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
            ]},
        }))
        .start()
        .await;
    let mut c = h1(a.outbound_addr).await;

    // W3C: the caller's trace and sampling decision go on (ratio 0 applies to new traces).
    let req = with_headers(
        "web",
        "/w3c",
        &[("traceparent", &sampled()), ("tracestate", "vendor=opaque")],
    );
    assert_eq!(c.send_request(req).await.unwrap().status(), StatusCode::OK);
    let w3c_seen = app.last();
    // B3, multi-header: rewritten, with the caller's span as this hop's parent.
    let req = with_headers(
        "web",
        "/b3",
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ],
    );
    assert_eq!(c.send_request(req).await.unwrap().status(), StatusCode::OK);
    let b3_seen = app.last();
    // A failure: no endpoint answers.
    let req = with_headers("gone", "/down", &[("traceparent", &sampled())]);
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    // A fault injected on purpose shows as one.
    let req = with_headers("web", "/broken", &[("traceparent", &sampled())]);
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The client goes away before any response: the span still ends, as cancelled, so
    // spans the application made under it keep their parent.
    let mut gives_up = h1(a.outbound_addr).await;
    let req = with_headers("hang", "/gone-away", &[("traceparent", &sampled())]);
    let call = tokio::spawn(async move { gives_up.send_request(req).await });
    eventually(WAIT, "the request reaches the backend", || async {
        hang.requests() == 1
    })
    .await;
    call.abort();

    let spans = receiver.spans(5, WAIT).await;
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let by_path = |p: &str| {
        spans
            .iter()
            .find(|s| attr(s, "url.path") == p)
            .unwrap_or_else(|| panic!("a span for {p} in {spans:#?}"))
    };
    for path in ["/w3c", "/b3", "/down", "/broken", "/gone-away"] {
        let span = by_path(path);
        assert_eq!(
            span["trace_id"], TRACE,
            "{path} continues the caller's trace"
        );
        assert_eq!(span["parent_span_id"], SPAN, "{path}");
        assert_eq!(span["kind"], "SPAN_KIND_CLIENT");
    }
    let w3c = by_path("/w3c");
    assert_eq!(w3c["trace_state"], "vendor=opaque");
    assert_eq!(
        header(&w3c_seen, "traceparent"),
        format!("00-{TRACE}-{}-01", w3c["span_id"].as_str().unwrap())
    );
    assert_eq!(header(&w3c_seen, "tracestate"), "vendor=opaque");
    assert_eq!(attr(w3c, "skiff.route"), "web/rest");
    assert_eq!(w3c["name"], "GET web/rest");
    assert_eq!(*attr(w3c, "skiff.endpoint"), app.addr.to_string());
    let b3 = by_path("/b3");
    assert_eq!(header(&b3_seen, "x-b3-traceid"), TRACE);
    assert_eq!(
        header(&b3_seen, "x-b3-spanid"),
        b3["span_id"].as_str().unwrap()
    );
    assert_eq!(header(&b3_seen, "x-b3-parentspanid"), SPAN);

    let down = by_path("/down");
    assert_eq!(attr(down, "http.response.status_code"), 502);
    assert_eq!(attr(down, "skiff.error"), "upstream-connect");
    assert_eq!(attr(down, "error.type"), "upstream-connect");
    assert_eq!(down["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(down["status"]["message"], "upstream-connect");
    assert_eq!(*attr(down, "skiff.endpoint"), gone.addr.to_string());

    let gone_away = by_path("/gone-away");
    assert_eq!(gone_away["status"]["message"], "cancelled");
    assert_eq!(gone_away["status"]["code"], "STATUS_CODE_ERROR");
    assert!(gone_away["attributes"]
        .get("http.response.status_code")
        .is_none());

    let broken = by_path("/broken");
    assert_eq!(attr(broken, "skiff.fault"), "abort:503");
    assert_eq!(attr(broken, "skiff.error"), "fault-injected");
    assert_eq!(attr(broken, "skiff.tries"), 0, "answered before any try");
    assert_eq!(broken["status"]["code"], "STATUS_CODE_ERROR");
}

async fn ratio_zero() {
    let receiver = Receiver::start().await;
    let app = hello("web").await;
    let a = ProxyConfig::new(1)
        .service("web", &[app.addr])
        .spec(tracing(
            &receiver.url(),
            "client",
            json!({ "sampling": 0.0 }),
        ))
        .start()
        .await;
    let mut c = h1(a.outbound_addr).await;
    for _ in 0..20 {
        let rsp = c.send_request(get("web", "/new")).await.unwrap();
        assert_eq!(body_text(rsp).await, "web");
        // Not recorded, and said so to the next hop, so it does not decide again.
        let tp = header(&app.last(), "traceparent");
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    }
    // A marker the caller sampled: spans go out in order, so anything the 20 requests
    // before it had produced would arrive with it or before it.
    let req = with_headers("web", "/marker", &[("traceparent", &sampled())]);
    assert_eq!(c.send_request(req).await.unwrap().status(), StatusCode::OK);
    let spans = receiver.spans(1, WAIT).await;
    assert_eq!(spans.len(), 1, "only the marker's span: {spans:#?}");
    assert_eq!(attr(&spans[0], "url.path"), "/marker");
}

async fn silent_collector() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            conns.push(conn);
        }
    });
    let app = hello("web").await;
    let a = ProxyConfig::new(1)
        .service("web", &[app.addr])
        .spec(tracing(
            &url,
            "client",
            json!({ "exportTimeout": "100ms", "queue": 8, "batch": 4 }),
        ))
        .start()
        .await;
    let mut c = h1(a.outbound_addr).await;
    for i in 0..200 {
        let rsp = c.send_request(get("web", &format!("/{i}"))).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(body_text(rsp).await, "web");
    }
    eventually(WAIT, "failed exports counted", || async {
        let (_, metrics) = admin_get(a.admin_addr, "/metrics").await;
        metrics.lines().any(|l| {
            l.starts_with("skiff_trace_spans_dropped_total{reason=\"export-failed\"}")
                && !l.ends_with(" 0")
        })
    })
    .await;
    let (_, metrics) = admin_get(a.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("skiff_trace_spans_exported_total 0"),
        "{metrics}"
    );
    held.abort();
}
