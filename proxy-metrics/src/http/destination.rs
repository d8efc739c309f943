//! Series split below the target: by the endpoint a request went to (Linkerd's `dst_*`
//! labels, and `server_id` when the endpoint is meshed), and inbound by the authority the
//! caller asked for.
//!
//! Neither is known when the target's handles are built: the endpoint is picked per try
//! and the authority comes with each request. Both would cost a label-string lookup per
//! request, so each keeps the handles it resolved: an endpoint's [`Destination`] keeps one
//! per target it served, and a connection's [`ConnectionSeries`] the one for the authority
//! its last request named (a connection seldom changes authority). Both go through the
//! cardinality caps on a miss, so pods coming and going, or callers inventing authorities,
//! fold into `other` rather than grow the scrape without bound.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use proxy_core::authz::Authorized;

use super::capped::OTHER;
use super::few::Few;
use super::TargetMetrics;
use crate::Labels;

/// `base` with `extra` laid over it: a key already there takes the new value, a new key is
/// appended. `server_id` or `client_id` also make `tls` say `true` (and drop the reason it
/// gave for plaintext), as a verified peer does.
pub(super) fn merged(base: &Labels, extra: &[(&'static str, String)]) -> Labels {
    let mut labels = base.clone();
    for (key, value) in extra {
        if matches!(*key, "server_id" | "client_id") {
            labels.retain(|(k, _)| *k != "no_tls_reason");
            set(&mut labels, "tls", "true");
        }
        set(&mut labels, key, value);
    }
    labels
}

fn set(labels: &mut Labels, key: &'static str, value: &str) {
    match labels.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => value.clone_into(v),
        None => labels.push((key, value.to_owned())),
    }
}

/// The labels of one endpoint (`dst_pod`, `dst_deployment`, `dst_service`, ... and
/// `server_id` when it is called over mutual TLS), with the handles resolved for it.
#[derive(Debug)]
pub struct Destination {
    labels: Labels,
    // The backend Service it belongs to (`backend_*`), for the outbound route families.
    backend: Labels,
    // The labels as one string: the endpoint's value under the cardinality cap.
    key: String,
    // Handles by target id. Held here, so they live as long as the endpoint does and
    // are then left for the idle sweep.
    by_target: Few<u64, Arc<TargetMetrics>>,
}

/// Targets one endpoint can serve before its cache starts again: a service's default route
/// and its routes, with or without a peer identity, and once more per config generation.
const TARGETS_PER_ENDPOINT: usize = 64;

impl Destination {
    /// An endpoint labelled `labels` (keys such as `dst_pod`; empty values are left out),
    /// of the backend Service `backend_*` labels name (kept for the families that take
    /// them).
    pub fn new(labels: Labels) -> Self {
        let (backend, labels): (Labels, Labels) = labels
            .into_iter()
            .partition(|(k, _)| k.starts_with("backend_"));
        let labels: Labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let key = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            labels,
            backend,
            key,
            by_target: Few::default(),
        }
    }

    /// Its labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// The handles of `target`'s requests sent to this endpoint.
    pub(super) fn series(&self, target: &Arc<TargetMetrics>) -> Arc<TargetMetrics> {
        if self.labels.is_empty() {
            return target.clone();
        }
        if self.by_target.len() >= TARGETS_PER_ENDPOINT {
            self.by_target.clear();
        }
        self.by_target.with(
            &target.id,
            || self.make(target),
            |m| {
                m.touch();
                m.clone()
            },
        )
    }

    /// The handles of `target`'s requests to this endpoint, through the cardinality cap.
    fn make(&self, target: &Arc<TargetMetrics>) -> Arc<TargetMetrics> {
        let families = &target.families;
        let max = families.caps.max.load(Ordering::Relaxed);
        families
            .destinations
            .get(&target.base_key(), &self.key, max, |value| {
                // Beyond the cap every `dst_*` label says `other`; the peer stays known.
                let extra: Labels = self
                    .labels
                    .iter()
                    .map(|(k, v)| {
                        let folded = value == OTHER && k.starts_with("dst_");
                        (*k, if folded { OTHER.to_owned() } else { v.clone() })
                    })
                    .collect();
                let mut linked = target.linked.clone();
                if let Some(o) = &target.linked.outbound {
                    if !self.backend.is_empty() {
                        linked.backend = Some(o.backend(&self.backend));
                    }
                }
                families.with_labels(
                    merged(&target.base, &extra),
                    Some(target.window.clone()),
                    linked,
                )
            })
    }
}

/// An inbound connection's series: the application's handles for its caller (with the
/// caller's identity when it has one), split by the authority each request names.
#[derive(Debug)]
pub struct ConnectionSeries {
    base: Arc<TargetMetrics>,
    last: Mutex<Option<Last>>,
}

/// What the last request of a connection was counted under.
#[derive(Debug)]
struct Last {
    authority: String,
    authorized: Option<Authorized>,
    series: Arc<TargetMetrics>,
    // The authority's own handles, whose `/stats` window `series` shares: held (and kept
    // fresh) with it, so the idle sweep does not take the window from under it.
    by_authority: Arc<TargetMetrics>,
}

impl ConnectionSeries {
    /// The connection's series, from the application's handles for its caller.
    pub fn new(base: Arc<TargetMetrics>) -> Self {
        Self {
            base,
            last: Mutex::default(),
        }
    }

    /// The handles for a request naming `authority` (the `Host` or `:authority`), let
    /// through by authorization as `authorized` (which labels it with the server, route
    /// and authorization that decided).
    pub fn for_request(
        &self,
        authority: &str,
        authorized: Option<&Authorized>,
    ) -> Arc<TargetMetrics> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = &*last {
            if l.authority.eq_ignore_ascii_case(authority) && l.authorized.as_ref() == authorized {
                l.series.touch();
                l.by_authority.touch();
                return l.series.clone();
            }
        }
        let by_authority = self.base.with_authority(authority);
        let series = match authorized {
            Some(a) => by_authority.with_policy(a),
            None => by_authority.clone(),
        };
        *last = Some(Last {
            authority: authority.to_owned(),
            authorized: authorized.cloned(),
            series: series.clone(),
            by_authority,
        });
        series
    }
}
