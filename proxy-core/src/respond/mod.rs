//! The error responder: turns a failed request into the response the client sees.
//!
//! Every response Skiff makes itself carries `skiff-error: <reason>`, a short plain-text body
//! saying what went wrong, and a log line; the [`Reason`] also rides in the response's
//! extensions so metrics label it without parsing headers. Errors that are not a
//! [`ProxyError`] are bugs in classification and answer 500 `internal`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode, Version};
use tower::{Layer, Service};

use crate::body::{self, Body};
use crate::error::{find_cause, Blame, ProxyError, Reason};
use crate::BoxError;

/// The header naming the reason of a response Skiff generated.
pub const SKIFF_ERROR: &str = "skiff-error";

/// Answers errors from `S` with error responses.
#[derive(Clone, Debug)]
pub struct Respond<S> {
    inner: S,
}

/// Applies [`Respond`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RespondLayer;

impl<S> Layer<S> for RespondLayer {
    type Service = Respond<S>;

    fn layer(&self, inner: S) -> Respond<S> {
        Respond { inner }
    }
}

impl<S, B> Service<Request<B>> for Respond<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An inner service that cannot become ready is broken for good; report it on the
        // request rather than killing the connection.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                tracing::error!(error = %e, "service failed to become ready");
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ResponseFuture {
            version: req.version(),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Respond`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        version: Version,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(Ok(match result {
            Ok(rsp) => rsp,
            Err(err) => error_response(err.as_ref(), *this.version),
        }))
    }
}

/// Builds the response for `err` (see the module docs) and logs it.
pub fn error_response(err: &(dyn std::error::Error + 'static), version: Version) -> Response<Body> {
    let internal;
    let proxy_err = match find_cause::<ProxyError>(err) {
        Some(e) => e,
        None => {
            internal = ProxyError::new(Reason::Internal, "unclassified error");
            &internal
        }
    };
    let reason = proxy_err.reason();
    match proxy_err.blame() {
        Blame::Downstream => {
            tracing::info!(error = %reason, detail = %DisplayChain(err), "request refused")
        }
        Blame::Upstream | Blame::Proxy => {
            tracing::warn!(error = %reason, detail = %DisplayChain(err), "request failed")
        }
    }
    let mut rsp = Response::new(body::full(format!("{reason}: {}\n", proxy_err.detail())));
    *rsp.status_mut() = proxy_err.status();
    let headers = rsp.headers_mut();
    headers.insert(SKIFF_ERROR, HeaderValue::from_static(reason.as_str()));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(after) = proxy_err.retry_after() {
        // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    // After a framing or timeout error the HTTP/1 byte stream cannot be trusted to be at a
    // message boundary; close it rather than parse garbage as the next request.
    let client_stream_broken = matches!(reason, Reason::BadRequest | Reason::HeadersTooLarge)
        || (reason == Reason::RequestTimeout && proxy_err.status() == StatusCode::REQUEST_TIMEOUT);
    if version <= Version::HTTP_11 && client_stream_broken {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    rsp.extensions_mut().insert(reason);
    rsp
}

/// Displays an error with its causes, `a: b: c`, for log lines.
#[derive(Debug)]
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn errors_become_tagged_responses() {
        let svc = RespondLayer.layer(tower::service_fn(|_req: Request<()>| async {
            Err::<Response<Body>, BoxError>(Box::new(ProxyError::new(
                Reason::UpstreamConnect,
                "connection refused",
            )))
        }));
        let rsp = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(rsp.headers()[SKIFF_ERROR], "upstream-connect");
        assert_eq!(
            rsp.extensions().get::<Reason>(),
            Some(&Reason::UpstreamConnect)
        );
        assert!(rsp.headers().get(CONNECTION).is_none());
    }

    #[tokio::test]
    async fn unknown_errors_are_internal() {
        let svc = RespondLayer.layer(tower::service_fn(|_req: Request<()>| async {
            Err::<Response<Body>, BoxError>("boom".into())
        }));
        let rsp = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(rsp.headers()[SKIFF_ERROR], "internal");
    }

    #[test]
    fn rate_limited_answers_say_when_to_come_back() {
        let err = ProxyError::new(Reason::RateLimited, "x")
            .with_retry_after(std::time::Duration::from_millis(100));
        let rsp = error_response(&err, Version::HTTP_11);
        assert_eq!(rsp.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(rsp.headers()[RETRY_AFTER], "1");
        assert_eq!(rsp.headers()[SKIFF_ERROR], "rate-limited");
    }

    #[test]
    fn bad_http1_requests_close_the_connection() {
        let err = ProxyError::new(Reason::BadRequest, "x");
        let rsp = error_response(&err, Version::HTTP_11);
        assert_eq!(rsp.headers()[CONNECTION], "close");
        let rsp = error_response(&err, Version::HTTP_2);
        assert!(rsp.headers().get(CONNECTION).is_none());
    }
}
