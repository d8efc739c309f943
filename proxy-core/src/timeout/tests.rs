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
    req.extensions_mut().insert(timeouts);
    req
}

#[tokio::test(start_paused = true)]
async fn request_timeout_fires_at_the_deadline_with_504() {
    let start = Instant::now();
    let svc = TimeoutLayer::request().layer(slow(Duration::from_secs(10)));
    let t = Timeouts {
        request: Some(Duration::from_secs(2)),
        backend_request: None,
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
    assert_eq!(svc.oneshot(Request::new(())).await.unwrap(), "done");
    let svc = TimeoutLayer::backend().layer(slow(Duration::from_secs(1)));
    let t = Timeouts {
        request: Some(Duration::from_millis(1)),
        backend_request: Some(Duration::from_secs(2)),
    };
    assert_eq!(
        svc.oneshot(with(t)).await.unwrap(),
        "done",
        "only its own scope applies"
    );
}
