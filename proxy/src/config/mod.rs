//! Skiff's configuration: the `kind: Proxy` document (`docs/config.md`), as serde structs
//! that parse straight into typed values. Every struct denies unknown fields, so a typo is an
//! error with a line number rather than a silently ignored setting.
//!
//! `load` reads a file of YAML documents; [`Config`] is the parsed result.

pub(crate) mod api;
mod depth;
mod discovery;
mod duration;
mod limits;
mod load;
mod mesh;
mod policy;
mod service;
#[cfg(test)]
mod tests;
mod traces;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;

use proxy_tls::SpiffeId;
use serde::{Deserialize, Serialize};

pub use discovery::{DiscoverySpec, KubernetesSpec};
pub use duration::Dur;
pub use limits::{Http2Limits, LimitsSpec, UpstreamHttp2Limits};
pub use load::{load_file, parse, ConfigError, ConfigErrors};
pub use mesh::{AccessSpec, BackendSpec, RoutePolicySpec, RouteSpec, ServiceRoutes};
pub use policy::{
    AbortSpec, BreakerSpec, BudgetSpec, DelaySpec, FailureRateSpec, FaultSpec, LoadBalancer,
    RateLimitSpec, RetrySpec, StatusCode, TimeoutsSpec,
};
pub use service::{DnsSpec, EndpointSource, PeerId, ServiceSpec};
pub use traces::TracingSpec;

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
    /// The routes attached to services (from HTTPRoute, TrafficSplit and HTTPRouteGroup
    /// documents), by service name.
    #[serde(skip)]
    pub routes: BTreeMap<String, ServiceRoutes>,
    /// Who may call this workload (from TrafficTarget documents naming it).
    #[serde(skip)]
    pub access: AccessSpec,
    /// Those documents as written, for `/config`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mesh_documents: Vec<serde_yaml_ng::Value>,
    /// What the file says that Skiff does not honour and the rest of it can do without:
    /// fields of the mesh kinds it does not know (ignored), and routes it cannot honour
    /// (refused, each alone). `skiff check` prints them; `skiff run` logs them.
    #[serde(skip)]
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// Logs each warning (fields ignored, routes refused), as `skiff check` prints them.
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!(%warning, "config");
        }
    }
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
    /// The access log.
    pub access_log: AccessLogSpec,
    /// Metric cardinality and selection.
    pub metrics: MetricsSpec,
    /// Spans exported over OTLP; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
    /// This workload's mesh identity; without it, no mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// How services' DNS names are resolved.
    pub dns: DnsSpec,
    /// Services and endpoints from the Kubernetes API, besides those written here.
    #[serde(skip_serializing_if = "is_default")]
    pub discovery: DiscoverySpec,
    /// The services the application may call, by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Skiff's own policies for routes (timeouts, retries, breaker, limits), by route name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub route_policies: BTreeMap<String, RoutePolicySpec>,
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
            access_log: AccessLogSpec::default(),
            metrics: MetricsSpec::default(),
            tracing: None,
            identity: None,
            dns: DnsSpec::default(),
            discovery: DiscoverySpec::default(),
            services: BTreeMap::new(),
            route_policies: BTreeMap::new(),
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
    /// With an identity: whether plaintext callers are still let in (during a migration).
    pub mtls: MtlsMode,
    /// Whether TrafficTarget denials are enforced (403) or only logged and counted.
    pub authorization: AuthzMode,
    /// Who may call while no TrafficTarget names this workload.
    pub default_policy: DefaultPolicy,
}

/// Who may call a workload that no TrafficTarget names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Everyone (Linkerd's default): meshing a workload changes nobody's access.
    #[default]
    Allow,
    /// Nobody (SMI's "deny by default"): only TrafficTargets let callers in.
    Deny,
    /// Everyone, each call logged and counted as `audit-deny` as `deny` would refuse it.
    Audit,
}

/// Whether authorization denials are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthzMode {
    /// Denied calls get 403 `forbidden` (TCP: the connection is closed).
    #[default]
    Enforce,
    /// Denied calls are logged and counted (`decision="audit-deny"`), then let through.
    Audit,
}

/// Whether the inbound listener requires mutual TLS (when the proxy has an identity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MtlsMode {
    /// Only meshed callers, with a valid client certificate.
    #[default]
    Strict,
    /// Meshed callers over mTLS, and plaintext callers too (their identity is unknown).
    Permissive,
}

/// This workload's identity: where its credentials are and who it must be.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    /// The directory holding `tls.crt`, `tls.key` and `ca.crt`.
    pub dir: PathBuf,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// Other trust domains whose workloads may call this one (federation); callers from
    /// any other are refused in the handshake even when a trusted CA signed them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub federated_trust_domains: Vec<String>,
    /// The namespace in the identity; default: `POD_NAMESPACE`, else `spec.namespace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The service account in the identity; default: `POD_SERVICE_ACCOUNT`, else `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// How often the credential files are checked for changes.
    pub reload_interval: Dur,
    /// The longest an inbound or outbound TLS handshake may take.
    pub handshake_timeout: Dur,
}

