use std::sync::Arc;

use http::{Request, Response};
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::context::RouteContext;

fn backends(weights: &[(&str, u32, bool)]) -> Backends<&'static str> {
    Backends::new(
        weights
            .iter()
            .map(|&(name, weight, valid)| Backend {
                name: name.to_owned(),
                weight,
                target: valid.then(|| if name == "a" { "A" } else { "B" }),
                filters: None,
            })
            .collect(),
    )
}

#[test]
fn draws_land_in_proportion_to_the_weights() {
    let split = backends(&[("a", 90, true), ("b", 10, true)]);
    let mut a = 0;
    for draw in 0..1000 {
        if split.pick(draw).unwrap().name == "a" {
            a += 1;
        }
    }
    assert_eq!(a, 900, "every residue of the total weight is counted once");
}

#[test]
fn weight_zero_gets_nothing_and_all_zero_is_an_error() {
    let split = backends(&[("a", 0, true), ("b", 3, true)]);
    assert!((0..100).all(|d| split.pick(d).unwrap().name == "b"));
    let none = backends(&[("a", 0, true)]);
    assert_eq!(none.pick(7).unwrap_err().reason(), Reason::InvalidBackend);
}

#[tokio::test]
async fn the_layer_stores_the_drawn_target_or_refuses_an_invalid_one() {
    let svc = SplitLayer.layer(service_fn(|req: Request<()>| async move {
        let target = *req.extensions().get::<&'static str>().expect("a target");
        Ok::<_, BoxError>(Response::new(target))
    }));
    let with = |backends: Backends<&'static str>| {
        let mut req = Request::new(());
        let ctx = RouteContext::new(Arc::new(backends));
        req.extensions_mut().insert(Arc::new(ctx));
        req
    };

    let req = with(backends(&[("a", 1, true)]));
    assert_eq!(*svc.clone().oneshot(req).await.unwrap().body(), "A");

    let req = with(backends(&[("b", 1, false)]));
    let err = svc.clone().oneshot(req).await.unwrap_err();
    let err = err.downcast_ref::<ProxyError>().unwrap();
    assert_eq!(err.reason(), Reason::InvalidBackend);
    assert_eq!(err.status(), http::StatusCode::INTERNAL_SERVER_ERROR);

    // A plain service's one backend is taken without a draw.
    let req = with(Backends::single("only", "O"));
    assert_eq!(*svc.clone().oneshot(req).await.unwrap().body(), "O");
}

#[tokio::test]
async fn every_layer_below_the_router_refuses_a_request_without_its_context() {
    let ok = || {
        service_fn(|_req: Request<()>| async {
            Ok::<_, BoxError>(Response::new(crate::body::empty()))
        })
    };
    let refused = |result: Result<Response<crate::Body>, BoxError>| {
        let err = result.expect_err("refused");
        let err = err.downcast_ref::<ProxyError>().expect("a ProxyError");
        assert_eq!(err.reason(), Reason::Internal);
        assert!(err.to_string().contains("no route context"), "{err}");
    };
    refused(SplitLayer.layer(ok()).oneshot(Request::new(())).await);
    refused(
        crate::limit::LimitLayer
            .layer(ok())
            .oneshot(Request::new(()))
            .await,
    );
    refused(
        crate::timeout::TimeoutLayer::request()
            .layer(ok())
            .oneshot(Request::new(()))
            .await,
    );
    refused(
        crate::timeout::TimeoutLayer::backend()
            .layer(ok())
            .oneshot(Request::new(()))
            .await,
    );
    let retry = crate::retry::RetryLayer.layer(service_fn(|_req: Request<crate::Body>| async {
        Ok::<_, BoxError>(Response::new(crate::body::empty()))
    }));
    refused(retry.oneshot(Request::new(crate::body::empty())).await);
}
