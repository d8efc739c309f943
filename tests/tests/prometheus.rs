//! Linkerd's and Flagger's PromQL over what a real Prometheus scraped from two real proxies:
//! `web` calling `api` over mTLS with HTTP/1 requests that succeed and fail, gRPC calls
//! (one failing with grpc-status 14 in an HTTP 200), requests api's TrafficTarget refuses,
//! and a request to an upstream that refuses connections. Most queries are ones `linkerd
//! viz` (stat, edges, routes, authorization policy stats) or Flagger runs, built from their
//! templates in Linkerd's `viz/metrics-api` and Flagger's `pkg/metrics/observers/linkerd.go`;
//! the rest group by the labels themselves. Each must count exactly the traffic sent. The
//! module `skiff_e2e::prometheus` says how the scrape stands in for a cluster's.
//!
//! The templates take `increase()`, `rate()` or `irate()` over a window, and those do not
//! give counts a test can check: a series that appears inside the window starts from its
//! first sample, not from 0, so what was counted before the first scrape is missing, and
//! what is left is extrapolated towards the window's edges, so it is not even a whole
//! number. What a template decides is which series land in which row: its selectors and
//! its `by (...)`. So each template keeps those exactly and reads the counter itself
//! (`sum(response_total{...}) by (...)`), whose value is exact. Flagger's request-duration
//! stays in its real form, `rate` and all, with a loose bound: the traffic is sent in two
//! rounds around a scrape, so the rate has an increase to work from.
//!
//! Without Prometheus the checks cannot run, and must not pass as if they had: this file
//! has its own harness (libtest-mimic) and reports them as ignored, saying why. With
//! `SKIFF_REQUIRE_PROMETHEUS` set, as `.ci/run` sets it, a missing Prometheus fails instead.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::SystemTime;

use http::uri::PathAndQuery;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use libtest_mimic::{Arguments, Completion, Trial};
use proxy_tls::devca::DevCa;
use skiff_e2e::mesh::{credentials, identity};
use skiff_e2e::prometheus::{Prometheus, Target};
use skiff_e2e::*;
use tonic::codegen::BoxFuture;
use tonic::server::UnaryService;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

#[path = "prometheus/checks.rs"]
mod checks;
#[path = "prometheus/queries.rs"]
mod queries;
use checks::Checks;

const NS: &str = "demo";
const WEB_ID: &str = "spiffe://cluster.local/ns/demo/sa/web";
const API_ID: &str = "spiffe://cluster.local/ns/demo/sa/api";
/// How web's proxy names service api in `authority` and `dst`.
const API_AUTHORITY: &str = "api.demo.svc.cluster.local:80";

// What the test sends through web's outbound listener. HTTP/1 `GET /ok` and `GET /fail` go
// in each of two rounds, the rest in the first.
const OK_PER_ROUND: usize = 3;
const FAIL_PER_ROUND: usize = 1;
const DENIED: usize = 3;
const GRPC_OK: usize = 2;
const GRPC_UNAVAILABLE: usize = 1;
const GONE: usize = 1;

const OK: usize = 2 * OK_PER_ROUND;
const FAIL: usize = 2 * FAIL_PER_ROUND;
/// What api's TrafficTarget lets through, and so what reaches api's application.
const ALLOWED: usize = OK + FAIL + GRPC_OK + GRPC_UNAVAILABLE;
const INBOUND_SUCCESS: usize = OK + GRPC_OK;
const INBOUND_FAILURE: usize = FAIL + GRPC_UNAVAILABLE;
/// As web sees api: the 403s come back as api's answers, which are successes as Linkerd
/// counts them (a 4xx is the server's answer, not a failure of the call).
const OUTBOUND_SUCCESS: usize = INBOUND_SUCCESS + DENIED;
const OUTBOUND_FAILURE: usize = INBOUND_FAILURE;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "linkerd_and_flagger_queries_count_the_traffic_sent",
        || {
            if let Some(why) = Prometheus::unavailable() {
                eprintln!("SKIPPED the PromQL checks: {why}");
                return Ok(Completion::ignored_with(why));
            }
            block_on_two_workers(linkerd_and_flagger_queries_count_the_traffic_sent());
            Ok(Completion::Completed)
        },
    )];
    libtest_mimic::run(&args, trials).exit_code()
}

/// The one gRPC message, both ways (derived by hand: no protoc).
#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    #[prost(string, tag = "1")]
    text: String,
}

/// `echo.Echo/Say`: answers with the text it got, or UNAVAILABLE (14) when the text asks.
struct Say;

impl UnaryService<Echo> for Say {
    type Response = Echo;
    type Future = BoxFuture<tonic::Response<Echo>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Echo>) -> Self::Future {
        Box::pin(async move {
            match request.into_inner().text.as_str() {
                "unavailable" => Err(tonic::Status::unavailable("asked to fail")),
                text => Ok(tonic::Response::new(Echo { text: text.into() })),
            }
        })
    }
}

/// api's application: `/ok` 200, any other path 500, and `echo.Echo/Say` over h2c (a failed
/// call is a trailers-only response: HTTP 200 with `grpc-status: 14`).
async fn api_app(req: Request<Incoming>) -> Response<TestBody> {
    match req.uri().path() {
        "/echo.Echo/Say" => {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
            grpc.unary(Say, req)
                .await
                .map(|body| body.map_err(|status| Box::new(status) as _).boxed_unsync())
        }
        "/ok" => ok("ok"),
        _ => Response::builder().status(500).body(text("fail")).unwrap(),
    }
}

