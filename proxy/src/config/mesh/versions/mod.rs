//! Every published version of the mesh kinds, read as its specification writes it and
//! converted once into the one model the rest of `mesh` works on (SMI `v1alpha4` /
//! `v1alpha3` for access, Gateway API `v1`).
//!
//! | kind | versions | differences converted here |
//! |---|---|---|
//! | `TrafficSplit` | `split.smi-spec.io` v1alpha1-v1alpha4 | v1alpha1 weights are Kubernetes quantities (`500m`), read as thousandths ([`Weight`]) |
//! | `HTTPRouteGroup` | `specs.smi-spec.io` v1alpha1-v1alpha4 | v1alpha1 and v1alpha2 have `matches` at the top, with no `spec` |
//! | `TCPRoute` | `specs.smi-spec.io` v1alpha1-v1alpha4 | before v1alpha4 there are no `matches`: every port |
//! | `TrafficTarget` | `access.smi-spec.io` v1alpha1-v1alpha3 | v1alpha1 has no `spec` and says `specs` for `rules`; v1alpha1 and v1alpha2 may limit the destination to a `port` |
//! | `HTTPRoute` | `gateway.networking.k8s.io` v1, v1beta1; `policy.linkerd.io` v1alpha1-v1beta3 | none: one schema (Linkerd's older versions lack fields, which default) |
//! | `GRPCRoute` | `gateway.networking.k8s.io` v1, v1alpha2 | becomes an HTTPRoute ([`grpc`]) |
//!
//! Each version is parsed straight from the document, so an error keeps its line and field.

use serde::{Deserialize, Deserializer};

mod grpc;

use super::access::{IdentityRef, TargetRule, TcpRouteSpec, TrafficTargetSpec};
use super::{Document, GroupMatch, HttpRouteGroupSpec, Metadata, Object};

