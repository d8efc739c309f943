//! Unit tests for [`super::Retry`], on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::*;
use crate::classify::Classifier;
use crate::error::{ProxyError, Reason};

#[derive(Debug, Default)]
struct Counts {
    retried: AtomicUsize,
    exhausted: AtomicUsize,
}

impl RetryObserver for Counts {
    fn retried(&self) {
        self.retried.fetch_add(1, Ordering::SeqCst);
    }
    fn budget_exhausted(&self) {
        self.exhausted.fetch_add(1, Ordering::SeqCst);
    }
}

enum Outcome {
    Status(u16),
    Error(Reason),
}

/// A scripted upstream: answers with the queued outcomes (then 200), recording when each
/// try arrived and the body it carried.
#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Outcome>>>,
    tries: Arc<Mutex<Vec<(Instant, Bytes)>>>,
}

impl Upstream {
    fn new(script: impl IntoIterator<Item = Outcome>) -> Self {
        Self {
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            tries: Arc::default(),
        }
    }

    fn tries(&self) -> usize {
        self.tries.lock().unwrap().len()
    }

    fn service(&self) -> Retry<crate::BoxHttpService> {
        let this = self.clone();
        RetryLayer.layer(crate::BoxHttpService::new(tower::service_fn(
            move |req: Request<Body>| {
                let this = this.clone();
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    this.tries.lock().unwrap().push((Instant::now(), body));
                    match this.script.lock().unwrap().pop_front() {
                        Some(Outcome::Error(r)) => {
                            Err(Box::new(ProxyError::new(r, "scripted")) as BoxError)
                        }
                        Some(Outcome::Status(s)) => {
                            let mut rsp = Response::new(body::empty());
                            *rsp.status_mut() = StatusCode::from_u16(s).unwrap();
                            Ok(rsp)
                        }
                        None => Ok(Response::new(body::full("ok"))),
                    }
                }
            },
        )))
    }
}

fn policy(retries: u32, budget: BudgetParams, counts: &Arc<Counts>) -> Arc<Policy> {
    let backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };
    Arc::new(Policy::new(
        retries,
        Classifier::default(),
        backoff,
        false,
        budget,
        counts.clone(),
    ))
}

fn generous() -> BudgetParams {
    BudgetParams {
        ratio: 10.0,
        min_per_second: 1000,
        ttl: Duration::from_secs(10),
    }
}

fn request(method: Method, body: Body, policy: &Arc<Policy>) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri("/")
        .body(body)
        .unwrap();
    req.extensions_mut().insert(crate::context::for_tests(|c| {
        c.retry = Some(policy.clone())
    }));
    req
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_replaying_the_body() {
    let counts = Arc::new(Counts::default());
    let p = policy(3, generous(), &counts);
    let up = Upstream::new([Outcome::Status(503), Outcome::Error(Reason::UpstreamReset)]);
    let rsp = up
        .service()
        .oneshot(request(Method::PUT, body::full("payload"), &p))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(up.tries(), 3);
    assert!(up
        .tries
        .lock()
        .unwrap()
        .iter()
        .all(|(_, b)| &b[..] == b"payload"));
    assert_eq!(counts.retried.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_configured_retries() {
    let counts = Arc::new(Counts::default());
    let p = policy(2, generous(), &counts);
    let up = Upstream::new((0..10).map(|_| Outcome::Status(503)));
    let rsp = up
        .service()
        .oneshot(request(Method::GET, body::empty(), &p))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.tries(), 3, "one try and two retries");
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_exponentially_with_jitter() {
    let counts = Arc::new(Counts::default());
    let p = policy(4, generous(), &counts);
    let up = Upstream::new((0..4).map(|_| Outcome::Status(502)));
    up.service()
        .oneshot(request(Method::GET, body::empty(), &p))
        .await
        .unwrap();
    let tries: Vec<Instant> = up.tries.lock().unwrap().iter().map(|(t, _)| *t).collect();
    assert_eq!(tries.len(), 5);
    for (n, pair) in tries.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        // Retry n+1 waits between base*2^n / 2 and base*2^n.
        let full = Duration::from_millis(100) * (1 << n);
        assert!(
            gap >= full / 2 && gap <= full,
            "retry {}: waited {gap:?}, expected up to {full:?}",
            n + 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_extra_load() {
    let counts = Arc::new(Counts::default());
    let budget = BudgetParams {
        ratio: 0.2,
        min_per_second: 0,
        ttl: Duration::from_secs(10),
    };
    let p = policy(5, budget, &counts);
    let up = Upstream::new((0..1000).map(|_| Outcome::Status(503)));
    for _ in 0..50 {
        let rsp = up
            .service()
            .oneshot(request(Method::GET, body::empty(), &p))
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let retried = counts.retried.load(Ordering::SeqCst);
    assert!(
        retried <= 11,
        "at most ~20% extra load: {retried} retries for 50 requests"
    );
    assert_eq!(up.tries(), 50 + retried);
    assert!(
        counts.exhausted.load(Ordering::SeqCst) >= 39,
        "the rest were refused by the budget"
    );
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_requests_retry_only_when_nothing_was_sent() {
    let counts = Arc::new(Counts::default());
    let p = policy(3, generous(), &counts);
    let up = Upstream::new([Outcome::Status(503)]);
    let rsp = up
        .service()
        .oneshot(request(Method::POST, body::full("x"), &p))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        up.tries(),
        1,
        "a POST that may have been processed is not repeated"
    );

    let up = Upstream::new([Outcome::Error(Reason::UpstreamConnect)]);
    let rsp = up
        .service()
        .oneshot(request(Method::POST, body::full("x"), &p))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(up.tries(), 2, "a refused connect never carried the POST");
}

#[tokio::test(start_paused = true)]
async fn bodies_beyond_the_replay_buffer_are_sent_once_intact() {
    let counts = Arc::new(Counts::default());
    let p = policy(3, generous(), &counts);
    let big = Bytes::from(vec![7u8; DEFAULT_MAX_REPLAY_BYTES + 1]);
    let up = Upstream::new([Outcome::Status(503)]);
    let rsp = up
        .service()
        .oneshot(request(Method::PUT, body::full(big.clone()), &p))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.tries(), 1);
    assert_eq!(up.tries.lock().unwrap()[0].1, big);
}

#[tokio::test(start_paused = true)]
async fn routes_without_a_policy_are_tried_once() {
    let up = Upstream::new([Outcome::Status(503)]);
    let mut req = Request::get("/").body(body::empty()).unwrap();
    req.extensions_mut()
        .insert(crate::context::for_tests(|c| c.retry = None));
    let rsp = up.service().oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.tries(), 1);
}

#[test]
fn the_policy_retries_errors_by_the_shared_rule_for_every_reason() {
    let p = policy(3, generous(), &Arc::new(Counts::default()));
    for reason in Reason::ALL {
        let failed: Result<Response<Body>, BoxError> = Err(Box::new(ProxyError::new(reason, "x")));
        let retryable = reason.is_retryable_by_default();
        assert_eq!(
            p.is_retryable(&failed, true),
            retryable,
            "{reason}, idempotent"
        );
        assert_eq!(
            p.is_retryable(&failed, false),
            retryable && reason == Reason::UpstreamConnect,
            "{reason}, not idempotent: only a refused connect sent nothing"
        );
        // The response Respond makes of the error is classified the same way.
        let rsp =
            crate::respond::error_response(&ProxyError::new(reason, "x"), http::Version::HTTP_11);
        assert_eq!(
            p.is_retryable(&Ok(rsp), true),
            retryable,
            "{reason}, as a response"
        );
    }
}
