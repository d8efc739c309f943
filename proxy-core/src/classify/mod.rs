//! The one response classifier: success, failure, or failure that a retry may fix.
//!
//! Every consumer of an outcome asks this module, so that a request counted as a failure in
//! one place is a failure everywhere: the metrics layer (`response_total`'s `classification`
//! label, the `/stats` windows, the `classification` of tap's end event, which `skiff top`
//! counts), the circuit breaker, and the retry policy. Metrics and the breaker use the
//! default classifier; a retry policy uses the same rules with its own list of retryable
//! statuses (so a `codes: [429]` policy retries a 429 that metrics count as a success).
//! Which of Skiff's own reasons a retry may fix is [`Reason::is_retryable_by_default`],
//! read by [`ProxyError::new`] too, so an error and the response made from it agree.

use http::{HeaderMap, Response, StatusCode};

use crate::error::{find_cause, ProxyError, Reason};

/// The outcome of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The request succeeded.
    Success,
    /// The request failed; `retryable` says whether trying again could help.
    Failure {
        /// Whether a retry may succeed.
        retryable: bool,
    },
}

impl Class {
    /// The `classification` metric label.
    pub fn as_label(self) -> &'static str {
        self.classification().as_str()
    }

    /// Success or failure, without the retry hint: what metrics, `/stats` and tap report.
    pub fn classification(self) -> Classification {
        match self {
            Self::Success => Classification::Success,
            Self::Failure { .. } => Classification::Failure,
        }
    }

    /// Whether the outcome counts as a success.
    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    /// Whether the outcome is a failure that trying again may fix.
    pub fn is_retryable(self) -> bool {
        self == Self::Failure { retryable: true }
    }
}

/// A [`Class`] as it is reported: the `classification` label of `response_total`, the
/// success and failure counts of `/stats`, and the `classification` field of tap's end event.
/// One type so that the three cannot spell or decide it differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// The request succeeded.
    Success,
    /// The request failed.
    Failure,
}

impl Classification {
    /// The label value: `success` or `failure` (the same as its serde form).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    /// Whether it is a success.
    pub fn is_success(self) -> bool {
        self == Self::Success
    }
}

/// gRPC status UNAVAILABLE: the service is temporarily unable to answer.
pub const GRPC_UNAVAILABLE: u32 = 14;

/// Decides success, failure and retryability. Metrics use the default; a retry policy
/// configures which statuses it retries, and a status it lists (a 429, say) is a retryable
/// failure from that policy's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classifier {
    /// HTTP statuses a retry may fix.
    pub retryable_statuses: Vec<u16>,
    /// gRPC statuses a retry may fix.
    pub retryable_grpc: Vec<u32>,
}

impl Default for Classifier {
    fn default() -> Self {
        Self {
            retryable_statuses: vec![502, 503, 504],
            retryable_grpc: vec![GRPC_UNAVAILABLE],
        }
    }
}

impl Classifier {
    /// The default classifier, built once: metrics and the breaker run it on every response.
    pub fn standard() -> &'static Classifier {
        static DEFAULT: std::sync::LazyLock<Classifier> =
            std::sync::LazyLock::new(Classifier::default);
        &DEFAULT
    }

    /// Classifies a finished response. `grpc_status` comes from the trailers (or the
    /// headers, for a trailers-only response); `error` is the proxy's own reason when Skiff
    /// answered itself.
    pub fn classify(
        &self,
        status: StatusCode,
        grpc_status: Option<u32>,
        error: Option<Reason>,
    ) -> Class {
        if let Some(reason) = error {
            return Class::Failure {
                retryable: reason.is_retryable_by_default(),
            };
        }
        if let Some(code) = grpc_status {
            let retryable = self.retryable_grpc.contains(&code);
            return if GRPC_FAILURES.contains(&code) || retryable {
                Class::Failure { retryable }
            } else {
                // The application's answer (NOT_FOUND, INVALID_ARGUMENT, ...), as an HTTP
                // 4xx is.
                Class::Success
            };
        }
        if status.is_server_error() || self.retryable_statuses.contains(&status.as_u16()) {
            return Class::Failure {
                retryable: self.retryable_statuses.contains(&status.as_u16()),
            };
        }
        Class::Success
    }

    /// Classifies a response by its head: the status, a `grpc-status` header (a
    /// trailers-only gRPC answer) and the [`Reason`] Respond leaves in the extensions of the
    /// responses Skiff makes itself. For layers that decide when the headers arrive (retry,
    /// breaker); the metrics layer waits for the trailers and calls [`Self::classify`].
    pub fn classify_response<B>(&self, rsp: &Response<B>) -> Class {
        self.classify(
            rsp.status(),
            grpc_status(rsp.headers()),
            rsp.extensions().get::<Reason>().copied(),
        )
    }

    /// Classifies a request that ended in an error instead of a response: always a failure,
    /// retryable as the [`ProxyError`] in its chain says (its reason's default unless that
    /// error overrode it). An error that is not a `ProxyError` is what Respond answers
    /// `internal`, and is classified as that reason.
    pub fn classify_error(&self, err: &(dyn std::error::Error + 'static)) -> Class {
        let retryable = match find_cause::<ProxyError>(err) {
            Some(e) => e.is_retryable(),
            None => Reason::Internal.is_retryable_by_default(),
        };
        Class::Failure { retryable }
    }
}

/// The gRPC codes that are failures, as Linkerd classifies them by default: UNKNOWN,
/// DEADLINE_EXCEEDED, PERMISSION_DENIED, INTERNAL, UNAVAILABLE and DATA_LOSS. The others
/// are the application's answers to a request it handled (a retry policy may still name
/// any code, which then counts as a failure too).
pub const GRPC_FAILURES: [u32; 6] = [2, 4, 7, 13, 14, 15];

/// Classifies with the default [`Classifier`].
pub fn classify(status: StatusCode, grpc_status: Option<u32>, error: Option<Reason>) -> Class {
    Classifier::standard().classify(status, grpc_status, error)
}

/// Reads `grpc-status` from a header or trailer map.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests;
