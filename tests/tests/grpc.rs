//! GRPCRoute through the real proxy with a real gRPC client and servers (tonic), as the
//! Gateway API mesh conformance suite checks it: weights (70/30 within 5 points, with a
//! weight-0 backend that does not exist), and request header changes chosen by a header
//! match. Messages are derived by hand (no protoc); the service is `echo.Echo/Say`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use serde_json::Value;
use skiff_e2e::*;
use tonic::body::Body as GrpcBody;
use tonic::codegen::BoxFuture;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Endpoint, Server};
use tonic_prost::ProstCodec;

/// The one message, both ways.
#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    #[prost(string, tag = "1")]
    text: String,
}

/// Answers `Say` with its name and the `x-header-*` metadata it received.
#[derive(Clone)]
struct EchoServer {
    name: &'static str,
}

impl NamedService for EchoServer {
    const NAME: &'static str = "echo.Echo";
}

struct Say(&'static str);

impl UnaryService<Echo> for Say {
    type Response = Echo;
    type Future = BoxFuture<tonic::Response<Echo>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Echo>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let mut seen: Vec<String> = request
                .metadata()
                .iter()
                .filter_map(|kv| match kv {
                    tonic::metadata::KeyAndValueRef::Ascii(k, v)
                        if k.as_str().starts_with("x-header") =>
                    {
                        Some(format!("{}={}", k.as_str(), v.to_str().unwrap_or("?")))
                    }
                    _ => None,
                })
                .collect();
            seen.sort();
            Ok(tonic::Response::new(Echo {
                text: format!("{name} {}", seen.join(" ")).trim_end().to_owned(),
            }))
        })
    }
}

impl tonic::codegen::Service<http::Request<GrpcBody>> for EchoServer {
    type Response = http::Response<GrpcBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<GrpcBody>) -> Self::Future {
        let name = self.name;
        Box::pin(async move {
            if req.uri().path() != "/echo.Echo/Say" {
                return Ok(tonic::Status::unimplemented("only Say").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
            Ok(grpc.unary(Say(name), req).await)
        })
    }
}

/// A gRPC server named `name` on a free loopback port.
async fn echo(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        Server::builder()
            .add_service(EchoServer { name })
            .serve_with_incoming(incoming),
    );
    addr
}

/// A client of Skiff's outbound listener that calls service `web` (the `:authority`).
async fn client(outbound: SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(format!("http://{outbound}"))
        .unwrap()
        .origin("http://web:80".parse().unwrap())
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn say(grpc: &mut tonic::client::Grpc<Channel>, case: Option<&str>) -> String {
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(Echo { text: "hi".into() });
    if let Some(case) = case {
        request
            .metadata_mut()
            .insert("x-test-case", case.parse().unwrap());
        request
            .metadata_mut()
            .insert("x-header-set", "original".parse().unwrap());
        request
            .metadata_mut()
            .insert("x-header-remove", "gone".parse().unwrap());
    }
    let path = PathAndQuery::from_static("/echo.Echo/Say");
    grpc.unary(request, path, ProstCodec::<Echo, Echo>::default())
        .await
        .unwrap()
        .into_inner()
        .text
}

fn grpc_route(rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "echo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": rules,
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_splits_70_30_with_a_missing_weight_0_backend() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let proxy = ProxyConfig::new(1)
        .service("web", &[v1])
        .service("web-v1", &[v1])
        .service("web-v2", &[v2])
        .document(grpc_route(json!([{"backendRefs": [
            {"name": "web-v1", "port": 80, "weight": 70},
            {"name": "web-v2", "port": 80, "weight": 30},
            {"name": "web-v3", "port": 80, "weight": 0}
        ]}])))
        .start()
        .await;
    let mut grpc = client(proxy.outbound_addr).await;
    let (mut n1, mut n2) = (0, 0);
    for _ in 0..500 {
        match say(&mut grpc, None).await.as_str() {
            "v1" => n1 += 1,
            "v2" => n2 += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let share = f64::from(n1) / 500.0;
    println!("70/30 GRPCRoute split over 500 calls: v1 {n1}, v2 {n2}");
    assert!((0.65..=0.75).contains(&share), "v1 {n1}, v2 {n2}");
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"route="echo""#),
        "the route's name on metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_changes_request_headers_chosen_by_a_header_match() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let case = |value: &str, filters: Value, to: &str| {
        json!({
            "matches": [{"headers": [{"name": "x-test-case", "value": value}]}],
            "filters": filters,
            "backendRefs": [{"name": to, "port": 80}]
        })
    };
    let proxy = ProxyConfig::new(1)
        .service("web", &[v1])
        .service("web-v1", &[v1])
        .service("web-v2", &[v2])
        .document(grpc_route(json!([
            case("set", json!([{"type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "x-header-set", "value": "set-overwrites-values"}]}}]), "web-v1"),
            case("add", json!([{"type": "RequestHeaderModifier",
                "requestHeaderModifier": {"add": [{"name": "x-header-add", "value": "add-appends-values"}]}}]), "web-v1"),
            case("remove", json!([{"type": "RequestHeaderModifier",
                "requestHeaderModifier": {"remove": ["x-header-remove"]}}]), "web-v2"),
        ])))
        .start()
        .await;
    let mut grpc = client(proxy.outbound_addr).await;
    assert_eq!(
        say(&mut grpc, Some("set")).await,
        "v1 x-header-remove=gone x-header-set=set-overwrites-values"
    );
    assert_eq!(
        say(&mut grpc, Some("add")).await,
        "v1 x-header-add=add-appends-values x-header-remove=gone x-header-set=original"
    );
    assert_eq!(
        say(&mut grpc, Some("remove")).await,
        "v2 x-header-set=original"
    );
}
