//! The per-service policies of the `kind: Proxy` document: timeouts, retries and their
//! budget, circuit breaking, load balancing and local limits. Each parses straight into
//! checked values, so a setting the middleware would reject never gets past the config file.

use serde::{Deserialize, Serialize};

use super::Dur;

/// A token bucket: `requestsPerSecond` refill, holding up to `burst` (default: one second's
/// worth). Beyond it, 429 `rate-limited` with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawRateLimit", rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Requests a second (more than 0).
    pub requests_per_second: f64,
    /// The most requests let through at once after a quiet spell.
    pub burst: u32,
    /// One bucket per client (its verified identity, else its IP address) instead of one
    /// for everybody.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub per_client: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRateLimit {
    requests_per_second: f64,
    burst: Option<u32>,
    #[serde(default)]
    per_client: bool,
}

impl TryFrom<RawRateLimit> for RateLimitSpec {
    type Error = String;

    fn try_from(raw: RawRateLimit) -> Result<Self, String> {
        if !(raw.requests_per_second > 0.0 && raw.requests_per_second.is_finite()) {
            return Err(format!(
                "requestsPerSecond must be more than 0, got {}",
                raw.requests_per_second
            ));
        }
        let burst = raw
            .burst
            .unwrap_or(raw.requests_per_second.ceil().min(f64::from(u32::MAX)) as u32)
            .max(1);
        Ok(Self {
            requests_per_second: raw.requests_per_second,
            burst,
            per_client: raw.per_client,
        })
    }
}

/// How a service's endpoints are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency and requests in flight.
    #[default]
    P2c,
    /// Each endpoint in turn.
    RoundRobin,
    /// The fewest requests in flight.
    LeastRequest,
}

impl From<LoadBalancer> for proxy_core::balance::Strategy {
    fn from(lb: LoadBalancer) -> Self {
        match lb {
            LoadBalancer::P2c => Self::P2c,
            LoadBalancer::RoundRobin => Self::RoundRobin,
            LoadBalancer::LeastRequest => Self::LeastRequest,
        }
    }
}

/// Circuit breaking per endpoint: an endpoint failing `consecutiveFailures` requests in a
/// row, or (optionally) more than `failureRate.threshold` of its requests over the window, is
/// ejected for `backoff`, doubling on each further trip up to `maxBackoff`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawBreaker", into = "RawBreaker")]
pub struct BreakerSpec {
    /// Failures in a row that eject an endpoint (at least 1).
    pub consecutive_failures: u32,
    /// An optional failure-rate trigger.
    pub failure_rate: Option<FailureRateSpec>,
    /// The first ejection.
    pub backoff: Dur,
    /// The longest ejection.
    pub max_backoff: Dur,
}

/// A failure-rate trigger for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailureRateSpec {
    /// The failure fraction (over 0, at most 1) that ejects.
    pub threshold: f64,
    /// Fewer requests than this in the window never eject.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// The sliding window.
    #[serde(default = "default_window")]
    pub window: Dur,
}

fn default_min_requests() -> u32 {
    20
}

fn default_window() -> Dur {
    Dur::secs(10)
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawBreaker {
    consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_rate: Option<FailureRateSpec>,
    backoff: Dur,
    max_backoff: Dur,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            failure_rate: None,
            backoff: Dur::secs(1),
            max_backoff: Dur::secs(60),
        }
    }
}

impl TryFrom<RawBreaker> for BreakerSpec {
    type Error = String;

    fn try_from(raw: RawBreaker) -> Result<Self, String> {
        if raw.consecutive_failures == 0 {
            return Err("consecutiveFailures must be at least 1".into());
        }
        if let Some(r) = raw.failure_rate {
            if !(r.threshold > 0.0 && r.threshold <= 1.0) {
                return Err(format!(
                    "failureRate.threshold must be over 0 and at most 1, got {}",
                    r.threshold
                ));
            }
            if r.window.0.is_zero() {
                return Err("failureRate.window must be more than 0s".into());
            }
        }
        if raw.backoff.0.is_zero() || raw.backoff > raw.max_backoff {
            return Err("backoff must be more than 0s and at most maxBackoff".into());
        }
        Ok(Self {
            consecutive_failures: raw.consecutive_failures,
            failure_rate: raw.failure_rate,
            backoff: raw.backoff,
            max_backoff: raw.max_backoff,
        })
    }
}

impl From<BreakerSpec> for RawBreaker {
    fn from(b: BreakerSpec) -> Self {
        Self {
            consecutive_failures: b.consecutive_failures,
            failure_rate: b.failure_rate,
            backoff: b.backoff,
            max_backoff: b.max_backoff,
        }
    }
}

/// Deadlines, with Gateway API's meaning: `request` bounds the whole request including
/// retries (504 `request-timeout`), `backendRequest` each try (504 `upstream-timeout`, which
/// may be retried). Both run until the response headers arrive; absent or `0s` is none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// The whole request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    /// Each try.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Dur>,
    /// The longest pause between two frames of a response body (long streams); the stream
    /// is cut with `upstream-timeout` beyond it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_idle: Option<Dur>,
}

impl TimeoutsSpec {
    /// Gateway API's rule: a try cannot outlast the whole request.
    pub fn check(&self) -> Result<(), String> {
        let enabled = |d: Option<Dur>| d.filter(|d| !d.0.is_zero());
        match (enabled(self.request), enabled(self.backend_request)) {
            (Some(request), Some(backend)) if backend > request => {
                Err("timeouts.backendRequest must not exceed timeouts.request".into())
            }
            _ => Ok(()),
        }
    }
}

