//! Per-request visibility beyond counters: tap events and the access log.
//!
//! [`Observe`] is shared by a direction's stack. When nobody taps and the access log is
//! off, [`Observe::watch`] returns `None` and a request costs one atomic load; otherwise the
//! request gets a [`Watched`] record (and a [`Notes`] slot the inner layers fill in), from
//! which the three tap events (request, response, end) and the access log line are made.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request};
use proxy_core::limit::Client;
use proxy_core::notes::Notes;
use regex::Regex;
use serde_json::{json, Map, Value};

use crate::tap::{Fields, TapHub};

/// Headers never shown, whatever the config says.
const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// What the config says about tap redaction and the access log.
#[derive(Clone, Debug, Default)]
pub struct ObserveSettings {
    /// More header names whose values tap never shows (lower-case).
    pub redact_headers: Vec<String>,
    /// Patterns replaced by `[redacted]` in sampled bodies.
    pub redact_body: Vec<Regex>,
    /// The access log's fields; `None` when the access log is off.
    pub access_log: Option<Vec<String>>,
}

/// The access log fields written when the config names none.
pub const DEFAULT_ACCESS_LOG_FIELDS: [&str; 14] = [
    "ts",
    "direction",
    "method",
    "authority",
    "path",
    "status",
    "duration_ms",
    "response_bytes",
    "client",
    "route",
    "backend",
    "endpoint",
    "error",
    "trace_id",
];

/// A direction's tap and access log.
#[derive(Debug)]
pub struct Observe {
    direction: proxy_core::Direction,
    tap: Arc<TapHub>,
    settings: Arc<ArcSwap<ObserveSettings>>,
    log: Option<std::sync::mpsc::SyncSender<String>>,
}

impl Observe {
    /// The tap and access log of `direction`; access log lines go to `log`.
    pub fn new(
        direction: proxy_core::Direction,
        tap: Arc<TapHub>,
        settings: Arc<ArcSwap<ObserveSettings>>,
        log: Option<std::sync::mpsc::SyncSender<String>>,
    ) -> Self {
        Self {
            direction,
            tap,
            settings,
            log,
        }
    }

    /// Starts watching a request, if anyone is interested; emits its request event.
    pub fn watch<B>(self: &Arc<Self>, req: &mut Request<B>) -> Option<Arc<Watched>> {
        let logging = self.log.is_some() && self.settings.load().access_log.is_some();
        if !self.tap.active() && !logging {
            return None;
        }
        let notes = Arc::new(Notes::default());
        req.extensions_mut().insert(notes.clone());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                let host = req.headers().get(http::header::HOST)?;
                host.to_str().ok().map(str::to_owned)
            })
            .unwrap_or_default();
        let client = match req.extensions().get::<Client>() {
            Some(Client::Identity(id)) => id.to_string(),
            Some(Client::Addr(ip)) => ip.to_string(),
            _ => String::new(),
        };
        let w = Arc::new(Watched {
            observe: self.clone(),
            id: proxy_core_id(),
            ts: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            method: req.method().as_str().to_owned(),
            authority,
            path: req.uri().path().to_owned(),
            client,
            trace_id: trace_id(req.headers()),
            notes,
        });
        if self.tap.active() {
            let headers = self.headers(req.headers());
            self.tap.publish(&w.fields(None), |_| {
                line(json!({
                    "event": "request",
                    "id": w.id,
                    "direction": self.direction,
                    "method": w.method,
                    "authority": w.authority,
                    "path": w.path,
                    "client": w.client,
                    "headers": headers,
                }))
            });
        }
        Some(w)
    }

    /// Whether tap clients want response bodies, and how many bytes.
    pub fn body_bytes(&self) -> usize {
        if self.tap.active() {
            self.tap.body_bytes()
        } else {
            0
        }
    }

    fn headers(&self, headers: &HeaderMap) -> Value {
        let settings = self.settings.load();
        let mut map = Map::new();
        for (name, value) in headers {
            let n = name.as_str();
            let hidden =
                ALWAYS_REDACTED.contains(&n) || settings.redact_headers.iter().any(|r| r == n);
            let shown = if hidden {
                "[redacted]".to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            map.insert(n.to_owned(), Value::String(shown));
        }
        Value::Object(map)
    }

    fn redact_body(&self, body: &[u8]) -> String {
        let mut text = String::from_utf8_lossy(body).into_owned();
        for pattern in &self.settings.load().redact_body {
            text = pattern.replace_all(&text, "[redacted]").into_owned();
        }
        text
    }
}

