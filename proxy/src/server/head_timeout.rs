//! The HTTP/1 header read timeout, measured from the first byte of a request head.
//!
//! hyper's own header timeout starts as soon as a keep-alive connection goes idle, which
//! makes it an idle timeout too: connections an application keeps warm in its pool are cut
//! every few seconds, and a request sent just as the proxy closes one fails (the keep-alive
//! race). Here the clock starts only when bytes of a new request arrive and stops when the
//! head is complete, so a slowloris client is cut off while an idle connection is not.
//!
//! Two halves share one flag: [`HeadTimeoutIo`] watches reads, and [`InRequest`] (wrapped
//! around the connection's service) marks when a request is being handled, from the call
//! until its response body ends.

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use proxy_core::Body;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};
use tower::Service;

use crate::server::HttpService;

/// An IO that fails its read with `TimedOut` when a request head takes longer than the
/// timeout to arrive, counted from its first byte.
#[derive(Debug)]
pub(crate) struct HeadTimeoutIo<I> {
    io: I,
    timeout: Duration,
    in_request: Arc<AtomicBool>,
    // When the head's first byte arrived. The timer itself is armed only if the head does
    // not arrive in one read, which spares most requests a timer registration.
    started: Option<Instant>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<I> HeadTimeoutIo<I> {
    /// Wraps `io`; `in_request` is shared with the connection's [`InRequest`] service.
    pub(crate) fn new(io: I, timeout: Duration, in_request: Arc<AtomicBool>) -> Self {
        Self {
            io,
            timeout,
            in_request,
            started: None,
            deadline: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadTimeoutIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.in_request.load(Ordering::Acquire) {
            this.started = None;
            this.deadline = None;
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.started.get_or_insert_with(Instant::now);
        }
        if let (Poll::Pending, Some(started)) = (&result, this.started) {
            let at = started + this.timeout;
            let deadline = this
                .deadline
                .get_or_insert_with(|| Box::pin(sleep_until(at)));
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("request headers not received within {:?}", this.timeout),
                )));
            }
        }
        result
    }
}

delegate_async_write!(HeadTimeoutIo);

/// Marks a connection as handling a request from the call until the response body ends (or
/// is dropped), so [`HeadTimeoutIo`] leaves body bytes and idle time alone.
#[derive(Clone, Debug)]
pub(crate) struct InRequest {
    inner: HttpService,
    flag: Arc<AtomicBool>,
}

impl InRequest {
    /// Wraps the connection's service.
    pub(crate) fn new(inner: HttpService, flag: Arc<AtomicBool>) -> Self {
        Self { inner, flag }
    }
}

impl Service<Request<Incoming>> for InRequest {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.flag.store(true, Ordering::Release);
        ResponseFuture {
            inner: self.inner.call(req),
            flag: Some(self.flag.clone()),
        }
    }
}

/// The future of [`InRequest`]: the response, its body holding the mark until it ends.
pub(crate) struct ResponseFuture {
    inner: <HttpService as Service<Request<Incoming>>>::Future,
    flag: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl std::future::Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rsp = std::task::ready!(self.inner.as_mut().poll(cx))?;
        let flag = self.flag.take().expect("polled after completion");
        Poll::Ready(Ok(
            rsp.map(|b| proxy_core::body::hold_until_end(b, EndsRequest(flag)))
        ))
    }
}

/// Clears the connection's "in a request" mark when dropped.
#[derive(Debug)]
struct EndsRequest(Arc<AtomicBool>);

impl Drop for EndsRequest {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
