//! Linkerd's newer outbound route families, which `linkerd viz stat-outbound` reads:
//! `outbound_http_route_*` and, for GRPCRoutes, `outbound_grpc_route_*`.
//!
//! Each request is counted once per route (`request_statuses_total`,
//! `request_duration_seconds`, `retry_requests_total`), labelled with the parent Service
//! (`parent_*`) and the route object that took it (`route_*`: the HTTPRoute, GRPCRoute or
//! TrafficSplit, or `route_kind="default"` for the service's default route), and once
//! per backend Service that answered it (`backend_requests_total`,
//! `backend_response_statuses_total`, `backend_response_duration_seconds`, with `backend_*`).
//! Statuses are Linkerd's: `http_status` (or the gRPC code's name in `grpc_status`) and an
//! `error` in Linkerd's words when Skiff failed the request itself; durations in seconds,
//! with Linkerd's buckets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proxy_core::Reason;

use super::few::Few;
use super::ResponseKey;
use crate::Labels;

/// Linkerd's buckets for a route's request durations, in seconds.
const REQUEST_BUCKETS: [f64; 4] = [0.05, 0.5, 1.0, 10.0];
/// Linkerd's buckets for a backend's response durations, in seconds.
const RESPONSE_BUCKETS: [f64; 7] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

fn response_histogram() -> Histogram {
    Histogram::new(RESPONSE_BUCKETS)
}

/// Which families a route's requests go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `outbound_http_route_*`.
    Http,
    /// `outbound_grpc_route_*` (a GRPCRoute).
    Grpc,
}

/// One protocol's families.
#[derive(Debug)]
struct Families {
    statuses: Family<Labels, Counter>,
    duration: Histograms,
    retries: Family<Labels, Counter>,
    backend_requests: Family<Labels, Counter>,
    backend_statuses: Family<Labels, Counter>,
    backend_duration: Histograms,
}

impl Families {
    fn register(registry: &mut Registry, prefix: &str) -> Self {
        let this = Self {
            statuses: Family::default(),
            duration: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            retries: Family::default(),
            backend_requests: Family::default(),
            backend_statuses: Family::default(),
            backend_duration: Family::new_with_constructor(response_histogram as fn() -> Histogram),
        };
        let name = |n: &str| format!("{prefix}_{n}");
        registry.register(
            name("request_statuses"),
            "Completed requests per route, by status and error",
            this.statuses.clone(),
        );
        registry.register(
            name("request_duration_seconds"),
            "Time from request to the first frame of the response body per route, in seconds",
            this.duration.clone(),
        );
        registry.register(
            name("retry_requests"),
            "Retries sent per route",
            this.retries.clone(),
        );
        registry.register(
            name("backend_requests"),
            "Requests per route and backend Service, counted at the backend of their last try",
            this.backend_requests.clone(),
        );
        registry.register(
            name("backend_response_statuses"),
            "Completed responses per route and backend Service, by status and error",
            this.backend_statuses.clone(),
        );
        registry.register(
            name("backend_response_duration_seconds"),
            "Time from request to the first frame of the response body per route and backend, \
             in seconds",
            this.backend_duration.clone(),
        );
        this
    }
}

/// The HTTP and gRPC families.
#[derive(Debug)]
pub(super) struct OutboundRouteFamilies {
    http: Arc<Families>,
    grpc: Arc<Families>,
}

impl OutboundRouteFamilies {
    pub(super) fn register(registry: &mut Registry) -> Self {
        Self {
            http: Arc::new(Families::register(registry, "outbound_http_route")),
            grpc: Arc::new(Families::register(registry, "outbound_grpc_route")),
        }
    }

    /// The handles of a route (`route` labels) of a parent Service (`parent` labels).
    pub(super) fn route(
        &self,
        protocol: Protocol,
        parent: &Labels,
        route: &Labels,
    ) -> Arc<RouteHandles> {
        let families = match protocol {
            Protocol::Http => self.http.clone(),
            Protocol::Grpc => self.grpc.clone(),
        };
        let mut labels = parent.clone();
        labels.extend(route.iter().cloned());
        let duration = families.duration.get_or_create(&labels).clone();
        let retries = families.retries.get_or_create(&labels).clone();
        Arc::new(RouteHandles {
            duration,
            retries,
            protocol,
            families,
            labels,
            statuses: Few::default(),
            backends: Mutex::default(),
        })
    }
}

/// What a route's `statuses` counters are told apart by.
type StatusKey = (Option<u16>, Option<u32>, Option<Reason>);

/// One route's handles.
#[derive(Debug)]
pub(super) struct RouteHandles {
    protocol: Protocol,
    families: Arc<Families>,
    labels: Labels,
    duration: Histogram,
    retries: Counter,
    statuses: Few<StatusKey, Counter>,
    backends: Mutex<HashMap<String, Arc<BackendHandles>>>,
}

impl RouteHandles {
    pub(super) fn retried(&self) {
        self.retries.inc();
    }

    pub(super) fn latency(&self, millis: f64) {
        self.duration.observe(millis / 1000.0);
    }

    pub(super) fn response(&self, key: &ResponseKey) {
        count_status(
            &self.statuses,
            &self.families.statuses,
            &self.labels,
            self.protocol,
            key,
        );
    }

