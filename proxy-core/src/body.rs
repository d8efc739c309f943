//! The body type the proxy stack passes around, and the guard on bodies clients send.
//!
//! Client bodies are streamed, never collected: the guard only watches them. It turns a
//! decoding error (a bad chunk size, a short body) into a `bad-request` [`ProxyError`] so the
//! client gets a 400 and the failure is blamed on it rather than on the upstream, and it ends a
//! body that stalls longer than the idle timeout (slow-body attacks hold connections forever
//! otherwise).

use std::future::{poll_fn, Future as _};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{sleep, Instant, Sleep};

use crate::error::{ProxyError, Reason};
use crate::BoxError;

/// A boxed, streaming body: what every service in the stack takes and returns.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// Watches a client's request body: maps its errors to downstream-blamed
    /// [`ProxyError`]s and enforces an idle timeout between frames.
    #[derive(Debug)]
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        idle: Duration,
        // Boxed because a sleeping timer is large; created on the first wait and then reset,
        // not reallocated, for each later one.
        timer: Option<Pin<Box<Sleep>>>,
        // Whether the timer is counting the current wait (it is disarmed when a frame comes).
        armed: bool,
        // Whether this is a response body (the upstream's) rather than the client's.
        upstream: bool,
    }
}

impl<B> Guarded<B> {
    /// Guards `inner`, failing it when no frame arrives for `idle`.
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            armed: false,
            upstream: false,
        }
    }

    /// Guards an upstream's response body: a stream idle for longer than `idle` ends with an
    /// `upstream-timeout` error (the client sees the stream reset). Its own errors pass as
    /// they are.
    pub fn response(inner: B, idle: Duration) -> Self {
        Self {
            upstream: true,
            ..Self::new(inner, idle)
        }
    }
}

