//! Tap: a live stream of request events for the clients of admin `/tap`.
//!
//! Each client subscribes with a [`Filter`] and gets newline-delimited JSON events through a
//! bounded queue. Publishing never waits: a client that does not keep up loses events (they
//! are counted in `skiff_tap_dropped_events_total`), so a stalled tap cannot slow the proxy
//! or make it grow. With no client connected, [`TapHub::active`] is false and the request
//! path builds no event at all. What an event holds is [`Event`] (in `event.rs`), the one
//! schema the proxy writes and the CLI reads.

mod event;

pub use event::{EndEvent, Event, Headers, RequestEvent, ResponseEvent};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use proxy_core::limit::RateLimit;
use tokio::sync::mpsc;

/// What a tap client wants to see.
#[derive(Debug, Default)]
pub struct Filter {
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    /// The request's authority, exactly (case-insensitive).
    pub authority: Option<String>,
    /// A prefix of the path.
    pub path_prefix: Option<String>,
    /// The method.
    pub method: Option<String>,
    /// The route's name.
    pub route: Option<String>,
    /// The status class: 2 for 2xx, 5 for 5xx...
    pub status_class: Option<u16>,
    /// Events a second at most (default 100).
    pub max_rate: Option<f64>,
    /// Bytes of each response body to include (0: none).
    pub body_bytes: usize,
}

impl Filter {
    /// Parses a `/tap` query: `direction`, `authority`, `path` (prefix), `method`, `route`,
    /// `status` (`2xx`..`5xx`), `max_rate`, `body` (bytes).
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "direction" if proxy_core::Direction::parse(&v).is_some() => f.direction = Some(v),
                "authority" => f.authority = Some(v.to_ascii_lowercase()),
                "path" => f.path_prefix = Some(v),
                "method" => f.method = Some(v.to_ascii_uppercase()),
                "route" => f.route = Some(v),
                "status" => {
                    let class = v
                        .strip_suffix("xx")
                        .and_then(|c| c.parse::<u16>().ok())
                        .filter(|c| (1..=5).contains(c))
                        .ok_or_else(|| format!("status={v}: expected 1xx to 5xx"))?;
                    f.status_class = Some(class);
                }
                "max_rate" => {
                    let rate: f64 = v
                        .parse()
                        .map_err(|_| format!("max_rate={v}: not a number"))?;
                    if !(rate > 0.0 && rate.is_finite()) {
                        return Err("max_rate must be more than 0".into());
                    }
                    f.max_rate = Some(rate);
                }
                "body" => {
                    f.body_bytes = v
                        .parse::<usize>()
                        .map_err(|_| format!("body={v}: expected a byte count"))?
                        .min(64 * 1024);
                }
                other => return Err(format!("unknown or invalid tap parameter {other:?}")),
            }
        }
        Ok(f)
    }

    /// Whether a request with these fields is wanted (`route` and `status` are unknown at
    /// request start, `None` there).
    pub fn matches(&self, e: &Fields<'_>) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.direction, e.direction)
            && self
                .authority
                .as_deref()
                .is_none_or(|a| a.eq_ignore_ascii_case(e.authority))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| e.path.starts_with(p))
            && eq(&self.method, e.method)
            && self.route.as_deref().is_none_or(|r| e.route == Some(r))
            && self
                .status_class
                .is_none_or(|c| e.status.is_some_and(|s| s / 100 == c))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The fields filters look at.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    /// `inbound` or `outbound`.
    pub direction: &'a str,
    /// The authority.
    pub authority: &'a str,
    /// The path.
    pub path: &'a str,
    /// The method.
    pub method: &'a str,
    /// The route, once known.
    pub route: Option<&'a str>,
    /// The status, once known.
    pub status: Option<u16>,
}

#[derive(Debug)]
struct Subscriber {
    filter: Filter,
    rate: RateLimit,
    queue: mpsc::Sender<Bytes>,
}

/// The tap clients of one proxy.
#[derive(Debug, Default)]
pub struct TapHub {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    active: AtomicUsize,
    body_bytes: AtomicUsize,
    dropped: Counter,
}

/// A tap client's stream; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<TapHub>,
    subscriber: Arc<Subscriber>,
    /// The events, one JSON line each.
    pub events: mpsc::Receiver<Bytes>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.subscriber);
    }
}

/// How many events a client's queue holds before new ones are dropped.
const QUEUE: usize = 1024;

impl TapHub {
    /// A hub counting dropped events in `dropped`.
    pub fn new(dropped: Counter) -> Self {
        Self {
            dropped,
            ..Self::default()
        }
    }

    /// Whether any client is connected: the request path checks this and nothing else.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// The most body bytes any client asked for.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes.load(Ordering::Relaxed)
    }

    /// Adds a client.
    pub fn subscribe(self: &Arc<Self>, filter: Filter) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rate = filter.max_rate.unwrap_or(100.0);
        let subscriber = Arc::new(Subscriber {
            rate: RateLimit::new(rate, rate.ceil().max(1.0) as u32),
            filter,
            queue: tx,
        });
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.push(subscriber.clone());
        self.refresh(&subs);
        Subscription {
            hub: self.clone(),
            subscriber,
            events: rx,
        }
    }

    fn remove(&self, subscriber: &Arc<Subscriber>) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !Arc::ptr_eq(s, subscriber));
        self.refresh(&subs);
    }

    fn refresh(&self, subs: &[Arc<Subscriber>]) {
        self.active.store(subs.len(), Ordering::Relaxed);
        let body = subs.iter().map(|s| s.filter.body_bytes).max().unwrap_or(0);
        self.body_bytes.store(body, Ordering::Relaxed);
    }

    /// Sends an event to every client whose filter wants it; `render` makes its JSON line
    /// (once, and only if someone wants it; `body_bytes` says how much body that client
    /// asked for).
    pub fn publish(&self, fields: &Fields<'_>, render: impl Fn(usize) -> Bytes) {
        let subs: Vec<Arc<Subscriber>> = self
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut rendered: Option<(usize, Bytes)> = None;
        for s in subs.iter().filter(|s| s.filter.matches(fields)) {
            if s.rate.acquire().is_err() {
                self.dropped.inc();
                continue;
            }
            let line = match &rendered {
                Some((n, line)) if *n == s.filter.body_bytes => line.clone(),
                _ => {
                    let line = render(s.filter.body_bytes);
                    rendered = Some((s.filter.body_bytes, line.clone()));
                    line
                }
            };
            if s.queue.try_send(line).is_err() {
                self.dropped.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests;
