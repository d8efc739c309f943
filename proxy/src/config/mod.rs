//! Skiff's configuration: the `kind: Proxy` document (DESIGN.md section 4), as serde structs
//! that parse straight into typed values. Every struct denies unknown fields, so a typo is an
//! error with a line number rather than a silently ignored setting.
//!
//! [`load`] reads a file of YAML documents; [`Config`] is the parsed result.

mod duration;
mod load;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use duration::Dur;
pub use load::{load_file, parse, ConfigError, ConfigErrors};

/// A loaded configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Where it was read from (none for the embedded demo config).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The exact text it was parsed from: the reload watcher's baseline, so a change made
    /// between loading and watching is not mistaken for the running config.
    #[serde(skip)]
    pub text: String,
    /// The `kind: Proxy` document's `spec`.
    pub proxy: ProxySpec,
}

/// The `spec` of the `kind: Proxy` document.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxySpec {
    /// This workload's namespace: services without a `namespace` are in it, and only its
    /// services answer to their bare name (`web` rather than `web.ns`).
    pub namespace: String,
    /// The cluster DNS domain, for `name.ns.svc.<domain>` authorities.
    pub cluster_domain: String,
    /// Worker threads; default: the container's CPU quota (cgroup), else the CPU count.
    pub workers: Option<NonZeroUsize>,
    /// The listener for the application's outgoing calls.
    pub outbound: OutboundSpec,
    /// The listener for calls to the application.
    pub inbound: InboundSpec,
    /// The admin listener.
    pub admin: AdminSpec,
    /// Destination ports that carry non-HTTP traffic: detection is skipped and bytes are
    /// forwarded as-is. Applies to the inbound app port and to original destinations.
    pub opaque_ports: BTreeSet<u16>,
    /// Protocol and resource limits.
    pub limits: LimitsSpec,
    /// Shutdown behaviour.
    pub shutdown: ShutdownSpec,
    /// How often the config file is checked for changes.
    pub reload_interval: Dur,
    /// The services the application may call, by name.
    pub services: BTreeMap<String, ServiceSpec>,
}

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            cluster_domain: "cluster.local".into(),
            workers: None,
            outbound: OutboundSpec::default(),
            inbound: InboundSpec::default(),
            admin: AdminSpec::default(),
            opaque_ports: BTreeSet::new(),
            limits: LimitsSpec::default(),
            shutdown: ShutdownSpec::default(),
            reload_interval: Dur::secs(1),
            services: BTreeMap::new(),
        }
    }
}

/// The outbound listener.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundSpec {
    /// Where the application sends its calls.
    pub listen: SocketAddr,
    /// Forward requests for unknown authorities to the authority itself (resolved by DNS)
    /// instead of answering 404 `no-route`.
    pub passthrough: bool,
}

impl Default for OutboundSpec {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 4140)),
            passthrough: false,
        }
    }
}

/// The inbound listener and the local application behind it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundSpec {
    /// Where other workloads' calls arrive.
    pub listen: SocketAddr,
    /// The application's address (normally loopback).
    pub app_host: IpAddr,
    /// The application's port.
    pub app_port: u16,
    /// A local rate limit on calls to the application.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// The most calls to the application in flight; beyond it, 503 `load-shed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<NonZeroUsize>,
}

impl Default for InboundSpec {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4143)),
            app_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            app_port: 8080,
            rate_limit: None,
            max_in_flight: None,
        }
    }
}

/// The admin listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminSpec {
    /// Where `/metrics`, `/ready`, `/live` and `/config` are served.
    pub listen: SocketAddr,
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 4191)),
        }
    }
}

/// Protocol and resource limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Most connections open at once across data listeners; beyond it, accepting pauses.
    pub max_connections: NonZeroUsize,
    /// How long an HTTP/1 client may take to send its request headers.
    pub header_read_timeout: Dur,
    /// Longest pause between two frames of a request body.
    pub body_idle_timeout: Dur,
    /// Most header fields per request (431 beyond).
    pub max_header_count: NonZeroUsize,
    /// Most bytes of header names and values per request (431 beyond).
    pub max_header_bytes: NonZeroUsize,
    /// How long protocol detection waits for a client's first bytes before treating the
    /// connection as opaque TCP (server-speaks-first protocols send nothing).
    pub detect_timeout: Dur,
    /// Upstream TCP connect timeout.
    pub connect_timeout: Dur,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle_timeout: Dur,
    /// HTTP/2 server limits.
    pub http2: Http2Limits,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_connections: NonZeroUsize::new(10_000).expect("non-zero"),
            header_read_timeout: Dur::secs(10),
            body_idle_timeout: Dur::secs(60),
            max_header_count: NonZeroUsize::new(100).expect("non-zero"),
            max_header_bytes: NonZeroUsize::new(32 * 1024).expect("non-zero"),
            detect_timeout: Dur::secs(1),
            connect_timeout: Dur::secs(1),
            upstream_idle_timeout: Dur::secs(90),
            http2: Http2Limits::default(),
        }
    }
}

