//! The one response classifier: success, failure, or failure that a retry may fix.
//!
//! Metrics and the circuit breaker use the default classifier; a retry policy uses the same
//! rules with its own list of retryable statuses (so a `codes: [429]` policy retries a 429
//! that metrics count as a success).

use http::{HeaderMap, StatusCode};

use crate::error::Reason;

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
        match self {
            Self::Success => "success",
            Self::Failure { .. } => "failure",
        }
    }

    /// Whether the outcome counts as a success.
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
            let retryable = matches!(
                reason,
                Reason::UpstreamConnect | Reason::UpstreamReset | Reason::UpstreamTimeout
            );
            return Class::Failure { retryable };
        }
        if let Some(code) = grpc_status {
            return match code {
                0 => Class::Success,
                c => Class::Failure {
                    retryable: self.retryable_grpc.contains(&c),
                },
            };
        }
        if status.is_server_error() || self.retryable_statuses.contains(&status.as_u16()) {
            return Class::Failure {
                retryable: self.retryable_statuses.contains(&status.as_u16()),
            };
        }
        Class::Success
    }
}

/// Classifies with the default [`Classifier`] (built once: this runs on every response).
pub fn classify(status: StatusCode, grpc_status: Option<u32>, error: Option<Reason>) -> Class {
    static DEFAULT: std::sync::LazyLock<Classifier> = std::sync::LazyLock::new(Classifier::default);
    DEFAULT.classify(status, grpc_status, error)
}

/// Reads `grpc-status` from a header or trailer map.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
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
            classify(StatusCode::OK, Some(3), None),
            Class::Failure { retryable: false }
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
    fn reads_grpc_status() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(14));
    }
}
