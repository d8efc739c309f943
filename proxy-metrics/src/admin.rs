//! The admin server: `/metrics`, `/ready`, `/live`, `/config`, `/stats`, `/tap`,
//! `PUT /log-level` and `POST /shutdown`.
//!
//! It runs on its own listener (`127.0.0.1:4191` by default) so scrapes and probes never queue
//! behind application traffic. `/tap` and the two mutating endpoints answer loopback callers
//! only unless the config allows others; `/shutdown` is off unless the config turns it on.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::exposition;
use crate::http::HttpFamilies;
use crate::tap::{Filter, Subscription, TapHub};

/// Whether the proxy should receive traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    loaded: AtomicBool,
    draining: AtomicBool,
    awaiting_identity: AtomicBool,
    awaiting_discovery: AtomicBool,
    awaiting_documents: AtomicBool,
    discovery_stale: AtomicBool,
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

    /// Whether the proxy still waits for its first full list of services from discovery
    /// (`/ready` is 503 until then; services written in the file are served meanwhile).
    pub fn set_awaiting_discovery(&self, waiting: bool) {
        self.awaiting_discovery.store(waiting, Ordering::Release);
    }

    /// Whether the proxy still waits for the first list of every route and access kind from
    /// discovery (`/ready` is 503 until then: until it knows every TrafficTarget naming this
    /// workload, it lets nobody in).
    pub fn set_awaiting_documents(&self, waiting: bool) {
        self.awaiting_documents.store(waiting, Ordering::Release);
    }

    /// Whether some discovery watch is failing, so that the last known state is served: `/ready`
    /// stays 200 (serving continues) but says so.
    pub fn set_discovery_stale(&self, stale: bool) {
        self.discovery_stale.store(stale, Ordering::Release);
    }

    /// Why `/ready` answers 503, or `None` when it answers 200.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if !self.loaded.load(Ordering::Acquire) {
            Some("the config is not loaded yet")
        } else if self.draining.load(Ordering::Acquire) {
            Some("draining")
        } else if self.awaiting_identity.load(Ordering::Acquire) {
            Some("waiting for the first valid credentials")
        } else if self.awaiting_discovery.load(Ordering::Acquire) {
            Some("waiting for the first list of services from the Kubernetes API")
        } else if self.awaiting_documents.load(Ordering::Acquire) {
            Some("waiting for the first list of route and access documents from the Kubernetes API")
        } else {
            None
        }
    }

    /// Marks the proxy as shutting down: `/ready` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }
}

/// Renders the running config as JSON for `/config`.
pub type ConfigView = Arc<dyn Fn() -> String + Send + Sync>;

/// Which metric families `/metrics` shows.
#[derive(Clone, Debug, Default)]
pub struct FamilyFilter {
    /// If not empty, only these.
    pub include: Vec<String>,
    /// Never these.
    pub exclude: Vec<String>,
}

impl FamilyFilter {
    fn keep(&self, family: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|f| f == family))
            && !self.exclude.iter().any(|f| f == family)
    }

    /// Drops the lines of filtered-out families from an OpenMetrics text scrape.
    pub fn apply(&self, text: String) -> String {
        if self.include.is_empty() && self.exclude.is_empty() {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        let mut keep = true;
        for line in text.split_inclusive('\n') {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                keep = self.keep(rest.split(' ').next().unwrap_or(""));
            } else if line.starts_with("# EOF") {
                keep = true;
            }
            if keep {
                out.push_str(line);
            }
        }
        out
    }
}

/// Changes the log filter at run time (`PUT /log-level`); returns the filter in force.
pub type LogLevel = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What the admin server serves.
pub struct Admin {
    /// The metrics registry, fully registered.
    pub registry: Arc<Registry>,
    /// Readiness for `/ready`.
    pub readiness: Arc<Readiness>,
    /// The running config for `/config`.
    pub config: ConfigView,
    /// Where `/stats` reads its windows.
    pub http: Arc<HttpFamilies>,
    /// The tap clients of `/tap`.
    pub tap: Arc<TapHub>,
    /// `PUT /log-level`, when the process owns its logging.
    pub log_level: Option<LogLevel>,
    /// `POST /shutdown`, when enabled in config.
    pub shutdown: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Whether `/tap`, `/log-level` and `/shutdown` answer callers off loopback.
    pub allow_remote: bool,
    /// Which families `/metrics` shows (swapped on reload).
    pub families: Arc<arc_swap::ArcSwap<FamilyFilter>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// The admin server's response body: a whole buffer, or the tap stream.
type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// Serves the admin API on `listener` until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
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
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req, peer.ip()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            // A tap stream never ends by itself: it ends with the admin server.
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "admin connection ended");
                },
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

