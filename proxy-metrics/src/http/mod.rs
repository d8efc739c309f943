//! HTTP series: `request_total`, `response_total`, `response_latency_ms`.
//!
//! A [`TargetMetrics`] holds one target's handles (a service on outbound, the local app on
//! inbound). It is built when the target is built from config; the per-request path then
//! touches only its counters and a small cache keyed by status, never a label-string lookup.

mod capped;
mod destination;
mod few;
mod layer;
mod observe;
mod outbound_route;
mod route;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proxy_core::classify::Classification;
use proxy_core::Reason;

use crate::stats::{Report, Row, Window};
use crate::Labels;

pub use capped::{CardinalityLimits, OTHER};
pub use destination::{ConnectionSeries, Destination};
pub use layer::{Metrics, MetricsLayer, MetricsSlot, ResponseFuture};
pub use observe::{access_log_writer, Ending, Observe, ObserveSettings, DEFAULT_ACCESS_LOG_FIELDS};
pub use outbound_route::Protocol;

/// Linkerd's latency buckets, in milliseconds.
pub(crate) const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

/// The `target_addr` of passthrough traffic (an authority no service claims).
pub(crate) const PASSTHROUGH: &str = "passthrough";

/// The HTTP families.
#[derive(Debug)]
pub struct HttpFamilies {
    requests: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
    latency: HistogramFamily,
    retries: Family<Labels, Counter>,
    budget_exhausted: Family<Labels, Counter>,
    breaker_state: Family<Labels, Gauge>,
    breaker_transitions: Family<Labels, Counter>,
    faults: Family<Labels, Counter>,
    // Sliding windows for `/stats`, one per label set, shared by every handle with those
    // labels (per-connection handles included), so nothing is lost when a handle goes.
    windows: Mutex<HashMap<Labels, Arc<Mutex<Window>>>>,
    window: std::time::Duration,
    caps: capped::CardinalityLimits,
    passthrough: capped::Capped,
    clients: capped::Capped,
    servers: capped::Capped,
    authorities: capped::Capped,
    destinations: capped::Capped,
    policies: capped::Capped,
    // The inbound listener's port (`srv_port` of inbound series).
    inbound_port: Mutex<String>,
    epoch: tokio::time::Instant,
    mirror: crate::mirror::MirrorFamilies,
    routes: route::RouteFamilies,
    outbound_routes: outbound_route::OutboundRouteFamilies,
    // Whether this proxy has a mesh identity: what `tls` says of plaintext traffic
    // (`no_identity` with a reason when it has one, `disabled` when it has none).
    identity: std::sync::atomic::AtomicBool,
}

