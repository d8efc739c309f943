//! Connection-level series: opens, closes, open connections, and what protocol detection
//! decided for each connection.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Labels;

/// The TCP families.
#[derive(Debug, Default)]
pub struct TcpFamilies {
    open_total: Family<Labels, Counter>,
    close_total: Family<Labels, Counter>,
    open_connections: Family<Labels, Gauge>,
    detect_total: Family<Labels, Counter>,
}

impl TcpFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self::default();
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
    pub fn listener(&self, direction: &'static str) -> ListenerMetrics {
        let labels: Labels = vec![
            ("direction", direction.to_owned()),
            ("peer", "src".to_owned()),
            ("tls", "disabled".to_owned()),
        ];
        let detect = |protocol: &str| {
            self.detect_total
                .get_or_create(&vec![
                    ("direction", direction.to_owned()),
                    ("protocol", protocol.to_owned()),
                ])
                .clone()
        };
        ListenerMetrics {
            open_total: self.open_total.get_or_create(&labels).clone(),
            close_total: self.close_total.get_or_create(&labels).clone(),
            open: self.open_connections.get_or_create(&labels).clone(),
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
        }
    }
}

/// Held for a connection's lifetime.
#[derive(Debug)]
pub struct ConnectionGuard {
    close_total: Counter,
    open: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
        self.close_total.inc();
    }
}
