//! Connection-level series: opens, closes, open connections, bytes each way, connection
//! durations, and what protocol detection decided for each connection.
//!
//! As Linkerd's, they cover both ends of the proxy: connections accepted (`peer="src"`,
//! labelled with the caller's identity once its mTLS handshake is done) and connections
//! opened to upstreams (`peer="dst"`, with the endpoint, its identity and destination
//! labels). A connect that fails is counted in `tcp_close_total` with its `errno` and
//! `classification="failure"`, never in `tcp_open_total`; a connection that meets an I/O
//! error (a reset, say) closes the same way, with the errno of its first error.

use std::io;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proxy_core::io::{IoObserver, Observed};
use tokio::time::Instant;

use crate::Labels;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(crate::http::LATENCY_BUCKETS_MS)
}

/// The TCP families.
#[derive(Debug)]
pub struct TcpFamilies {
    // Callers told apart by identity on accepted connections (capped, like HTTP's).
    clients: std::sync::Mutex<std::collections::HashSet<String>>,
    identity: std::sync::atomic::AtomicBool,
    max_clients: std::sync::atomic::AtomicUsize,
    open_total: Family<Labels, Counter>,
    close_total: Family<Labels, Counter>,
    open_connections: Family<Labels, Gauge>,
    read_bytes: Family<Labels, Counter>,
    write_bytes: Family<Labels, Counter>,
    duration: HistogramFamily,
    detect_total: Family<Labels, Counter>,
}

impl TcpFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            clients: std::sync::Mutex::default(),
            identity: std::sync::atomic::AtomicBool::new(false),
            max_clients: std::sync::atomic::AtomicUsize::new(1000),
            open_total: Family::default(),
            close_total: Family::default(),
            open_connections: Family::default(),
            read_bytes: Family::default(),
            write_bytes: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            detect_total: Family::default(),
        };
        registry.register(
            "tcp_read_bytes",
            "Bytes read, from accepted connections (peer=src) and from upstreams (peer=dst)",
            this.read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written, to accepted connections (peer=src) and to upstreams (peer=dst)",
            this.write_bytes.clone(),
        );
        registry.register(
            "tcp_connection_duration_ms",
            "How long connections stayed open, in milliseconds",
            this.duration.clone(),
        );
        registry.register("tcp_open", "Connections opened", this.open_total.clone());
        registry.register(
            "tcp_close",
            "Connections closed, and connects that failed (with errno)",
            this.close_total.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "Connections currently open",
            this.open_connections.clone(),
        );
        registry.register(
            "skiff_protocol_detect",
            "Protocol detection outcomes per accepted connection",
            this.detect_total.clone(),
        );
        this
    }

    /// Whether this proxy has an identity (what `tls` says of plaintext), and how many
    /// callers' identities are told apart.
    pub fn set_identity(&self, on: bool, max_clients: usize) {
        use std::sync::atomic::Ordering;
        self.identity.store(on, Ordering::Relaxed);
        self.max_clients
            .store(max_clients.max(1), Ordering::Relaxed);
    }

    /// `tls` and `no_tls_reason` for a plaintext connection, `reason` being Linkerd's.
    pub fn plaintext(&self, reason: &'static str) -> Labels {
        if self.identity.load(std::sync::atomic::Ordering::Relaxed) {
            vec![
                ("tls", "no_identity".to_owned()),
                ("no_tls_reason", reason.to_owned()),
            ]
        } else {
            vec![("tls", "disabled".to_owned())]
        }
    }

    /// Handles for connections labelled `labels`.
    pub fn handles(self: &std::sync::Arc<Self>, labels: Labels) -> ConnHandles {
        let mut closed = labels.clone();
        closed.push(("classification", "success".to_owned()));
        ConnHandles {
            open_total: self.open_total.get_or_create(&labels).clone(),
            close_total: self.close_total.get_or_create(&closed).clone(),
            open: self.open_connections.get_or_create(&labels).clone(),
            read_bytes: self.read_bytes.get_or_create(&labels).clone(),
            write_bytes: self.write_bytes.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            families: self.clone(),
            labels,
        }
    }

    /// Handles for the connections a listener accepts (`peer="src"`).
    pub fn listener(
        self: &std::sync::Arc<Self>,
        direction: proxy_core::Direction,
    ) -> ListenerMetrics {
        let reason = match direction {
            proxy_core::Direction::Inbound => "no_tls_from_remote",
            // The local application's own connections.
            proxy_core::Direction::Outbound => "loopback",
        };
        let mut labels: Labels = vec![
            ("direction", direction.as_str().to_owned()),
            ("peer", "src".to_owned()),
        ];
        labels.extend(self.plaintext(reason));
        let detect = |protocol: &str| {
            self.detect_total
                .get_or_create(&vec![
                    ("direction", direction.as_str().to_owned()),
                    ("protocol", protocol.to_owned()),
                ])
                .clone()
        };
        ListenerMetrics {
            direction,
            plain: self.handles(labels),
            families: self.clone(),
            detect: DetectCounters {
                http1: detect("http1"),
                http2: detect("http2"),
                tls: detect("tls"),
                opaque: detect("opaque"),
                opaque_timeout: detect("opaque_timeout"),
                opaque_configured: detect("opaque_configured"),
            },
        }
    }
}

