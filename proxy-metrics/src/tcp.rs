//! Connection-level series: opens, closes, open connections, bytes each way, connection
//! durations, and what protocol detection decided for each connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::Labels;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(crate::http::LATENCY_BUCKETS_MS)
}

/// The TCP families.
#[derive(Debug)]
pub struct TcpFamilies {
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
            "Bytes read from accepted connections",
            this.read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to accepted connections",
            this.write_bytes.clone(),
        );
        registry.register(
            "tcp_connection_duration_ms",
            "How long accepted connections stayed open, in milliseconds",
            this.duration.clone(),
        );
        registry.register("tcp_open", "Connections opened", this.open_total.clone());
        registry.register("tcp_close", "Connections closed", this.close_total.clone());
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

    /// Handles for the connections a listener accepts (`peer="src"`).
    pub fn listener(&self, direction: proxy_core::Direction) -> ListenerMetrics {
        let labels: Labels = vec![
            ("direction", direction.as_str().to_owned()),
            ("peer", "src".to_owned()),
            ("tls", "disabled".to_owned()),
        ];
        let detect = |protocol: &str| {
            self.detect_total
                .get_or_create(&vec![
                    ("direction", direction.as_str().to_owned()),
                    ("protocol", protocol.to_owned()),
                ])
                .clone()
        };
        ListenerMetrics {
            open_total: self.open_total.get_or_create(&labels).clone(),
            close_total: self.close_total.get_or_create(&labels).clone(),
            open: self.open_connections.get_or_create(&labels).clone(),
            read_bytes: self.read_bytes.get_or_create(&labels).clone(),
            write_bytes: self.write_bytes.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
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

/// One listener's connection handles.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    open_total: Counter,
    close_total: Counter,
    open: Gauge,
    read_bytes: Counter,
    write_bytes: Counter,
    duration: Histogram,
    /// Detection outcome counters.
    pub detect: DetectCounters,
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

impl ListenerMetrics {
    /// Records an accepted connection; the guard records its close when dropped.
    pub fn opened(&self) -> ConnectionGuard {
        self.open_total.inc();
        self.open.inc();
        ConnectionGuard {
            close_total: self.close_total.clone(),
            open: self.open.clone(),
            duration: self.duration.clone(),
            start: Instant::now(),
        }
    }

    /// Wraps an accepted connection so the bytes it carries are counted.
    pub fn count<I>(&self, io: I) -> Counted<I> {
        Counted {
            io,
            read: self.read_bytes.clone(),
            written: self.write_bytes.clone(),
        }
    }
}

/// Held for a connection's lifetime.
#[derive(Debug)]
pub struct ConnectionGuard {
    close_total: Counter,
    open: Gauge,
    duration: Histogram,
    start: Instant,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
        self.close_total.inc();
        self.duration
            .observe(self.start.elapsed().as_secs_f64() * 1000.0);
    }
}

/// A connection whose bytes are counted as they pass.
#[derive(Debug)]
pub struct Counted<I> {
    io: I,
    read: Counter,
    written: Counter,
}

impl<I> Counted<I> {
    /// The connection.
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written.inc_by(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.written.inc_by(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
