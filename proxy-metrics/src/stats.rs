//! Success rate and latency over a sliding window, per target, for `/stats` (and `skiff
//! stat`): the numbers Linkerd's `viz stat` computes from Prometheus, served by the proxy
//! itself so they are there without a Prometheus.
//!
//! A [`Window`] keeps one slot per second for the window's length; a slot counts successes
//! and failures and holds a latency histogram with the `response_latency_ms` buckets.
//! Quantiles are interpolated within their bucket, as `histogram_quantile` does.
//!
//! Success and failure are the [`Classification`] the metrics layer computed for
//! `response_total`, never decided here. What `/stats` serves is a [`Report`] of [`Row`]s,
//! the one schema the admin server writes and `skiff stat` reads.

use std::time::Duration;

use proxy_core::classify::Classification;
use proxy_core::Direction;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::http::LATENCY_BUCKETS_MS;

/// Buckets, plus one for latencies beyond the last bound.
const BUCKETS: usize = LATENCY_BUCKETS_MS.len() + 1;

#[derive(Clone, Copy, Debug)]
struct Slot {
    second: u64,
    success: u64,
    failure: u64,
    latency: [u64; BUCKETS],
}

impl Slot {
    fn empty(second: u64) -> Self {
        Self {
            second,
            success: 0,
            failure: 0,
            latency: [0; BUCKETS],
        }
    }
}

/// A target's last `len` seconds.
#[derive(Debug)]
pub struct Window {
    epoch: Instant,
    seconds: usize,
    // Made with the first response: a proxy knows every service in its cluster, and most
    // never see a request from it (7 KB each, a third of a known service's memory).
    slots: Vec<Slot>,
}

/// What `/stats` reports for one target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The window the numbers cover, in seconds (shorter while the proxy is young).
    pub window_seconds: f64,
    /// Responses that succeeded.
    pub success_count: u64,
    /// Responses that failed.
    pub failure_count: u64,
    /// Responses a second.
    pub request_rate: f64,
    /// Successes over all responses; absent with no responses.
    pub success_rate: Option<f64>,
    /// Median latency to response headers, in milliseconds (SMI TrafficMetrics name).
    pub p50_response_latency: Option<f64>,
    /// 95th percentile, in milliseconds.
    pub p95_response_latency: Option<f64>,
    /// 99th percentile, in milliseconds.
    pub p99_response_latency: Option<f64>,
}

impl Window {
    /// A window of `len` (at least one second).
    pub fn new(len: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            seconds: len.as_secs().max(1) as usize,
            slots: Vec::new(),
        }
    }

    fn now_second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// Records one response, as the shared classifier classified it.
    pub fn record(&mut self, classification: Classification, latency_ms: f64) {
        let second = self.now_second();
        if self.slots.is_empty() {
            self.slots = vec![Slot::empty(u64::MAX); self.seconds];
        }
        let len = self.slots.len();
        let slot = &mut self.slots[(second % len as u64) as usize];
        if slot.second != second {
            *slot = Slot::empty(second);
        }
        if classification.is_success() {
            slot.success += 1;
        } else {
            slot.failure += 1;
        }
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| latency_ms <= *b)
            .unwrap_or(BUCKETS - 1);
        slot.latency[bucket] += 1;
    }

    /// The numbers for the window ending now.
    pub fn summary(&self) -> Summary {
        let now = self.now_second();
        let len = self.seconds as u64;
        let mut total = Slot::empty(now);
        for slot in self
            .slots
            .iter()
            .filter(|s| s.second != u64::MAX && now - s.second.min(now) < len)
        {
            total.success += slot.success;
            total.failure += slot.failure;
            for (t, c) in total.latency.iter_mut().zip(slot.latency) {
                *t += c;
            }
        }
        let elapsed = self.epoch.elapsed().as_secs_f64();
        let window_seconds = elapsed.clamp(1.0, len as f64);
        let count = total.success + total.failure;
        let quantile = |q: f64| quantile(&total.latency, count, q);
        Summary {
            window_seconds,
            success_count: total.success,
            failure_count: total.failure,
            request_rate: count as f64 / window_seconds,
            success_rate: (count > 0).then(|| total.success as f64 / count as f64),
            p50_response_latency: quantile(0.5),
            p95_response_latency: quantile(0.95),
            p99_response_latency: quantile(0.99),
        }
    }
}

/// The whole `/stats` document: `{"latency_unit": "ms", "stats": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The unit of the latency fields: always `ms`.
    pub latency_unit: String,
    /// One row per target.
    pub stats: Vec<Row>,
}

impl Report {
    /// A report of `rows`, latencies in milliseconds.
    pub fn new(stats: Vec<Row>) -> Self {
        Self {
            latency_unit: "ms".to_owned(),
            stats,
        }
    }
}

