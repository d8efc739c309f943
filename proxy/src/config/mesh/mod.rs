//! The mesh documents of a config file, as their specs publish them: SMI `TrafficSplit`,
//! `HTTPRouteGroup`, `TCPRoute` and `TrafficTarget`, and Gateway API `HTTPRoute` attached to
//! a Service, in every version [`versions`] lists, converted there into one model.
//!
//! Each document parses into typed values (regular expressions compiled, methods and
//! durations checked), so a typo is reported with its line and field. [`resolve`](mod@resolve) then joins
//! the documents with the `kind: Proxy` services into one [`ServiceRoutes`] per routed
//! service, checking what can only be checked across documents (a route's parent service
//! exists, a split's groups exist).

use std::collections::BTreeMap;

use proxy_core::route::{anchored, Anchor, PathMatch, ValueMatch};
use regex::Regex;
use serde::{Deserialize, Deserializer};

use super::{BreakerSpec, Dur, RateLimitSpec};

mod access;
mod annotations;
mod filters;
mod resolve;
#[cfg(test)]
mod tests;
mod versions;

pub(super) use access::resolve as resolve_access;
pub use access::AccessSpec;
use resolve::smi_matches as smi_group_matches;
pub(super) use resolve::{resolve, Resolved};
pub use resolve::{BackendSpec, RoutePolicySpec, RouteSpec, ServiceRoutes};

/// `metadata` of a Kubernetes object: only the name, namespace and (on routes) annotations
/// matter here; labels and the rest are accepted and ignored.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    /// Read for Linkerd's retry and timeout annotations on routes.
    #[serde(default, deserialize_with = "annotations_as_text")]
    annotations: BTreeMap<String, String>,
}

/// Annotations, each value as text: Kubernetes keeps only strings, but a hand-written file
/// may say `x: true`, which was accepted (and ignored) before annotations were read.
fn annotations_as_text<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_yaml_ng::Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_yaml_ng::Value::String(s) => Some((k, s)),
            serde_yaml_ng::Value::Bool(b) => Some((k, b.to_string())),
            serde_yaml_ng::Value::Number(n) => Some((k, n.to_string())),
            _ => None,
        })
        .collect())
}

/// A Kubernetes object whose `spec` is `S`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Object<S> {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: S,
    #[serde(default, rename = "status")]
    _status: Option<serde_yaml_ng::Value>,
}

/// A mesh document, parsed.
#[derive(Clone, Debug)]
pub(super) enum Document {
    TrafficSplit(Object<TrafficSplitSpec>),
    HttpRouteGroup(Object<HttpRouteGroupSpec>),
    HttpRoute(Object<HttpRouteSpec>),
    TrafficTarget(Object<access::TrafficTargetSpec>),
    TcpRoute(Object<access::TcpRouteSpec>),
}

pub(super) use versions::{known, parse as parse_document, KINDS};

/// Whether `kind` says who may call: an unknown field in one is not ignored (a misspelt
/// `ports` or `pathRegex` would otherwise let in everything it meant to keep out).
pub(super) fn is_access_kind(kind: &str) -> bool {
    matches!(kind, "TrafficTarget" | "HTTPRouteGroup" | "TCPRoute")
}

/// Whether an ignored field is worth reporting: not one of `metadata`'s, where Kubernetes
/// keeps uids, labels, managed fields and the like that no route depends on.
pub(super) fn reported(ignored_path: &str) -> bool {
    !ignored_path.starts_with("metadata.")
}

// ---- SMI ----

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TrafficSplitSpec {
    service: String,
    backends: Vec<SplitBackend>,
    #[serde(default)]
    matches: Vec<GroupRef>,
}

#[derive(Clone, Debug, Deserialize)]
struct SplitBackend {
    service: String,
    weight: versions::Weight,
}

