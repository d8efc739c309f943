//! Keeps the client's blame for a request body that fails on its way to an HTTP/2 upstream.
//!
//! hyper sends an HTTP/2 request body from a task of its own: when the body fails (the
//! client stalled past `bodyIdleTimeout`, or sent a malformed chunk), that task resets the
//! stream and the response future only learns "stream reset", which reads as the upstream's
//! fault (502, counted against the endpoint and its breaker). The body is therefore watched
//! here, and its error, which already names the client as the one to blame, is kept for the
//! response future to report instead.

use std::sync::{Arc, OnceLock};

use proxy_core::error::find_cause;
use proxy_core::{Body, ProxyError};

/// Where a watched body leaves its failure.
#[derive(Clone, Debug, Default)]
pub(super) struct Fault(Arc<OnceLock<ProxyError>>);

impl Fault {
    /// The client's failure, if its body failed with one.
    pub(super) fn take(&self) -> Option<ProxyError> {
        self.0.get().map(ProxyError::detached)
    }
}

/// Wraps `body` so a failure of the client's (a [`ProxyError`] its guard raised) is kept in
/// the returned [`Fault`] as well as passed on. `holds` lives as long as the body (the
/// stream's slot on its connection).
pub(super) fn watch<H: Send + 'static>(body: Body, holds: H) -> (Body, Fault) {
    let fault = Fault::default();
    let kept = fault.clone();
    let body = proxy_core::body::inspect(body, move |frame| {
        // Owned by the body's observer, so released with the body.
        let _ = &holds;
        if let Some(Err(e)) = frame {
            if let Some(client) = find_cause::<ProxyError>(e.as_ref()) {
                let _ = kept.0.set(client.detached());
            }
        }
    });
    (body, fault)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use proxy_core::BoxError;
    use proxy_core::Reason;

    #[tokio::test]
    async fn a_client_failure_is_kept_and_passed_on() {
        let failing = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err::<Frame<Bytes>, BoxError>(Box::new(ProxyError::new(
                Reason::RequestTimeout,
                "request body idle",
            ))),
        ]));
        let (mut body, fault) = watch(proxy_core::body::boxed(failing), ());
        assert!(body.frame().await.unwrap().is_ok());
        assert!(fault.take().is_none(), "nothing failed yet");
        assert!(
            body.frame().await.unwrap().is_err(),
            "the error is passed on"
        );
        assert_eq!(fault.take().unwrap().reason(), Reason::RequestTimeout);
    }

    #[tokio::test]
    async fn a_body_that_ends_well_leaves_no_fault() {
        let (body, fault) = watch(proxy_core::body::full("hello"), ());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert!(fault.take().is_none());
    }
}
