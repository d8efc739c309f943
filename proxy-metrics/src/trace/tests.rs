use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request};
use proxy_core::Direction;

use super::context::{extract, hex, Format, Incoming, Parent, Sampled};
use super::export::Collector;
use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(*k, v.parse().unwrap());
    }
    map
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

/// The parent the headers give; panics when they give none.
fn parent(map: &HeaderMap) -> Parent {
    match extract(map) {
        Incoming::Parent(p) => p,
        other => panic!("no parent: {other:?}"),
    }
}

#[test]
fn w3c_traceparent_is_read_and_malformed_ones_are_ignored() {
    let ok = format!("00-{TRACE}-{SPAN}-01");
    let p = parent(&headers(&[("traceparent", &ok)]));
    assert_eq!(hex(&p.trace_id), TRACE);
    assert_eq!(hex(&p.span_id), SPAN);
    assert_eq!((p.sampled, p.format), (Sampled::Yes, Format::W3c));
    let unsampled = format!("00-{TRACE}-{SPAN}-00");
    assert_eq!(
        parent(&headers(&[("traceparent", &unsampled)])).sampled,
        Sampled::No
    );
    // A later version may add fields; version 00 may not.
    let future = format!("01-{TRACE}-{SPAN}-01-extra");
    parent(&headers(&[("traceparent", &future)]));
    for bad in [
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{SPAN}-1"),
        format!("00-{}-{SPAN}-01", &TRACE[..30]),
        "garbage".to_owned(),
    ] {
        assert_eq!(
            extract(&headers(&[("traceparent", &bad)])),
            Incoming::Nothing,
            "{bad}"
        );
    }
    // A malformed traceparent does not hide a valid B3 context.
    let both = headers(&[
        ("traceparent", "garbage"),
        ("b3", &format!("{TRACE}-{SPAN}-1")),
    ]);
    assert_eq!(parent(&both).format, Format::B3Single);
}

#[test]
fn b3_single_and_multi_are_read_with_64_bit_trace_ids_padded() {
    let p = parent(&headers(&[("b3", &format!("{TRACE}-{SPAN}-1-{SPAN}"))]));
    assert_eq!(
        (hex(&p.trace_id).as_str(), p.sampled),
        (TRACE, Sampled::Yes)
    );
    assert_eq!((p.format, p.debug), (Format::B3Single, false));
    let short = parent(&headers(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}"))]));
    assert_eq!(hex(&short.trace_id), "0000000000000000a3ce929d0e0e4736");
    assert_eq!(short.sampled, Sampled::Deferred);
    let multi = parent(&headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
    ]));
    assert_eq!(
        (multi.sampled, multi.format),
        (Sampled::No, Format::B3Multi)
    );
    let debug = parent(&headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]));
    assert_eq!((debug.sampled, debug.debug), (Sampled::Yes, true));
    assert!(parent(&headers(&[("b3", &format!("{TRACE}-{SPAN}-d"))])).debug);
    // Decisions without ids.
    assert_eq!(extract(&headers(&[("b3", "0")])), Incoming::Decision(false));
    assert_eq!(extract(&headers(&[("b3", "d")])), Incoming::Decision(true));
    assert_eq!(
        extract(&headers(&[("x-b3-sampled", "1")])),
        Incoming::Decision(true)
    );
    assert_eq!(
        extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-x"))])),
        Incoming::Nothing
    );
    // A valid traceparent comes first, whatever B3 says.
    let both = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("b3", "0"),
    ]);
    assert_eq!(parent(&both).format, Format::W3c);
}

fn settings(sampling: f64, queue: usize) -> TraceSettings {
    TraceSettings {
        // Nothing listens on port 9 of loopback (discard); failures are counted.
        collector: Collector::parse("http://127.0.0.1:9").unwrap(),
        sampling,
        queue,
        batch: 512,
        flush_interval: Duration::from_millis(10),
        export_timeout: Duration::from_secs(1),
        resource: vec![("service.name".into(), "test".into())],
    }
}

fn tracer(sampling: f64) -> Arc<Tracer> {
    Arc::new(Tracer::start(settings(sampling, 64), Arc::default()))
}