/// Drops from trailers the fields that may not be trailers (RFC 9110 section 6.5.1): the
/// hop-by-hop and framing ones, and `Host`. Sent on as they came, they would be refused by
/// an HTTP/2 peer (connection-specific fields make a stream malformed) once the message
/// changes protocol on its way, and the request would hang until a timeout.
fn sanitize_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            crate::normalize::strip_hop_by_hop(&mut trailers);
            for name in [
                http::header::CONTENT_LENGTH,
                http::header::HOST,
                http::header::TE,
            ] {
                trailers.remove(name);
            }
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// `body` with its trailers sanitised as in guarded bodies: for a response that changes
/// protocol on its way and is not otherwise guarded.
pub fn with_clean_trailers(body: Body) -> Body {
    body.map_frame(sanitize_trailers).boxed_unsync()
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.armed = false;
                let frame = frame.map(|f| f.map(sanitize_trailers));
                if *this.upstream {
                    return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
                }
                Poll::Ready(frame.map(|f| f.map_err(downstream_body_error)))
            }
            Poll::Pending => {
                let idle = *this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(sleep(idle)));
                if !*this.armed {
                    timer.as_mut().reset(Instant::now() + idle);
                    *this.armed = true;
                }
                ready!(timer.as_mut().poll(cx));
                // Re-arm so a caller that polls again gets a fresh window rather than a
                // timer stuck in the ready state.
                timer.as_mut().reset(Instant::now() + idle);
                let err = if *this.upstream {
                    ProxyError::new(
                        Reason::UpstreamTimeout,
                        format!("response stream idle for more than {idle:?}"),
                    )
                } else {
                    ProxyError::new(
                        Reason::RequestTimeout,
                        format!("request body idle for more than {idle:?}"),
                    )
                };
                Poll::Ready(Some(Err(Box::new(err))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn downstream_body_error(err: impl Into<BoxError>) -> BoxError {
    let err = err.into();
    if err.downcast_ref::<ProxyError>().is_some() {
        return err;
    }
    Box::new(
        ProxyError::new(Reason::BadRequest, format!("malformed request body: {err}"))
            .with_source(err),
    )
}

/// Waits for the first frame of `body` and returns a body that yields it again, then the rest.
///
/// Used for HTTP/1 chunked bodies: their framing errors usually show in the first chunk, and
/// reading it before the upstream is contacted means a malformed request never reaches it.
pub async fn prime(mut body: Body) -> Result<Body, BoxError> {
    let first = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
    match first {
        None => Ok(empty()),
        Some(Err(e)) => Err(e),
        Some(Ok(frame)) => Ok(Primed {
            first: Some(frame),
            rest: body,
        }
        .boxed_unsync()),
    }
}

pin_project_lite::pin_project! {
    struct Primed {
        first: Option<Frame<Bytes>>,
        #[pin]
        rest: Body,
    }
}

impl http_body::Body for Primed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

/// Keeps `guard` alive until `body` ends (its last frame or an error) or is dropped: for
/// what a request holds while its response still streams (an in-flight slot, a
/// "request in progress" mark).
pub fn hold_until_end<G: Send + 'static>(body: Body, guard: G) -> Body {
    let mut guard = Some(guard);
    inspect(body, move |frame| {
        if !matches!(frame, Some(Ok(_))) {
            drop(guard.take());
        }
    })
}

/// `body`, with `see` shown each poll's outcome (a frame, an error, or the end) before it is
/// passed on. `see` lives as long as the body, so what it holds is released with it.
pub fn inspect<F>(body: Body, see: F) -> Body
where
    F: FnMut(&Option<Result<Frame<Bytes>, BoxError>>) + Send + 'static,
{
    Inspect { inner: body, see }.boxed_unsync()
}

pin_project_lite::pin_project! {
    struct Inspect<F> {
        #[pin]
        inner: Body,
        see: F,
    }
}

impl<F> http_body::Body for Inspect<F>
where
    F: FnMut(&Option<Result<Frame<Bytes>, BoxError>>),
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        (this.see)(&frame);
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The status a client-side body failure maps to, if `err` is one.
pub fn downstream_status(err: &(dyn std::error::Error + 'static)) -> Option<StatusCode> {
    crate::error::find_cause::<ProxyError>(err).map(ProxyError::status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that never yields a frame: only the guard's idle timer can end it.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_body_times_out_at_the_configured_instant() {
        let start = Instant::now();
        let mut body = Guarded::new(Stalled, Duration::from_secs(5));
        let frame = body.frame().await.expect("a frame");
        let err = frame.expect_err("an error");
        let err = err.downcast_ref::<ProxyError>().expect("a proxy error");
        assert_eq!(err.reason(), Reason::RequestTimeout);
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    /// One frame after four seconds, then nothing.
    struct OneLateFrame(Option<Pin<Box<Sleep>>>);

    impl http_body::Body for OneLateFrame {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.as_mut() {
                Some(delay) => {
                    ready!(delay.as_mut().poll(cx));
                    self.0 = None;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"late")))))
                }
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_restarts_after_each_frame() {
        let start = Instant::now();
        let late = OneLateFrame(Some(Box::pin(sleep(Duration::from_secs(4)))));
        let mut body = Guarded::new(late, Duration::from_secs(5));
        assert!(
            body.frame().await.unwrap().is_ok(),
            "a 4s pause is within the 5s limit"
        );
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(9),
            "5s after the last frame"
        );
    }

    /// These frames, last first.
    struct Frames(Vec<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop().map(Ok))
        }
    }

    #[tokio::test]
    async fn trailers_lose_the_fields_a_trailer_may_not_carry() {
        let mut trailers = http::HeaderMap::new();
        for (name, value) in [
            ("transfer-encoding", "chunked"),
            ("connection", "close, x-named"),
            ("x-named", "by connection"),
            ("keep-alive", "timeout=5"),
            ("content-length", "3"),
            ("host", "elsewhere"),
            ("te", "trailers"),
            ("x-checksum", "abc"),
        ] {
            trailers.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let inner = Frames(vec![
            Frame::trailers(trailers),
            Frame::data(Bytes::from_static(b"abc")),
        ]);
        let mut body = Guarded::new(inner, Duration::from_secs(5));
        assert!(body.frame().await.unwrap().unwrap().is_data());
        let kept = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        let names: Vec<&str> = kept.keys().map(http::HeaderName::as_str).collect();
        assert_eq!(names, ["x-checksum"]);
    }

    #[tokio::test]
    async fn decode_errors_become_bad_request() {
        let inner = Full::new(Bytes::from_static(b"x"))
            .map_err(|never| match never {})
            .with_trailers(async { Some(Err::<http::HeaderMap, BoxError>("bad chunk".into())) });
        let mut body = Guarded::new(Box::pin(inner), Duration::from_secs(5));
        assert!(body.frame().await.expect("data").is_ok());
        let err = body.frame().await.expect("err").expect_err("an error");
        assert_eq!(
            downstream_status(err.as_ref()),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[tokio::test]
    async fn held_guards_go_at_the_end_of_the_body_or_when_it_is_dropped() {
        let guard = std::sync::Arc::new(());
        let mut b = hold_until_end(full("x"), guard.clone());
        assert_eq!(std::sync::Arc::strong_count(&guard), 2);
        assert!(b.frame().await.unwrap().is_ok());
        assert!(b.frame().await.is_none());
        assert_eq!(
            std::sync::Arc::strong_count(&guard),
            1,
            "released at the end"
        );

        let b = hold_until_end(full("x"), guard.clone());
        drop(b);
        assert_eq!(
            std::sync::Arc::strong_count(&guard),
            1,
            "released when dropped"
        );
    }

    #[tokio::test]
    async fn prime_replays_the_first_frame() {
        let body = prime(full("hello")).await.expect("primed");
        let bytes = body.collect().await.expect("collect").to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }

    #[tokio::test]
    async fn prime_surfaces_a_bad_first_chunk() {
        let bad = Guarded::new(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .with_trailers(async { Some(Err::<http::HeaderMap, BoxError>("bad".into())) }),
            Duration::from_secs(1),
        );
        let err = prime(bad.boxed_unsync()).await.expect_err("error");
        assert_eq!(
            downstream_status(err.as_ref()),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
