//! The proxy's own error: a reason code (the `skiff-error` header), who caused the failure,
//! and whether the request may be retried.
//!
//! Every response Skiff generates instead of forwarding carries one of these reasons, so a user
//! can tell a proxy decision from an application answer by the header alone.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;

use crate::BoxError;

/// Why Skiff answered a request itself. The string form is the `skiff-error` header value and
/// the `error` metric label; both are contracts (listed in `docs/behaviour.md`, "Errors Skiff answers with").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request is malformed (framing, authority, headers, body encoding).
    BadRequest,
    /// Authorization refused the caller.
    Forbidden,
    /// The client was too slow sending its request (408), or the whole request ran out of
    /// time (504, see [`ProxyError::with_status`]).
    RequestTimeout,
    /// The request body exceeds a configured limit.
    BodyTooLarge,
    /// Too many header fields, or too many header bytes.
    HeadersTooLarge,
    /// No service or route matches the request.
    NoRoute,
    /// A connection to the upstream could not be established; nothing was sent.
    UpstreamConnect,
    /// The upstream closed or reset the connection before a full response.
    UpstreamReset,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// Every endpoint of the backend is ejected by the circuit breaker.
    CircuitOpen,
    /// The service has no endpoints to send to.
    NoEndpoints,
    /// The proxy shed load (concurrency limit).
    LoadShed,
    /// A rate limit refused the request.
    RateLimited,
    /// A route's chosen backend is not a configured service (Gateway API: 500).
    InvalidBackend,
    /// A bug or an impossible state in the proxy itself.
    Internal,
    /// A route's fault policy answered the request on purpose.
    FaultInjected,
}

impl Reason {
    /// The status code a response with this reason carries by default.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::UpstreamConnect | Self::UpstreamReset => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::CircuitOpen | Self::NoEndpoints | Self::LoadShed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal | Self::InvalidBackend => StatusCode::INTERNAL_SERVER_ERROR,
            // The policy's own status replaces it (`ProxyError::with_status`).
            Self::FaultInjected => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `skiff-error` header value and `error` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Forbidden => "forbidden",
            Self::RequestTimeout => "request-timeout",
            Self::BodyTooLarge => "body-too-large",
            Self::HeadersTooLarge => "headers-too-large",
            Self::NoRoute => "no-route",
            Self::UpstreamConnect => "upstream-connect",
            Self::UpstreamReset => "upstream-reset",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::CircuitOpen => "circuit-open",
            Self::NoEndpoints => "no-endpoints",
            Self::LoadShed => "load-shed",
            Self::RateLimited => "rate-limited",
            Self::InvalidBackend => "invalid-backend",
            Self::Internal => "internal",
            Self::FaultInjected => "fault-injected",
        }
    }

    /// Who is at fault when this reason is given.
    pub fn blame(self) -> Blame {
        match self {
            Self::BadRequest
            | Self::Forbidden
            | Self::RequestTimeout
            | Self::BodyTooLarge
            | Self::HeadersTooLarge
            | Self::NoRoute
            | Self::RateLimited => Blame::Downstream,
            Self::UpstreamConnect
            | Self::UpstreamReset
            | Self::UpstreamTimeout
            | Self::CircuitOpen
            | Self::NoEndpoints => Blame::Upstream,
            Self::LoadShed | Self::Internal | Self::InvalidBackend | Self::FaultInjected => {
                Blame::Proxy
            }
        }
    }

    /// Whether a failure with this reason may be fixed by trying again: the one rule that
    /// [`ProxyError::new`] and the classifier ([`crate::classify::Classifier`]) both read.
    ///
    /// Only upstream transport failures qualify: the request never reached an answer, and
    /// another try (perhaps on another endpoint) can get one. Everything else is a decision
    /// (a refusal, a limit, a missing route) that would be made again the same way. The
    /// retry policy adds its own rule on top: only a refused connect, which sent nothing, is
    /// safe to repeat for requests that are not idempotent.
    pub fn is_retryable_by_default(self) -> bool {
        match self {
            Self::UpstreamConnect | Self::UpstreamReset | Self::UpstreamTimeout => true,
            // Listed rather than `_`, so a new reason must be decided here.
            Self::BadRequest
            | Self::Forbidden
            | Self::RequestTimeout
            | Self::BodyTooLarge
            | Self::HeadersTooLarge
            | Self::NoRoute
            | Self::CircuitOpen
            | Self::NoEndpoints
            | Self::LoadShed
            | Self::RateLimited
            | Self::InvalidBackend
            | Self::Internal
            | Self::FaultInjected => false,
        }
    }

    /// Parses a `skiff-error` header value back into a reason.
    pub fn from_header(value: &[u8]) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|r| r.as_str().as_bytes() == value)
    }

    /// Every reason, for tests and tables that must cover them all.
    pub const ALL: [Reason; 16] = [
        Reason::BadRequest,
        Reason::Forbidden,
        Reason::RequestTimeout,
        Reason::BodyTooLarge,
        Reason::HeadersTooLarge,
        Reason::NoRoute,
        Reason::UpstreamConnect,
        Reason::UpstreamReset,
        Reason::UpstreamTimeout,
        Reason::CircuitOpen,
        Reason::NoEndpoints,
        Reason::LoadShed,
        Reason::RateLimited,
        Reason::InvalidBackend,
        Reason::Internal,
        Reason::FaultInjected,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused a failure: decides which side's dashboards light up and what a log reader
/// should look at first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something wrong or too slowly.
    Downstream,
    /// The upstream service or the network towards it failed.
    Upstream,
    /// The proxy itself (limits it enforces, or a bug).
    Proxy,
}

