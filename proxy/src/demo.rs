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
use tokio::net::TcpListener;

use crate::config::{self, Config};

/// The embedded demo config.
pub const CONFIG: &str = include_str!("demo.yaml");

/// The parsed demo config.
pub fn config() -> Config {
    config::parse(CONFIG, None).expect("the embedded demo config is valid")
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
    let listener = TcpListener::bind(addr).await.map_err(|e| {
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
  curl -s http://127.0.0.1:4143/                      # inbound, to the local app
  curl -s http://127.0.0.1:4191/metrics | grep -E '^(request|response)_total'
  curl -s http://127.0.0.1:4191/ready; curl -s http://127.0.0.1:4191/config

Ctrl-C drains and stops.
";