/// One label set's connection handles.
#[derive(Clone, Debug)]
pub struct ConnHandles {
    open_total: Counter,
    close_total: Counter,
    open: Gauge,
    read_bytes: Counter,
    write_bytes: Counter,
    duration: Histogram,
    families: std::sync::Arc<TcpFamilies>,
    labels: Labels,
}

impl ConnHandles {
    /// Records an opened connection whose bytes go through `sink`; the guard records its
    /// close when dropped (a failure, with its `errno`, if reading or writing failed).
    pub fn opened(&self, sink: &ByteSink) -> ConnectionGuard {
        self.open_total.inc();
        self.open.inc();
        ConnectionGuard {
            handles: self.clone(),
            sink: sink.clone(),
            start: Instant::now(),
        }
    }

    /// Takes these labels' series out of the scrape (an endpoint that went away: its
    /// counts are final, and pods coming and going must not grow the scrape without end).
    /// Failures counted under them stay.
    pub fn forget(&self) {
        let f = &self.families;
        let mut closed = self.labels.clone();
        closed.push(("classification", "success".to_owned()));
        f.open_total.remove(&self.labels);
        f.open_connections.remove(&self.labels);
        f.read_bytes.remove(&self.labels);
        f.write_bytes.remove(&self.labels);
        f.duration.remove(&self.labels);
        f.close_total.remove(&closed);
    }

    fn failed(&self, errno: &'static str) {
        let mut labels = self.labels.clone();
        labels.push(("classification", "failure".to_owned()));
        labels.push(("errno", errno.to_owned()));
        self.families.close_total.get_or_create(&labels).inc();
    }

    /// Counts a connect that failed with `error`: `tcp_close_total` with its `errno`.
    pub fn connect_failed(&self, error: &io::Error) {
        self.failed(errno(error));
    }

    /// Wraps a connection whose bytes count under these labels, and whose close is
    /// recorded when it is dropped.
    pub fn count<I>(&self, io: I) -> Counted<I> {
        let sink = ByteSink::default();
        sink.set(self);
        let guard = Some(self.opened(&sink));
        Observed::new(
            io,
            Counting {
                sink,
                _guard: guard,
            },
        )
    }
}

/// The name of the errno behind `error` (Linkerd's `errno` label), `ETIMEDOUT` for a
/// connect Skiff gave up on, and `EUNKNOWN` for an error with none.
fn errno(error: &io::Error) -> &'static str {
    if error.kind() == io::ErrorKind::TimedOut {
        return "ETIMEDOUT";
    }
    match error.raw_os_error() {
        Some(111) => "ECONNREFUSED",
        Some(110) => "ETIMEDOUT",
        Some(113) => "EHOSTUNREACH",
        Some(101) => "ENETUNREACH",
        Some(104) => "ECONNRESET",
        Some(32) => "EPIPE",
        Some(99) => "EADDRNOTAVAIL",
        Some(24) => "EMFILE",
        Some(23) => "ENFILE",
        Some(13) => "EACCES",
        Some(1) => "EPERM",
        _ => "EUNKNOWN",
    }
}

/// One listener's connection handles.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    direction: proxy_core::Direction,
    /// Plaintext connections.
    pub plain: ConnHandles,
    families: std::sync::Arc<TcpFamilies>,
    /// Detection outcome counters.
    pub detect: DetectCounters,
}

