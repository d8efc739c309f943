//! `skiff demo`: two small built-in backends and a Skiff in front of them, on the embedded
//! config in `demo.yaml`, with a few commands to try.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::config::{self, Config};

/// The embedded demo config.
pub const CONFIG: &str = include_str!("demo.yaml");

/// The config of the demo's second proxy: the server side of the meshed hop, in front of
/// the echo backend, which lets the demo client only read.
pub const PEER_CONFIG: &str = "\
apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  namespace: demo
  outbound: {listen: 127.0.0.1:4240}
  inbound: {listen: 127.0.0.1:4243, appPort: 18082}
  admin: {listen: 127.0.0.1:4291}
  identity: {dir: /tmp/skiff-demo/demo/server, serviceAccount: server}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: echo-routes, namespace: demo}
spec:
  matches:
  - {name: reads, pathRegex: '.*', methods: [GET, HEAD]}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: client-reads, namespace: demo}
spec:
  destination: {kind: ServiceAccount, name: server, namespace: demo}
  rules: [{kind: HTTPRouteGroup, name: echo-routes}]
  sources: [{kind: ServiceAccount, name: client, namespace: demo}]
";

/// Where the demo writes its credentials.
pub const CREDENTIALS: &str = "/tmp/skiff-demo";

/// The parsed demo config.
pub fn config() -> Config {
    config::parse(CONFIG, None).expect("the embedded demo config is valid")
}

/// The parsed config of the demo's second proxy.
pub fn peer_config() -> Config {
    config::parse(PEER_CONFIG, None).expect("the embedded peer config is valid")
}

/// Writes a fresh local CA's credentials for the demo's two proxies.
pub fn write_credentials() -> std::io::Result<()> {
    let ca = proxy_tls::devca::DevCa::new("cluster.local").map_err(std::io::Error::other)?;
    let root = std::path::Path::new(CREDENTIALS);
    let day = std::time::Duration::from_secs(86_400);
    for sa in ["client", "server"] {
        ca.write_workload(&root.join("demo").join(sa), "demo", sa, day)?;
    }
    Ok(())
}

/// What a demo backend answers.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// A fixed greeting.
    Hello,
    /// The request as the backend received it: method, path, version, headers.
    Echo,
}

/// Serves `backend` on `addr` (HTTP/1.1 and h2c) until the task is dropped.
pub async fn serve_backend(addr: SocketAddr, backend: Backend) -> std::io::Result<()> {
    let listener = crate::server::bind::listen(addr, false).map_err(|e| {
        std::io::Error::new(e.kind(), format!("demo backend cannot bind {addr}: {e}"))
    })?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    service_fn(
                        move |req| async move { Ok::<_, Infallible>(answer(backend, &req)) },
                    );
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

fn answer(backend: Backend, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = match backend {
        Backend::Hello => "hello from the demo app\n".to_owned(),
        Backend::Echo => {
            let mut s = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                s.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            s
        }
    };
    Response::new(Full::new(Bytes::from(text)))
}

/// The commands printed once the demo is up.
pub const TRY: &str = "\
Skiff demo is running. Try, in another terminal:

  curl -s -H 'Host: hello' http://127.0.0.1:4140/                 # outbound, routed by Host
  curl -s -x http://127.0.0.1:4140 http://hello.demo.svc.cluster.local/   # as HTTP_PROXY
  curl -s --http2-prior-knowledge -H 'Host: hello' http://127.0.0.1:4140/ # h2c
  curl -s -H 'Host: echo' -H 'Connection: X-Secret' -H 'X-Secret: 1' -H 'skiff-error: forged' \\
       http://127.0.0.1:4140/look      # hop-by-hop and skiff-* headers never reach the backend
  curl -si -H 'Host: broken' http://127.0.0.1:4140/   # 502, skiff-error: upstream-connect
  curl -si -H 'Host: nowhere' http://127.0.0.1:4140/  # 404, skiff-error: no-route
  curl -s -H 'Host: echo-mesh' http://127.0.0.1:4140/hop  # over mTLS + HTTP/2 to a 2nd Skiff
  curl -si -X POST -H 'Host: echo-mesh' http://127.0.0.1:4140/  # 403: the peer only allows reads
  curl -s http://127.0.0.1:4143/                      # inbound, to the local app
  curl -s http://127.0.0.1:4191/metrics | grep -E '^(request|response)_total'
  curl -s http://127.0.0.1:4191/ready; curl -s http://127.0.0.1:4191/config
  curl -s http://127.0.0.1:4291/metrics | grep -E '^skiff_(authz|tls)'   # the peer's view
  skiff stat                           # success rate, RPS and latency per service
  skiff tap --authority hello          # live request events (Ctrl-C to stop)
  skiff top                            # the busiest paths, live

Ctrl-C drains and stops.
";