/// The SMI documents of api's proxy: web may GET `/ok` and `/fail` and call `echo.Echo`;
/// anything else from anyone is refused.
fn api_policy() -> [serde_json::Value; 2] {
    [
        json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "api-routes", "namespace": NS},
            "spec": {"matches": [
                {"name": "http", "pathRegex": "/(ok|fail)", "methods": ["GET"]},
                {"name": "grpc", "pathRegex": "/echo\\.Echo/", "methods": ["POST"]},
            ]},
        }),
        json!({
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": "web-to-api", "namespace": NS},
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": "api", "namespace": NS},
                "rules": [{"kind": "HTTPRouteGroup", "name": "api-routes"}],
                "sources": [{"kind": "ServiceAccount", "name": "web", "namespace": NS}],
            },
        }),
    ]
}

/// An HTTPRoute `name` on web's service api, for requests whose path starts with `prefix`.
fn api_route(name: &str, prefix: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "backendRefs": [{"name": "api", "port": 80}],
            }],
        },
    })
}

async fn grpc_client(outbound: SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(format!("http://{outbound}"))
        .unwrap()
        .origin("http://api".parse().unwrap())
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn say(grpc: &mut tonic::client::Grpc<Channel>, text: &str) -> Result<String, tonic::Status> {
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/echo.Echo/Say");
    let request = tonic::Request::new(Echo { text: text.into() });
    grpc.unary(request, path, ProstCodec::<Echo, Echo>::default())
        .await
        .map(|rsp| rsp.into_inner().text)
}

/// Sends `GET path` with Host `host` on `c` and checks the status it gets back.
async fn expect(c: &mut H1, host: &str, path: &str, status: u16) {
    let rsp = c.send_request(get(host, path)).await.unwrap();
    assert_eq!(rsp.status(), status, "GET {host}{path}");
    body_text(rsp).await;
}

async fn linkerd_and_flagger_queries_count_the_traffic_sent() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = backend(api_app).await;
    let dead = dead_addr();
    let api_creds = credentials(&ca, NS, "api");
    let [routes, target] = api_policy();
    let api = ProxyConfig::new(app.addr.port())
        .spec(json!({"namespace": NS}))
        .spec(identity(&api_creds, NS, "api"))
        .document(routes)
        .document(target)
        .start()
        .await;
    let web_creds = credentials(&ca, NS, "web");
    let web = ProxyConfig::new(1)
        .spec(json!({"namespace": NS}))
        .spec(identity(&web_creds, NS, "web"))
        .service_with(
            "api",
            &[api.inbound_addr],
            json!({
                "identity": API_ID,
                // What discovery would read off the endpoints' pods, written by hand.
                "metricLabels": {"deployment": "api", "serviceaccount": "api"},
            }),
        )
        .service("gone", &[dead.addr])
        .document(api_route("api-ok", "/ok"))
        .document(api_route("api-default", "/"))
        .start()
        .await;
    let prometheus = Prometheus::start(&[
        Target::new(web.admin_addr, NS, "web-1", "web"),
        Target::new(api.admin_addr, NS, "api-1", "api"),
    ])
    .await;

    // Round 1. The clients' connections stay open to the end, for the gauges.
    let mut http = h1(web.outbound_addr).await;
    let mut grpc = grpc_client(web.outbound_addr).await;
    let mut gone = h1(web.outbound_addr).await;
    for _ in 0..OK_PER_ROUND {
        expect(&mut http, "api", "/ok", 200).await;
    }
    for _ in 0..FAIL_PER_ROUND {
        expect(&mut http, "api", "/fail", 500).await;
    }
    for _ in 0..DENIED {
        expect(&mut http, "api", "/admin", 403).await;
    }
    for _ in 0..GONE {
        expect(&mut gone, "gone", "/", 502).await;
    }
    for _ in 0..GRPC_OK {
        assert_eq!(say(&mut grpc, "hello").await.unwrap(), "hello");
    }
    for _ in 0..GRPC_UNAVAILABLE {
        let status = say(&mut grpc, "unavailable").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    prometheus.scraped_after(SystemTime::now()).await;

    // Round 2, after a scrape, so that a rate over the window has an increase to see.
    for _ in 0..OK_PER_ROUND {
        expect(&mut http, "api", "/ok", 200).await;
    }
    for _ in 0..FAIL_PER_ROUND {
        expect(&mut http, "api", "/fail", 500).await;
    }
    prometheus.scraped_after(SystemTime::now()).await;

    let mut checks = Checks::new(&prometheus);
    queries::stat(&mut checks).await;
    queries::label_values(&mut checks, app.addr).await;
    queries::tcp(&mut checks, api.inbound_addr, dead.addr).await;
    queries::routes_and_policy(&mut checks, app.addr).await;
    queries::inbound_policy(&mut checks).await;
    queries::stat_outbound(&mut checks).await;
    queries::flagger(&mut checks).await;
    checks.finish();
    drop((http, grpc, gone));
}
