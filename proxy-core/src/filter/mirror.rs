//! `RequestMirror`: a copy of a request (of every one, or of a fraction) sent to another
//! backend, fire and forget. The copy never holds the primary up: its body is collected as
//! the primary's streams through (up to a bound), and it leaves only once the primary's
//! body has ended; a body over the bound, or one the client abandons, is not mirrored.
//! Whatever the mirror answers, or fails to, is counted and dropped.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::{Body as _, Frame, SizeHint};

use crate::body::{self, Body};
use crate::BoxError;

/// The largest request body mirrored: larger ones go to the primary alone.
pub const MAX_MIRRORED_BODY: usize = 64 * 1024;

/// Where a mirrored copy goes: sends it and forgets it (the proxy's implementation picks an
/// endpoint of the mirror's service, counts the outcome and drops the response).
pub trait MirrorSink: fmt::Debug + Send + Sync + 'static {
    /// Sends `req` in the background; never waits.
    fn send(&self, req: Request<Body>);

    /// A copy was not sent: its body was over [`MAX_MIRRORED_BODY`], or never ended.
    fn skipped(&self);
}

/// One mirror of a rule.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// The backend's name, as written.
    pub name: String,
    /// Where copies go; `None` when the name is no configured service (nothing is sent).
    pub sink: Option<Arc<dyn MirrorSink>>,
    /// Mirrored share of requests: `numerator` in `denominator`.
    pub numerator: u32,
    /// See `numerator`.
    pub denominator: u32,
}

impl PartialEq for Mirror {
    fn eq(&self, other: &Self) -> bool {
        let same_sink = match (&self.sink, &other.sink) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.name == other.name
            && same_sink
            && self.numerator == other.numerator
            && self.denominator == other.denominator
    }
}

/// A cheap, shared source of draws for the mirrored share (a splitmix64 counter: uniform
/// enough for sampling, and no lock).
fn draw(denominator: u32) -> u32 {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    u32::try_from(z % u64::from(denominator.max(1))).unwrap_or(0)
}

/// Starts the copies of `req` that `mirrors` draw: at once for a request with no body,
/// else once its body has streamed through to the primary.
pub(super) fn start(req: &mut Request<Body>, mirrors: &[Mirror]) {
    let sinks: Vec<Arc<dyn MirrorSink>> = mirrors
        .iter()
        .filter(|m| draw(m.denominator) < m.numerator)
        .filter_map(|m| m.sink.clone())
        .collect();
    if sinks.is_empty() {
        return;
    }
    let head = Head::of(req);
    if req.body().is_end_stream() {
        for sink in &sinks {
            sink.send(head.request(Bytes::new()));
        }
        return;
    }
    let body = std::mem::replace(req.body_mut(), body::empty());
    *req.body_mut() = body::boxed(Tee {
        inner: body,
        copy: Some(BytesMut::new()),
        head,
        sinks,
    });
}

/// What a copy repeats of the request: all but its body.
#[derive(Debug)]
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    authority: Option<http::uri::Authority>,
}

impl Head {
    fn of(req: &Request<Body>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            authority: req.extensions().get::<http::uri::Authority>().cloned(),
        }
    }

    fn request(&self, body: Bytes) -> Request<Body> {
        let mut req = Request::new(body::full(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        if let Some(authority) = &self.authority {
            req.extensions_mut().insert(authority.clone());
        }
        req
    }
}

impl Tee {
    /// The body has ended: the copies leave (once).
    fn finish(&mut self) {
        if let Some(copy) = self.copy.take() {
            let copy = copy.freeze();
            for sink in &self.sinks {
                sink.send(self.head.request(copy.clone()));
            }
        }
    }
}

/// The primary's body, copied (up to the bound) as it streams; the copies leave at its end.
struct Tee {
    inner: Body,
    /// `None` once over the bound, or sent.
    copy: Option<BytesMut>,
    head: Head,
    sinks: Vec<Arc<dyn MirrorSink>>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(copy)) = (f.data_ref(), this.copy.as_mut()) {
                    if copy.len() + data.len() > MAX_MIRRORED_BODY {
                        this.copy = None;
                        this.sinks.iter().for_each(|s| s.skipped());
                    } else {
                        copy.extend_from_slice(data);
                    }
                }
                // The end is often known before the body says `None`: hyper stops polling
                // a body whose length is reached (or that reports its end), and trailers
                // are its last frame. (Trailers are not copied.)
                if f.is_trailers() || this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Some(Err(_)) => {
                if this.copy.take().is_some() {
                    this.sinks.iter().for_each(|s| s.skipped());
                }
            }
            None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The client abandoned the body: no copy of a request that never was whole.
        if self.copy.take().is_some() {
            self.sinks.iter().for_each(|s| s.skipped());
        }
    }
}