impl TrafficSplitSpec {
    /// The backends' relative weights. Quantities (`500m`, v1alpha1's form) are read as
    /// thousandths, and then so are the plain numbers beside them (`1` is `1000m`): an API
    /// server without conversion serves a v1alpha1 object under later versions unchanged.
    fn weights(&self) -> Vec<u32> {
        let quantities = self.backends.iter().any(|b| b.weight.is_quantity());
        self.backends
            .iter()
            .map(|b| b.weight.value(quantities))
            .collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupRef {
    #[serde(rename = "kind")]
    _kind: GroupKind,
    name: String,
    #[serde(default, rename = "apiGroup")]
    _api_group: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
enum GroupKind {
    #[serde(rename = "HTTPRouteGroup")]
    HttpRouteGroup,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct HttpRouteGroupSpec {
    matches: Vec<GroupMatch>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupMatch {
    name: String,
    #[serde(default)]
    path_regex: Option<StartRegex>,
    #[serde(default)]
    methods: Vec<SmiMethod>,
    #[serde(default)]
    headers: Option<SmiHeaders>,
}

/// SMI `headers`: the docs and Go types say a map, the v1alpha4 CRD a list of maps.
#[derive(Clone, Debug)]
enum SmiHeaders {
    Map(BTreeMap<HeaderName, WholeRegex>),
    List(Vec<BTreeMap<HeaderName, WholeRegex>>),
}

// By hand rather than `untagged`, so a bad name or regex inside says what is wrong instead of
// "did not match any variant".
impl<'de> Deserialize<'de> for SmiHeaders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let headers = |v: serde_yaml_ng::Value| {
            BTreeMap::<HeaderName, WholeRegex>::deserialize(v).map_err(D::Error::custom)
        };
        match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::Sequence(list) => list
                .into_iter()
                .map(headers)
                .collect::<Result<_, _>>()
                .map(Self::List),
            other => headers(other).map(Self::Map),
        }
    }
}

/// An SMI method: one of the enum's values, `*` meaning any.
#[derive(Clone, Debug)]
struct SmiMethod(Option<http::Method>);

impl<'de> Deserialize<'de> for SmiMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const ALLOWED: [&str; 9] = [
            "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let s = String::deserialize(d)?;
        if s == "*" {
            return Ok(Self(None));
        }
        if !ALLOWED.contains(&s.as_str()) {
            return Err(serde::de::Error::custom(format!(
                "method {s:?} is not one of *, {}",
                ALLOWED.join(", ")
            )));
        }
        Ok(Self(Some(s.parse().map_err(serde::de::Error::custom)?)))
    }
}

/// A regular expression anchored at the start (SMI `pathRegex`).
#[derive(Clone, Debug)]
struct StartRegex(Regex);

impl<'de> Deserialize<'de> for StartRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        anchored(&s, Anchor::Start)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// A regular expression that must match the whole value.
#[derive(Clone, Debug)]
struct WholeRegex(Regex);

impl<'de> Deserialize<'de> for WholeRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        anchored(&s, Anchor::Whole)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

// ---- Gateway API ----

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HttpRouteSpec {
    parent_refs: Vec<ParentRef>,
    /// Mesh routes attach to a Service; hostnames do not apply and are ignored.
    #[serde(default, rename = "hostnames")]
    _hostnames: Vec<String>,
    #[serde(default = "default_rules")]
    rules: Vec<Rule>,
}

fn default_rules() -> Vec<Rule> {
    vec![Rule::default()]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef {
    #[serde(default, rename = "group")]
    _group: Option<CoreGroup>,
    #[serde(rename = "kind")]
    _kind: ServiceKind,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    /// For a Service, the name of one of its ports.
    #[serde(default)]
    section_name: Option<String>,
}

/// The core API group, which Gateway API spells `""` and some docs `core`.
#[derive(Clone, Copy, Debug)]
struct CoreGroup;

impl<'de> Deserialize<'de> for CoreGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "" | "core" => Ok(Self),
            other => Err(serde::de::Error::custom(format!(
                "group {other:?}: only Services (group \"\" or core) can be referenced"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
enum ServiceKind {
    Service,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "default_matches")]
    matches: Vec<GatewayMatch>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    #[serde(default)]
    timeouts: Option<GatewayTimeouts>,
    #[serde(default)]
    retry: Option<GatewayRetry>,
    #[serde(default)]
    filters: filters::FiltersSpec,
}

fn default_matches() -> Vec<GatewayMatch> {
    vec![GatewayMatch::default()]
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewayMatch {
    #[serde(default)]
    path: Option<GatewayPath>,
    #[serde(default)]
    headers: Vec<GatewayValue<HeaderName>>,
    #[serde(default)]
    query_params: Vec<GatewayValue<String>>,
    #[serde(default)]
    method: Option<GatewayMethod>,
}

/// A path condition, checked and compiled when parsed.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawGatewayPath")]
struct GatewayPath(PathMatch);

#[derive(Deserialize)]
struct RawGatewayPath {
    #[serde(default, rename = "type")]
    kind: PathKind,
    #[serde(default = "root")]
    value: String,
}

fn root() -> String {
    "/".into()
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
enum PathKind {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

impl TryFrom<RawGatewayPath> for GatewayPath {
    type Error = String;

    fn try_from(raw: RawGatewayPath) -> Result<Self, String> {
        let must_be_absolute = || {
            if raw.value.starts_with('/') {
                Ok(())
            } else {
                Err(format!("path {:?} must start with /", raw.value))
            }
        };
        Ok(Self(match raw.kind {
            PathKind::Exact => {
                must_be_absolute()?;
                PathMatch::Exact(raw.value)
            }
            PathKind::PathPrefix => {
                must_be_absolute()?;
                PathMatch::Prefix(raw.value)
            }
            PathKind::RegularExpression => {
                PathMatch::Regex(anchored(&raw.value, Anchor::Whole).map_err(|e| e.to_string())?)
            }
        }))
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
enum ValueKind {
    #[default]
    Exact,
    RegularExpression,
}

/// A header or query parameter condition, compiled when parsed.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawGatewayValue<N>")]
struct GatewayValue<N> {
    name: N,
    value: ValueMatch,
}

#[derive(Deserialize)]
struct RawGatewayValue<N> {
    #[serde(default, rename = "type")]
    kind: ValueKind,
    name: N,
    value: String,
}

impl<N> TryFrom<RawGatewayValue<N>> for GatewayValue<N> {
    type Error = String;

    fn try_from(raw: RawGatewayValue<N>) -> Result<Self, String> {
        let value = match raw.kind {
            ValueKind::Exact => ValueMatch::Exact(raw.value),
            ValueKind::RegularExpression => {
                ValueMatch::Regex(anchored(&raw.value, Anchor::Whole).map_err(|e| e.to_string())?)
            }
        };
        Ok(Self {
            name: raw.name,
            value,
        })
    }
}

/// A header name, checked and lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HeaderName(http::HeaderName);

// Ordered by name, so SMI's header maps (`BTreeMap`) can hold checked names.
impl Ord for HeaderName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

impl PartialOrd for HeaderName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        http::HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes())
            .map(Self)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a header name")))
    }
}

/// A Gateway API method: one of the HTTPMethod enum.
#[derive(Clone, Debug)]
struct GatewayMethod(http::Method);

impl<'de> Deserialize<'de> for GatewayMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match SmiMethod::deserialize(d)?.0 {
            Some(m) => Ok(Self(m)),
            None => Err(serde::de::Error::custom(
                "method `*` is SMI's; omit `method` instead",
            )),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackendRef {
    #[serde(default, rename = "group")]
    _group: Option<CoreGroup>,
    #[serde(default, rename = "kind")]
    _kind: Option<ServiceKind>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    filters: filters::FiltersSpec,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewayTimeouts {
    #[serde(default)]
    request: Option<Dur>,
    #[serde(default)]
    backend_request: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize)]
struct GatewayRetry {
    #[serde(default)]
    codes: Vec<super::StatusCode>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    backoff: Option<Dur>,
}