impl ListenerMetrics {
    /// Handles for a connection whose caller proved `client_id` over mesh mTLS (callers
    /// beyond the cap count as `other`).
    pub fn meshed(&self, client_id: &str) -> ConnHandles {
        let f = &self.families;
        let max = f.max_clients.load(std::sync::atomic::Ordering::Relaxed);
        let id = {
            let mut clients = f.clients.lock().unwrap_or_else(|e| e.into_inner());
            if clients.contains(client_id) || clients.len() < max {
                clients.insert(client_id.to_owned());
                client_id
            } else {
                crate::http::OTHER
            }
        };
        f.handles(vec![
            ("direction", self.direction.as_str().to_owned()),
            ("peer", "src".to_owned()),
            ("tls", "true".to_owned()),
            ("client_id", id.to_owned()),
        ])
    }
}

/// What protocol detection decided, one counter per outcome.
#[derive(Clone, Debug)]
pub struct DetectCounters {
    /// An HTTP/1 request line.
    pub http1: Counter,
    /// The HTTP/2 connection preface.
    pub http2: Counter,
    /// A TLS ClientHello.
    pub tls: Counter,
    /// Bytes that are neither.
    pub opaque: Counter,
    /// The client sent nothing in time (server-speaks-first protocols).
    pub opaque_timeout: Counter,
    /// The port is configured opaque; detection skipped.
    pub opaque_configured: Counter,
}

/// Held for a connection's lifetime.
#[derive(Debug)]
pub struct ConnectionGuard {
    handles: ConnHandles,
    sink: ByteSink,
    start: Instant,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let h = &self.handles;
        h.open.dec();
        match self.sink.0.errno.get() {
            Some(errno) => h.failed(errno),
            None => {
                h.close_total.inc();
            }
        }
        h.duration
            .observe(self.start.elapsed().as_secs_f64() * 1000.0);
    }
}

/// Where a connection's bytes go: its handles once its labels are known (an accepted
/// connection's only after its TLS handshake), counted meanwhile.
#[derive(Clone, Debug, Default)]
pub struct ByteSink(std::sync::Arc<SinkInner>);

#[derive(Debug, Default)]
struct SinkInner {
    handles: std::sync::OnceLock<(Counter, Counter)>,
    pending_read: std::sync::atomic::AtomicU64,
    pending_written: std::sync::atomic::AtomicU64,
    // The first I/O error the connection met: it closes as a failure.
    errno: std::sync::OnceLock<&'static str>,
}

impl ByteSink {
    /// From now on, bytes count under `handles` (with those already seen).
    pub fn set(&self, handles: &ConnHandles) {
        use std::sync::atomic::Ordering;
        let (read, written) = (handles.read_bytes.clone(), handles.write_bytes.clone());
        if self.0.handles.set((read.clone(), written.clone())).is_ok() {
            read.inc_by(self.0.pending_read.swap(0, Ordering::Relaxed));
            written.inc_by(self.0.pending_written.swap(0, Ordering::Relaxed));
        }
    }