impl HttpFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            mirror: crate::mirror::MirrorFamilies::register(registry),
            routes: route::RouteFamilies::register(registry),
            outbound_routes: outbound_route::OutboundRouteFamilies::register(registry),
            identity: std::sync::atomic::AtomicBool::new(false),
            authorities: capped::Capped::default(),
            destinations: capped::Capped::default(),
            policies: capped::Capped::default(),
            inbound_port: Mutex::default(),
            windows: Mutex::default(),
            window: std::time::Duration::from_secs(30),
            caps: capped::CardinalityLimits::default(),
            passthrough: capped::Capped::default(),
            clients: capped::Capped::default(),
            servers: capped::Capped::default(),
            epoch: tokio::time::Instant::now(),
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            faults: Family::default(),
        };
        registry.register(
            "skiff_faults_injected",
            "Faults injected on purpose by a service's or route's fault policy, by kind",
            this.faults.clone(),
        );
        registry.register(
            "skiff_breaker_state",
            "Circuit breaker state per endpoint: 0 Closed, 1 Open, 2 HalfOpen",
            this.breaker_state.clone(),
        );
        registry.register(
            "skiff_breaker_transitions",
            "Circuit breaker state changes per endpoint, by new state",
            this.breaker_transitions.clone(),
        );
        registry.register(
            "skiff_retries",
            "Retries sent (tries after the first)",
            this.retries.clone(),
        );
        registry.register(
            "skiff_retry_budget_exhausted",
            "Retries wanted but refused because the retry budget was spent",
            this.budget_exhausted.clone(),
        );
        registry.register("request", "Requests sent", this.requests.clone());
        registry.register(
            "response",
            "Responses finished (at end of stream), by status and classification",
            this.responses.clone(),
        );
        registry.register(
            "response_latency_ms",
            "Time from request to the first frame of the response body (or its end), in \
             milliseconds",
            this.latency.clone(),
        );
        this
    }

    /// Says whether this proxy has a mesh identity; set before any target is built.
    pub fn set_identity(&self, on: bool) {
        self.identity
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The inbound listener's port, which inbound series name as the server's (`srv_port`).
    pub fn set_inbound_port(&self, port: u16) {
        *self.inbound_port.lock().unwrap_or_else(|e| e.into_inner()) = port.to_string();
    }

    /// What `tls` says of plaintext traffic in `direction`: Linkerd's `no_identity` with
    /// the reason when this proxy has an identity, else `disabled`.
    fn plaintext(&self, direction: proxy_core::Direction) -> [(&'static str, String); 2] {
        if self.identity.load(std::sync::atomic::Ordering::Relaxed) {
            let reason = match direction {
                proxy_core::Direction::Inbound => "no_tls_from_remote",
                proxy_core::Direction::Outbound => "not_provided_by_service_discovery",
            };
            [
                ("tls", "no_identity".to_owned()),
                ("no_tls_reason", reason.to_owned()),
            ]
        } else {
            [
                ("tls", "disabled".to_owned()),
                ("no_tls_reason", String::new()),
            ]
        }
    }

    /// What `/stats` serves: every target's numbers over the sliding window, one row per
    /// label set, sorted by labels (targets that have seen no response in the window are
    /// left out).
    pub fn stats(&self) -> Report {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut summaries: Vec<_> = windows
            .iter()
            .map(|(labels, w)| {
                let summary = w.lock().unwrap_or_else(|e| e.into_inner()).summary();
                (labels, summary)
            })
            .filter(|(_, s)| s.success_count + s.failure_count > 0)
            .collect();
        summaries.sort_by(|a, b| a.0.cmp(b.0));
        Report::new(
            summaries
                .into_iter()
                .filter_map(|(labels, summary)| Row::new(labels, summary))
                .collect(),
        )
    }

    /// Resolves the handles of one target: a service, or one of its routes (`route`
    /// names it, and becomes the `route` label).
    pub fn target(
        self: &Arc<Self>,
        direction: proxy_core::Direction,
        authority: &str,
        target_addr: &str,
        route: Option<&str>,
    ) -> Arc<TargetMetrics> {
        self.target_with(direction, authority, target_addr, route, None)
    }

    /// The handles of an outbound service or one of its routes, also counted in Linkerd's
    /// `outbound_*_route_*` families under `outbound`'s parent and route labels.
    pub fn outbound_target(
        self: &Arc<Self>,
        authority: &str,
        target_addr: &str,
        route: Option<&str>,
        outbound: &OutboundRoute,
    ) -> Arc<TargetMetrics> {
        let direction = proxy_core::Direction::Outbound;
        self.target_with(direction, authority, target_addr, route, Some(outbound))
    }

    fn target_with(
        self: &Arc<Self>,
        direction: proxy_core::Direction,
        authority: &str,
        target_addr: &str,
        route: Option<&str>,
        outbound: Option<&OutboundRoute>,
    ) -> Arc<TargetMetrics> {
        let mut base: Labels = vec![
            ("direction", direction.as_str().to_owned()),
            ("authority", authority.to_owned()),
            ("target_addr", target_addr.to_owned()),
        ];
        // An address (the application, inbound) is also given in parts, as Linkerd does.
        if let Ok(addr) = target_addr.parse::<std::net::SocketAddr>() {
            base.push(("target_ip", addr.ip().to_string()));
            base.push(("target_port", addr.port().to_string()));
        }
        base.extend(
            self.plaintext(direction)
                .into_iter()
                .filter(|(_, v)| !v.is_empty()),
        );
        if let Some(route) = route {
            base.push(("route", route.to_owned()));
        }
        // Outbound requests are also counted per route, as Linkerd's route families do:
        // under the route's name, or with no `rt_route` for the service's default route.
        let routes = (direction == proxy_core::Direction::Outbound
            && !authority.is_empty()
            && target_addr != PASSTHROUGH)
            .then(|| self.routes.series(authority, route));
        let outbound =
            outbound.map(|o| self.outbound_routes.route(o.protocol, &o.parent, &o.route));
        let linked = Linked {
            routes,
            outbound,
            backend: None,
        };
        self.with_labels(base, None, linked)
    }

    /// Handles for `base`; `window` shares another target's `/stats` window (a series
    /// split by destination still reports as its target), else the labels get their own.
    fn with_labels(
        self: &Arc<Self>,
        base: Labels,
        window: Option<Arc<Mutex<Window>>>,
        linked: Linked,
    ) -> Arc<TargetMetrics> {
        let own_window = window.is_none();
        let window = window.unwrap_or_else(|| {
            self.windows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(base.clone())
                .or_insert_with(|| Arc::new(Mutex::new(Window::new(self.window))))
                .clone()
        });
        Arc::new(TargetMetrics {
            id: next_id(),
            window,
            own_window,
            linked,
            last_used: std::sync::atomic::AtomicU64::new(0),
            request_total: std::sync::OnceLock::new(),
            retries: std::sync::OnceLock::new(),
            budget_exhausted: std::sync::OnceLock::new(),
            families: self.clone(),
            base,
            responses: few::Few::default(),
            latencies: few::Few::default(),
        })
    }
}

/// A process-wide unique number per handle set, so caches can key on it.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn latency_labels(base: &Labels, status: u16) -> Labels {
    let mut labels = base.clone();
    labels.push(("status_code", status.to_string()));
    labels
}

