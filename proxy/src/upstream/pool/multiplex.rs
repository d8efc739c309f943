//! The HTTP/2 connections of one endpoint, shared fairly between the proxy's clients.
//!
//! All HTTP/2 requests to an endpoint (and every meshed request to a peer proxy) ride a few
//! multiplexed connections. Two rules keep one client from blocking everyone else there:
//! - a connection whose streams are all in use (the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`,
//!   or `streamsPerConnection` if lower) takes no more; the next request opens another
//!   connection, up to `connections` per endpoint. Only when all are full does a request
//!   queue, on the least busy one;
//! - one downstream connection may hold at most `clientShare` percent of a connection's
//!   streams. A client at its share everywhere waits for one of its own streams to end, so
//!   a client that opens streams and never sends their bodies fills only its own share.
//!
//! A stream counts from the request's send until both its request body and its response
//! body are over (or dropped): that is how long the peer counts it too.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::client::conn::http2;
use proxy_core::Body;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Which downstream connection a request came on, to share upstream streams between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DownstreamConn(u64);

impl DownstreamConn {
    /// A new connection's mark.
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// How the HTTP/2 connections to one endpoint are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sharing {
    /// Most connections per endpoint.
    pub connections: usize,
    /// Most streams put on one connection (the peer may allow fewer).
    pub streams_per_connection: usize,
    /// Percent of a connection's streams one downstream connection may hold.
    pub client_share: u8,
}

impl Default for Sharing {
    fn default() -> Self {
        Self {
            connections: 4,
            streams_per_connection: 100,
            client_share: 50,
        }
    }
}

/// One multiplexed connection and the streams open on it.
pub(super) struct Conn {
    sender: http2::SendRequest<Body>,
    // Asks the connection for the peer's stream limit, as its SETTINGS last said.
    peer_limit: Probe,
    streams: Mutex<Streams>,
}

#[derive(Default)]
struct Streams {
    open: usize,
    by_client: HashMap<DownstreamConn, usize>,
    // When its last stream ended (`None` while it has streams).
    idle_since: Option<Instant>,
}

impl Conn {
    fn limit(&self, sharing: &Sharing) -> usize {
        self.peer_limit
            .get()
            .min(sharing.streams_per_connection)
            .max(1)
    }
}

/// What a request should do next.
pub(super) enum Next {
    /// Send on this connection; the slot holds its stream until dropped.
    Send(http2::SendRequest<Body>, Slot),
    /// Open a new connection and [`Shared::add`] it.
    Dial,
    /// Wait for one of this client's streams to end, then ask again.
    Wait,
}

/// The connections of one endpoint.
#[derive(Default)]
pub(super) struct Shared {
    conns: Mutex<Vec<Arc<Conn>>>,
    // Woken when a stream ends, for clients waiting at their share.
    freed: Arc<Notify>,
}

impl Shared {
    /// Picks where `client`'s next request goes.
    pub(super) fn next(
        &self,
        client: Option<DownstreamConn>,
        sharing: &Sharing,
        idle_timeout: std::time::Duration,
    ) -> Next {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Closed connections go, and so do idle ones beyond the first.
        let mut kept = 0;
        conns.retain(|c| {
            let idle = c
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .idle_since
                .is_some_and(|t| now.duration_since(t) >= idle_timeout);
            let spare = idle && kept > 0;
            let keep = !c.sender.is_closed() && !spare;
            kept += usize::from(keep);
            keep
        });
        // Each connection's limit is asked before its stream counts are locked: the probe
        // takes the connection's own lock, under which a stream may end (and take the
        // counts' lock).
        let limits: Vec<usize> = conns.iter().map(|c| c.limit(sharing)).collect();
        let share = |limit: usize| {
            (limit * usize::from(sharing.client_share))
                .div_ceil(100)
                .max(1)
        };
        // (open streams, whether the client is under its share there) per connection.
        let load: Vec<(usize, bool)> = conns
            .iter()
            .zip(&limits)
            .map(|(c, &limit)| {
                let s = c.streams.lock().unwrap_or_else(|e| e.into_inner());
                let mine = client.map_or(0, |id| s.by_client.get(&id).copied().unwrap_or(0));
                (s.open, mine < share(limit))
            })
            .collect();
        let room = (0..conns.len())
            .filter(|&i| load[i].1 && load[i].0 < limits[i])
            .min_by_key(|&i| load[i].0);
        if let Some(i) = room {
            return self.send_on(&conns[i], client);
        }
        if conns.len() < sharing.connections.max(1) {
            return Next::Dial;
        }
        // Every connection is full: queue on the least busy one where this client is
        // still under its share.
        match (0..conns.len())
            .filter(|&i| load[i].1)
            .min_by_key(|&i| load[i].0)
        {
            Some(i) => self.send_on(&conns[i], client),
            None => Next::Wait,
        }
    }

