//! Linkerd's route families: `route_request_total`, `route_response_total` and
//! `route_response_latency_ms`, labelled by the service called (`dst`, its authority) and
//! the route that matched (`rt_route`; absent for requests no named route took).
//!
//! They count each logical request once, whatever endpoint served it and however many tries
//! it took, which is what `linkerd viz routes` and the route dashboard read. Every handle of
//! a target (per peer, per endpoint) shares its target's [`RouteSeries`].

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::few::Few;
use super::{latency_histogram, HistogramFamily, ResponseKey};
use crate::Labels;

/// The route families.
#[derive(Debug)]
pub(super) struct RouteFamilies {
    pub(super) requests: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
    latency: HistogramFamily,
}

impl RouteFamilies {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        registry.register(
            "route_request",
            "Requests per route of a service, each counted once however many tries it took",
            this.requests.clone(),
        );
        registry.register(
            "route_response",
            "Responses per route of a service, by status and classification",
            this.responses.clone(),
        );
        registry.register(
            "route_response_latency_ms",
            "Time from request to the first frame of the response body per route, in \
             milliseconds",
            this.latency.clone(),
        );
        this
    }

    /// The handles of `route` (or the service's default) of the service at `dst`.
    pub(super) fn series(&self, dst: &str, route: Option<&str>) -> Arc<RouteSeries> {
        let mut base: Labels = vec![
            (
                "direction",
                proxy_core::Direction::Outbound.as_str().to_owned(),
            ),
            ("dst", dst.to_owned()),
        ];
        if let Some(route) = route {
            base.push(("rt_route", route.to_owned()));
        }
        Arc::new(RouteSeries {
            requests: self.requests.get_or_create(&base).clone(),
            responses_family: self.responses.clone(),
            latency_family: self.latency.clone(),
            base,
            responses: Few::default(),
            latencies: Few::default(),
        })
    }
}

/// One route's handles, with caches by status as for a target.
#[derive(Debug)]
pub(super) struct RouteSeries {
    base: Labels,
    requests: Counter,
    responses_family: Family<Labels, Counter>,
    latency_family: HistogramFamily,
    responses: Few<(u16, &'static str), Counter>,
    latencies: Few<u16, Histogram>,
}

impl RouteSeries {
    pub(super) fn request(&self) {
        self.requests.inc();
    }

    pub(super) fn response(&self, key: &ResponseKey) {
        let class = key.classification.as_str();
        self.responses.with(
            &(key.status, class),
            || {
                let mut labels = self.base.clone();
                labels.push(("status_code", key.status.to_string()));
                labels.push(("classification", class.to_owned()));
                self.responses_family.get_or_create(&labels).clone()
            },
            |c| {
                c.inc();
            },
        );
    }

    pub(super) fn latency(&self, status: u16, millis: f64) {
        self.latencies.with(
            &status,
            || {
                let mut labels = self.base.clone();
                labels.push(("status_code", status.to_string()));
                self.latency_family.get_or_create(&labels).clone()
            },
            |h| h.observe(millis),
        );
    }
}