/// The mesh kinds read, by `apiVersion` and `kind`.
pub(in crate::config) const KINDS: [(&str, &str); 22] = [
    ("split.smi-spec.io/v1alpha1", "TrafficSplit"),
    ("split.smi-spec.io/v1alpha2", "TrafficSplit"),
    ("split.smi-spec.io/v1alpha3", "TrafficSplit"),
    ("split.smi-spec.io/v1alpha4", "TrafficSplit"),
    ("specs.smi-spec.io/v1alpha1", "HTTPRouteGroup"),
    ("specs.smi-spec.io/v1alpha2", "HTTPRouteGroup"),
    ("specs.smi-spec.io/v1alpha3", "HTTPRouteGroup"),
    ("specs.smi-spec.io/v1alpha4", "HTTPRouteGroup"),
    ("specs.smi-spec.io/v1alpha1", "TCPRoute"),
    ("specs.smi-spec.io/v1alpha2", "TCPRoute"),
    ("specs.smi-spec.io/v1alpha3", "TCPRoute"),
    ("specs.smi-spec.io/v1alpha4", "TCPRoute"),
    ("access.smi-spec.io/v1alpha1", "TrafficTarget"),
    ("access.smi-spec.io/v1alpha2", "TrafficTarget"),
    ("access.smi-spec.io/v1alpha3", "TrafficTarget"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1beta1", "HTTPRoute"),
    ("policy.linkerd.io/v1beta3", "HTTPRoute"),
    ("policy.linkerd.io/v1beta2", "HTTPRoute"),
    ("policy.linkerd.io/v1beta1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ("gateway.networking.k8s.io/v1alpha2", "GRPCRoute"),
];

/// Whether `(api_version, kind)` is read ([`KINDS`], and Linkerd's v1alpha1 HTTPRoute, which
/// is v1beta1's schema).
pub(in crate::config) fn known(api_version: &str, kind: &str) -> bool {
    KINDS.contains(&(api_version, kind))
        || (api_version, kind) == ("policy.linkerd.io/v1alpha1", "HTTPRoute")
}

/// Parses `document`, a `kind` of `api_version`, into the one model.
pub(in crate::config) fn parse<'de, D: Deserializer<'de>>(
    api_version: &str,
    kind: &str,
    document: D,
) -> Result<Document, serde_path_to_error::Error<D::Error>> {
    let version = api_version.rsplit('/').next().unwrap_or_default();
    match (kind, version) {
        ("TrafficSplit", _) => {
            serde_path_to_error::deserialize(document).map(Document::TrafficSplit)
        }
        ("HTTPRouteGroup", "v1alpha1" | "v1alpha2") => serde_path_to_error::deserialize(document)
            .map(|o: TopLevelMatches| Document::HttpRouteGroup(o.into())),
        ("HTTPRouteGroup", _) => {
            serde_path_to_error::deserialize(document).map(Document::HttpRouteGroup)
        }
        ("TCPRoute", "v1alpha1" | "v1alpha2") => serde_path_to_error::deserialize(document)
            .map(|o: MetadataOnly| Document::TcpRoute(o.every_port())),
        ("TCPRoute", "v1alpha3") => serde_path_to_error::deserialize(document)
            .map(|o: Object<EmptySpec>| Document::TcpRoute(o.map(|_| TcpRouteSpec::every_port()))),
        ("TCPRoute", _) => serde_path_to_error::deserialize(document).map(Document::TcpRoute),
        ("TrafficTarget", "v1alpha1") => serde_path_to_error::deserialize(document)
            .map(|o: TargetV1alpha1| Document::TrafficTarget(o.into())),
        ("TrafficTarget", _) => {
            serde_path_to_error::deserialize(document).map(Document::TrafficTarget)
        }
        ("GRPCRoute", _) => serde_path_to_error::deserialize(document)
            .map(|o: Object<grpc::GrpcRouteSpec>| Document::HttpRoute(grpc::into_http(o))),
        _ => serde_path_to_error::deserialize(document).map(Document::HttpRoute),
    }
}

impl<S> Object<S> {
    fn map<T>(self, f: impl FnOnce(S) -> T) -> Object<T> {
        Object {
            api_version: self.api_version,
            kind: self.kind,
            metadata: self.metadata,
            spec: f(self.spec),
            _status: self._status,
        }
    }
}

/// A TrafficSplit backend's weight: a whole number (v1alpha2 on), or a Kubernetes quantity
/// (`500m`, `1.5`, `2k`; v1alpha1), kept as thousandths (rounded up, as Kubernetes'
/// `MilliValue` does): `1` and `500m` split 1000:500, the spec's 2:1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(in crate::config) enum Weight {
    /// Written as a number.
    Number(u32),
    /// Written as a quantity, in thousandths.
    Quantity(u32),
}

impl Weight {
    pub(in crate::config) fn is_quantity(self) -> bool {
        matches!(self, Self::Quantity(_))
    }

    /// The weight, in thousandths when `thousandths`.
    pub(in crate::config) fn value(self, thousandths: bool) -> u32 {
        match self {
            Self::Number(n) if thousandths => n.saturating_mul(1000),
            Self::Number(n) | Self::Quantity(n) => n,
        }
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bad = |what: &dyn std::fmt::Display| {
            serde::de::Error::custom(format!(
                "weight {what}: expected a whole number, or a quantity such as 500m or 1.5"
            ))
        };
        match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::Number(n) => match n.as_u64().map(u32::try_from) {
                Some(Ok(n)) => Ok(Self::Number(n)),
                _ => parse_quantity(&n.to_string())
                    .map(Self::Quantity)
                    .ok_or_else(|| bad(&n)),
            },
            serde_yaml_ng::Value::String(s) => parse_quantity(&s)
                .map(Self::Quantity)
                .ok_or_else(|| bad(&s)),
            other => Err(bad(&format!("{other:?}"))),
        }
    }
}