    /// A future that completes when a stream ends; taken before [`Self::next`] answers
    /// `Wait`, so an end in between is not missed.
    pub(super) fn freed(&self) -> Arc<Notify> {
        self.freed.clone()
    }

    /// Adds a new connection and takes a stream on it for `client`.
    pub(super) fn add(
        &self,
        sender: http2::SendRequest<Body>,
        peer_limit: Probe,
        client: Option<DownstreamConn>,
    ) -> (http2::SendRequest<Body>, Slot) {
        let conn = Arc::new(Conn {
            sender,
            peer_limit,
            streams: Mutex::default(),
        });
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn.clone());
        match self.send_on(&conn, client) {
            Next::Send(sender, slot) => (sender, slot),
            Next::Dial | Next::Wait => unreachable!("send_on always sends"),
        }
    }

    /// The stream limit learnt from a connection already open, for a new one to start with
    /// until its own peer's SETTINGS arrive (otherwise its first requests would be counted
    /// against the protocol's default of 100 and could queue at the peer).
    pub(super) fn limit_hint(&self) -> Option<usize> {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.first().map(|c| c.peer_limit.get())
    }

    /// The number of open connections (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    fn send_on(&self, conn: &Arc<Conn>, client: Option<DownstreamConn>) -> Next {
        let mut s = conn.streams.lock().unwrap_or_else(|e| e.into_inner());
        s.open += 1;
        s.idle_since = None;
        if let Some(id) = client {
            *s.by_client.entry(id).or_default() += 1;
        }
        Next::Send(
            conn.sender.clone(),
            Slot {
                conn: conn.clone(),
                client,
                freed: self.freed.clone(),
            },
        )
    }
}

/// A stream taken on a connection; it is given back when dropped.
pub(super) struct Slot {
    conn: Arc<Conn>,
    client: Option<DownstreamConn>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.conn.streams.lock().unwrap_or_else(|e| e.into_inner());
        s.open = s.open.saturating_sub(1);
        if s.open == 0 {
            s.idle_since = Some(Instant::now());
        }
        if let Some(id) = self.client {
            if let Some(n) = s.by_client.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    s.by_client.remove(&id);
                }
            }
        }
        drop(s);
        self.freed.notify_waiters();
    }
}

/// Asks a running client connection for the peer's current stream limit.
///
/// hyper reads the peer's SETTINGS in a task of its own and keeps the limit in the
/// connection object, which a caller may ask only while holding it; that object is polled
/// just when requests come. So it is kept here, behind a lock shared by the task that drives
/// it ([`drive`]) and the pool, which asks at each request: an answer cached after a poll
/// would be the one from before the SETTINGS arrived.
#[derive(Clone)]
pub(super) struct Probe(Arc<Mutex<Pin<Box<dyn Driven>>>>);

impl Probe {
    /// The peer's limit now.
    pub(super) fn get(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current_max_send_streams()
    }
}

/// A client connection future that knows the peer's stream limit.
pub(super) trait Driven: Future<Output = hyper::Result<()>> + Send {
    fn current_max_send_streams(&self) -> usize;
}

impl<T, E> Driven for http2::Connection<T, Body, E>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ClientConnExec<Body, T> + Unpin + Send,
{
    fn current_max_send_streams(&self) -> usize {
        http2::Connection::current_max_send_streams(self)
    }
}

/// The future that runs `conn` (to spawn), and the probe that asks it for the peer's limit.
pub(super) fn drive<C: Driven + 'static>(conn: C) -> (impl Future<Output = ()>, Probe) {
    let probe = Probe(Arc::new(Mutex::new(Box::pin(conn))));
    let shared = probe.0.clone();
    let run = std::future::poll_fn(move |cx: &mut Context<'_>| {
        let mut conn = shared.lock().unwrap_or_else(|e| e.into_inner());
        match conn.as_mut().poll(cx) {
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    });
    (run, probe)
}

#[cfg(test)]
#[path = "multiplex_tests.rs"]
mod tests;
