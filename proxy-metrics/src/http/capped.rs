//! Cardinality control at the source, for the label values the proxy does not choose: the
//! authorities of passthrough traffic, and the identities of meshed callers.
//!
//! Each such label keeps at most `max` distinct values; beyond that, new values are counted
//! as `other`. A value's series that have not been touched for `idle` are removed (from
//! the scrape, and from the count, so a new value can take the place). Users of both anchor
//! proxies run into millions of series without this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{HttpFamilies, TargetMetrics};

/// The limits, settable at run time (config reload).
#[derive(Debug)]
pub struct CardinalityLimits {
    pub(super) max: AtomicUsize,
    idle_ms: AtomicU64,
}

impl Default for CardinalityLimits {
    fn default() -> Self {
        Self {
            max: AtomicUsize::new(1000),
            idle_ms: AtomicU64::new(600_000),
        }
    }
}

impl CardinalityLimits {
    /// At most `max` values per label; series idle for `idle` go.
    pub fn set(&self, max: usize, idle: Duration) {
        self.max.store(max.max(1), Ordering::Relaxed);
        self.idle_ms.store(
            u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How long a series may sit idle.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
    }
}

/// The label value series are folded into beyond the cap.
pub const OTHER: &str = "other";

/// Handles by capped label value.
#[derive(Debug, Default)]
pub(super) struct Capped {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, Arc<TargetMetrics>>,
    // How many entries are real values (not `other`): what the cap counts. Kept as a count
    // so a miss beyond the cap, which passthrough traffic can hit on every request, does not
    // scan the map.
    values: usize,
}

fn is_other(key: &str) -> bool {
    key.ends_with(OTHER) && key[..key.len() - OTHER.len()].ends_with('|')
}

impl Capped {
    /// The handle for `value` within `scope` (the rest of its labels), or for `other` when
    /// `max` values are already tracked; `make` builds a missing one from the value.
    pub(super) fn get(
        &self,
        scope: &str,
        value: &str,
        max: usize,
        make: impl Fn(&str) -> Arc<TargetMetrics>,
    ) -> Arc<TargetMetrics> {
        let key = format!("{scope}|{value}");
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = entries.by_key.get(&key) {
            m.touch();
            return m.clone();
        }
        let (key, value) = if entries.values < max {
            (key, value)
        } else {
            (format!("{scope}|{OTHER}"), OTHER)
        };
        let Entries { by_key, values } = &mut *entries;
        let m = by_key
            .entry(key)
            .or_insert_with_key(|key| {
                if !is_other(key) {
                    *values += 1;
                }
                make(value)
            })
            .clone();
        m.touch();
        m
    }

    /// Removes values whose series have been idle for `idle`; returns how many.
    pub(super) fn sweep(&self, idle: Duration) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Entries { by_key, values } = &mut *entries;
        let before = by_key.len();
        by_key.retain(|key, m| {
            // Still held elsewhere (an open connection), or used lately: kept.
            let keep = Arc::strong_count(m) > 1 || m.idle_for() < idle;
            if !keep {
                m.remove_series();
                if !is_other(key) {
                    *values -= 1;
                }
            }
            keep
        });
        before - by_key.len()
    }

    /// How many values are tracked (`other` included).
    pub(super) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }
}

impl HttpFamilies {
    /// The handles for passthrough traffic to `authority`, capped.
    pub fn passthrough(self: &Arc<Self>, authority: &str) -> Arc<TargetMetrics> {
        let max = self.caps.max.load(Ordering::Relaxed);
        let authority = authority.to_ascii_lowercase();
        self.passthrough.get(
            proxy_core::Direction::Outbound.as_str(),
            &authority,
            max,
            |a| self.target(proxy_core::Direction::Outbound, a, super::PASSTHROUGH, None),
        )
    }

    /// The handles of `base` for meshed traffic from or to `id`, capped.
    pub(super) fn peer(
        &self,
        base: &TargetMetrics,
        key: &'static str,
        id: &str,
    ) -> Arc<TargetMetrics> {
        let max = self.caps.max.load(Ordering::Relaxed);
        let peers = if key == "client_id" {
            &self.clients
        } else {
            &self.servers
        };
        peers.get(&base.base_key(), id, max, |v| base.peer_labels(key, v))
    }

    /// Removes series idle longer than the configured expiry; returns how many label values
    /// went.
    pub fn sweep_idle(&self) -> usize {
        let idle = self.caps.idle();
        self.passthrough.sweep(idle)
            + self.clients.sweep(idle)
            + self.servers.sweep(idle)
            + self.authorities.sweep(idle)
            + self.destinations.sweep(idle)
            + self.policies.sweep(idle)
    }

    /// The cap and expiry.
    pub fn limits(&self) -> &CardinalityLimits {
        &self.caps
    }

    /// Where request mirroring is counted.
    pub fn mirror(&self) -> &crate::mirror::MirrorFamilies {
        &self.mirror
    }

    /// How many passthrough authorities are tracked (`other` included).
    pub fn passthrough_tracked(&self) -> usize {
        self.passthrough.len()
    }
}

impl TargetMetrics {
    /// The same target's handles for requests authorization let through as `authorized`
    /// (inbound: Linkerd's server, route and authorization labels).
    pub(super) fn with_policy(
        &self,
        authorized: &proxy_core::authz::Authorized,
    ) -> Arc<TargetMetrics> {
        let f = &self.families;
        let max = f.caps.max.load(Ordering::Relaxed);
        let port = f
            .inbound_port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let labels = crate::authz::authorized_labels(authorized, &port);
        let value: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
        f.policies
            .get(&self.base_key(), &value.join("|"), max, |v| {
                let labels = if v == super::OTHER {
                    labels
                        .iter()
                        .map(|(k, _)| (*k, super::OTHER.to_owned()))
                        .collect()
                } else {
                    labels.clone()
                };
                let labels = super::destination::merged(&self.base, &labels);
                // One `/stats` row per caller and authority, whatever policy let them in.
                f.with_labels(labels, Some(self.window.clone()), self.linked.clone())
            })
    }

    /// The same target's handles for requests naming `authority` (inbound, where the
    /// caller chooses it), capped.
    pub(super) fn with_authority(&self, authority: &str) -> Arc<TargetMetrics> {
        let f = &self.families;
        let max = f.caps.max.load(Ordering::Relaxed);
        let authority = authority.to_ascii_lowercase();
        f.authorities.get(&self.base_key(), &authority, max, |a| {
            let labels = super::destination::merged(&self.base, &[("authority", a.to_owned())]);
            f.with_labels(labels, None, self.linked.clone())
        })
    }
}

/// Milliseconds since `epoch`, for idle tracking.
pub(super) fn now_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
