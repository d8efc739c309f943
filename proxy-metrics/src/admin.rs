//! The admin server: `/metrics`, `/ready`, `/live`, `/config`.
//!
//! It runs on its own listener (`127.0.0.1:4191` by default) so scrapes and probes never queue
//! behind application traffic, and it answers only GET/HEAD on fixed paths.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Whether the proxy should receive traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    loaded: AtomicBool,
    draining: AtomicBool,
    awaiting_identity: AtomicBool,
}

impl Readiness {
    /// Marks config (and, later, identity) as loaded.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether the proxy still waits for its first valid credentials (`/ready` is 503 until
    /// then: a proxy without them cannot serve mesh traffic).
    pub fn set_awaiting_identity(&self, waiting: bool) {
        self.awaiting_identity.store(waiting, Ordering::Release);
    }

    /// Marks the proxy as shutting down: `/ready` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.awaiting_identity.load(Ordering::Acquire)
    }
}

/// Renders the running config as JSON for `/config`.
pub type ConfigView = Arc<dyn Fn() -> String + Send + Sync>;

/// What the admin server serves.
pub struct Admin {
    /// The metrics registry, fully registered.
    pub registry: Arc<Registry>,
    /// Readiness for `/ready`.
    pub readiness: Arc<Readiness>,
    /// The running config for `/config`.
    pub config: ConfigView,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// Serves the admin API on `listener` until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn handle(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut out = String::with_capacity(16 * 1024);
            if prometheus_client::encoding::text::encode(&mut out, &admin.registry).is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
            }
            let mut rsp = Response::new(Full::new(Bytes::from(out)));
            rsp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            rsp
        }
        "/ready" if admin.readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/live" => text(StatusCode::OK, "live\n"),
        "/config" => {
            let mut rsp = Response::new(Full::new(Bytes::from((admin.config)())));
            rsp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            rsp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
