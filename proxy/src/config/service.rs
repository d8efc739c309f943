//! One entry of `services`: where a service is (its port, cluster IPs and endpoints, a fixed
//! list or a DNS name) and the policies its requests get. Written as a raw struct and
//! converted, so that contradictory settings are refused with the service's line.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;

use proxy_tls::SpiffeId;
use serde::{Deserialize, Serialize};

use super::{BreakerSpec, Dur, FaultSpec, LoadBalancer, RateLimitSpec, RetrySpec, TimeoutsSpec};

/// One service the application may call.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(
    try_from = "RawServiceSpec",
    into = "RawServiceSpec",
    rename_all = "camelCase"
)]
pub struct ServiceSpec {
    /// Its name, for a service discovered from the Kubernetes API (whose key in the services
    /// table also names its namespace and port); `None`: the key is the name.
    pub name: Option<String>,
    /// The port clients address it on (`Host: name:port`).
    pub port: u16,
    /// The namespace it lives in; default: the proxy's.
    pub namespace: Option<String>,
    /// Its virtual IPs (a Kubernetes ClusterIP, both of a dual-stack one): a connection
    /// redirected to Skiff whose original destination is one of them, on `port`, is routed
    /// to this service.
    pub cluster_ips: Vec<IpAddr>,
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
    /// Faults injected on purpose into a share of its requests.
    pub fault: Option<FaultSpec>,
    /// The identity its endpoints must prove: requests to it go over mutual TLS and HTTP/2.
    pub identity: Option<PeerId>,
    /// Destination labels written by hand (`dst_deployment`, ...), for a service whose
    /// endpoints are not discovered with their Pods.
    pub metric_labels: MetricLabels,
}

/// The destination labels a service entry may give its series, by hand: what discovery
/// would say of its Pods. Written without the `dst_` prefix (`deployment: web`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricLabels(pub Vec<(&'static str, String)>);

/// The keys `metricLabels` takes, with the label each becomes.
const METRIC_LABELS: [(&str, &str); 9] = [
    ("pod", "dst_pod"),
    ("deployment", "dst_deployment"),
    ("statefulset", "dst_statefulset"),
    ("daemonset", "dst_daemonset"),
    ("replicaset", "dst_replicaset"),
    ("replicationcontroller", "dst_replicationcontroller"),
    ("job", "dst_k8s_job"),
    ("cronjob", "dst_cronjob"),
    ("serviceaccount", "dst_serviceaccount"),
];

impl TryFrom<std::collections::BTreeMap<String, String>> for MetricLabels {
    type Error = String;

    fn try_from(written: std::collections::BTreeMap<String, String>) -> Result<Self, String> {
        written
            .into_iter()
            .map(|(key, value)| {
                let label = METRIC_LABELS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, label)| *label)
                    .ok_or_else(|| {
                        let known: Vec<&str> = METRIC_LABELS.iter().map(|(k, _)| *k).collect();
                        format!(
                            "`metricLabels` has no key {key:?}; it takes {} (`service` and \
                             `namespace` come from the service itself)",
                            known.join(", ")
                        )
                    })?;
                Ok((label, value))
            })
            .collect::<Result<_, String>>()
            .map(Self)
    }
}

impl From<&MetricLabels> for std::collections::BTreeMap<String, String> {
    fn from(labels: &MetricLabels) -> Self {
        labels
            .0
            .iter()
            .map(|(k, v)| {
                let key = METRIC_LABELS
                    .iter()
                    .find(|(_, l)| l == k)
                    .map_or(*k, |(key, _)| key);
                (key.to_owned(), v.clone())
            })
            .collect()
    }
}

impl ServiceSpec {
    /// A service with the defaults a file entry gets (no retries, breaker or limits) and no
    /// endpoints yet: the base of a service discovered from the Kubernetes API.
    pub(crate) fn discovered() -> Self {
        Self {
            name: None,
            port: default_service_port(),
            namespace: None,
            cluster_ips: Vec::new(),
            endpoints: EndpointSource::Static(Vec::new()),
            timeouts: TimeoutsSpec::default(),
            retry: None,
            breaker: None,
            load_balancer: LoadBalancer::default(),
            rate_limit: None,
            max_in_flight: None,
            fault: None,
            identity: None,
            metric_labels: MetricLabels::default(),
        }
    }
}

/// A peer's expected SPIFFE ID, as written in config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerId(pub SpiffeId);

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Self).map_err(serde::de::Error::custom)
    }
}