/// One target's row: its non-empty labels (as in `response_total`, without `namespace` and
/// `pod`) beside its [`Summary`]. An empty label is absent, not `""`, so a reader tells an
/// inbound row (no `authority`) from an outbound one by the field alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service's authority; absent inbound and for requests refused before routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The service's `name:port`, `passthrough`, or inbound the application's `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_addr: Option<String>,
    /// `true` for meshed traffic, `disabled` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The route's name, for a route's own row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Inbound over mesh mTLS: the caller's verified SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Outbound to a service with an identity: the server's SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The numbers.
    #[serde(flatten)]
    pub summary: Summary,
}

impl Row {
    /// The row of the target with these metric labels; `None` without a `direction` label,
    /// which every target has (`HttpFamilies::target` puts it first).
    pub fn new(labels: &[(&'static str, String)], summary: Summary) -> Option<Self> {
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, v)| *k == key && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        Some(Self {
            direction: label("direction").as_deref().and_then(Direction::parse)?,
            authority: label("authority"),
            target_addr: label("target_addr"),
            tls: label("tls"),
            route: label("route"),
            client_id: label("client_id"),
            server_id: label("server_id"),
            summary,
        })
    }
}

/// The `q` quantile of a bucketed histogram holding `count` values, interpolated linearly
/// within its bucket (the last, open bucket reports its lower bound).
fn quantile(buckets: &[u64; BUCKETS], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut seen = 0u64;
    for (i, c) in buckets.iter().enumerate() {
        if *c > 0 && (seen + c) as f64 >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BUCKETS_MS[i - 1]
            };
            let Some(upper) = LATENCY_BUCKETS_MS.get(i) else {
                return Some(lower);
            };
            let within = (rank - seen as f64) / *c as f64;
            return Some(lower + (upper - lower) * within);
        }
        seen += c;
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The document as docs/observability.md shows it: labels absent when empty, the
    /// numbers beside them, and read back into the same values.
    #[test]
    fn the_report_keeps_the_documented_wire_format() {
        let labels: Vec<(&'static str, String)> = vec![
            ("direction", "inbound".into()),
            ("authority", String::new()),
            ("target_addr", "127.0.0.1:18081".into()),
            ("tls", "true".into()),
            (
                "client_id",
                "spiffe://cluster.local/ns/demo/sa/client".into(),
            ),
        ];
        let summary = Summary {
            window_seconds: 25.401,
            success_count: 1,
            failure_count: 0,
            request_rate: 0.039,
            success_rate: Some(1.0),
            p50_response_latency: Some(0.5),
            p95_response_latency: Some(0.95),
            p99_response_latency: Some(0.99),
        };
        let report = Report::new(vec![Row::new(&labels, summary).expect("a direction")]);
        let written = serde_json::to_value(&report).unwrap();
        assert_eq!(
            written,
            json!({"latency_unit": "ms", "stats": [
                {"direction": "inbound", "target_addr": "127.0.0.1:18081", "tls": "true",
                 "client_id": "spiffe://cluster.local/ns/demo/sa/client",
                 "window_seconds": 25.401, "success_count": 1, "failure_count": 0,
                 "request_rate": 0.039, "success_rate": 1.0, "p50_response_latency": 0.5,
                 "p95_response_latency": 0.95, "p99_response_latency": 0.99}
            ]})
        );
        let read: Report = serde_json::from_value(written).unwrap();
        assert_eq!(read, report);
        assert_eq!(Row::new(&labels[1..], Summary::default()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_and_quantiles_land_in_their_buckets() {
        let w = Window::new(Duration::from_secs(10));
        // Before any response: no slots yet, and a summary of nothing.
        assert_eq!(w.slots.capacity(), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        let s = w.summary();
        assert_eq!(
            (s.success_count, s.failure_count, s.request_rate),
            (0, 0, 0.0)
        );
        assert_eq!((s.window_seconds, s.success_rate), (2.0, None));
        let mut w = Window::new(Duration::from_secs(10));
        for _ in 0..90 {
            w.record(Classification::Success, 3.5); // bucket (3, 4]
        }
        for _ in 0..10 {
            w.record(Classification::Failure, 450.0); // bucket (400, 500]
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let s = w.summary();
        assert_eq!((s.success_count, s.failure_count), (90, 10));
        assert_eq!(s.success_rate, Some(0.9));
        assert_eq!(s.window_seconds, 5.0);
        assert_eq!(s.request_rate, 20.0);
        let p50 = s.p50_response_latency.unwrap();
        assert!((3.0..=4.0).contains(&p50), "{p50}");
        let p99 = s.p99_response_latency.unwrap();
        assert!((400.0..=500.0).contains(&p99), "{p99}");

        // Ten seconds on, those responses have left the window.
        tokio::time::advance(Duration::from_secs(10)).await;
        w.record(Classification::Success, 1.0);
        let s = w.summary();
        assert_eq!((s.success_count, s.failure_count), (1, 0));
        assert_eq!(s.window_seconds, 10.0);
    }
}
