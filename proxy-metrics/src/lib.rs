//! Skiff's visibility: Prometheus metrics under Linkerd's proxy names and labels, and the
//! admin server that exposes them.
//!
//! Names follow Linkerd (`request_total`, `response_total`, `response_latency_ms`,
//! `tcp_open_total`, `tcp_open_connections`, ...) so dashboards and queries written for it work
//! unchanged; Skiff's own series start with `skiff_`. Handles for a target's series are
//! resolved once, when the target is built from config, and the per-request path touches only
//! atomics and a small per-target cache keyed by status.
//!
//! - [`http`]: request/response series and the [`http::MetricsLayer`] that records them.
//! - [`tcp`]: connection series and protocol-detection outcomes.
//! - [`identity`]: credential reloads and expiry, handshake failures, authorization.
//! - [`authz`]: Linkerd's inbound authorization families.
//! - [`stats`]: success rate and latency quantiles over a sliding window, for `/stats`.
//! - [`tap`]: the live stream of request events behind `/tap`.
//! - [`process`]: CPU, memory, file descriptors and start time of the process.
//! - [`admin`]: `/metrics`, `/ready`, `/live`, `/config`, `/stats`, `/tap`, `PUT /log-level`,
//!   `POST /shutdown`.

pub mod admin;
pub mod authz;
pub mod discovery;
pub mod exposition;
pub mod http;
pub mod identity;
pub mod mirror;
pub mod process;
pub mod stats;
pub mod tap;
pub mod tcp;
pub mod trace;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A label set: fixed keys, owned values. Built once per target, never per request.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric family Skiff registers, created once at start-up.
#[derive(Debug)]
pub struct Metrics {
    /// HTTP request and response series.
    pub http: Arc<http::HttpFamilies>,
    /// TCP connection series.
    pub tcp: Arc<tcp::TcpFamilies>,
    /// Config reload outcomes, by `result` (`ok`, `error`).
    pub config_reloads: Family<Labels, Counter>,
    /// Identity and authorization series.
    pub identity: Arc<identity::IdentityFamilies>,
    /// Kubernetes API watches, events and failures.
    pub discovery: Arc<discovery::DiscoveryFamilies>,
    /// The tap clients.
    pub tap: Arc<tap::TapHub>,
    /// The tracer, when tracing is on, and its series.
    pub trace: Arc<trace::TraceHub>,
}

impl Metrics {
    /// Registers every family in a new registry.
    pub fn new() -> (Self, Registry) {
        // In a pod, every series says which (from the downward API); elsewhere, none.
        let pod_labels: Vec<(
            std::borrow::Cow<'static, str>,
            std::borrow::Cow<'static, str>,
        )> = [("namespace", "POD_NAMESPACE"), ("pod", "POD_NAME")]
            .into_iter()
            .filter_map(|(label, var)| {
                let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
                Some((label.into(), value.into()))
            })
            .collect();
        let mut registry = Registry::with_labels(pod_labels.into_iter());
        let http = Arc::new(http::HttpFamilies::register(&mut registry));
        let tcp = Arc::new(tcp::TcpFamilies::register(&mut registry));
        let identity = Arc::new(identity::IdentityFamilies::register(&mut registry));
        let discovery = Arc::new(discovery::DiscoveryFamilies::register(&mut registry));
        registry.register_collector(Box::new(process::ProcessCollector));
        let tap_dropped = Counter::default();
        registry.register(
            "skiff_tap_dropped_events",
            "Tap events not delivered: the client's queue was full or its max rate reached",
            tap_dropped.clone(),
        );
        let tap = Arc::new(tap::TapHub::new(tap_dropped));
        let trace = Arc::new(trace::TraceHub::register(&mut registry));
        let config_reloads = Family::default();
        registry.register(
            "skiff_config_reloads",
            "Config file reloads, by result",
            config_reloads.clone(),
        );
        (
            Self {
                http,
                tcp,
                config_reloads,
                identity,
                discovery,
                tap,
                trace,
            },
            registry,
        )
    }

    /// Counts one config reload attempt.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }
}
