//! The exporter: finished spans in, OTLP/HTTP export requests out, on a task of its own.
//!
//! Spans are batched (up to `batch`, or whatever arrived within `flush_interval` of the
//! first) into one `ExportTraceServiceRequest`, posted as protobuf to the collector over a
//! kept-alive HTTP/1.1 connection. A batch that fails (no connection, a timeout, a status
//! other than 2xx) is dropped and counted, not retried: the queue behind it is bounded,
//! and a collector that is down must cost the proxy nothing but the count. While a batch
//! is on its way, new spans wait in the queue (and beyond its bound are dropped there).

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::otlp;
use super::{Dropped, TraceFamilies, TraceSettings};
use std::sync::Arc;

/// An OTLP/HTTP collector's traces endpoint: `http://host:port/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    /// The host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The path, `/v1/traces` by default.
    pub path: String,
}

impl Collector {
    /// Parses `http://host[:port][/path]`: the port defaults to 4318 (OTLP/HTTP's) and the
    /// path to `/v1/traces`. Only plain HTTP: a collector agent on the node or in the pod is
    /// the usual target, and TLS to it is not built.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{url:?}: https collectors are not supported; use http:// (a collector agent on the node or in the pod)"
                ))
            }
            _ => return Err(format!("{url:?} must start with http://")),
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("{url:?} has no host"));
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => "/v1/traces".to_owned(),
            Some(p) => p.to_owned(),
        };
        Ok(Self {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(4318),
            path,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Exports the spans arriving on `spans` until every sender is gone, then sends what is
/// left and ends.
pub async fn run(
    settings: TraceSettings,
    mut spans: mpsc::Receiver<otlp::Span>,
    families: Arc<TraceFamilies>,
) {
    let mut exporter = Exporter {
        resource: resource(&settings),
        settings,
        families,
        conn: None,
        failing: false,
    };
    let batch_max = exporter.settings.batch.max(1);
    let mut batch = Vec::with_capacity(batch_max);
    loop {
        // Wait for a first span, then for the batch to fill or the interval to pass.
        let Some(first) = spans.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::sleep(exporter.settings.flush_interval);
        tokio::pin!(deadline);
        let mut closed = false;
        while batch.len() < batch_max {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => batch.push(span),
                    None => {
                        closed = true;
                        break;
                    }
                },
                () = &mut deadline => break,
            }
        }
        exporter.export(std::mem::take(&mut batch)).await;
        if closed {
            return;
        }
    }
}

struct Exporter {
    settings: TraceSettings,
    resource: otlp::Resource,
    families: Arc<TraceFamilies>,
    conn: Option<SendRequest<Full<Bytes>>>,
    // Whether the last export failed: a failure is logged when it starts, not per batch.
    failing: bool,
}

impl Exporter {
    async fn export(&mut self, spans: Vec<otlp::Span>) {
        let n = spans.len();
        let body = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "skiff".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                    }),
                    spans,
                }],
            }],
        }
        .encode_to_vec();
        let timeout = self.settings.export_timeout;
        match tokio::time::timeout(timeout, self.post(Bytes::from(body))).await {
            Ok(Ok(rejected)) => {
                let rejected = rejected.min(n);
                if rejected > 0 {
                    self.families.dropped(Dropped::Rejected, rejected);
                }
                self.families.exported(n - rejected);
                if self.failing {
                    tracing::info!(collector = %self.settings.collector.authority(), "trace export works again");
                }
                self.failing = false;
            }
            Ok(Err(e)) => self.failed(n, &e),
            Err(_) => self.failed(n, &format!("no answer within {timeout:?}")),
        }
    }

    fn failed(&mut self, n: usize, why: &str) {
        // A connection in an unknown state is not reused.
        self.conn = None;
        self.families.dropped(Dropped::ExportFailed, n);
        if !self.failing {
            tracing::warn!(
                collector = %self.settings.collector.authority(),
                error = why,
                "trace export failed; spans are dropped (and counted) until it works"
            );
        }
        self.failing = true;
    }

    /// Posts one export request; `Ok` with how many spans the collector refused.
    async fn post(&mut self, body: Bytes) -> Result<usize, String> {
        let collector = &self.settings.collector;
        // A kept connection the collector has closed meanwhile is replaced.
        let mut send = match self.conn.take() {
            Some(mut conn) => match conn.ready().await {
                Ok(()) => conn,
                Err(_) => connect(collector).await?,
            },
            None => connect(collector).await?,
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(collector.path.as_str())
            .header(http::header::HOST, collector.authority())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        // The body (an ExportTraceServiceResponse) is read, up to a bound, so the connection
        // can be kept; a larger one is not read, and the connection not reused.
        let limited = http_body_util::Limited::new(rsp.into_body(), MAX_RESPONSE);
        let body = http_body_util::BodyExt::collect(limited)
            .await
            .map(|b| b.to_bytes());
        if status.is_success() {
            let Ok(body) = body else {
                return Ok(0);
            };
            self.conn = Some(send);
            let rejected = otlp::ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| usize::try_from(p.rejected_spans).unwrap_or(0));
            Ok(rejected)
        } else {
            Err(format!("the collector answered {status}"))
        }
    }
}

async fn connect(collector: &Collector) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect((collector.host.as_str(), collector.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// The largest collector answer read: an `ExportTraceServiceResponse` is a few bytes, or
/// an error message.
const MAX_RESPONSE: usize = 64 * 1024;

fn resource(settings: &TraceSettings) -> otlp::Resource {
    otlp::Resource {
        attributes: settings
            .resource
            .iter()
            .map(|(k, v)| otlp::KeyValue::string(k, v.as_str()))
            .collect(),
    }
}
