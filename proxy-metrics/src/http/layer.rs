//! [`Metrics`]: the outermost layer of each direction. It times every request, including the
//! ones Skiff answers itself, and records `response_total` when the response body ends, so
//! gRPC statuses in trailers are classified correctly.
//!
//! The target is not known when a request enters (routing happens further in), so the layer
//! puts a [`MetricsSlot`] in the request's extensions and the layer that picks the target
//! fills it; the layer that picks an endpoint then narrows it to that endpoint's
//! [`Destination`]. A request nobody routed is recorded against the direction's `unrouted`
//! target.
//!
//! A request is counted in `request_total` when its response begins (or fails), under the
//! same labels as its `response_total`: only then is the endpoint of its last try known.
//! `response_latency_ms` ends at the response body's first frame (or its end), as
//! Linkerd's does. A request refused by authorization is counted only in the
//! authorization families, as Linkerd counts it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use proxy_core::classify::{classify, grpc_status};
use proxy_core::{Body, BoxError, Reason};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::observe::{Ending, Observe, Watched};
use super::{Destination, TargetMetrics};

/// Where the routing layer records which target a request went to, and the endpoint layer
/// which endpoint.
#[derive(Clone, Debug, Default)]
pub struct MetricsSlot(Arc<Slot>);

#[derive(Debug, Default)]
struct Slot {
    target: OnceLock<Arc<TargetMetrics>>,
    // The target's handles for the endpoint of the latest try.
    endpoint: Mutex<Option<Arc<TargetMetrics>>>,
}

impl MetricsSlot {
    /// Records that the request is being sent to `target` (the first target set stays).
    pub fn start(&self, target: &Arc<TargetMetrics>) {
        let _ = self.0.target.set(target.clone());
    }

    /// Records that a try of the request is going to the endpoint labelled `dst`.
    pub fn endpoint(&self, dst: &Destination) {
        if let Some(target) = self.0.target.get() {
            let series = dst.series(target);
            *self.0.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(series);
        }
    }

    fn series(&self) -> Option<Arc<TargetMetrics>> {
        let endpoint = self.0.endpoint.lock().unwrap_or_else(|e| e.into_inner());
        endpoint.clone().or_else(|| self.0.target.get().cloned())
    }
}

/// Records HTTP metrics (and, when wanted, tap events and the access log) around `S`.
#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
    unrouted: Arc<TargetMetrics>,
    observe: Arc<Observe>,
    peer: Option<SocketAddr>,
}

/// Applies [`Metrics`].
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    unrouted: Arc<TargetMetrics>,
    observe: Arc<Observe>,
    peer: Option<SocketAddr>,
}

impl MetricsLayer {
    /// A layer recording requests no target claims against `unrouted`, and feeding the
    /// direction's tap, access log and tracing through `observe`.
    pub fn new(unrouted: Arc<TargetMetrics>, observe: Arc<Observe>) -> Self {
        Self {
            unrouted,
            observe,
            peer: None,
        }
    }

    /// The same, for one connection from `peer` (its address goes into spans).
    pub fn with_peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            unrouted: self.unrouted.clone(),
            observe: self.observe.clone(),
            peer: self.peer,
        }
    }
}

