//! Watches: a stream of newline-delimited JSON events, from a resourceVersion on, for as
//! long as the server-side timeout allows.
//!
//! Each watch keeps a cursor (the last resourceVersion it has accounted for) and reads the
//! shared history after it whenever the store changes, so every watch sees every event in
//! order, with no queue per watch: a watch that falls behind the history (it was stalled
//! while many writes came) gets 410 Expired, as a real watch cache ends a watcher that
//! cannot keep up. A bookmark is only sent once the history up to the store's current
//! resourceVersion has been read, so its resourceVersion never skips an event the client
//! has not seen.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::rest::{bad_request, filter, invalid_options, too_large, Target};
use super::route::Query;
use super::select::Filter;
use super::serve::{full, lock, status_object, Body, BoxError, Shared, WatchStats};
use super::store::{Event, EventType, Expired};
use super::WatchRecord;

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// `ADDED` for every current object, then changes (resourceVersion unset or `0`).
    Initial,
    /// `sendInitialEvents=true`: as [`Start::Initial`], then a bookmark marking the end of
    /// the initial events.
    InitialWithEnd,
    /// Changes after this resourceVersion.
    After(u64),
}

/// The body of a watch response: frames from the watch's task; when the task says so, it
/// ends with an error, which makes hyper close the connection without ending the chunked
/// body, as a crashed or partitioned server would.
struct WatchBody {
    frames: mpsc::Receiver<Bytes>,
    aborted: Arc<AtomicBool>,
}

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.aborted.load(Ordering::SeqCst) {
            return Poll::Ready(Some(Err("watch dropped by the test".into())));
        }
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(line)) => Poll::Ready(Some(Ok(Frame::data(line)))),
            Poll::Ready(None) if self.aborted.load(Ordering::SeqCst) => {
                Poll::Ready(Some(Err("watch dropped by the test".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One event line.
fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    bytes.into()
}

/// The `ERROR` event for a resourceVersion that is no longer in the history.
fn expired_line(asked: u64, expired: Expired) -> Bytes {
    let message = format!("too old resource version: {asked} ({})", expired.oldest + 1);
    line("ERROR", &status_object(410, "Expired", &message, None))
}

/// What a watch sends for `event`, by the watch cache's rule: an object that starts
/// matching is `ADDED`, one that stops matching is `DELETED` (its previous state, at the
/// event's resourceVersion).
fn convert(filter: &Filter, event: &Event) -> Option<(EventType, Value)> {
    let now = event.kind != EventType::Deleted
        && filter.matches(event.resource, &event.namespace, &event.object);
    let before = event
        .prev
        .as_ref()
        .is_some_and(|p| filter.matches(event.resource, &event.namespace, p));
    match (now, before) {
        (true, false) => Some((EventType::Added, (*event.object).clone())),
        (true, true) => Some((EventType::Modified, (*event.object).clone())),
        (false, true) => {
            let mut last = (*event.prev.clone()?).clone();
            last["metadata"]["resourceVersion"] = json!(event.rv.to_string());
            Some((EventType::Deleted, last))
        }
        (false, false) => None,
    }
}

/// `GET ...?watch=true`.
pub(crate) fn watch(
    shared: &Arc<Shared>,
    target: Target,
    query: &Query,
    raw_query: &str,
) -> Response<Body> {
    let filter = match filter(shared, &target, query) {
        Ok(filter) => filter,
        Err(why) => return bad_request(&why),
    };
    let flags = (
        query.flag("allowWatchBookmarks"),
        query.flag("sendInitialEvents"),
    );
    let (bookmarks, initial_events) = match flags {
        (Ok(b), Ok(i)) => (b.unwrap_or(false), i),
        (Err(e), _) | (_, Err(e)) => return bad_request(&e),
    };
    let rv = query.get("resourceVersion").filter(|v| !v.is_empty());
    let rv_match = query.get("resourceVersionMatch").filter(|v| !v.is_empty());
    if initial_events.is_some() {
        if rv_match != Some("NotOlderThan") {
            return invalid_options(
                "sendInitialEvents",
                "Forbidden: sendInitialEvents is forbidden for watch unless \
                 resourceVersionMatch is set to NotOlderThan",
            );
        }
        if !bookmarks {
            return invalid_options(
                "sendInitialEvents",
                "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            );
        }
    } else if rv_match.is_some() {
        return invalid_options(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents \
             is provided",
        );
    }
    let asked = match rv {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return bad_request(&format!("invalid resource version: {v:?}")),
        },
    };
    let seconds = match query.get("timeoutSeconds").filter(|v| !v.is_empty()) {
        None => 0,
        Some(t) => match t.parse::<u64>() {
            Ok(t) => t,
            Err(_) => return bad_request(&format!("invalid timeoutSeconds: {t:?}")),
        },
    };
    let max = shared.settings.max_watch_timeout;
    let timeout = match seconds {
        0 => max,
        t => Duration::from_secs(t).min(max),
    };

    // Subscribed before the store is read: a write after the read wakes the watch.
    let changes = shared.changes.subscribe();
    let store = lock(&shared.store);
    let current = store.resource_version();
    let start = match (initial_events, asked) {
        (Some(true), Some(n)) if n > current => return too_large(n, current),
        (Some(true), _) => Start::InitialWithEnd,
        (Some(false), None | Some(0)) => Start::After(current),
        (None, None | Some(0)) => Start::Initial,
        (_, Some(n)) => Start::After(n),
    };
    let rt = shared.registry.get(target.resource);
    let record = WatchRecord {
        resource: rt.qualified(),
        namespace: target.namespace.clone(),
        query: raw_query.to_owned(),
        events: 0,
        bookmarks: 0,
        open: true,
    };
    if let Start::After(n) = start {
        if let Err(expired) = store.events_after(n) {
            // What a real API server does: 200, one ERROR event, the end.
            drop(store);
            let stats = Arc::new(WatchStats {
                record: std::sync::Mutex::new(WatchRecord {
                    events: 1,
                    open: false,
                    ..record
                }),
            });
            lock(&shared.watches).push(stats);
            return watch_response(full(expired_line(n, expired)));
        }
    }
    let initial: Vec<Value> = match start {
        Start::After(_) => Vec::new(),
        Start::Initial | Start::InitialWithEnd => store
            .snapshot(target.resource, current)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|((ns, _), o)| filter.matches(target.resource, ns, o))
                    .map(|(_, o)| (**o).clone())
                    .collect()
            })
            .unwrap_or_default(),
    };
    drop(store);

    let stats = Arc::new(WatchStats {
        record: std::sync::Mutex::new(record),
    });
    lock(&shared.watches).push(stats.clone());
    shared.open_watches.send_modify(|n| *n += 1);
    let (tx, frames) = mpsc::channel(16);
    let aborted = Arc::new(AtomicBool::new(false));
    let watcher = Watcher {
        shared: shared.clone(),
        api_version: rt.api_version(),
        kind: rt.kind.clone(),
        filter,
        cursor: match start {
            Start::After(n) => n,
            _ => current,
        },
        bookmarks,
        tx,
        aborted: aborted.clone(),
        stats,
        changes,
        dropping: shared.control.dropping.subscribe(),
        stalled: shared.control.stalled.subscribe(),
        asked: shared.control.bookmarks.subscribe(),
    };
    // A year stands for "never": a larger maximum would overflow the clock.
    let deadline = Instant::now() + timeout.min(Duration::from_secs(365 * 86_400));
    tokio::spawn(watcher.run(initial, start == Start::InitialWithEnd, deadline));
    watch_response(WatchBody { frames, aborted }.boxed())
}