/// When and how failed requests are retried.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries after the first try (Gateway API's `attempts`).
    pub attempts: u32,
    /// HTTP statuses that are retried (for idempotent requests).
    pub codes: Vec<StatusCode>,
    /// gRPC statuses (trailers-only responses) that are retried.
    pub grpc_codes: Vec<u32>,
    /// The wait before the first retry; it doubles each time, with jitter.
    pub backoff: Dur,
    /// The longest wait between tries.
    pub max_backoff: Dur,
    /// Also retry POST and PATCH after failures other than a refused connect.
    pub non_idempotent: bool,
    /// How much extra load retries may add.
    pub budget: BudgetSpec,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: 2,
            codes: [502, 503, 504].into_iter().map(StatusCode).collect(),
            grpc_codes: vec![14],
            backoff: Dur::millis(25),
            max_backoff: Dur::millis(250),
            non_idempotent: false,
            budget: BudgetSpec::default(),
        }
    }
}

impl RetrySpec {
    /// Checks what the fields cannot check alone.
    pub fn check(&self) -> Result<(), String> {
        if self.backoff > self.max_backoff {
            return Err("retry.backoff must not exceed retry.maxBackoff".into());
        }
        Ok(())
    }
}

/// An HTTP status code, 100 to 599.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StatusCode(pub u16);

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(d)?;
        if !(100..=599).contains(&code) {
            return Err(serde::de::Error::custom(format!(
                "{code} is not an HTTP status (100-599)"
            )));
        }
        Ok(Self(code))
    }
}

/// The retry budget: retries may add `ratio` extra load over the last `ttl`, plus
/// `minPerSecond` retries a second so a quiet service can still retry.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawBudget")]
pub struct BudgetSpec {
    /// Retries per original request: 0.2 is 20% extra load. 0 to 10.
    pub ratio: f32,
    /// Retries a second allowed regardless of traffic.
    pub min_per_second: u32,
    /// The window requests count in: 1s to 60s.
    pub ttl: Dur,
}

impl Default for BudgetSpec {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Dur::secs(10),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawBudget {
    ratio: f32,
    min_per_second: u32,
    ttl: Dur,
}

impl Default for RawBudget {
    fn default() -> Self {
        let d = BudgetSpec::default();
        Self {
            ratio: d.ratio,
            min_per_second: d.min_per_second,
            ttl: d.ttl,
        }
    }
}

impl TryFrom<RawBudget> for BudgetSpec {
    type Error = String;

    fn try_from(raw: RawBudget) -> Result<Self, String> {
        if !(0.0..=10.0).contains(&raw.ratio) {
            return Err(format!("ratio must be between 0 and 10, got {}", raw.ratio));
        }
        if !(Dur::secs(1)..=Dur::secs(60)).contains(&raw.ttl) {
            return Err(format!("ttl must be between 1s and 60s, got {}", raw.ttl));
        }
        if raw.min_per_second > 1_000_000 {
            return Err("minPerSecond must be at most 1000000".into());
        }
        Ok(Self {
            ratio: raw.ratio,
            min_per_second: raw.min_per_second,
            ttl: raw.ttl,
        })
    }
}

/// Faults injected on purpose into a share of a service's or route's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultSpec {
    /// Answer a share of requests with a status, without sending them on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
    /// Delay a share of requests before sending them on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
}

/// `fault.abort`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AbortSpec {
    /// The share of requests, 0 to 100.
    pub percent: Share,
    /// The status they get.
    pub status: StatusCode,
    /// For gRPC calls, the `grpc-status` they get instead (0 to 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<GrpcCode>,
}

/// `fault.delay`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelaySpec {
    /// The share of requests, 0 to 100.
    pub percent: Share,
    /// How long they wait.
    pub duration: Dur,
}

/// A share of requests in percent, 0 to 100 (fractions allowed: `0.5`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Share(pub f64);

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=100.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "{v} is not a percentage (0-100)"
            )));
        }
        Ok(Self(v))
    }
}

/// A gRPC status code, 0 to 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GrpcCode(pub u16);

impl<'de> Deserialize<'de> for GrpcCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u16::deserialize(d)?;
        if v > 16 {
            return Err(serde::de::Error::custom(format!(
                "{v} is not a gRPC status code (0-16)"
            )));
        }
        Ok(Self(v))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ok, rejected, HEAD};

    #[test]
    fn fault_rules_parse_and_out_of_range_values_are_refused_with_their_line() {
        let svc = "spec:\n  services:\n    web:\n      endpoints: [127.0.0.1:8080]\n      fault:\n";
        let c = ok(&format!(
            "{HEAD}{svc}        abort: {{percent: 2.5, status: 503, grpcStatus: 14}}\n        delay: {{percent: 10, duration: 2s}}\n"
        ));
        let fault = c.proxy.services["web"].fault.unwrap();
        let abort = fault.abort.unwrap();
        assert_eq!((abort.percent.0, abort.status.0), (2.5, 503));
        assert_eq!(abort.grpc_status.map(|g| g.0), Some(14));
        assert_eq!(fault.delay.unwrap().duration.0.as_secs(), 2);
        for (bad, why) in [
            ("abort: {percent: 101, status: 503}", "is not a percentage"),
            (
                "abort: {percent: 1, status: 503, grpcStatus: 17}",
                "is not a gRPC status code",
            ),
            ("delay: {percent: 1}", "missing field `duration`"),
        ] {
            let e = rejected(&format!("{HEAD}{svc}        {bad}\n"), why);
            assert_eq!(e.line, Some(8), "{e:?}");
        }
    }
}