fn request(pairs: &[(&'static str, &str)]) -> Request<()> {
    let mut req = Request::new(());
    *req.headers_mut() = headers(pairs);
    req
}

/// Checks that the `x-b3-*` headers name `span` as the parent of the next hop, in trace
/// `TRACE`, with the caller's `SPAN` as its own parent; returns the span's id.
fn b3_multi_names_this_hop(req: &Request<()>, span: &Begun) -> String {
    let own = hex(&span.span_id);
    assert_eq!(req.headers()["x-b3-traceid"], TRACE);
    assert_eq!(req.headers()["x-b3-spanid"], own.as_str());
    assert_eq!(req.headers()["x-b3-parentspanid"], SPAN);
    own
}

fn traceparent(req: &Request<()>) -> String {
    req.headers()["traceparent"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_sampled_caller_gets_a_child_span_and_the_next_hop_sees_it_as_parent() {
    let t = tracer(0.0);
    let incoming = format!("00-{TRACE}-{SPAN}-01");
    let mut req = request(&[("traceparent", &incoming), ("tracestate", "vendor=1")]);
    let span = t
        .begin(Direction::Inbound, &mut req)
        .expect("sampled by the caller");
    assert_eq!(span.trace_id(), TRACE);
    assert_eq!(span.parent.map(|p| hex(&p)).as_deref(), Some(SPAN));
    let out = traceparent(&req);
    let own = hex(&span.span_id);
    assert_eq!(
        out,
        format!("00-{TRACE}-{own}-01"),
        "this hop is the next one's parent"
    );
    assert_ne!(own, SPAN);
    assert_eq!(
        req.headers()["tracestate"],
        "vendor=1",
        "tracestate passes on"
    );
    assert_eq!(span.trace_state, "vendor=1");
}

#[tokio::test]
async fn an_unsampled_caller_is_followed_and_its_headers_pass_untouched() {
    let t = tracer(1.0);
    let incoming = format!("00-{TRACE}-{SPAN}-00");
    let mut req = request(&[("traceparent", &incoming)]);
    assert!(t.begin(Direction::Outbound, &mut req).is_none());
    assert_eq!(traceparent(&req), incoming);
    let mut b3 = request(&[("b3", "0")]);
    assert!(t.begin(Direction::Outbound, &mut b3).is_none());
    assert!(b3.headers().get("traceparent").is_none());
    // A decision to sample, without ids, starts a recorded trace whatever the ratio.
    let never = tracer(0.0);
    let mut forced = request(&[("b3", "1")]);
    let span = never
        .begin(Direction::Outbound, &mut forced)
        .expect("sampled by the caller");
    let b3 = forced.headers()["b3"].to_str().unwrap();
    assert_eq!(b3, format!("{}-{}-1", span.trace_id(), hex(&span.span_id)));
}

#[tokio::test]
async fn tracestate_goes_on_only_under_its_own_traceparent() {
    let t = tracer(1.0);
    // Without a traceparent (or with B3 only) the state belongs to another trace.
    let mut orphan = request(&[("tracestate", "vendor=stale")]);
    let span = t.begin(Direction::Outbound, &mut orphan).expect("sampled");
    assert!(orphan.headers().get("tracestate").is_none());
    assert_eq!(span.trace_state, "");
    // Too long to pass on whole: dropped.
    let long = format!("vendor={}", "x".repeat(600));
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let mut big = request(&[("traceparent", &tp), ("tracestate", &long)]);
    let span = t.begin(Direction::Outbound, &mut big).expect("sampled");
    assert!(big.headers().get("tracestate").is_none());
    assert_eq!(span.trace_state, "");
}

#[tokio::test]
async fn a_w3c_caller_with_b3_headers_too_gets_both_rewritten_alike() {
    let t = tracer(1.0);
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let mut req = request(&[
        ("traceparent", &tp),
        ("x-b3-traceid", "1111111111111111"),
        ("x-b3-spanid", "2222222222222222"),
        ("x-b3-sampled", "1"),
    ]);
    let span = t.begin(Direction::Inbound, &mut req).expect("sampled");
    b3_multi_names_this_hop(&req, &span);
}

#[tokio::test]
async fn a_new_trace_is_sampled_by_ratio_and_the_decision_travels_either_way() {
    let never = tracer(0.0);
    let mut req = request(&[]);
    assert!(never.begin(Direction::Outbound, &mut req).is_none());
    let written = traceparent(&req);
    assert!(
        written.starts_with("00-") && written.ends_with("-00"),
        "{written}"
    );

    let always = tracer(1.0);
    let mut req = request(&[]);
    let span = always
        .begin(Direction::Outbound, &mut req)
        .expect("sampled");
    assert!(span.parent.is_none(), "a root span");
    assert_eq!(
        traceparent(&req),
        format!("00-{}-{}-01", span.trace_id(), hex(&span.span_id))
    );

    let quarter = tracer(0.25);
    let sampled = (0..10_000)
        .filter(|_| {
            quarter
                .begin(Direction::Outbound, &mut request(&[]))
                .is_some()
        })
        .count();
    assert!(
        (2_200..=2_800).contains(&sampled),
        "{sampled} of 10000 at 0.25"
    );
}

#[tokio::test]
async fn b3_callers_get_b3_headers_rewritten_with_this_hop_as_parent() {
    let t = tracer(1.0);
    let mut req = request(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "1"),
    ]);
    let span = t.begin(Direction::Inbound, &mut req).expect("sampled");
    let own = b3_multi_names_this_hop(&req, &span);
    assert_eq!(traceparent(&req), format!("00-{TRACE}-{own}-01"));
    let mut single = request(&[("b3", &format!("{TRACE}-{SPAN}"))]);
    let span = t
        .begin(Direction::Inbound, &mut single)
        .expect("deferred: ours to decide");
    let own = hex(&span.span_id);
    assert_eq!(
        single.headers()["b3"],
        format!("{TRACE}-{own}-1-{SPAN}").as_str()
    );
    // Debug goes on as debug, and alone in the multi-header form.
    let mut debug = request(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    t.begin(Direction::Inbound, &mut debug)
        .expect("debug is sampled");
    assert_eq!(debug.headers()["x-b3-flags"], "1");
    assert!(debug.headers().get("x-b3-sampled").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_spans_without_waiting_and_counts_them() {
    let families = Arc::new(TraceFamilies::default());
    let t = Arc::new(Tracer::start(settings(1.0, 2), families.clone()));
    for _ in 0..10 {
        t.send(otlp::Span::default());
    }
    let queue_full = families
        .dropped
        .get_or_create(&vec![("reason", "queue-full".to_owned())])
        .get();
    assert_eq!(
        queue_full, 8,
        "two wait in the queue, the rest are dropped at once"
    );
}

#[tokio::test]
async fn spans_the_collector_cannot_take_are_counted_as_export_failed() {
    let families = Arc::new(TraceFamilies::default());
    let t = Arc::new(Tracer::start(settings(1.0, 64), families.clone()));
    for _ in 0..3 {
        t.send(otlp::Span::default());
    }
    let failed = || {
        families
            .dropped
            .get_or_create(&vec![("reason", "export-failed".to_owned())])
            .get()
    };
    // The exporter sends the batch after its 10 ms flush interval; the connection to a
    // closed loopback port is refused at once.
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while failed() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "export-failed: {}", failed());
    assert_eq!(families.exported.get(), 0);
}

#[test]
fn collector_urls_default_to_otlp_http_port_and_path() {
    let c = Collector::parse("http://otel").unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.path.as_str()),
        ("otel", 4318, "/v1/traces")
    );
    let v6 = Collector::parse("http://[::1]:4000/x/traces").unwrap();
    assert_eq!(
        (v6.host.as_str(), v6.port, v6.path.as_str()),
        ("::1", 4000, "/x/traces")
    );
    assert!(Collector::parse("grpc://otel:4317").is_err());
}

#[test]
fn sampling_thresholds_cover_the_ends() {
    assert_eq!(threshold(0.0), None);
    assert_eq!(threshold(1.0), Some(u64::MAX));
    assert_eq!(threshold(0.5), Some(1 << 63));
}

#[tokio::test]
async fn the_hub_keeps_its_tracer_for_the_same_settings_and_replaces_it_for_new_ones() {
    let hub = TraceHub::default();
    assert!(hub.tracer().is_none(), "off by default");
    hub.configure(Some(settings(1.0, 64)));
    let first = hub.tracer().expect("on");
    hub.configure(Some(settings(1.0, 64)));
    assert!(
        Arc::ptr_eq(&first, &hub.tracer().unwrap()),
        "a reload without changes"
    );
    hub.configure(Some(settings(0.5, 64)));
    assert!(
        !Arc::ptr_eq(&first, &hub.tracer().unwrap()),
        "new settings, new tracer"
    );
    hub.configure(None);
    assert!(hub.tracer().is_none(), "off again");
}

#[tokio::test]
async fn a_grpc_failure_in_a_200_is_an_error_span_with_its_status() {
    let t = tracer(1.0);
    let mut req = request(&[]);
    let span = t.begin(Direction::Inbound, &mut req).expect("sampled");
    let noted = proxy_core::notes::Noted {
        tries: 1,
        ..Default::default()
    };
    let ending = crate::http::Ending {
        status: 200,
        duration_ms: 2.0,
        response_bytes: 0,
        grpc_status: Some(14),
        error: None,
        classification: proxy_core::classify::Classification::Failure,
        body: &[],
    };
    let out = span.to_span(&SpanEnd {
        method: "POST",
        authority: "[fd00::7]:50051",
        path: "/shop.Cart/Add",
        peer: Some(([10, 0, 0, 9], 41000).into()),
        caller_identity: Some("spiffe://cluster.local/ns/shop/sa/web"),
        noted: &noted,
        ending: &ending,
    });
    let attr = |k: &str| {
        out.attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
            .unwrap_or_else(|| panic!("{k} in {:?}", out.attributes))
    };
    use otlp::Value;
    assert_eq!(attr("rpc.grpc.status_code"), Value::Int(14));
    assert_eq!(attr("error.type"), Value::String("grpc-status 14".into()));
    assert_eq!(attr("server.address"), Value::String("fd00::7".into()));
    assert_eq!(attr("server.port"), Value::Int(50051));
    assert_eq!(attr("client.address"), Value::String("10.0.0.9".into()));
    assert_eq!(
        attr("skiff.peer.identity"),
        Value::String("spiffe://cluster.local/ns/shop/sa/web".into())
    );
    let status = out.status.expect("an error status");
    assert_eq!(
        (status.code, status.message.as_str()),
        (otlp::STATUS_ERROR, "grpc-status 14")
    );
    assert_eq!(out.kind, otlp::SpanKind::Server as i32);
    assert_eq!(out.end_time_unix_nano - out.start_time_unix_nano, 2_000_000);
}

#[tokio::test]
async fn a_server_spans_4xx_is_the_clients_error_and_a_cancelled_request_says_so() {
    let t = tracer(1.0);
    let noted = proxy_core::notes::Noted::default();
    let ending = |status: u16, error| crate::http::Ending {
        status,
        duration_ms: 1.0,
        response_bytes: 0,
        grpc_status: None,
        error,
        classification: proxy_core::classify::Classification::Failure,
        body: &[],
    };
    let span_for = |direction, ending: &crate::http::Ending<'_>| {
        let span = t.begin(direction, &mut request(&[])).expect("sampled");
        span.to_span(&SpanEnd {
            method: "GET",
            authority: "web",
            path: "/",
            peer: None,
            caller_identity: None,
            noted: &noted,
            ending,
        })
    };
    let forbidden = ending(403, Some(proxy_core::Reason::Forbidden));
    assert!(
        span_for(Direction::Inbound, &forbidden).status.is_none(),
        "server: unset"
    );
    let client = span_for(Direction::Outbound, &forbidden);
    assert_eq!(
        client.status.map(|s| s.message),
        Some("forbidden".to_owned())
    );
    let cancelled = span_for(Direction::Inbound, &ending(0, None));
    assert_eq!(
        cancelled.status.map(|s| s.message),
        Some("cancelled".to_owned())
    );
    assert!(
        !cancelled
            .attributes
            .iter()
            .any(|kv| kv.key == "http.response.status_code"),
        "no status was sent"
    );
}

/// A collector that takes every batch with 200 and an OTLP partial success refusing
/// `rejected` spans of it.
async fn partial_collector(rejected: i64) -> std::net::SocketAddr {
    use prost::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(move |_req| async move {
                let answer = otlp::ExportTraceServiceResponse {
                    partial_success: Some(otlp::ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: "too old".into(),
                    }),
                };
                let body = http_body_util::Full::new(bytes::Bytes::from(answer.encode_to_vec()));
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

#[tokio::test]
async fn spans_a_collector_refuses_in_a_partial_success_are_counted_as_rejected() {
    let addr = partial_collector(2).await;
    let families = Arc::new(TraceFamilies::default());
    let mut s = settings(1.0, 64);
    s.collector = Collector::parse(&format!("http://{addr}")).unwrap();
    let t = Arc::new(Tracer::start(s, families.clone()));
    for _ in 0..5 {
        t.send(otlp::Span::default());
    }
    let rejected = || {
        families
            .dropped
            .get_or_create(&vec![("reason", "rejected".to_owned())])
            .get()
    };
    // One batch of five after the 10 ms flush interval, to a collector on loopback.
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while rejected() + families.exported.get() < 5 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "rejected {}, exported {}",
        rejected(),
        families.exported.get()
    );
    assert_eq!((rejected(), families.exported.get()), (2, 3));
}
