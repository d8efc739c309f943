//! Unit tests for [`super::Limit`], on tokio's paused clock.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::advance;
use tower::{Layer, ServiceExt};

use super::*;

fn upstream(
) -> Limit<impl Service<Request<()>, Response = Response<Body>, Error = BoxError> + Clone> {
    LimitLayer.layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, BoxError>(Response::new(body::full("ok")))
    }))
}

fn with(limits: &Arc<Policy>) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(crate::context::for_tests(|c| {
        c.limits = Some(limits.clone())
    }));
    req
}

fn reason(result: Result<Response<Body>, BoxError>) -> (Reason, Option<Duration>) {
    let err = result.expect_err("refused");
    let e = err.downcast_ref::<ProxyError>().unwrap();
    (e.reason(), e.retry_after())
}

#[tokio::test(start_paused = true)]
async fn the_bucket_allows_the_burst_then_the_rate() {
    let limits = Arc::new(Policy {
        rate: Some(RateLimit::new(10.0, 5)),
        ..Default::default()
    });
    for _ in 0..5 {
        assert!(upstream().oneshot(with(&limits)).await.is_ok());
    }
    let (r, after) = reason(upstream().oneshot(with(&limits)).await);
    assert_eq!(r, Reason::RateLimited);
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        after,
        Some(Duration::from_millis(100)),
        "one token every 100ms"
    );

    advance(Duration::from_millis(100)).await;
    assert!(upstream().oneshot(with(&limits)).await.is_ok());
    assert!(upstream().oneshot(with(&limits)).await.is_err());

    // Over one second at 10/s, ten more get through: the rate, not the burst, is the cap.
    let mut ok = 0;
    for _ in 0..100 {
        advance(Duration::from_millis(10)).await;
        ok += usize::from(upstream().oneshot(with(&limits)).await.is_ok());
    }
    assert_eq!(ok, 10);
}

#[tokio::test(start_paused = true)]
async fn in_flight_beyond_the_cap_is_shed_until_bodies_end() {
    let limits = Arc::new(Policy {
        max_in_flight: Some(MaxInFlight::new(2)),
        ..Default::default()
    });
    let a = upstream().oneshot(with(&limits)).await.unwrap();
    let b = upstream().oneshot(with(&limits)).await.unwrap();
    let (r, _) = reason(upstream().oneshot(with(&limits)).await);
    assert_eq!(r, Reason::LoadShed);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Reading a body to its end (dropping it) frees the slot.
    let _ = a.into_body().collect().await.unwrap();
    let c = upstream().oneshot(with(&limits)).await.unwrap();
    drop((b, c));
    assert!(upstream().oneshot(with(&limits)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn shed_requests_do_not_spend_rate_tokens() {
    let limits = Arc::new(Policy {
        rate: Some(RateLimit::new(1.0, 2)),
        max_in_flight: Some(MaxInFlight::new(1)),
        ..Default::default()
    });
    let held = upstream().oneshot(with(&limits)).await.unwrap();
    for _ in 0..5 {
        let (r, _) = reason(upstream().oneshot(with(&limits)).await);
        assert_eq!(r, Reason::LoadShed);
    }
    drop(held);
    assert!(
        upstream().oneshot(with(&limits)).await.is_ok(),
        "the second token is still there"
    );
}

#[tokio::test]
async fn requests_without_limits_pass() {
    for _ in 0..100 {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(crate::context::for_tests(|_| ()));
        assert!(upstream().oneshot(req).await.is_ok());
    }
}

fn from(limits: &Arc<Policy>, client: Client) -> Request<()> {
    let mut req = with(limits);
    req.extensions_mut().insert(client);
    req
}

#[tokio::test(start_paused = true)]
async fn per_client_buckets_are_separate_and_bounded() {
    let limits = Arc::new(Policy {
        per_client: Some(PerClientRateLimit::new(1.0, 2, 2)),
        ..Default::default()
    });
    let ip = |n: u8| Client::Addr(std::net::IpAddr::from([127, 0, 0, n]));
    for _ in 0..2 {
        assert!(upstream().oneshot(from(&limits, ip(1))).await.is_ok());
    }
    let (r, after) = reason(upstream().oneshot(from(&limits, ip(1))).await);
    assert_eq!(
        (r, after),
        (Reason::RateLimited, Some(Duration::from_secs(1)))
    );
    // Another client still has its own burst.
    assert!(upstream().oneshot(from(&limits, ip(2))).await.is_ok());
    let id = Client::Identity("spiffe://td/ns/a/sa/b".into());
    // Two buckets are tracked, neither idle: a third client shares the overflow bucket.
    assert!(upstream().oneshot(from(&limits, id.clone())).await.is_ok());
    assert!(upstream().oneshot(from(&limits, ip(3))).await.is_ok());
    assert!(upstream().oneshot(from(&limits, ip(4))).await.is_err());
    let per_client = limits.per_client.as_ref().unwrap();
    assert!(
        per_client.tracked() <= 3,
        "two clients and the overflow bucket"
    );

    // Once buckets refill, idle clients are forgotten and new ones get their own.
    advance(Duration::from_secs(5)).await;
    assert!(upstream().oneshot(from(&limits, id.clone())).await.is_ok());
    assert!(upstream().oneshot(from(&limits, id)).await.is_ok());
    assert!(per_client.tracked() <= 3);
}

#[tokio::test(start_paused = true)]
async fn a_route_enforces_its_service_limits_too() {
    let service = Arc::new(Policy {
        max_in_flight: Some(MaxInFlight::new(1)),
        ..Default::default()
    });
    let route = Arc::new(Policy {
        rate: Some(RateLimit::new(1.0, 5)),
        parent: Some(service.clone()),
        ..Default::default()
    });
    let held = upstream().oneshot(with(&route)).await.unwrap();
    let (r, _) = reason(upstream().oneshot(with(&service)).await);
    assert_eq!(
        r,
        Reason::LoadShed,
        "the route's request holds the service's slot"
    );
    drop(held);
    assert!(upstream().oneshot(with(&service)).await.is_ok());
}