fn proxy_core_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A trace id from W3C `traceparent`, B3, or `x-request-id`, in that order.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    get("traceparent")
        .and_then(|t| t.split('-').nth(1))
        .or_else(|| get("x-b3-traceid"))
        .or_else(|| get("x-request-id"))
        .map(str::to_owned)
}

fn line(v: Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// One watched request.
#[derive(Debug)]
pub struct Watched {
    observe: Arc<Observe>,
    id: u64,
    ts: f64,
    method: String,
    authority: String,
    path: String,
    client: String,
    trace_id: Option<String>,
    notes: Arc<Notes>,
}

/// How a watched request ended.
#[derive(Debug)]
pub struct Ending<'a> {
    /// The status sent to the client.
    pub status: u16,
    /// Milliseconds from request to the end of the response body.
    pub duration_ms: f64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// The gRPC status, if any.
    pub grpc_status: Option<u32>,
    /// The proxy's error reason, if it answered itself.
    pub error: Option<&'a str>,
    /// The first bytes of the response body (as many as a tap client asked for).
    pub body: &'a [u8],
}

impl Watched {
    fn fields(&self, status: Option<u16>) -> Fields<'_> {
        Fields {
            direction: self.observe.direction.as_str(),
            authority: &self.authority,
            path: &self.path,
            method: &self.method,
            route: None,
            status,
        }
    }

    /// The response headers arrived.
    pub fn response(&self, status: u16, latency_ms: f64, headers: &HeaderMap) {
        let tap = &self.observe.tap;
        if !tap.active() {
            return;
        }
        let noted = self.notes.get();
        let fields = Fields {
            route: noted.route.as_deref(),
            ..self.fields(Some(status))
        };
        tap.publish(&fields, |_| {
            line(json!({
                "event": "response",
                "id": self.id,
                "direction": self.observe.direction,
                "method": self.method,
                "authority": self.authority,
                "path": self.path,
                "route": noted.route.as_deref(),
                "status": status,
                "latency_ms": round(latency_ms),
                "headers": self.observe.headers(headers),
            }))
        });
    }

    /// The response ended: the end event, and the access log line.
    pub fn end(&self, ending: &Ending<'_>) {
        let noted = self.notes.get();
        let mut record = Map::new();
        let mut put = |k: &str, v: Value| {
            record.insert(k.to_owned(), v);
        };
        put("ts", json!(round(self.ts)));
        put("id", json!(self.id));
        put("direction", json!(self.observe.direction));
        put("method", json!(self.method));
        put("authority", json!(self.authority));
        put("path", json!(self.path));
        put("client", json!(self.client));
        put("route", json!(noted.route.as_deref()));
        put("status", json!(ending.status));
        put("duration_ms", json!(round(ending.duration_ms)));
        put("response_bytes", json!(ending.response_bytes));
        put("grpc_status", json!(ending.grpc_status));
        put("error", json!(ending.error));
        put("tries", json!(noted.tries));
        put("backend", json!(noted.backend));
        put("endpoint", json!(noted.endpoint.map(|e| e.to_string())));
        put("breaker", json!(noted.breaker));
        put("authz", json!(noted.authz));
        put("trace_id", json!(self.trace_id));
        let tap = &self.observe.tap;
        if tap.active() {
            let fields = Fields {
                route: noted.route.as_deref(),
                ..self.fields(Some(ending.status))
            };
            tap.publish(&fields, |body_bytes| {
                let mut event = record.clone();
                event.insert("event".into(), json!("end"));
                if body_bytes > 0 {
                    let sample = &ending.body[..ending.body.len().min(body_bytes)];
                    event.insert("body".into(), json!(self.observe.redact_body(sample)));
                }
                line(Value::Object(event))
            });
        }
        let settings = self.observe.settings.load();
        if let (Some(fields), Some(log)) = (&settings.access_log, &self.observe.log) {
            let mut out = String::with_capacity(256);
            out.push('{');
            let mut first = true;
            for f in fields {
                if let Some(v) = record.get(f.as_str()) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    let _ = write!(out, "{}:{v}", Value::String(f.clone()));
                }
            }
            out.push_str("}\n");
            // A full queue (stdout blocked) drops the line rather than stall requests.
            let _ = log.try_send(out);
        }
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Starts the access log writer: a thread writing lines to stdout, behind a bounded queue.
pub fn access_log_writer() -> std::sync::mpsc::SyncSender<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4096);
    std::thread::Builder::new()
        .name("skiff-access-log".into())
        .spawn(move || {
            use std::io::Write;
            let stdout = std::io::stdout();
            for line in rx {
                let mut out = stdout.lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
        })
        .expect("the access log thread starts");
    tx
}