fn response_labels(base: &Labels, key: &ResponseKey) -> Labels {
    let mut labels = base.clone();
    labels.push(("status_code", key.status.to_string()));
    labels.push(("classification", key.classification.as_str().to_owned()));
    labels.push((
        "grpc_status",
        key.grpc_status.map(|c| c.to_string()).unwrap_or_default(),
    ));
    labels.push((
        "error",
        key.error.map(|r| r.as_str()).unwrap_or("").to_owned(),
    ));
    labels
}

/// What distinguishes one `response_total` series of a target from another.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ResponseKey {
    status: u16,
    classification: Classification,
    grpc_status: Option<u32>,
    error: Option<Reason>,
}

/// One target's series.
#[derive(Debug)]
pub struct TargetMetrics {
    id: u64,
    base: Labels,
    // Whether `window` is this label set's own (removed with its series) or its parent's.
    own_window: bool,
    // The handles of the other families its requests count in.
    linked: Linked,
    families: Arc<HttpFamilies>,
    // Created with the first request, so that a target whose requests all reach endpoints
    // (and count under their labels) leaves no series without them at 0.
    request_total: std::sync::OnceLock<Counter>,
    // Created with their first count: only the handles a retry policy reports to use them,
    // and the others (per endpoint, per authority) must not show a series at 0.
    retries: std::sync::OnceLock<Counter>,
    budget_exhausted: std::sync::OnceLock<Counter>,
    // Caches of handles by status: a target sees a handful of statuses, so these stay small
    // and the family's label hashing happens once per status, not per request.
    responses: few::Few<ResponseKey, Counter>,
    latencies: few::Few<u16, Histogram>,
    window: Arc<Mutex<Window>>,
    // Milliseconds since the families' epoch when last used (for idle expiry).
    last_used: std::sync::atomic::AtomicU64,
}

impl proxy_core::retry::RetryObserver for TargetMetrics {
    fn retried(&self) {
        self.retries
            .get_or_init(|| self.families.retries.get_or_create(&self.base).clone())
            .inc();
        if let Some(o) = &self.linked.outbound {
            o.retried();
        }
    }

    fn budget_exhausted(&self) {
        self.budget_exhausted
            .get_or_init(|| {
                self.families
                    .budget_exhausted
                    .get_or_create(&self.base)
                    .clone()
            })
            .inc();
    }
}

impl proxy_core::breaker::BreakerObserver for TargetMetrics {
    fn transition(&self, endpoint: &str, to: proxy_core::breaker::State) {
        use proxy_core::breaker::State;
        let value = match to {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        };
        let mut labels = self.base.clone();
        labels.push(("endpoint", endpoint.to_owned()));
        self.families
            .breaker_state
            .get_or_create(&labels)
            .set(value);
        labels.push(("to", to.as_str().to_owned()));
        self.families
            .breaker_transitions
            .get_or_create(&labels)
            .inc();
    }
}

impl proxy_core::fault::FaultObserver for TargetMetrics {
    fn injected(&self, kind: proxy_core::fault::Kind) {
        let mut labels = self.base.clone();
        labels.push(("kind", kind.as_str().to_owned()));
        self.families.faults.get_or_create(&labels).inc();
    }
}

