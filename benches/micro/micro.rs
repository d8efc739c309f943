//! Microbenchmarks of the per-request hot path: route matching on a realistic route table,
//! the split's draw, breaker and balancer bookkeeping, metric recording, header
//! normalisation, tracing, and one whole request through the outbound stack over an
//! in-memory connection.
//!
//!   cargo bench -p skiff-benches
//!
//! Figures go in benches/RESULTS.md with the command that produced them; nothing here
//! asserts a timing.

// criterion's macros generate the undocumented entry points.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use proxy_core::balance::{self, Load, Strategy};
use proxy_core::breaker::{BreakerObserver, Gate, Settings, State};
use proxy_core::route::{
    anchored, Anchor, HttpMatch, PathMatch, RequestHead, RouteSet, ValueMatch,
};
use proxy_core::split::{Backend, Backends};
use tower::{Layer, ServiceExt};

/// Forty routes of the kinds a mesh config has: exact paths, prefixes, regexes, headers.
fn route_table() -> RouteSet<usize> {
    let mut entries = Vec::new();
    for i in 0..10 {
        entries.push((
            HttpMatch {
                path: Some(PathMatch::Exact(format!("/api/v{i}/health"))),
                ..Default::default()
            },
            entries.len(),
        ));
        entries.push((
            HttpMatch {
                path: Some(PathMatch::Prefix(format!("/api/v{i}/orders"))),
                methods: vec![Method::GET, Method::POST],
                ..Default::default()
            },
            entries.len(),
        ));
        entries.push((
            HttpMatch {
                path: Some(PathMatch::Regex(
                    anchored(&format!("/api/v{i}/users/[0-9]+"), Anchor::Whole).unwrap(),
                )),
                ..Default::default()
            },
            entries.len(),
        ));
        entries.push((
            HttpMatch {
                path: Some(PathMatch::Prefix(format!("/svc{i}"))),
                headers: vec![(
                    http::HeaderName::from_static("x-canary"),
                    ValueMatch::Exact("yes".into()),
                )],
                ..Default::default()
            },
            entries.len(),
        ));
    }
    RouteSet::new(entries, None)
}

fn routing(c: &mut Criterion) {
    let table = route_table();
    let method = Method::GET;
    let uri: Uri = "/api/v7/users/12345?full=1".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", "bench/1".parse().unwrap());
    headers.insert("accept", "*/*".parse().unwrap());
    c.bench_function("route: match among 40 routes", |b| {
        b.iter(|| {
            let head = RequestHead {
                method: &method,
                uri: &uri,
                headers: &headers,
            };
            black_box(table.find(black_box(&head)))
        })
    });
    let split = Backends::new(
        [("stable", 90), ("canary", 10), ("old", 0)]
            .into_iter()
            .map(|(name, weight)| Backend {
                name: name.to_owned(),
                weight,
                target: Some(name),
                filters: None,
            })
            .collect(),
    );
    let mut draw = 0u64;
    c.bench_function("split: weighted draw", |b| {
        b.iter(|| {
            draw = draw.wrapping_add(0x9E37_79B9_7F4A_7C15);
            black_box(split.pick(black_box(draw)).is_ok())
        })
    });
}

#[derive(Debug)]
struct Quiet;

impl BreakerObserver for Quiet {
    fn transition(&self, _endpoint: &str, _to: State) {}
}

fn bookkeeping(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let gate = Arc::new(Gate::new(
        "10.0.0.1:8080".into(),
        Settings::default(),
        Arc::new(Quiet),
    ));
    c.bench_function("breaker: admit and release", |b| {
        b.iter(|| black_box(gate.admit()))
    });
    let loads: Vec<Load> = (0..10).map(|_| Load::default()).collect();
    let mut turn = 0;
    c.bench_function("balance: P2C over 10 endpoints + load accounting", |b| {
        b.iter(|| {
            turn += 1;
            let chosen = balance::choose(Strategy::P2c, &loads, turn, |l| l, |_| true).unwrap();
            let flight = chosen.start();
            flight.observe();
        })
    });
}