    fn read(&self, n: u64) {
        match self.0.handles.get() {
            Some((read, _)) => {
                read.inc_by(n);
            }
            None => {
                self.0
                    .pending_read
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn failed(&self, error: &io::Error) {
        let _ = self.0.errno.set(errno(error));
    }

    fn written(&self, n: u64) {
        match self.0.handles.get() {
            Some((_, written)) => {
                written.inc_by(n);
            }
            None => {
                self.0
                    .pending_written
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// What counts an observed connection: its bytes and first error into a [`ByteSink`],
/// and, for a connection Skiff opened, its close when it goes.
#[derive(Debug)]
pub struct Counting {
    sink: ByteSink,
    // Held only for its drop, which records the close.
    _guard: Option<ConnectionGuard>,
}

impl IoObserver for Counting {
    fn read(&self, n: usize) {
        self.sink.read(n as u64);
    }

    fn written(&self, n: usize) {
        self.sink.written(n as u64);
    }

    fn failed(&self, error: &io::Error) {
        self.sink.failed(error);
    }
}

/// A connection whose bytes are counted as they pass.
pub type Counted<I> = Observed<I, Counting>;

/// `io`, its bytes counted into `sink`.
pub fn counted<I>(io: I, sink: ByteSink) -> Counted<I> {
    Observed::new(io, Counting { sink, _guard: None })
}

/// An endpoint's connection handles, made with its first connection (or failed attempt):
/// a proxy may know thousands of endpoints it never dials, and six series each (3.5 KB,
/// most of an endpoint's memory) would also fill every scrape with zeros.
#[derive(Debug)]
pub struct LazyConnHandles {
    families: std::sync::Arc<TcpFamilies>,
    labels: Labels,
    made: std::sync::OnceLock<ConnHandles>,
}

impl LazyConnHandles {
    /// Handles for connections labelled `labels`, made on first use.
    pub fn new(families: std::sync::Arc<TcpFamilies>, labels: Labels) -> Self {
        Self {
            families,
            labels,
            made: std::sync::OnceLock::new(),
        }
    }

    /// The handles, made now if this is their first use.
    pub fn get(&self) -> &ConnHandles {
        self.made
            .get_or_init(|| self.families.handles(self.labels.clone()))
    }

    /// Removes the series, if they were ever made.
    pub fn forget(&self) {
        if let Some(handles) = self.made.get() {
            handles.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

    use super::*;

    fn families() -> Arc<TcpFamilies> {
        Arc::new(TcpFamilies::register(&mut Registry::default()))
    }

    #[tokio::test]
    async fn bytes_seen_before_a_connection_is_labelled_count_once_it_is() {
        let f = families();
        let (a, mut b) = tokio::io::duplex(64);
        let sink = ByteSink::default();
        let mut counted = counted(a, sink.clone());
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0; 5];
        counted.read_exact(&mut buf).await.unwrap();
        let meshed = f
            .listener(proxy_core::Direction::Inbound)
            .meshed("spiffe://td/ns/a/sa/b");
        sink.set(&meshed);
        counted.write_all(b"hi").await.unwrap();
        assert_eq!((meshed.read_bytes.get(), meshed.write_bytes.get()), (5, 2));
        let labels: Vec<_> = meshed
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            labels,
            [
                "direction=inbound",
                "peer=src",
                "tls=true",
                "client_id=spiffe://td/ns/a/sa/b"
            ]
        );
    }

    /// A connection the peer resets.
    struct Reset;

    impl AsyncRead for Reset {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::Error::from_raw_os_error(104)))
        }
    }

    #[tokio::test]
    async fn a_connection_that_meets_an_error_closes_as_a_failure_with_its_errno() {
        let f = families();
        let dst = f.handles(vec![("peer", "dst".to_owned())]);
        let mut counted = dst.count(Reset);
        let mut buf = [0; 8];
        assert!(counted.read(&mut buf).await.is_err());
        drop(counted);
        let mut labels = dst.labels.clone();
        labels.push(("classification", "failure".to_owned()));
        labels.push(("errno", "ECONNRESET".to_owned()));
        assert_eq!(f.close_total.get_or_create(&labels).get(), 1);
        assert_eq!(
            (dst.open_total.get(), dst.close_total.get(), dst.open.get()),
            (1, 0, 0)
        );
    }

    #[test]
    fn forgotten_handles_leave_the_scrape() {
        let mut registry = Registry::default();
        let f = Arc::new(TcpFamilies::register(&mut registry));
        let dst = f.handles(vec![
            ("peer", "dst".to_owned()),
            ("dst_pod", "web-1".to_owned()),
        ]);
        drop(dst.opened(&ByteSink::default()));
        let scrape = |registry: &Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
            out
        };
        assert!(scrape(&registry).contains(r#"dst_pod="web-1""#));
        dst.forget();
        assert!(!scrape(&registry).contains(r#"dst_pod="web-1""#));
    }

    #[test]
    fn a_failed_connect_is_a_close_with_its_errno_and_never_an_open() {
        let f = families();
        f.set_identity(true, 10);
        let dst = f.handles(vec![
            ("peer", "dst".to_owned()),
            ("target_addr", "127.0.0.1:1".to_owned()),
        ]);
        dst.connect_failed(&io::Error::from_raw_os_error(111));
        dst.connect_failed(&io::ErrorKind::TimedOut.into());
        let failed = |errno: &str| {
            let mut labels = dst.labels.clone();
            labels.push(("classification", "failure".to_owned()));
            labels.push(("errno", errno.to_owned()));
            f.close_total.get_or_create(&labels).get()
        };
        assert_eq!((failed("ECONNREFUSED"), failed("ETIMEDOUT")), (1, 1));
        assert_eq!(dst.open_total.get(), 0);
        let plain: Vec<_> = f
            .plaintext("loopback")
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(plain, ["tls=no_identity", "no_tls_reason=loopback"]);
    }
}
