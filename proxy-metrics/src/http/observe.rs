//! Per-request visibility beyond counters: tap events, the access log and trace spans.
//!
//! [`Observe`] is shared by a direction's stack. When nobody taps, the access log is off
//! and tracing is off, [`Observe::watch`] returns `None` and a request costs two atomic
//! loads; otherwise the request gets a [`Watched`] record (and a [`Notes`] slot the inner
//! layers fill in), from which the three tap events (request, response, end), the access
//! log line and the span (see [`crate::trace`]) are made.
//! The events are the typed [`Event`]s the CLI reads back; the access log line is the end
//! event's fields that the config names, in its order, so the two cannot drift apart.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderMap, Request};
use proxy_core::classify::Classification;
use proxy_core::limit::Client;
use proxy_core::notes::{Noted, Notes};
use proxy_core::Reason;
use regex::Regex;
use serde_json::Value;

use crate::tap::{EndEvent, Event, Fields, Headers, RequestEvent, ResponseEvent, TapHub};
use crate::trace::{Begun, SpanEnd, TraceHub};

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
    trace: Arc<TraceHub>,
    settings: Arc<ArcSwap<ObserveSettings>>,
    log: Option<std::sync::mpsc::SyncSender<String>>,
}

impl Observe {
    /// The tap, access log and tracing of `direction`; access log lines go to `log`.
    pub fn new(
        direction: proxy_core::Direction,
        tap: Arc<TapHub>,
        trace: Arc<TraceHub>,
        settings: Arc<ArcSwap<ObserveSettings>>,
        log: Option<std::sync::mpsc::SyncSender<String>>,
    ) -> Self {
        Self {
            direction,
            tap,
            trace,
            settings,
            log,
        }
    }

    /// Starts watching a request from `peer`, if anyone is interested; emits its request
    /// event. With tracing on, this is where the request's trace context is read and this
    /// hop's written, whether or not its span is recorded.
    pub fn watch<B>(
        self: &Arc<Self>,
        req: &mut Request<B>,
        peer: Option<SocketAddr>,
    ) -> Option<Arc<Watched>> {
        let span = self.trace.begin(self.direction, req);
        let logging = self.log.is_some() && self.settings.load().access_log.is_some();
        if !self.tap.active() && !logging && span.is_none() {
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
        let (client, caller_identity) = match req.extensions().get::<Client>() {
            Some(Client::Identity(id)) => (id.to_string(), Some(id.clone())),
            Some(Client::Addr(ip)) => (ip.to_string(), None),
            _ => (String::new(), None),
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
            caller_identity,
            peer,
            trace_id: trace_id(req.headers()),
            notes,
            span: std::sync::Mutex::new(span),
        });
        if self.tap.active() {
            let headers = self.headers(req.headers());
            self.tap.publish(&w.fields(None), |_| {
                Event::Request(RequestEvent {
                    id: w.id,
                    direction: self.direction,
                    method: w.method.clone(),
                    authority: w.authority.clone(),
                    path: w.path.clone(),
                    client: w.client.clone(),
                    headers: headers.clone(),
                })
                .to_line()
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

    fn headers(&self, headers: &HeaderMap) -> Headers {
        let settings = self.settings.load();
        let mut map = Headers::new();
        for (name, value) in headers {
            let n = name.as_str();
            let hidden =
                ALWAYS_REDACTED.contains(&n) || settings.redact_headers.iter().any(|r| r == n);
            let shown = if hidden {
                "[redacted]".to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            map.insert(n.to_owned(), shown);
        }
        map
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
    caller_identity: Option<Arc<str>>,
    peer: Option<SocketAddr>,
    trace_id: Option<String>,
    notes: Arc<Notes>,
    // The span, when this request's trace is recorded; taken when it ends.
    span: std::sync::Mutex<Option<Begun>>,
}

impl Drop for Watched {
    /// A request whose response never began (the client went away, or the stack failed)
    /// still ends its span, so that the spans an application made under it have a parent.
    fn drop(&mut self) {
        let span = self
            .span
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(span) = span {
            let ending = Ending {
                status: 0,
                duration_ms: span.elapsed_ms(),
                response_bytes: 0,
                grpc_status: None,
                error: None,
                classification: Classification::Failure,
                body: &[],
            };
            self.end_span(&span, &self.notes.get(), &ending);
        }
    }
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
    /// The proxy's error reason, if it answered itself or cut the response.
    pub error: Option<Reason>,
    /// What the shared classifier made of the response: the value the metrics layer
    /// counted it under, passed on rather than decided again.
    pub classification: Classification,
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

    /// Ends the request's span with what is known of it.
    fn end_span(&self, span: &Begun, noted: &Noted, ending: &Ending<'_>) {
        span.end(&SpanEnd {
            method: &self.method,
            authority: &self.authority,
            path: &self.path,
            peer: self.peer,
            caller_identity: self.caller_identity.as_deref(),
            noted,
            ending,
        });
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
            Event::Response(ResponseEvent {
                id: self.id,
                direction: self.observe.direction,
                method: self.method.clone(),
                authority: self.authority.clone(),
                path: self.path.clone(),
                route: noted.route.as_deref().map(str::to_owned),
                status,
                latency_ms: round(latency_ms),
                headers: self.observe.headers(headers),
            })
            .to_line()
        });
    }

    /// The response ended: the end event, the access log line and the span.
    pub fn end(&self, ending: &Ending<'_>) {
        let noted = self.notes.get();
        let span = self.span.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(span) = span {
            self.end_span(&span, &noted, ending);
        }
        if !self.observe.tap.active() && self.observe.log.is_none() {
            return;
        }
        let end = EndEvent {
            ts: round(self.ts),
            id: self.id,
            direction: self.observe.direction,
            method: self.method.clone(),
            authority: self.authority.clone(),
            path: self.path.clone(),
            client: self.client.clone(),
            route: noted.route.as_deref().map(str::to_owned),
            status: ending.status,
            duration_ms: round(ending.duration_ms),
            response_bytes: ending.response_bytes,
            grpc_status: ending.grpc_status,
            error: ending.error.map(|r| r.as_str().to_owned()),
            classification: ending.classification,
            tries: noted.tries,
            backend: noted.backend,
            endpoint: noted.endpoint,
            breaker: noted.breaker.map(str::to_owned),
            authz: noted.authz,
            fault: noted.fault,
            trace_id: self.trace_id.clone(),
            body: None,
        };
        let tap = &self.observe.tap;
        if tap.active() {
            let fields = Fields {
                route: end.route.as_deref(),
                ..self.fields(Some(ending.status))
            };
            tap.publish(&fields, |body_bytes| {
                let mut event = end.clone();
                if body_bytes > 0 {
                    let sample = &ending.body[..ending.body.len().min(body_bytes)];
                    event.body = Some(self.observe.redact_body(sample));
                }
                Event::End(event).to_line()
            });
        }
        let settings = self.observe.settings.load();
        if let (Some(fields), Some(log)) = (&settings.access_log, &self.observe.log) {
            log_line(&end, fields, log);
        }
    }
}

/// Writes the access log line: the end event's fields the config names, in its order,
/// under their tap names (config parsing has checked each name is one of them).
fn log_line(end: &EndEvent, fields: &[String], log: &std::sync::mpsc::SyncSender<String>) {
    let record = match serde_json::to_value(end) {
        Ok(Value::Object(record)) => record,
        // Unreachable (a struct serializes as an object), but a lost line beats a panic.
        other => {
            tracing::warn!(?other, "access log line not serialized");
            return;
        }
    };
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