impl Default for IdentitySpec {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/run/secrets/spiffe.io"),
            trust_domain: "cluster.local".into(),
            federated_trust_domains: Vec::new(),
            namespace: None,
            service_account: None,
            reload_interval: Dur::secs(1),
            handshake_timeout: Dur::secs(10),
        }
    }
}

impl IdentitySpec {
    /// The identity this proxy must have, from config, then the pod's environment.
    pub fn own_id(&self, spec_namespace: &str) -> Result<SpiffeId, proxy_tls::id::IdError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ns = self
            .namespace
            .clone()
            .or_else(|| env("POD_NAMESPACE"))
            .unwrap_or_else(|| spec_namespace.to_owned());
        let sa = self
            .service_account
            .clone()
            .or_else(|| env("POD_SERVICE_ACCOUNT"))
            .unwrap_or_else(|| "default".into());
        SpiffeId::workload(&self.trust_domain, &ns, &sa)
    }
}

impl Default for InboundSpec {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4143)),
            app_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            app_port: 8080,
            rate_limit: None,
            max_in_flight: None,
            mtls: MtlsMode::Strict,
            authorization: AuthzMode::Enforce,
            default_policy: DefaultPolicy::Allow,
        }
    }
}

/// The admin listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminSpec {
    /// Where `/metrics`, `/ready`, `/live`, `/config`, `/stats` and `/tap` are served.
    pub listen: SocketAddr,
    /// Whether `/tap`, `PUT /log-level` and `POST /shutdown` answer callers off loopback.
    pub allow_remote: bool,
    /// Whether `POST /shutdown` is served (for Jobs on clusters without native sidecars).
    pub shutdown_endpoint: bool,
    /// What tap never shows.
    pub tap: TapSpec,
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 4191)),
            allow_remote: false,
            shutdown_endpoint: false,
            tap: TapSpec::default(),
        }
    }
}

/// Tap redaction. `authorization`, `proxy-authorization`, `cookie` and `set-cookie` are
/// always hidden.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TapSpec {
    /// More header names whose values are hidden.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact_headers: Vec<String>,
    /// Regular expressions whose matches are hidden in sampled bodies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact_body: Vec<BodyPattern>,
}

/// A regular expression for body redaction, compiled when the config is read.
#[derive(Clone, Debug)]
pub struct BodyPattern(pub regex::Regex);

impl<'de> Deserialize<'de> for BodyPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for BodyPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

/// Metric cardinality and which families `/metrics` shows.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Most distinct values of a label the proxy does not choose (passthrough authorities,
    /// peer identities); beyond it, `other`.
    pub max_label_values: NonZeroUsize,
    /// Series of such values unused for this long are removed.
    pub idle_expiry: Dur,
    /// If not empty, only these families are shown (names as in `# TYPE`, e.g. `request`,
    /// `response_latency_ms`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Families never shown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self {
            max_label_values: NonZeroUsize::new(1000).expect("non-zero"),
            idle_expiry: Dur::secs(600),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// The access log: one JSON line per response on stdout, off by default.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogSpec {
    /// Whether lines are written.
    pub enabled: bool,
    /// Which fields, in order; default: ts, direction, method, authority, path, status,
    /// duration_ms, response_bytes, client, route, backend, endpoint, error, trace_id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<AccessLogField>>,
}

/// A field of the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogField {
    /// Seconds since the Unix epoch when the request arrived.
    Ts,
    /// A per-process request number.
    Id,
    /// `inbound` or `outbound`.
    Direction,
    /// The method.
    Method,
    /// The authority as the client sent it.
    Authority,
    /// The path.
    Path,
    /// The caller: its verified identity, else its IP address.
    Client,
    /// The route taken.
    Route,
    /// The status sent to the client.
    Status,
    /// Milliseconds to the end of the response.
    DurationMs,
    /// Response body bytes.
    ResponseBytes,
    /// The gRPC status.
    GrpcStatus,
    /// Skiff's error reason, when it answered itself.
    Error,
    /// `success` or `failure`, by the classifier metrics and `skiff stat` use.
    Classification,
    /// Tries made.
    Tries,
    /// The backend the split chose.
    Backend,
    /// The endpoint of the last try.
    Endpoint,
    /// The breaker state when the last try was admitted.
    Breaker,
    /// The authorization decision.
    Authz,
    /// The trace id (W3C traceparent, B3, or x-request-id).
    TraceId,
}

impl AccessLogField {
    /// Its name in a log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ts => "ts",
            Self::Id => "id",
            Self::Direction => "direction",
            Self::Method => "method",
            Self::Authority => "authority",
            Self::Path => "path",
            Self::Client => "client",
            Self::Route => "route",
            Self::Status => "status",
            Self::DurationMs => "duration_ms",
            Self::ResponseBytes => "response_bytes",
            Self::GrpcStatus => "grpc_status",
            Self::Error => "error",
            Self::Classification => "classification",
            Self::Tries => "tries",
            Self::Backend => "backend",
            Self::Endpoint => "endpoint",
            Self::Breaker => "breaker",
            Self::Authz => "authz",
            Self::TraceId => "trace_id",
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

/// Whether a value is its type's default (for fields left out of `/config` when unset).
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