    /// The handles of this route's requests answered by the backend labelled `backend`
    /// (`backend_*`), made once per backend.
    pub(super) fn backend(&self, backend: &Labels) -> Arc<BackendHandles> {
        let key: Vec<&str> = backend.iter().map(|(_, v)| v.as_str()).collect();
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        backends
            .entry(key.join("|"))
            .or_insert_with(|| {
                let mut labels = self.labels.clone();
                labels.extend(backend.iter().cloned());
                let requests = self
                    .families
                    .backend_requests
                    .get_or_create(&labels)
                    .clone();
                let duration = self
                    .families
                    .backend_duration
                    .get_or_create(&labels)
                    .clone();
                Arc::new(BackendHandles {
                    requests,
                    duration,
                    protocol: self.protocol,
                    families: self.families.clone(),
                    labels,
                    statuses: Few::default(),
                })
            })
            .clone()
    }
}

/// One route's handles for one backend.
#[derive(Debug)]
pub(super) struct BackendHandles {
    protocol: Protocol,
    families: Arc<Families>,
    labels: Labels,
    requests: Counter,
    duration: Histogram,
    statuses: Few<StatusKey, Counter>,
}

impl BackendHandles {
    pub(super) fn request(&self) {
        self.requests.inc();
    }

    pub(super) fn latency(&self, millis: f64) {
        self.duration.observe(millis / 1000.0);
    }

    pub(super) fn response(&self, key: &ResponseKey) {
        count_status(
            &self.statuses,
            &self.families.backend_statuses,
            &self.labels,
            self.protocol,
            key,
        );
    }
}

fn count_status(
    cache: &Few<StatusKey, Counter>,
    family: &Family<Labels, Counter>,
    base: &Labels,
    protocol: Protocol,
    key: &ResponseKey,
) {
    // A failure Skiff names in Linkerd's words has no status, as in Linkerd.
    let error = key.error.and_then(linkerd_error);
    let status = (error.is_none()).then_some(key.status);
    let make = || {
        let mut labels = base.clone();
        match protocol {
            Protocol::Http => {
                let status = status.map(|s| s.to_string()).unwrap_or_default();
                labels.push(("http_status", status));
            }
            Protocol::Grpc => {
                // No status at all (a failed request) is UNKNOWN, as Linkerd says it.
                let name = key.grpc_status.map_or("UNKNOWN", grpc_code_name);
                labels.push(("grpc_status", name.to_owned()));
            }
        }
        labels.push(("error", error.unwrap_or_default().to_owned()));
        family.get_or_create(&labels).clone()
    };
    cache.with(&(status, key.grpc_status, key.error), make, |c| {
        c.inc();
    });
}

/// Linkerd's `error` for a failure Skiff made, when Linkerd has a word for it.
pub(super) fn linkerd_error(reason: Reason) -> Option<&'static str> {
    Some(match reason {
        Reason::UpstreamTimeout => "REQUEST_TIMEOUT",
        Reason::CircuitOpen | Reason::NoEndpoints => "FAIL_FAST",
        Reason::LoadShed | Reason::RateLimited => "LOAD_SHED",
        Reason::UpstreamReset => "RESET",
        Reason::UpstreamConnect => "IO",
        _ => return None,
    })
}

/// A gRPC status code's name, as Linkerd labels it.
pub(super) fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use proxy_core::classify::Classification;

    use super::*;

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    fn key(status: u16, grpc: Option<u32>, error: Option<Reason>) -> ResponseKey {
        ResponseKey {
            status,
            classification: Classification::Success,
            grpc_status: grpc,
            error,
        }
    }

    #[test]
    fn statuses_are_linkerds_a_grpc_code_by_name_and_skiffs_failures_in_its_words() {
        let families = OutboundRouteFamilies::register(&mut Registry::default());
        let parent = labels(&[("parent_name", "api"), ("parent_port", "80")]);
        let grpc_route = labels(&[("route_kind", "GRPCRoute"), ("route_name", "echo")]);
        let grpc = families.route(Protocol::Grpc, &parent, &grpc_route);
        grpc.response(&key(200, Some(14), None));
        grpc.response(&key(200, Some(0), None));
        grpc.response(&key(504, None, Some(Reason::UpstreamTimeout)));
        let with = |extra: &[(&'static str, &str)]| {
            let mut l = parent.clone();
            l.extend(grpc_route.clone());
            l.extend(labels(extra));
            families.grpc.statuses.get_or_create(&l).get()
        };
        assert_eq!(with(&[("grpc_status", "UNAVAILABLE"), ("error", "")]), 1);
        assert_eq!(with(&[("grpc_status", "OK"), ("error", "")]), 1);
        assert_eq!(
            with(&[("grpc_status", "UNKNOWN"), ("error", "REQUEST_TIMEOUT")]),
            1
        );

        let http_route = labels(&[("route_kind", "default"), ("route_name", "default")]);
        let http = families.route(Protocol::Http, &parent, &http_route);
        let backend = http.backend(&labels(&[("backend_name", "api")]));
        backend.request();
        backend.response(&key(503, None, Some(Reason::CircuitOpen)));
        backend.response(&key(404, None, Some(Reason::NoRoute)));
        let mut l = parent.clone();
        l.extend(http_route.clone());
        l.extend(labels(&[("backend_name", "api")]));
        let status = |s: &str, e: &str| {
            let mut l = l.clone();
            l.extend(labels(&[("http_status", s), ("error", e)]));
            families.http.backend_statuses.get_or_create(&l).get()
        };
        // Fail-fast has Linkerd's word and no status; a no-route 404 keeps its status.
        assert_eq!(status("", "FAIL_FAST"), 1);
        assert_eq!(status("404", ""), 1);
        assert_eq!(families.http.backend_requests.get_or_create(&l).get(), 1);
    }
}
