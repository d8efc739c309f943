//! The future shared by layers that either pass a request on or refuse it on the spot.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::ProxyError;
use crate::BoxError;

pin_project_lite::pin_project! {
    /// Either the inner service's future, or an immediate rejection.
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on variant fields
    #[project = MaybeRejectedProj]
    #[derive(Debug)]
    pub enum MaybeRejected<F> {
        /// The request was passed on.
        Forwarded { #[pin] future: F },
        /// The request was refused.
        Rejected { error: Option<ProxyError> },
    }
}

impl<F> MaybeRejected<F> {
    /// Wraps the outcome of a layer's decision.
    pub fn new(decision: Result<F, ProxyError>) -> Self {
        match decision {
            Ok(future) => Self::Forwarded { future },
            Err(error) => Self::Rejected { error: Some(error) },
        }
    }
}

impl<F, T> Future for MaybeRejected<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            MaybeRejectedProj::Forwarded { future } => future.poll(cx),
            MaybeRejectedProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(Box::new(error)))
            }
        }
    }
}