/// Thousandths of a quantity; `None` for what is not one, is negative, or too large.
pub(in crate::config) fn parse_quantity(text: &str) -> Option<u32> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number == "." {
        return None;
    }
    // Powers of ten, relative to thousandths.
    let exponent: i32 = match suffix {
        "n" => -6,
        "u" => -3,
        "m" => 0,
        "" => 3,
        "k" => 6,
        "M" => 9,
        "Ki" | "Mi" => return binary(number, if suffix == "Ki" { 1024 } else { 1024 * 1024 }),
        e if e.starts_with(['e', 'E']) => e[1..].parse::<i32>().ok()?.checked_add(3)?,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits: String = format!("{whole}{fraction}");
    let scale = exponent.checked_sub(i32::try_from(fraction.len()).ok()?)?;
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let value = if scale >= 0 {
        mantissa.checked_mul(10u128.checked_pow(scale.unsigned_abs())?)?
    } else {
        let div = 10u128.checked_pow(scale.unsigned_abs())?;
        mantissa.div_ceil(div)
    };
    u32::try_from(value).ok().filter(|v| *v <= 4_000_000_000)
}

fn binary(number: &str, factor: u128) -> Option<u32> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let div = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let thousandths = digits.checked_mul(factor)?.checked_mul(1000)?;
    u32::try_from(thousandths.div_ceil(div)).ok()
}

/// HTTPRouteGroup v1alpha1 and v1alpha2: `matches` at the top, no `spec`.
#[derive(Clone, Debug, Deserialize)]
struct TopLevelMatches {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    matches: Vec<GroupMatch>,
}

impl From<TopLevelMatches> for Object<HttpRouteGroupSpec> {
    fn from(v: TopLevelMatches) -> Self {
        Object {
            api_version: v.api_version,
            kind: v.kind,
            metadata: v.metadata,
            spec: HttpRouteGroupSpec { matches: v.matches },
            _status: None,
        }
    }
}

/// TCPRoute v1alpha1 and v1alpha2: only metadata.
#[derive(Clone, Debug, Deserialize)]
struct MetadataOnly {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
}

impl MetadataOnly {
    fn every_port(self) -> Object<TcpRouteSpec> {
        Object {
            api_version: self.api_version,
            kind: self.kind,
            metadata: self.metadata,
            spec: TcpRouteSpec::every_port(),
            _status: None,
        }
    }
}

/// TCPRoute v1alpha3's empty `spec`.
#[derive(Clone, Debug, Deserialize)]
struct EmptySpec {}

/// TrafficTarget v1alpha1: no `spec`; `specs` for `rules`.
#[derive(Clone, Debug, Deserialize)]
struct TargetV1alpha1 {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    destination: IdentityRef,
    #[serde(default)]
    specs: Vec<TargetRule>,
    #[serde(default)]
    sources: Vec<IdentityRef>,
}

impl From<TargetV1alpha1> for Object<TrafficTargetSpec> {
    fn from(v: TargetV1alpha1) -> Self {
        Object {
            api_version: v.api_version,
            kind: v.kind,
            metadata: v.metadata,
            spec: TrafficTargetSpec::new(v.destination, v.specs, v.sources),
            _status: None,
        }
    }
}

/// The `(namespace, name)` a TrafficSplit names as `name`, `name.ns`, `name.ns.svc` or the
/// whole `name.ns.svc.<cluster domain>`, in the TrafficSplit's namespace `ns`; an error for
/// a Service of another namespace (a TrafficSplit's services are its own namespace's).
pub(in crate::config) fn split_service<'a>(written: &'a str, ns: &str) -> Result<&'a str, String> {
    let mut parts = written.split('.');
    let name = parts.next().unwrap_or_default();
    match parts.next() {
        None => Ok(name),
        Some(other) if other == ns => Ok(name),
        Some(other) => Err(format!(
            "{written} is in namespace {other}; a TrafficSplit's services are in its own namespace {ns}"
        )),
    }
}

#[cfg(test)]
mod tests;
