//! Request mirroring series: how many copies each route sent to each mirror backend, and
//! how they ended. Mirrors are fire and forget, so this is the only place their outcome
//! shows.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::Labels;

/// How a mirrored copy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorResult {
    /// The mirror answered (with any status).
    Answered,
    /// It could not be reached, or did not answer in time.
    Failed,
    /// No copy was sent: the body was over the bound, or never ended.
    Skipped,
}

impl MirrorResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// The mirroring family.
#[derive(Debug, Default)]
pub struct MirrorFamilies {
    requests: Family<Labels, Counter>,
}

impl MirrorFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self::default();
        registry.register(
            "skiff_mirror_requests",
            "Copies of requests sent by RequestMirror filters, by route, mirror backend and result (answered, failed, skipped)",
            this.requests.clone(),
        );
        this
    }

    /// One copy of `route`'s request to `backend` ended as `result`.
    pub fn ended(&self, route: &str, backend: &str, result: MirrorResult) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("backend", backend.to_owned()),
                ("result", result.as_str().to_owned()),
            ])
            .inc();
    }
}
