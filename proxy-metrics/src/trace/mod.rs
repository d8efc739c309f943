//! Distributed tracing: a span for every sampled request, inbound (a server span) and
//! outbound (a client span), exported in batches over OTLP/HTTP to a collector.
//!
//! A span is made where the tap and the access log already watch requests
//! ([`crate::http::Observe`]): the same notes (route, backend, endpoint, tries, breaker,
//! fault) and the same classification feed all three, so a span cannot disagree with the
//! metrics about how a request ended. [`TraceHub`] holds the running [`Tracer`]; with
//! tracing off (the default) it holds none, and a request pays one atomic load.
//!
//! The data path never waits on the collector: a finished span is handed to a bounded
//! queue with `try_send`, and [`export`] batches and posts it from its own task. A full
//! queue or a failed export drops spans, counted in `skiff_trace_spans_dropped_total`.

pub mod context;
pub mod export;
pub mod otlp;
mod span;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::Request;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use proxy_core::Direction;
use tokio::sync::mpsc;

use crate::Labels;
use context::{Format, Incoming, Outgoing, Parent, Sampled, SpanId, TraceId};
pub use span::SpanEnd;

/// Where spans go and which are made, from the config's `tracing` section.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP traces endpoint.
    pub collector: export::Collector,
    /// The share of new traces recorded, 0 to 1. A caller's decision is followed.
    pub sampling: f64,
    /// The most finished spans waiting for export; beyond it, spans are dropped.
    pub queue: usize,
    /// The most spans in one export request.
    pub batch: usize,
    /// How long a span waits for its batch to fill before it is sent anyway.
    pub flush_interval: Duration,
    /// The longest an export request may take, connection included.
    pub export_timeout: Duration,
    /// The resource: `service.name`, the pod, its namespace and workload, and the config's.
    pub resource: Vec<(String, String)>,
}

/// Why spans were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The export queue was full (the collector is slow or gone).
    QueueFull,
    /// The collector could not be reached, or did not accept the batch.
    ExportFailed,
    /// The collector took the batch but refused these spans (OTLP partial success).
    Rejected,
}

impl Dropped {
    fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue-full",
            Self::ExportFailed => "export-failed",
            Self::Rejected => "rejected",
        }
    }
}

/// The tracing series.
#[derive(Debug, Default)]
pub struct TraceFamilies {
    exported: Counter,
    dropped: Family<Labels, Counter>,
}

impl TraceFamilies {
    fn register(registry: &mut Registry) -> Self {
        let this = Self::default();
        registry.register(
            "skiff_trace_spans_exported",
            "Spans accepted by the trace collector",
            this.exported.clone(),
        );
        registry.register(
            "skiff_trace_spans_dropped",
            "Spans not exported, by reason (queue-full, export-failed, rejected)",
            this.dropped.clone(),
        );
        this
    }

    /// `n` spans were accepted by the collector.
    pub fn exported(&self, n: usize) {
        self.exported.inc_by(n as u64);
    }

    /// `n` spans were dropped for `reason`.
    pub fn dropped(&self, reason: Dropped, n: usize) {
        self.dropped
            .get_or_create(&vec![("reason", reason.as_str().to_owned())])
            .inc_by(n as u64);
    }
}

/// The running tracer, if tracing is on, and the tracing series.
#[derive(Debug)]
pub struct TraceHub {
    current: ArcSwapOption<Tracer>,
    families: Arc<TraceFamilies>,
}

/// Tracing off, its series in no registry (for tests).
impl Default for TraceHub {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            families: Arc::default(),
        }
    }
}

impl TraceHub {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            families: Arc::new(TraceFamilies::register(registry)),
        }
    }

    /// Turns tracing on, off, or to new settings (at start and on reload). New settings
    /// start a new exporter; the old one sends what it holds and ends when the last request
    /// using it has finished. Must run inside the Tokio runtime when `settings` is `Some`.
    pub fn configure(&self, settings: Option<TraceSettings>) {
        let current = self.current.load();
        if current.as_ref().map(|t| &t.settings) == settings.as_ref() {
            return;
        }
        let tracer = settings.map(|s| Arc::new(Tracer::start(s, self.families.clone())));
        self.current.store(tracer);
    }

    /// The running tracer, `None` when tracing is off.
    pub fn tracer(&self) -> Option<Arc<Tracer>> {
        self.current.load_full()
    }

    /// [`Tracer::begin`] with the running tracer; `None` at once when tracing is off. The
    /// tracer is borrowed, not cloned: a request that is not sampled costs no reference
    /// count.
    pub fn begin<B>(&self, direction: Direction, req: &mut Request<B>) -> Option<Begun> {
        self.current
            .load()
            .as_ref()
            .and_then(|tracer| tracer.begin(direction, req))
    }

    /// The tracing series.
    pub fn families(&self) -> &Arc<TraceFamilies> {
        &self.families
    }
}