/// HTTP/2 server limits (set explicitly; the library defaults are not a policy).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Http2Limits {
    /// Streams a client may have open on one connection.
    pub max_concurrent_streams: u32,
    /// Most bytes of decoded headers per request (HPACK bombs stop here).
    pub max_header_list_size: u32,
    /// Streams a client may reset before they are accepted (Rapid Reset).
    pub max_pending_reset_streams: usize,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_header_list_size: 32 * 1024,
            max_pending_reset_streams: 20,
        }
    }
}

/// Shutdown behaviour.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ShutdownSpec {
    /// How long in-flight requests get to finish after SIGTERM.
    pub grace_period: Dur,
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        Self {
            grace_period: Dur::secs(30),
        }
    }
}

/// One service the application may call.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(
    try_from = "RawServiceSpec",
    into = "RawServiceSpec",
    rename_all = "camelCase"
)]
pub struct ServiceSpec {
    /// The port clients address it on (`Host: name:port`).
    pub port: u16,
    /// The namespace it lives in; default: the proxy's.
    pub namespace: Option<String>,
    /// Where its endpoints come from.
    pub endpoints: EndpointSource,
    /// Deadlines for its requests.
    pub timeouts: TimeoutsSpec,
    /// Retries of its failed requests; none when absent.
    pub retry: Option<RetrySpec>,
    /// Circuit breaking per endpoint; none when absent.
    pub breaker: Option<BreakerSpec>,
    /// How endpoints are chosen.
    pub load_balancer: LoadBalancer,
    /// A local rate limit on requests to the service.
    pub rate_limit: Option<RateLimitSpec>,
    /// The most requests in flight to the service; beyond it, 503 `load-shed`.
    pub max_in_flight: Option<NonZeroUsize>,
}

/// A token bucket: `requestsPerSecond` refill, holding up to `burst` (default: one second's
/// worth). Beyond it, 429 `rate-limited` with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawRateLimit", rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Requests a second (more than 0).
    pub requests_per_second: f64,
    /// The most requests let through at once after a quiet spell.
    pub burst: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRateLimit {
    requests_per_second: f64,
    burst: Option<u32>,
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

/// Where a service's endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    /// A fixed list.
    Static(Vec<SocketAddr>),
    /// A DNS name, re-resolved every `refresh` (a headless Kubernetes Service resolves to its
    /// pods' addresses).
    Dns {
        /// The name to resolve.
        host: String,
        /// The port endpoints listen on.
        port: u16,
        /// How often to re-resolve.
        refresh: Dur,
    },
}

/// The service entry as written; converted into [`ServiceSpec`] when parsed.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServiceSpec {
    #[serde(default = "default_service_port")]
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    endpoints: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns_refresh: Option<Dur>,
    #[serde(default)]
    timeouts: TimeoutsSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    breaker: Option<BreakerSpec>,
    #[serde(default)]
    load_balancer: LoadBalancer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<NonZeroUsize>,
}

fn default_service_port() -> u16 {
    80
}

impl TryFrom<RawServiceSpec> for ServiceSpec {
    type Error = String;

    fn try_from(raw: RawServiceSpec) -> Result<Self, String> {
        let endpoints = match (raw.endpoints.is_empty(), raw.dns) {
            (false, Some(_)) => {
                return Err("set either `endpoints` or `dns`, not both".into());
            }
            (true, None) => {
                return Err(
                    "a service needs `endpoints` (a list of ip:port) or `dns` (host:port)".into(),
                );
            }
            (false, None) => {
                if raw.dns_refresh.is_some() {
                    return Err("`dnsRefresh` applies only with `dns`".into());
                }
                EndpointSource::Static(raw.endpoints)
            }
            (true, Some(dns)) => {
                let (host, port) = dns
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty())
                    .ok_or_else(|| format!("`dns` must be host:port, got {dns:?}"))?;
                let refresh = raw.dns_refresh.unwrap_or(Dur::secs(5));
                if refresh.0.is_zero() {
                    return Err("`dnsRefresh` must be more than 0s".into());
                }
                EndpointSource::Dns {
                    host: host.to_owned(),
                    port,
                    refresh,
                }
            }
        };
        if let Some(r) = &raw.retry {
            if r.backoff > r.max_backoff {
                return Err("retry.backoff must not exceed retry.maxBackoff".into());
            }
        }
        Ok(Self {
            port: raw.port,
            namespace: raw.namespace,
            endpoints,
            timeouts: raw.timeouts,
            retry: raw.retry,
            breaker: raw.breaker,
            load_balancer: raw.load_balancer,
            rate_limit: raw.rate_limit,
            max_in_flight: raw.max_in_flight,
        })
    }
}

impl From<ServiceSpec> for RawServiceSpec {
    fn from(s: ServiceSpec) -> Self {
        let (endpoints, dns, dns_refresh) = match s.endpoints {
            EndpointSource::Static(list) => (list, None, None),
            EndpointSource::Dns {
                host,
                port,
                refresh,
            } => (Vec::new(), Some(format!("{host}:{port}")), Some(refresh)),
        };
        Self {
            port: s.port,
            namespace: s.namespace,
            endpoints,
            dns,
            dns_refresh,
            timeouts: s.timeouts,
            retry: s.retry,
            breaker: s.breaker,
            load_balancer: s.load_balancer,
            rate_limit: s.rate_limit,
            max_in_flight: s.max_in_flight,
        }
    }
}
