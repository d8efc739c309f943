//! Unit tests for [`super::Timeout`], on tokio's paused clock.

use std::time::Duration;

use http::{Request, StatusCode};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::*;

/// A service that answers after `delay`.
fn slow(
    delay: Duration,
) -> impl Service<Request<()>, Response = &'static str, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(move |_req: Request<()>| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>("done")
    })
}

fn with(timeouts: Timeouts) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(crate::context::for_tests(|c| c.timeouts = timeouts));
    req
}

#[tokio::test(start_paused = true)]
async fn request_timeout_fires_at_the_deadline_with_504() {
    let start = Instant::now();
    let svc = TimeoutLayer::request().layer(slow(Duration::from_secs(10)));
    let t = Timeouts {
        request: Some(Duration::from_secs(2)),
        backend_request: None,
        ..Default::default()
    };
    let err = svc.oneshot(with(t)).await.expect_err("timed out");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let err = err.downcast_ref::<ProxyError>().unwrap();
    assert_eq!(err.reason(), Reason::RequestTimeout);
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn backend_timeout_is_retryable_upstream_timeout() {
    let svc = TimeoutLayer::backend().layer(slow(Duration::from_secs(10)));
    let t = Timeouts {
        request: None,
        backend_request: Some(Duration::from_millis(250)),
        ..Default::default()
    };
    let start = Instant::now();
    let err = svc.oneshot(with(t)).await.expect_err("timed out");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    let err = err.downcast_ref::<ProxyError>().unwrap();
    assert_eq!(err.reason(), Reason::UpstreamTimeout);
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn no_timeouts_means_no_deadline() {
    let svc = TimeoutLayer::request().layer(slow(Duration::from_secs(3600)));
    assert_eq!(
        svc.oneshot(with(Timeouts::default())).await.unwrap(),
        "done"
    );
    let svc = TimeoutLayer::backend().layer(slow(Duration::from_secs(1)));
    let t = Timeouts {
        request: Some(Duration::from_millis(1)),
        backend_request: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    assert_eq!(
        svc.oneshot(with(t)).await.unwrap(),
        "done",
        "only its own scope applies"
    );
}

impl IdleGuard for &'static str {
    fn guard_idle(self, _idle: Duration) -> Self {
        self
    }
}

/// A body that sends one frame, then nothing, ever.
struct OneThenStall(bool);

impl http_body::Body for OneThenStall {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"x",
            )))))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_response_stream_ends_with_upstream_timeout() {
    use http_body_util::BodyExt;

    let svc = TimeoutLayer::request().layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, BoxError>(http::Response::new(crate::body::boxed(OneThenStall(false))))
    }));
    let t = Timeouts {
        stream_idle: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let mut body = svc.oneshot(with(t)).await.unwrap().into_body();
    let start = Instant::now();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "x");
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    let err = err.downcast_ref::<ProxyError>().unwrap();
    assert_eq!(err.reason(), Reason::UpstreamTimeout);
}