/// A failure the proxy turns into its own response.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct ProxyError {
    reason: Reason,
    status: StatusCode,
    detail: Cow<'static, str>,
    retryable: bool,
    retry_after: Option<std::time::Duration>,
    #[source]
    source: Option<BoxError>,
}

impl ProxyError {
    /// A new error; `detail` is the human-readable explanation sent in the body and logged.
    pub fn new(reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason,
            status: reason.status(),
            detail: detail.into(),
            retryable: reason.is_retryable_by_default(),
            retry_after: None,
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Overrides the status (e.g. `request-timeout` is 408 for a slow client but 504 for an
    /// expired route deadline).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// A copy without the source chain: for re-raising an error found inside another (a
    /// client body error that surfaced through the upstream client, say) with its reason,
    /// status and retry hints intact.
    pub fn detached(&self) -> Self {
        Self {
            reason: self.reason,
            status: self.status,
            detail: self.detail.clone(),
            retryable: self.retryable,
            retry_after: self.retry_after,
            source: None,
        }
    }

    /// Tells the client when to try again (`Retry-After`).
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// When the client may try again, if known.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// Marks whether a retry may help, overriding [`Reason::is_retryable_by_default`] for
    /// this one error (the classifier honours it through
    /// [`crate::classify::Classifier::classify_error`]).
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The reason code.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The status of the response Skiff sends.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Who caused it. A `request-timeout` answered 504 is a route deadline the upstream
    /// did not meet, not a slow client.
    pub fn blame(&self) -> Blame {
        if self.reason == Reason::RequestTimeout && self.status == StatusCode::GATEWAY_TIMEOUT {
            return Blame::Upstream;
        }
        self.reason.blame()
    }

    /// Whether the request may be retried: its reason's default unless overridden.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The human-readable explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Finds the first error of type `E` in an error's source chain.
pub fn find_cause<'a, E: std::error::Error + 'static>(
    mut err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    loop {
        if let Some(e) = err.downcast_ref::<E>() {
            return Some(e);
        }
        // `io::Error::source` skips the error it wraps; look inside it explicitly.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
        {
            if let Some(found) = find_cause::<E>(inner) {
                return Some(found);
            }
        }
        err = err.source()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_the_header() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_header(r.as_str().as_bytes()), Some(r));
        }
        assert_eq!(Reason::from_header(b"nope"), None);
    }

    #[test]
    fn find_cause_walks_the_chain() {
        let inner = ProxyError::new(Reason::BadRequest, "bad chunk");
        let outer: BoxError = Box::new(std::io::Error::other(inner));
        let found = find_cause::<ProxyError>(outer.as_ref()).expect("found");
        assert_eq!(found.reason(), Reason::BadRequest);
        assert_eq!(found.blame(), Blame::Downstream);
    }

    #[test]
    fn upstream_transport_errors_are_retryable_by_default() {
        assert!(ProxyError::new(Reason::UpstreamConnect, "x").is_retryable());
        assert!(ProxyError::new(Reason::UpstreamReset, "x").is_retryable());
        assert!(!ProxyError::new(Reason::BadRequest, "x").is_retryable());
        assert!(!ProxyError::new(Reason::NoEndpoints, "x").is_retryable());
    }

    #[test]
    fn a_missed_route_deadline_is_the_upstreams_fault() {
        let slow_client = ProxyError::new(Reason::RequestTimeout, "x");
        assert_eq!(slow_client.blame(), Blame::Downstream);
        let deadline = slow_client.with_status(StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(deadline.blame(), Blame::Upstream);
    }
}