impl Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Where a service's endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    /// A fixed list.
    Static(Vec<SocketAddr>),
    /// A DNS name, re-resolved as its TTL runs out (a headless Kubernetes Service resolves
    /// to its pods' addresses).
    Dns {
        /// The name to resolve.
        host: String,
        /// The port endpoints listen on.
        port: u16,
        /// How often to re-resolve; default: when the answer's TTL runs out, bounded by
        /// `spec.dns.minTtl` and `maxTtl`.
        refresh: Option<Dur>,
    },
    /// A Kubernetes Service's EndpointSlices, watched while the service is in use.
    Kubernetes {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        service: String,
        /// The Service port's name (EndpointSlice ports carry it); `None` when unnamed.
        port_name: Option<String>,
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
    // Strings, so that a Service's `clusterIP: None` gets an answer that explains it.
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    cluster_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    endpoints: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns_refresh: Option<Dur>,
    // Shown on `/config` for discovered services; never read from a file.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    endpoint_slices: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fault: Option<FaultSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<PeerId>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    metric_labels: std::collections::BTreeMap<String, String>,
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
                let refresh = raw.dns_refresh;
                if refresh.is_some_and(|r| r.0.is_zero()) {
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
            r.check()?;
        }
        raw.timeouts.check()?;
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        for written in raw.cluster_ip.iter().chain(&raw.cluster_ips) {
            let ip = cluster_ip(written)?;
            if !cluster_ips.contains(&ip) {
                cluster_ips.push(ip);
            }
        }
        Ok(Self {
            name: None,
            port: raw.port,
            namespace: raw.namespace,
            cluster_ips,
            endpoints,
            timeouts: raw.timeouts,
            retry: raw.retry,
            breaker: raw.breaker,
            load_balancer: raw.load_balancer,
            rate_limit: raw.rate_limit,
            max_in_flight: raw.max_in_flight,
            fault: raw.fault,
            identity: raw.identity,
            metric_labels: raw.metric_labels.try_into()?,
        })
    }
}

impl From<ServiceSpec> for RawServiceSpec {
    fn from(s: ServiceSpec) -> Self {
        let (mut endpoints, mut dns, mut dns_refresh, mut endpoint_slices) =
            (Vec::new(), None, None, None);
        match s.endpoints {
            EndpointSource::Static(list) => endpoints = list,
            EndpointSource::Dns {
                host,
                port,
                refresh,
            } => (dns, dns_refresh) = (Some(format!("{host}:{port}")), refresh),
            EndpointSource::Kubernetes {
                namespace,
                service,
                port_name,
            } => {
                let port = port_name.map(|p| format!(" port {p}")).unwrap_or_default();
                endpoint_slices = Some(format!("{namespace}/{service}{port}"));
            }
        }
        Self {
            port: s.port,
            namespace: s.namespace,
            cluster_ip: None,
            cluster_ips: s.cluster_ips.iter().map(ToString::to_string).collect(),
            endpoints,
            dns,
            dns_refresh,
            endpoint_slices,
            timeouts: s.timeouts,
            retry: s.retry,
            breaker: s.breaker,
            load_balancer: s.load_balancer,
            rate_limit: s.rate_limit,
            max_in_flight: s.max_in_flight,
            fault: s.fault,
            metric_labels: (&s.metric_labels).into(),
            identity: s.identity,
        }
    }
}

/// Reads one cluster IP.
fn cluster_ip(written: &str) -> Result<IpAddr, String> {
    if written.eq_ignore_ascii_case("none") {
        return Err(
            "`clusterIP: None` is a headless Service, which has no cluster IP: leave \
                    `clusterIP` out and give its name in `dns` to reach its pods"
                .into(),
        );
    }
    let ip: IpAddr = written
        .parse()
        .map_err(|_| format!("`clusterIP` {written:?} is not an IP address"))?;
    if ip.is_unspecified() {
        return Err(format!(
            "`clusterIP` {ip} is not an address a Service can have"
        ));
    }
    Ok(ip)
}

/// How DNS names of services are resolved: Skiff asks the name servers itself, so that it
/// knows each answer's TTL.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "camelCase",
    try_from = "RawDnsSpec"
)]
pub struct DnsSpec {
    /// Name servers (ip:port); default: those of `/etc/resolv.conf`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<SocketAddr>,
    /// The shortest time an answer is kept (a TTL of 0 would otherwise mean asking in a loop).
    pub min_ttl: Dur,
    /// The longest time an answer is kept, whatever its TTL.
    pub max_ttl: Dur,
    /// How long to wait for a name server before trying the next.
    pub timeout: Dur,
}

impl Default for DnsSpec {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: Dur::secs(5),
            max_ttl: Dur::secs(300),
            timeout: Dur::secs(2),
        }
    }
}

/// [`DnsSpec`] as written.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct RawDnsSpec {
    nameservers: Vec<SocketAddr>,
    min_ttl: Dur,
    max_ttl: Dur,
    timeout: Dur,
}

impl Default for RawDnsSpec {
    fn default() -> Self {
        let d = DnsSpec::default();
        Self {
            nameservers: d.nameservers,
            min_ttl: d.min_ttl,
            max_ttl: d.max_ttl,
            timeout: d.timeout,
        }
    }
}

impl TryFrom<RawDnsSpec> for DnsSpec {
    type Error = String;

    fn try_from(raw: RawDnsSpec) -> Result<Self, String> {
        if raw.min_ttl.0.is_zero() || raw.timeout.0.is_zero() {
            return Err("`minTtl` and `timeout` must be more than 0s".into());
        }
        if raw.max_ttl.0 < raw.min_ttl.0 {
            return Err(format!(
                "`maxTtl` ({}) is less than `minTtl` ({})",
                raw.max_ttl, raw.min_ttl
            ));
        }
        Ok(Self {
            nameservers: raw.nameservers,
            min_ttl: raw.min_ttl,
            max_ttl: raw.max_ttl,
            timeout: raw.timeout,
        })
    }
}