fn metrics_and_normalize(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (metrics, _registry) = proxy_metrics::Metrics::new();
    let target = metrics.http.target(
        proxy_core::Direction::Outbound,
        "web.default.svc.cluster.local:80",
        "web:80",
        None,
    );
    let unrouted = metrics
        .http
        .target(proxy_core::Direction::Outbound, "", "", None);
    let observe = Arc::new(proxy_metrics::http::Observe::new(
        proxy_core::Direction::Outbound,
        metrics.tap,
        metrics.trace,
        Arc::default(),
        None,
    ));
    let svc = proxy_metrics::http::MetricsLayer::new(unrouted, observe).layer(tower::service_fn(
        move |req: Request<()>| {
            let target = target.clone();
            async move {
                if let Some(slot) = req.extensions().get::<proxy_metrics::http::MetricsSlot>() {
                    slot.start(&target);
                }
                Ok::<_, std::convert::Infallible>(Response::new(proxy_core::body::full("ok")))
            }
        },
    ));
    c.bench_function("metrics: record a request and its response", |b| {
        b.iter(|| {
            rt.block_on(async {
                let rsp = svc.clone().oneshot(Request::new(())).await.unwrap();
                black_box(rsp.into_body().collect().await.unwrap());
            })
        })
    });

    let normalize =
        proxy_core::normalize::NormalizeLayer::new(proxy_core::normalize::HeaderLimits {
            max_header_count: 100,
            max_header_bytes: 32 * 1024,
            body_idle_timeout: Duration::from_secs(60),
        })
        .layer(tower::service_fn(
            |req: Request<proxy_core::Body>| async move {
                black_box(req);
                Ok::<_, proxy_core::BoxError>(Response::new(proxy_core::body::empty()))
            },
        ));
    c.bench_function("normalize: a typical request head", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::get("http://web.default.svc.cluster.local/api/v1/orders?id=7")
                    .header("host", "web.default.svc.cluster.local")
                    .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
                    .header("accept", "application/json")
                    .header("connection", "keep-alive, x-trace")
                    .header("x-trace", "1")
                    .header("keep-alive", "timeout=5")
                    .header(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    )
                    .body(proxy_core::body::empty())
                    .unwrap();
                black_box(normalize.clone().oneshot(req).await.ok());
            })
        })
    });
}

/// One request through the whole outbound stack: an in-memory client connection into
/// Skiff's HTTP/1 server side, Skiff's stack, and a loopback backend behind it.
fn full_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut sender = rt.block_on(async {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = backend.local_addr().unwrap();
        drop(backend);
        skiff::tools::demo::serve_backend(addr, skiff::tools::demo::Backend::Hello).await.unwrap();
        let yaml = format!(
            "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  services:\n    web:\n      endpoints: [{addr}]\n"
        );
        let config = skiff::config::parse(&yaml, None).unwrap();
        let (metrics, _registry) = proxy_metrics::Metrics::new();
        let state = Arc::new(skiff::State::new(&config, Arc::new(metrics)).unwrap());
        let stack = skiff::outbound::stack(
            &state,
            proxy_core::limit::Client::Addr([127, 0, 0, 1].into()),
            ([127, 0, 0, 1], 40000).into(),
            None,
        );
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let _keep = state;
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), hyper_util::service::TowerToHyperService::new(stack))
                .await;
        });
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io)).await.unwrap();
        tokio::spawn(conn);
        sender
    });
    c.bench_function(
        "outbound stack: one whole request (in-memory client, loopback backend)",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    sender.ready().await.unwrap();
                    let req = Request::get("/")
                        .header("host", "web")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let rsp = sender.send_request(req).await.unwrap();
                    black_box(rsp.into_body().collect().await.unwrap());
                })
            })
        },
    );
}

/// What tracing adds to a request: reading and writing the context when the request is not
/// sampled, and when it is, making the span and queueing it (to a queue kept full, so the
/// exporter's work is not in the figure; `load/tracing.sh` measures that).
fn tracing(c: &mut Criterion) {
    use proxy_metrics::trace::{export::Collector, SpanEnd, TraceSettings, Tracer};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let tracer = |sampling: f64| {
        let settings = TraceSettings {
            collector: Collector::parse("http://127.0.0.1:9").unwrap(),
            sampling,
            queue: 1,
            batch: 1,
            flush_interval: Duration::from_secs(3600),
            export_timeout: Duration::from_secs(1),
            resource: Vec::new(),
        };
        Arc::new(Tracer::start(settings, Arc::default()))
    };
    let request = |traceparent: Option<&str>| {
        let mut req = Request::get("/api/v1/orders")
            .header("host", "web")
            .body(())
            .unwrap();
        if let Some(tp) = traceparent {
            req.headers_mut().insert("traceparent", tp.parse().unwrap());
        }
        req
    };
    let never = tracer(0.0);
    c.bench_function("trace: a new trace, not sampled (context written)", |b| {
        b.iter(|| {
            let mut req = request(None);
            black_box(never.begin(proxy_core::Direction::Outbound, &mut req));
        })
    });
    let always = tracer(1.0);
    let noted = proxy_core::notes::Noted {
        route: Some("web/orders".into()),
        endpoint: Some(([10, 0, 0, 7], 8080).into()),
        tries: 1,
        ..Default::default()
    };
    let ending = proxy_metrics::http::Ending {
        status: 200,
        duration_ms: 1.5,
        response_bytes: 20,
        grpc_status: None,
        error: None,
        classification: proxy_core::classify::Classification::Success,
        body: &[],
    };
    c.bench_function("trace: a sampled request's span, made and queued", |b| {
        b.iter(|| {
            let mut req = request(Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ));
            let span = always
                .begin(proxy_core::Direction::Outbound, &mut req)
                .unwrap();
            span.end(&SpanEnd {
                method: "GET",
                authority: "web",
                path: "/api/v1/orders",
                peer: None,
                caller_identity: None,
                noted: &noted,
                ending: &ending,
            });
        })
    });
}

criterion_group!(
    benches,
    routing,
    bookkeeping,
    metrics_and_normalize,
    full_request,
    tracing
);
criterion_main!(benches);
