//! From Kubernetes objects to Skiff's model, with no I/O: a Service becomes one
//! [`ServiceSpec`] per TCP port, and a Service port's EndpointSlices become the addresses
//! that take new requests. Kept apart from the watchers so that every rule is tested on
//! synthetic objects.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{EndpointSource, ServiceSpec};

/// The services table key of a discovered Service port: `name.namespace:port`, which no
/// service written in the file can collide with by accident (file keys are plain names).
pub(crate) fn key(name: &str, namespace: &str, port: u16) -> String {
    format!("{name}.{namespace}:{port}")
}

/// The services of `svc`: one per TCP port (UDP and SCTP ports carry nothing Skiff
/// proxies), each reached by the Service's name on that port and by its cluster IPs.
/// `ExternalName` Services have no endpoints of their own and are left to DNS.
pub(crate) fn services(svc: &Service) -> Vec<(String, ServiceSpec)> {
    let (Some(name), Some(namespace)) = (&svc.metadata.name, &svc.metadata.namespace) else {
        return Vec::new();
    };
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let written = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten());
    // `None` (headless) and unparsable values give no virtual IP; endpoints still work.
    for ip in written.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
        if !ip.is_unspecified() && !cluster_ips.contains(&ip) {
            cluster_ips.push(ip);
        }
    }
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
            let service = ServiceSpec {
                name: Some(name.clone()),
                port,
                namespace: Some(namespace.clone()),
                cluster_ips: cluster_ips.clone(),
                endpoints: EndpointSource::Kubernetes {
                    namespace: namespace.clone(),
                    service: name.clone(),
                    port_name: p.name.clone().filter(|n| !n.is_empty()),
                },
                ..ServiceSpec::discovered()
            };
            Some((key(name, namespace, port), service))
        })
        .collect()
}

/// The services of every Service in `all`, in the namespaces `allowed` (all when empty).
pub(crate) fn service_table<'a>(
    all: impl IntoIterator<Item = &'a Service>,
    allowed: &[String],
) -> BTreeMap<String, ServiceSpec> {
    all.into_iter()
        .filter(|s| {
            allowed.is_empty()
                || s.metadata
                    .namespace
                    .as_ref()
                    .is_some_and(|ns| allowed.contains(ns))
        })
        .flat_map(services)
        .collect()
}

/// One address of a Service port that takes new requests, with where it runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SliceEndpoint {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// The Pod behind it (`targetRef`), by name: its service account is the identity it
    /// proves when it runs Skiff.
    pub(crate) pod: Option<String>,
    /// Its zone, when the slice says.
    pub(crate) zone: Option<String>,
}

/// The endpoints that take new requests for the Service port named `port_name` (`None`:
/// its only, unnamed port), across all of the Service's slices and both address families,
/// each with its Pod and zone.
///
/// An endpoint takes new requests when it is `ready` (unset counts as ready, as the API
/// documents). One that is only `serving` while `terminating` takes none: requests already
/// in flight to it finish on their connections, which stay open until they do. Slices of
/// addressType `FQDN` are skipped (deprecated, and not addresses).
pub(crate) fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: Option<&str>,
) -> Vec<SliceEndpoint> {
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        // The slice's port for this Service port: the same name (empty for an unnamed
        // port), with the number resolved from the Service's (possibly named) targetPort.
        let port = slice.ports.iter().flatten().find(|p| {
            p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                && p.name.as_deref().filter(|n| !n.is_empty()) == port_name
        });
        let Some(port) = port.and_then(|p| u16::try_from(p.port?).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    out.push(SliceEndpoint {
                        addr: SocketAddr::new(ip, port),
                        pod: pod.clone(),
                        zone: endpoint.zone.clone(),
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.addr == b.addr);
    out
}

/// What Skiff needs of a Pod behind an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodInfo {
    /// Its service account: the identity it proves when meshed.
    pub(crate) service_account: String,
    /// Whether Skiff runs beside it (`skiff inject` marks the pod template), so that it is
    /// called over mutual TLS.
    pub(crate) meshed: bool,
    /// The workload that owns it (`Deployment`, `StatefulSet`, ...), kind and name.
    pub(crate) owner: Option<(String, String)>,
    /// The port its Skiff takes mutual TLS on, when nothing redirects callers there
    /// (explicit mode): meshed calls go to it instead of the Service's target port.
    pub(crate) inbound_port: Option<u16>,
}

/// The [`PodInfo`] of `pod`. A ReplicaSet owner is reported as its Deployment, whose name
/// it carries with the pod template hash appended (as `kubectl` shows it).
pub(crate) fn pod_info(pod: &k8s_openapi::api::core::v1::Pod) -> PodInfo {
    let meta = &pod.metadata;
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    let meshed = annotation(crate::tools::inject::INJECTED).is_some_and(|v| v == "true");
    let inbound_port = annotation(crate::tools::inject::INBOUND_PORT).and_then(|p| p.parse().ok());
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| match (o.kind.as_str(), hash) {
            ("ReplicaSet", Some(hash)) => match o.name.strip_suffix(&format!("-{hash}")) {
                Some(deployment) => ("Deployment".to_owned(), deployment.to_owned()),
                None => (o.kind.clone(), o.name.clone()),
            },
            _ => (o.kind.clone(), o.name.clone()),
        });
    PodInfo {
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        meshed,
        owner,
        inbound_port,
    }
}