/// Whether `peer` is this host: a loopback address, also as an IPv4-mapped IPv6 one
/// (`::ffff:127.0.0.1`, how a dual-stack listener on `[::]` sees an IPv4 caller).
fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>, peer: IpAddr) -> Response<AdminBody> {
    let local = is_loopback(peer) || admin.allow_remote;
    let path = req.uri().path();
    match (req.method().clone(), path) {
        (Method::GET | Method::HEAD, "/metrics") => {
            let mut out = String::with_capacity(16 * 1024);
            if prometheus_client::encoding::text::encode(&mut out, &admin.registry).is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
            }
            let out = admin.families.load().apply(out);
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            if exposition::wants_openmetrics(accept) {
                with_type(
                    full(exposition::with_whole_le(&out)),
                    exposition::OPENMETRICS_FORMAT,
                )
            } else {
                with_type(full(exposition::to_text(&out)), exposition::TEXT_FORMAT)
            }
        }
        (Method::GET | Method::HEAD, "/ready") => match admin.readiness.not_ready_because() {
            None if admin.readiness.discovery_stale.load(Ordering::Acquire) => text(
                StatusCode::OK,
                "ready; the Kubernetes API is failing: serving the last known state\n",
            ),
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => owned_text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (Method::GET | Method::HEAD, "/live") => text(StatusCode::OK, "live\n"),
        (Method::GET | Method::HEAD, "/config") => {
            with_type(full((admin.config)()), "application/json")
        }
        (Method::GET | Method::HEAD, "/stats") => {
            with_type(full(stats_json(&admin.http)), "application/json")
        }
        (Method::GET, "/tap") if !local => {
            text(StatusCode::FORBIDDEN, "tap answers loopback callers only\n")
        }
        (Method::GET, "/tap") => match Filter::from_query(req.uri().query().unwrap_or("")) {
            Ok(filter) => {
                let sub = admin.tap.subscribe(filter);
                with_type(TapBody(sub).boxed_unsync(), "application/x-ndjson")
            }
            Err(e) => owned_text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        (Method::PUT, "/log-level") if !local => {
            text(StatusCode::FORBIDDEN, "loopback callers only\n")
        }
        (Method::PUT, "/log-level") => {
            let Some(set) = &admin.log_level else {
                return text(StatusCode::NOT_FOUND, "not found\n");
            };
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable body\n"),
            };
            let filter = String::from_utf8_lossy(&body).trim().to_owned();
            match set(&filter) {
                Ok(now) => owned_text(StatusCode::OK, format!("{now}\n")),
                Err(e) => owned_text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Method::POST, "/shutdown") => match &admin.shutdown {
            None => text(
                StatusCode::NOT_FOUND,
                "POST /shutdown is off (admin.shutdownEndpoint)\n",
            ),
            Some(_) if !local => text(StatusCode::FORBIDDEN, "loopback callers only\n"),
            Some(stop) => {
                stop();
                text(StatusCode::ACCEPTED, "shutting down\n")
            }
        },
        (
            _,
            "/metrics" | "/ready" | "/live" | "/config" | "/stats" | "/tap" | "/log-level"
            | "/shutdown",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/stats`: the [`crate::stats::Report`], one line of JSON.
fn stats_json(http: &HttpFamilies) -> String {
    match serde_json::to_string(&http.stats()) {
        Ok(mut out) => {
            out.push('\n');
            out
        }
        // Unreachable (plain structs, string keys), but an error body beats a panic.
        Err(e) => format!(
            "{{\"error\":{}}}\n",
            serde_json::Value::String(e.to_string())
        ),
    }
}

/// The tap stream as a response body.
struct TapBody(Subscription);

impl http_body::Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .events
            .poll_recv(cx)
            .map(|e| e.map(|line| Ok(http_body::Frame::data(line))))
    }
}

fn full(body: impl Into<Bytes>) -> AdminBody {
    Full::new(body.into()).boxed_unsync()
}

fn with_type(body: AdminBody, content_type: &'static str) -> Response<AdminBody> {
    let mut rsp = Response::new(body);
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    owned_text(status, body.to_owned())
}

fn owned_text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut rsp = with_type(full(body), "text/plain; charset=utf-8");
    *rsp.status_mut() = status;
    rsp
}

#[cfg(test)]
mod loopback_tests {
    use super::is_loopback;

    #[test]
    fn loopback_callers_are_local_also_as_ipv4_mapped_addresses() {
        for local in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(local.parse().unwrap()), "{local}");
        }
        for remote in ["10.0.0.1", "::ffff:10.0.0.1", "fe80::1", "::"] {
            assert!(!is_loopback(remote.parse().unwrap()), "{remote}");
        }
    }
}