impl<S, B> Service<Request<B>> for Metrics<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let slot = MetricsSlot::default();
        req.extensions_mut().insert(slot.clone());
        let watched = self.observe.watch(&mut req, self.peer);
        ResponseFuture {
            inner: self.inner.call(req),
            slot,
            unrouted: self.unrouted.clone(),
            start: Instant::now(),
            watched,
            observe: self.observe.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Metrics`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        slot: MetricsSlot,
        unrouted: Arc<TargetMetrics>,
        start: Instant,
        watched: Option<Arc<Watched>>,
        observe: Arc<Observe>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = std::task::ready!(this.inner.poll(cx))?;
        let error = rsp.extensions().get::<Reason>().copied();
        // Refused by authorization: counted in the authorization families alone.
        let target = (error != Some(Reason::Forbidden))
            .then(|| this.slot.series().unwrap_or_else(|| this.unrouted.clone()));
        if let Some(t) = &target {
            t.request();
        }
        let status = rsp.status();
        let millis = this.start.elapsed().as_secs_f64() * 1000.0;
        let header_grpc = grpc_status(rsp.headers());
        let watch = this.watched.take().map(|w| {
            w.response(status.as_u16(), millis, rsp.headers());
            Watch {
                watched: w,
                start: *this.start,
                bytes: 0,
                sample: Vec::new(),
                sample_limit: this.observe.body_bytes(),
            }
        });
        Poll::Ready(Ok(rsp.map(|inner| {
            proxy_core::body::boxed(RecordBody {
                inner,
                pending: Some(Pending {
                    target,
                    status,
                    grpc_status: header_grpc,
                    error,
                    start: *this.start,
                    first_frame_ms: None,
                    watch,
                }),
            })
        })))
    }
}

/// What the body wrapper still has to record.
#[derive(Debug)]
struct Pending {
    // `None` for a request counted elsewhere (refused by authorization).
    target: Option<Arc<TargetMetrics>>,
    status: StatusCode,
    grpc_status: Option<u32>,
    error: Option<Reason>,
    start: Instant,
    // Set when the body's first frame (or its end) arrives.
    first_frame_ms: Option<f64>,
    watch: Option<Watch>,
}

/// A watched request's body as it streams: its size, and the sample tap asked for.
#[derive(Debug)]
struct Watch {
    watched: Arc<Watched>,
    start: Instant,
    bytes: u64,
    sample: Vec<u8>,
    sample_limit: usize,
}

impl Pending {
    /// The response body's first frame, or its end, arrived: the latency's end point.
    fn first_frame(&mut self) {
        if self.first_frame_ms.is_none() {
            let millis = self.start.elapsed().as_secs_f64() * 1000.0;
            self.first_frame_ms = Some(millis);
            if let Some(t) = &self.target {
                t.latency(self.status.as_u16(), millis);
            }
        }
    }

    fn record(mut self) {
        self.first_frame();
        // Classified once, here, with the shared classifier: `response_total`, the `/stats`
        // window and tap's end event (which `skiff top` counts) all report this one value.
        let classification = classify(self.status, self.grpc_status, self.error).classification();
        if let Some(t) = &self.target {
            t.response(
                self.status.as_u16(),
                classification,
                self.grpc_status,
                self.error,
            );
            t.window(classification, self.first_frame_ms.unwrap_or_default());
        }
        if let Some(w) = self.watch {
            w.watched.end(&Ending {
                status: self.status.as_u16(),
                duration_ms: w.start.elapsed().as_secs_f64() * 1000.0,
                response_bytes: w.bytes,
                grpc_status: self.grpc_status,
                error: self.error,
                classification,
                body: &w.sample,
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// Records `response_total` once: at end of stream, on error, or when dropped early.
    struct RecordBody {
        #[pin]
        inner: Body,
        pending: Option<Pending>,
    }

    impl PinnedDrop for RecordBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(p) = this.project().pending.take() {
                p.record();
            }
        }
    }
}

impl http_body::Body for RecordBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(p) = this.pending.as_mut() {
            p.first_frame();
        }
        match &frame {
            Some(Ok(f)) => {
                if let (Some(trailers), Some(p)) = (f.trailers_ref(), this.pending.as_mut()) {
                    p.grpc_status = grpc_status(trailers).or(p.grpc_status);
                }
                if let (Some(data), Some(w)) = (
                    f.data_ref(),
                    this.pending.as_mut().and_then(|p| p.watch.as_mut()),
                ) {
                    w.bytes += data.len() as u64;
                    let room = w.sample_limit.saturating_sub(w.sample.len());
                    w.sample.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(e)) => {
                if let Some(p) = this.pending.as_mut() {
                    // The proxy's own reason when it cut the stream (a stream idle timeout),
                    // else the upstream broke it.
                    let reason =
                        proxy_core::error::find_cause::<proxy_core::ProxyError>(e.as_ref())
                            .map_or(Reason::UpstreamReset, proxy_core::ProxyError::reason);
                    p.error = p.error.or(Some(reason));
                }
            }
            None => {}
        }
        if frame.is_none() || matches!(frame, Some(Err(_))) || this.inner.is_end_stream() {
            if let Some(p) = this.pending.take() {
                p.record();
            }
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