impl TargetMetrics {
    /// The same target's series for traffic over mesh mTLS with a verified peer: `tls="true"`
    /// and the peer's identity under `key` (`client_id` inbound, `server_id` outbound).
    /// Resolved once per connection or service, never per request.
    pub fn with_peer(&self, key: &'static str, id: &str) -> Arc<TargetMetrics> {
        self.families.peer(self, key, id)
    }

    fn peer_labels(&self, key: &'static str, id: &str) -> Arc<TargetMetrics> {
        let base = destination::merged(&self.base, &[(key, id.to_owned())]);
        self.families.with_labels(base, None, self.linked.clone())
    }

    fn base_key(&self) -> String {
        let parts: Vec<String> = self.base.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(",")
    }

    fn touch(&self) {
        let now = capped::now_ms(self.families.epoch);
        self.last_used
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle_for(&self) -> std::time::Duration {
        let now = capped::now_ms(self.families.epoch);
        let last = self.last_used.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_millis(now.saturating_sub(last))
    }

    /// Takes every series of this target out of the scrape.
    fn remove_series(&self) {
        let f = &self.families;
        f.requests.remove(&self.base);
        f.retries.remove(&self.base);
        f.budget_exhausted.remove(&self.base);
        for key in self.responses.keys() {
            f.responses.remove(&response_labels(&self.base, &key));
        }
        for status in self.latencies.keys() {
            f.latency.remove(&latency_labels(&self.base, status));
        }
        if self.own_window {
            f.windows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.base);
        }
    }

    /// Counts a request sent to this target.
    fn request(&self) {
        self.request_total
            .get_or_init(|| self.families.requests.get_or_create(&self.base).clone())
            .inc();
        let l = &self.linked;
        if let Some(r) = &l.routes {
            r.request();
        }
        if let Some(b) = &l.backend {
            b.request();
        }
    }

    fn latency(&self, status: u16, millis: f64) {
        self.latencies.with(
            &status,
            || {
                let labels = latency_labels(&self.base, status);
                self.families.latency.get_or_create(&labels).clone()
            },
            |h| h.observe(millis),
        );
        let l = &self.linked;
        if let Some(r) = &l.routes {
            r.latency(status, millis);
        }
        if let Some(o) = &l.outbound {
            o.latency(millis);
        }
        if let Some(b) = &l.backend {
            b.latency(millis);
        }
    }

    fn window(&self, classification: Classification, latency_ms: f64) {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(classification, latency_ms);
    }

    fn response(
        &self,
        status: u16,
        classification: Classification,
        grpc_status: Option<u32>,
        error: Option<Reason>,
    ) {
        let key = ResponseKey {
            status,
            classification,
            grpc_status,
            error,
        };
        self.responses.with(
            &key,
            || {
                let labels = response_labels(&self.base, &key);
                self.families.responses.get_or_create(&labels).clone()
            },
            |c| {
                c.inc();
            },
        );
        let l = &self.linked;
        if let Some(r) = &l.routes {
            r.response(&key);
        }
        if let Some(o) = &l.outbound {
            o.response(&key);
        }
        if let Some(b) = &l.backend {
            b.response(&key);
        }
    }
}

/// The handles of the families a target's requests count in besides its own, shared by
/// every handle set split from it (by peer, authority or endpoint).
#[derive(Clone, Debug, Default)]
struct Linked {
    // Linkerd's route families (`route_*`), outbound.
    routes: Option<Arc<route::RouteSeries>>,
    // Linkerd's `outbound_*_route_*` families, for a service or route.
    outbound: Option<Arc<outbound_route::RouteHandles>>,
    // Their backend series, for an endpoint's handles.
    backend: Option<Arc<outbound_route::BackendHandles>>,
}

/// What Linkerd's `outbound_http_route_*` and `outbound_grpc_route_*` families say of a
/// service or route: its protocol, parent Service and route object.
#[derive(Clone, Debug)]
pub struct OutboundRoute {
    /// Which families.
    pub protocol: Protocol,
    /// `parent_group`, `parent_kind`, `parent_namespace`, `parent_name`, `parent_port`,
    /// `parent_section_name`.
    pub parent: Labels,
    /// `route_group`, `route_kind`, `route_namespace`, `route_name`.
    pub route: Labels,
}
