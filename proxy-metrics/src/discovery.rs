//! Discovery series: what the proxy holds of the Kubernetes API (open watches), what it
//! receives (events), and what goes wrong (failed requests by reason, and whether a
//! resource is stale, i.e. its last attempt failed and the last known state is served).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Labels;

/// The discovery families.
#[derive(Debug, Default)]
pub struct DiscoveryFamilies {
    watches: Family<Labels, Gauge>,
    events: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    stale: Family<Labels, Gauge>,
    refused: Counter,
    ignored_fields: Counter,
}

impl DiscoveryFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self::default();
        registry.register(
            "skiff_discovery_watches",
            "Open watches on the Kubernetes API, by resource",
            this.watches.clone(),
        );
        registry.register(
            "skiff_discovery_events",
            "Watch events received from the Kubernetes API, by resource",
            this.events.clone(),
        );
        registry.register(
            "skiff_discovery_errors",
            "Failed Kubernetes API requests, by resource and reason (an HTTP status, or connect)",
            this.errors.clone(),
        );
        registry.register(
            "skiff_discovery_refused_objects",
            "Mesh documents from the Kubernetes API that could not be honoured (each refused alone)",
            this.refused.clone(),
        );
        registry.register(
            "skiff_discovery_ignored_fields",
            "Fields of Kubernetes API objects that Skiff does not know, ignored",
            this.ignored_fields.clone(),
        );
        registry.register(
            "skiff_discovery_stale",
            "Watches whose last attempt failed (the last known state is served), by resource",
            this.stale.clone(),
        );
        this
    }

    fn labels(resource: &str) -> Labels {
        vec![("resource", resource.to_owned())]
    }

    /// A mesh document from the API was refused.
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// `n` fields of API objects were ignored.
    pub fn ignored_fields(&self, n: usize) {
        self.ignored_fields
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// A watch on `resource` opened (`true`) or closed.
    pub fn watching(&self, resource: &str, open: bool) {
        let g = self.watches.get_or_create(&Self::labels(resource));
        if open {
            g.inc();
        } else {
            g.dec();
        }
    }

    /// An event on `resource` arrived: it is current again.
    pub fn event(&self, resource: &str) {
        self.events.get_or_create(&Self::labels(resource)).inc();
    }

    /// A request for `resource` failed for `reason`.
    pub fn error(&self, resource: &str, reason: &str) {
        let mut labels = Self::labels(resource);
        labels.push(("reason", reason.to_owned()));
        self.errors.get_or_create(&labels).inc();
    }

    /// Whether `resource`'s watches are stale (a change of state, not a count).
    pub fn set_stale(&self, resource: &str, stale: bool, previously: bool) {
        if stale != previously {
            let g = self.stale.get_or_create(&Self::labels(resource));
            if stale {
                g.inc();
            } else {
                g.dec();
            }
        }
    }

    /// How many watches are stale now, over every resource.
    pub fn stale_now(&self) -> i64 {
        let mut total = 0;
        for resource in ["services", "endpointslices", "documents"] {
            total += self.stale.get_or_create(&Self::labels(resource)).get();
        }
        total
    }
}
