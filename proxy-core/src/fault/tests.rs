//! Unit tests for [`super::Fault`], on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::time::Instant;

use super::*;

/// A backend that answers 200 at once and counts its calls.
fn backend(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send + 'static>
       + Clone
       + Send
       + 'static {
    tower::service_fn(move |_req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(Response::new(body::empty())) }
    })
}

fn request(policy: Policy, grpc: bool) -> Request<Body> {
    let mut req = Request::new(body::empty());
    if grpc {
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    }
    req.extensions_mut().insert(crate::context::for_tests(|c| {
        c.fault = Some(Arc::new(policy))
    }));
    req
}

#[derive(Debug, Default)]
struct Counted(Mutex<Vec<Kind>>);

impl FaultObserver for Counted {
    fn injected(&self, kind: Kind) {
        self.0.lock().unwrap().push(kind);
    }
}

const TEAPOT: StatusCode = StatusCode::IM_A_TEAPOT;

#[tokio::test]
async fn a_tenth_of_requests_is_aborted_with_the_status_and_reason() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::new(Counted::default());
    let mut svc = FaultLayer.layer(backend(calls.clone()));
    let policy = || Policy {
        abort: Some(Abort {
            percent: 10.0,
            status: TEAPOT,
            grpc_status: None,
        }),
        delay: None,
        observer: Some(counted.clone()),
    };
    let mut aborted = 0;
    for _ in 0..10_000 {
        match svc
            .ready()
            .await
            .unwrap()
            .call(request(policy(), false))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let e = e.downcast_ref::<ProxyError>().unwrap();
                assert_eq!((e.reason(), e.status()), (Reason::FaultInjected, TEAPOT));
                assert!(!e.is_retryable());
                aborted += 1;
            }
        }
    }
    // 10% of 10,000: 1,000, with a standard deviation of 30.
    assert!((850..=1150).contains(&aborted), "{aborted}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10_000 - aborted,
        "aborted ones never go on"
    );
    assert_eq!(counted.0.lock().unwrap().len(), aborted);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_request_waits_then_goes_on() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = FaultLayer.layer(backend(calls.clone()));
    let policy = Policy {
        abort: None,
        delay: Some(Delay {
            percent: 100.0,
            duration: Duration::from_secs(2),
        }),
        observer: None,
    };
    let start = Instant::now();
    let rsp = svc.oneshot(request(policy, false)).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_grpc_call_is_aborted_with_its_grpc_status() {
    let svc = FaultLayer.layer(backend(Arc::default()));
    let policy = Policy {
        abort: Some(Abort {
            percent: 100.0,
            status: StatusCode::SERVICE_UNAVAILABLE,
            grpc_status: Some(14),
        }),
        delay: None,
        observer: None,
    };
    let rsp = svc
        .clone()
        .oneshot(request(policy.clone(), true))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["grpc-status"], "14");
    assert_eq!(rsp.headers()["skiff-error"], "fault-injected");
    assert_eq!(
        rsp.extensions().get::<Reason>(),
        Some(&Reason::FaultInjected)
    );
    // A plain HTTP request to the same route gets the HTTP status.
    let e = svc.oneshot(request(policy, false)).await.unwrap_err();
    let e = e.downcast_ref::<ProxyError>().unwrap();
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn without_a_policy_or_a_draw_nothing_happens() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = FaultLayer.layer(backend(calls.clone()));
    let mut req = Request::new(body::empty());
    req.extensions_mut()
        .insert(crate::context::for_tests(|_| {}));
    assert!(svc.clone().oneshot(req).await.is_ok());
    let never = Policy {
        abort: Some(Abort {
            percent: 0.0,
            status: TEAPOT,
            grpc_status: None,
        }),
        ..Policy::default()
    };
    for _ in 0..1000 {
        assert!(svc
            .clone()
            .oneshot(request(never.clone(), false))
            .await
            .is_ok());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1001);
}
