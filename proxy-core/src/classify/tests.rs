//! Unit tests for the classifier: statuses, gRPC, Skiff's own reasons and errors, and the
//! one rule of retryability seen from each side.

use super::*;

#[test]
fn http_statuses() {
    assert_eq!(classify(StatusCode::OK, None, None), Class::Success);
    assert_eq!(classify(StatusCode::NOT_FOUND, None, None), Class::Success);
    assert_eq!(
        classify(StatusCode::SERVICE_UNAVAILABLE, None, None),
        Class::Failure { retryable: true }
    );
    assert_eq!(
        classify(StatusCode::INTERNAL_SERVER_ERROR, None, None),
        Class::Failure { retryable: false }
    );
}

#[test]
fn grpc_status_wins_over_http_status() {
    assert_eq!(classify(StatusCode::OK, Some(0), None), Class::Success);
    assert_eq!(
        classify(StatusCode::OK, Some(14), None),
        Class::Failure { retryable: true }
    );
    assert_eq!(
        classify(StatusCode::OK, Some(13), None),
        Class::Failure { retryable: false }
    );
    // The application's answers, as Linkerd classifies them: INVALID_ARGUMENT, NOT_FOUND.
    assert_eq!(classify(StatusCode::OK, Some(3), None), Class::Success);
    assert_eq!(classify(StatusCode::OK, Some(5), None), Class::Success);
    // A 500 whose gRPC status says OK is judged by the gRPC status.
    assert_eq!(
        classify(StatusCode::INTERNAL_SERVER_ERROR, Some(0), None),
        Class::Success
    );
}

#[test]
fn a_retry_policy_naming_a_grpc_code_makes_it_a_failure() {
    let c = Classifier {
        retryable_statuses: Vec::new(),
        retryable_grpc: vec![5],
    };
    assert_eq!(
        c.classify(StatusCode::OK, Some(5), None),
        Class::Failure { retryable: true }
    );
}

#[test]
fn proxy_errors_are_failures() {
    let c = classify(StatusCode::NOT_FOUND, None, Some(Reason::NoRoute));
    assert_eq!(c, Class::Failure { retryable: false });
    assert_eq!(c.as_label(), "failure");
}

#[test]
fn configured_statuses_widen_retries_but_not_failures() {
    let c = Classifier {
        retryable_statuses: vec![500, 429],
        retryable_grpc: vec![],
    };
    assert_eq!(
        c.classify(StatusCode::INTERNAL_SERVER_ERROR, None, None),
        Class::Failure { retryable: true }
    );
    assert_eq!(
        c.classify(StatusCode::SERVICE_UNAVAILABLE, None, None),
        Class::Failure { retryable: false }
    );
    assert_eq!(
        c.classify(StatusCode::TOO_MANY_REQUESTS, None, None),
        Class::Failure { retryable: true }
    );
    assert_eq!(
        c.classify(StatusCode::OK, Some(14), None),
        Class::Failure { retryable: false }
    );
}

#[test]
fn errors_and_their_responses_agree_on_retryability_for_every_reason() {
    let custom = Classifier {
        retryable_statuses: vec![500, 429],
        retryable_grpc: vec![],
    };
    for reason in Reason::ALL {
        let want = Class::Failure {
            retryable: reason.is_retryable_by_default(),
        };
        let err = ProxyError::new(reason, "x");
        assert_eq!(
            err.is_retryable(),
            want.is_retryable(),
            "{reason}: the error"
        );
        // Configured statuses widen what a policy retries among responses, never among
        // Skiff's own reasons.
        for c in [Classifier::standard(), &custom] {
            let as_response = c.classify(reason.status(), None, Some(reason));
            assert_eq!(as_response, want, "{reason}: the response Respond makes");
            assert_eq!(c.classify_error(&err), want, "{reason}: the error itself");
            let wrapped: crate::BoxError = Box::new(std::io::Error::other(err.detached()));
            assert_eq!(
                c.classify_error(wrapped.as_ref()),
                want,
                "{reason}: wrapped"
            );
            let mut rsp = crate::respond::error_response(&err, http::Version::HTTP_11);
            assert_eq!(c.classify_response(&rsp), want, "{reason}: by extension");
            *rsp.status_mut() = StatusCode::OK;
            assert_eq!(c.classify_response(&rsp), want, "{reason}: status aside");
        }
    }
}

#[test]
fn overrides_and_unknown_errors() {
    let c = Classifier::standard();
    let held_back = ProxyError::new(Reason::UpstreamReset, "x").with_retryable(false);
    assert_eq!(
        c.classify_error(&held_back),
        Class::Failure { retryable: false }
    );
    let unknown: crate::BoxError = "boom".into();
    assert_eq!(
        c.classify_error(unknown.as_ref()),
        Class::Failure { retryable: false },
        "classified as the internal error Respond makes of it"
    );
}

#[test]
fn the_classification_is_spelled_once() {
    for class in [
        Class::Success,
        Class::Failure { retryable: true },
        Class::Failure { retryable: false },
    ] {
        let c = class.classification();
        assert_eq!(c.is_success(), class.is_success());
        assert_eq!(class.as_label(), c.as_str());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, format!("\"{}\"", c.as_str()));
        assert_eq!(serde_json::from_str::<Classification>(&json).unwrap(), c);
    }
}

#[test]
fn reads_grpc_status() {
    let mut h = HeaderMap::new();
    assert_eq!(grpc_status(&h), None);
    h.insert("grpc-status", "14".parse().unwrap());
    assert_eq!(grpc_status(&h), Some(14));
}