/// Makes the spans of one configuration and queues them for its exporter.
#[derive(Debug)]
pub struct Tracer {
    settings: TraceSettings,
    // New traces whose id's low 64 bits fall below this are sampled; `None`: none are.
    threshold: Option<u64>,
    queue: mpsc::Sender<otlp::Span>,
    families: Arc<TraceFamilies>,
}

impl Tracer {
    /// A tracer whose exporter task is spawned on the current runtime.
    pub fn start(settings: TraceSettings, families: Arc<TraceFamilies>) -> Self {
        let (queue, spans) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(export::run(settings.clone(), spans, families.clone()));
        Self {
            threshold: threshold(settings.sampling),
            settings,
            queue,
            families,
        }
    }

    /// Reads the request's trace context and decides whether this hop records a span;
    /// writes this hop's context for the next one either way (unless the caller decided
    /// against sampling, whose headers pass untouched). `Some` when the span is recorded.
    pub fn begin<B>(self: &Arc<Self>, direction: Direction, req: &mut Request<B>) -> Option<Begun> {
        let headers = req.headers_mut();
        let (trace_id, parent, sampled, debug, w3c) = match context::extract(headers) {
            Incoming::Parent(Parent {
                sampled: Sampled::No,
                ..
            })
            | Incoming::Decision(false) => return None,
            Incoming::Parent(p) => {
                let sampled = p.sampled == Sampled::Yes || self.sample(&p.trace_id);
                let w3c = p.format == Format::W3c;
                (p.trace_id, Some(p.span_id), sampled, p.debug, w3c)
            }
            Incoming::Decision(true) => (new_trace_id(), None, true, false, false),
            Incoming::Nothing => {
                let id = new_trace_id();
                (id, None, self.sample(&id), false, false)
            }
        };
        let span_id = new_span_id();
        context::inject(
            headers,
            Outgoing {
                trace_id: &trace_id,
                span_id: &span_id,
                parent: parent.as_ref(),
                sampled,
                debug,
            },
            w3c,
        );
        if !sampled {
            return None;
        }
        let trace_state = headers
            .get("tracestate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Some(Begun {
            tracer: self.clone(),
            direction,
            trace_id,
            span_id,
            parent,
            trace_state,
            start_unix_nanos: unix_nanos(SystemTime::now()),
        })
    }

    /// Whether a new trace is recorded: by its id, so every hop that decides alone with the
    /// same ratio decides alike (OpenTelemetry's trace-id-ratio sampler).
    fn sample(&self, trace_id: &TraceId) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        self.threshold
            .is_some_and(|t| t == u64::MAX || u64::from_be_bytes(low) < t)
    }

    /// Queues a finished span; a full queue drops it (counted), never waits.
    fn send(&self, span: otlp::Span) {
        if self.queue.try_send(span).is_err() {
            self.families.dropped(Dropped::QueueFull, 1);
        }
    }
}

/// The sampling threshold of `ratio`: `None` for 0, `u64::MAX` for 1 (or more).
fn threshold(ratio: f64) -> Option<u64> {
    if ratio.is_nan() || ratio <= 0.0 {
        None
    } else if ratio >= 1.0 {
        Some(u64::MAX)
    } else {
        // Exact enough: the ratio's precision is far below 2^-53.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some((ratio * 18_446_744_073_709_551_616.0) as u64)
    }
}

/// A span being recorded: what was known when the request arrived.
#[derive(Debug)]
pub struct Begun {
    tracer: Arc<Tracer>,
    direction: Direction,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    trace_state: String,
    start_unix_nanos: u64,
}

impl Begun {
    /// The trace id, as hex (for tap and the access log).
    pub fn trace_id(&self) -> String {
        context::hex(&self.trace_id)
    }

    /// Milliseconds since the span began, on the wall clock (for a span that ends without
    /// a response, whose duration nobody measured).
    pub fn elapsed_ms(&self) -> f64 {
        let now = unix_nanos(SystemTime::now());
        #[allow(clippy::cast_precision_loss)]
        let ms = now.saturating_sub(self.start_unix_nanos) as f64 / 1e6;
        ms
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A random number from the std hasher's per-process random keys over a counter: unique
/// ids without a dependency. Not for anything secret.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&random_u64().to_be_bytes());
    id
}

fn new_span_id() -> SpanId {
    loop {
        let id = random_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests;