fn watch_response(body: Body) -> Response<Body> {
    let mut rsp = Response::new(body);
    *rsp.status_mut() = StatusCode::OK;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}

/// The next periodic bookmark's time; never, without periodic bookmarks.
async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Counts the watch as closed however its task ends.
struct Closing(Arc<Shared>, Arc<WatchStats>);

impl Drop for Closing {
    fn drop(&mut self) {
        lock(&self.1.record).open = false;
        self.0
            .open_watches
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Why a send did not happen.
#[derive(Debug)]
struct Ended;

/// One watch's task.
struct Watcher {
    shared: Arc<Shared>,
    api_version: String,
    kind: String,
    filter: Filter,
    cursor: u64,
    bookmarks: bool,
    tx: mpsc::Sender<Bytes>,
    aborted: Arc<AtomicBool>,
    stats: Arc<WatchStats>,
    changes: watch::Receiver<u64>,
    dropping: watch::Receiver<u64>,
    stalled: watch::Receiver<bool>,
    asked: watch::Receiver<u64>,
}

impl Watcher {
    async fn run(mut self, initial: Vec<Value>, end_marker: bool, deadline: Instant) {
        let _closing = Closing(self.shared.clone(), self.stats.clone());
        let _ = self.serve(initial, end_marker, deadline).await;
    }

    async fn serve(
        &mut self,
        initial: Vec<Value>,
        end_marker: bool,
        deadline: Instant,
    ) -> Result<(), Ended> {
        for object in initial {
            self.send(line("ADDED", &object), false).await?;
        }
        if end_marker {
            self.bookmark(true).await?;
        }
        self.catch_up().await?;
        let period = self
            .shared
            .settings
            .bookmark_interval
            .filter(|_| self.bookmarks);
        let mut tick = period.map(|p| tokio::time::interval_at(Instant::now() + p, p));
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);
        loop {
            if *self.stalled.borrow_and_update() {
                self.while_stalled().await?;
                continue;
            }
            tokio::select! {
                // In this order: a drop asked for wins over anything that arrived with it.
                biased;
                _ = self.dropping.changed() => return Err(self.abort()),
                // The server-side timeout: the stream ends cleanly.
                () = &mut timeout => return Ok(()),
                _ = self.stalled.changed() => {}
                () = self.tx.closed() => return Err(Ended),
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return Err(Ended);
                    }
                    self.catch_up().await?;
                }
                () = next_tick(&mut tick) => self.bookmark(false).await?,
                _ = self.asked.changed(), if self.bookmarks => self.bookmark(false).await?,
            }
        }
    }

    /// Ends the response abruptly.
    fn abort(&self) -> Ended {
        self.aborted.store(true, Ordering::SeqCst);
        Ended
    }

    /// Sends nothing until the stall is released; a drop or the client leaving still end
    /// the watch.
    async fn while_stalled(&mut self) -> Result<(), Ended> {
        while *self.stalled.borrow_and_update() {
            tokio::select! {
                changed = self.stalled.changed() => {
                    if changed.is_err() {
                        return Err(Ended);
                    }
                }
                _ = self.dropping.changed() => return Err(self.abort()),
                () = self.tx.closed() => return Err(Ended),
            }
        }
        Ok(())
    }

    /// Sends one line (after a stall, if one is on).
    async fn send(&mut self, line: Bytes, bookmark: bool) -> Result<(), Ended> {
        self.while_stalled().await?;
        tokio::select! {
            sent = self.tx.send(line) => sent.map_err(|_| Ended)?,
            _ = self.dropping.changed() => return Err(self.abort()),
        }
        let mut record = lock(&self.stats.record);
        if bookmark {
            record.bookmarks += 1;
        } else {
            record.events += 1;
        }
        Ok(())
    }

    /// Sends the events after the cursor; 410 (and the end) if they left the history.
    async fn catch_up(&mut self) -> Result<(), Ended> {
        let (events, current) = {
            let store = lock(&self.shared.store);
            (store.events_after(self.cursor), store.resource_version())
        };
        match events {
            Err(expired) => {
                let line = expired_line(self.cursor, expired);
                self.send(line, false).await?;
                Err(Ended)
            }
            Ok(events) => {
                for event in events {
                    if let Some((kind, object)) = convert(&self.filter, &event) {
                        self.send(line(kind.as_str(), &object), false).await?;
                    }
                    self.cursor = event.rv;
                }
                self.cursor = self.cursor.max(current);
                Ok(())
            }
        }
    }

    /// Sends a bookmark at the store's resourceVersion, once every event before it is sent.
    async fn bookmark(&mut self, end_of_initial_events: bool) -> Result<(), Ended> {
        self.catch_up().await?;
        let mut object = json!({
            "kind": self.kind,
            "apiVersion": self.api_version,
            "metadata": {"resourceVersion": self.cursor.to_string()},
        });
        if end_of_initial_events {
            object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send(line("BOOKMARK", &object), true).await
    }
}
