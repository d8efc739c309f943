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
//!
//! The same reads also end a keep-alive connection left idle (no request, no byte) for
//! `limits.idleTimeout`: a silent connection would otherwise hold a connection slot for as
//! long as its client likes. Its timer is armed once per idle period, not per request: it
//! wakes at the period's end and looks at when the connection was last used. An HTTP/2
//! connection, whose client may send pings and settings without ever opening a stream, is
//! idle when it has no stream open: [`idle_for`] watches the same marks and completes when
//! it has had none for the limit, and the server then closes it gracefully (GOAWAY).

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    in_request: Arc<Busy>,
    // When the head's first byte arrived. The timer itself is armed only if the head does
    // not arrive in one read, which spares most requests a timer registration.
    started: Option<Instant>,
    deadline: Option<Pin<Box<Sleep>>>,
    // The keep-alive idle limit (`None`: none), when the connection was last used, and the
    // timer that checks it.
    idle: Option<Duration>,
    last_used: Instant,
    idle_check: Option<Pin<Box<Sleep>>>,
}

impl<I> HeadTimeoutIo<I> {
    /// Wraps `io`; `in_request` is shared with the connection's [`InRequest`] service; a
    /// connection idle for `idle` (when given) reads as closed.
    pub(crate) fn new(
        io: I,
        timeout: Duration,
        idle: Option<Duration>,
        in_request: Arc<Busy>,
    ) -> Self {
        Self {
            io,
            timeout,
            in_request,
            started: None,
            deadline: None,
            idle,
            last_used: Instant::now(),
            idle_check: None,
        }
    }

    /// Whether the connection has been idle for its limit; otherwise arms the check for
    /// when it could be, so the task is woken then.
    fn idle_over(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.idle else {
            return false;
        };
        let at = self.last_used + idle;
        let check = self
            .idle_check
            .get_or_insert_with(|| Box::pin(sleep_until(at)));
        if check.deadline() < at {
            // Used since the check was armed: wait for the new end of the period.
            check.as_mut().reset(at);
        }
        check.as_mut().poll(cx).is_ready()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadTimeoutIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.in_request.in_request() {
            this.started = None;
            this.deadline = None;
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        if this.idle.is_some() && this.in_request.ended.swap(false, Ordering::AcqRel) {
            // A request ended since the last read: the idle period starts from here.
            this.last_used = Instant::now();
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Instant::now();
            this.started.get_or_insert(now);
            this.last_used = now;
        }
        if result.is_pending() && this.started.is_none() && this.idle_over(cx) {
            // Idle for the limit between requests: the client sees the connection close,
            // as after any keep-alive timeout.
            tracing::debug!(idle = ?this.idle, "closing an idle keep-alive connection");
            return Poll::Ready(Ok(()));
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
    flag: Arc<Busy>,
}

/// What [`InRequest`] tells [`HeadTimeoutIo`] and [`idle_for`]: how many requests are in
/// hand, whether one ended since the IO last looked, and when the last one ended.
#[derive(Debug)]
pub(crate) struct Busy {
    open: AtomicUsize,
    ended: AtomicBool,
    // When the connection started, and the last request's end as milliseconds after it.
    base: Instant,
    last_end_ms: AtomicU64,
}

impl Default for Busy {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            base: Instant::now(),
            last_end_ms: AtomicU64::new(0),
        }
    }
}

impl Busy {
    fn begin(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_end_ms.store(ms, Ordering::Release);
        self.ended.store(true, Ordering::Release);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    fn in_request(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0
    }

    /// When the connection was last in use: the end of its last request, or its start.
    fn last_used(&self) -> Instant {
        self.base + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire))
    }
}

/// Completes once the connection of `busy` has had no request in hand for `limit`. Its
/// timer wakes once per period and looks at when the last request ended.
pub(crate) async fn idle_for(busy: &Busy, limit: Duration) {
    let mut at = busy.last_used() + limit;
    loop {
        sleep_until(at).await;
        if busy.in_request() {
            at = Instant::now() + limit;
            continue;
        }
        at = busy.last_used() + limit;
        if at <= Instant::now() {
            return;
        }
    }
}

impl InRequest {
    /// Wraps the connection's service.
    pub(crate) fn new(inner: HttpService, flag: Arc<Busy>) -> Self {
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
        self.flag.begin();
        ResponseFuture {
            inner: self.inner.call(req),
            flag: Some(self.flag.clone()),
        }
    }
}

/// The future of [`InRequest`]: the response, its body holding the mark until it ends.
pub(crate) struct ResponseFuture {
    inner: <HttpService as Service<Request<Incoming>>>::Future,
    flag: Option<Arc<Busy>>,
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
struct EndsRequest(Arc<Busy>);

impl Drop for EndsRequest {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads once if something can be read now; `None` when the read would wait.
    async fn read_now<I: AsyncRead + Unpin>(io: &mut I) -> Option<usize> {
        let mut buf = [0u8; 64];
        tokio::select! {
            biased;
            n = io.read(&mut buf) => Some(n.unwrap()),
            () = tokio::task::yield_now() => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_idle_for_the_limit_reads_as_closed() {
        let (client, server) = tokio::io::duplex(256);
        let (mut client, busy) = (client, Arc::new(Busy::default()));
        let idle = Duration::from_secs(30);
        let mut io = HeadTimeoutIo::new(server, Duration::from_secs(10), Some(idle), busy.clone());
        // A request: its head, then a minute in hand (no idle limit meanwhile).
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(read_now(&mut io).await.is_some_and(|n| n > 0));
        busy.begin();
        assert_eq!(read_now(&mut io).await, None);
        tokio::time::sleep(Duration::from_secs(60)).await;
        // Its response ends: the idle period starts at the next read.
        busy.end();
        assert_eq!(read_now(&mut io).await, None);
        let ended = Instant::now();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(read_now(&mut io).await, None, "not idle for the limit yet");
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "reads as closed");
        assert_eq!(ended.elapsed(), idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_a_full_period_after_its_last_stream_ends() {
        let busy = Arc::new(Busy::default());
        let idle = Duration::from_secs(30);
        let start = Instant::now();
        let watch = tokio::spawn({
            let busy = busy.clone();
            async move { idle_for(&busy, idle).await }
        });
        // Two streams overlap for a minute and a half; then ten seconds of quiet, a short
        // one, and silence.
        busy.begin();
        tokio::time::sleep(Duration::from_secs(20)).await;
        busy.begin();
        tokio::time::sleep(Duration::from_secs(60)).await;
        busy.end();
        tokio::time::sleep(Duration::from_secs(10)).await;
        busy.end();
        tokio::time::sleep(Duration::from_secs(10)).await;
        busy.begin();
        busy.end();
        let last = Instant::now();
        watch.await.unwrap();
        assert_eq!(last.duration_since(start), Duration::from_secs(100));
        assert_eq!(
            Instant::now().duration_since(last),
            idle,
            "exactly one period after"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_limit_a_quiet_connection_stays() {
        let (_client, server) = tokio::io::duplex(256);
        let mut io = HeadTimeoutIo::new(server, Duration::from_secs(10), None, Arc::default());
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert_eq!(read_now(&mut io).await, None);
    }
}
