//! Gateway API `GRPCRoute` (v1, and v1alpha2, its same schema), converted into an HTTPRoute
//! of the one model: a gRPC call is an HTTP/2 POST to `/{service}/{method}`, so a method
//! match is a path match, and everything else (headers, weighted backends, header filters,
//! mirrors, the route's name on metrics) is the HTTPRoute's.
//!
//! | method match | path condition |
//! |---|---|
//! | `Exact`, service and method | exactly `/{service}/{method}` |
//! | `Exact`, service only | prefix `/{service}` (every method) |
//! | `Exact`, method only | `/<any service>/{method}` |
//! | `RegularExpression` | `/{service}/{method}`, each a regular expression (any when unset) |

use proxy_core::route::{anchored, Anchor, PathMatch};
use serde::{Deserialize, Deserializer};

use super::super::filters::FiltersSpec;
use super::super::{
    BackendRef, GatewayMatch, GatewayPath, GatewayValue, HeaderName, HttpRouteSpec, Object,
    ParentRef, Rule,
};

/// A GRPCRoute's spec.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(in crate::config) struct GrpcRouteSpec {
    parent_refs: Vec<ParentRef>,
    #[serde(default, rename = "hostnames")]
    _hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<GrpcRule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrpcRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<GrpcMatch>,
    #[serde(default)]
    filters: FiltersSpec,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct GrpcMatch {
    #[serde(default)]
    method: Option<MethodMatch>,
    #[serde(default)]
    headers: Vec<GatewayValue<HeaderName>>,
}

/// A method condition, checked and turned into a path condition when parsed.
#[derive(Clone, Debug)]
struct MethodMatch(Option<PathMatch>);

#[derive(Deserialize)]
struct RawMethodMatch {
    #[serde(default, rename = "type")]
    kind: MethodKind,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
enum MethodKind {
    #[default]
    Exact,
    RegularExpression,
}

impl<'de> Deserialize<'de> for MethodMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawMethodMatch::deserialize(d)?;
        method_path(raw).map(Self).map_err(serde::de::Error::custom)
    }
}

fn method_path(raw: RawMethodMatch) -> Result<Option<PathMatch>, String> {
    let service = raw.service.filter(|s| !s.is_empty());
    let method = raw.method.filter(|m| !m.is_empty());
    let regex = |s: &str| {
        anchored(s, Anchor::Whole)
            .map(PathMatch::Regex)
            .map_err(|e| e.to_string())
    };
    match raw.kind {
        MethodKind::Exact => {
            if let Some(s) = &service {
                // `pkg.Service`, with at most one leading dot.
                let ok = s.strip_prefix('.').unwrap_or(s).split('.').all(identifier);
                if !ok {
                    return Err(format!(
                        "service {s:?} is not a gRPC service name (pkg.Service)"
                    ));
                }
            }
            if let Some(m) = &method {
                if !identifier(m) {
                    return Err(format!("method {m:?} is not a gRPC method name"));
                }
            }
            match (service, method) {
                (Some(s), Some(m)) => Ok(Some(PathMatch::Exact(format!("/{s}/{m}")))),
                (Some(s), None) => Ok(Some(PathMatch::Prefix(format!("/{s}")))),
                (None, Some(m)) => regex(&format!("/[^/]+/{}", regex::escape(&m))).map(Some),
                (None, None) => Err("a method match needs a service or a method".into()),
            }
        }
        MethodKind::RegularExpression => {
            let s = service.unwrap_or_else(|| "[^/]+".into());
            let m = method.unwrap_or_else(|| "[^/]+".into());
            regex(&format!("/(?:{s})/(?:{m})")).map(Some)
        }
    }
}

/// A protobuf identifier (letters, digits, `_`, not starting with a digit).
fn identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

impl From<GrpcRouteSpec> for HttpRouteSpec {
    fn from(g: GrpcRouteSpec) -> Self {
        let rules = if g.rules.is_empty() {
            vec![GrpcRule::default()]
        } else {
            g.rules
        };
        HttpRouteSpec {
            parent_refs: g.parent_refs,
            _hostnames: g._hostnames,
            rules: rules.into_iter().map(Rule::from).collect(),
        }
    }
}

impl From<GrpcRule> for Rule {
    fn from(r: GrpcRule) -> Self {
        let matches = if r.matches.is_empty() {
            vec![GatewayMatch::default()]
        } else {
            r.matches
                .into_iter()
                .map(|m| GatewayMatch {
                    path: m.method.and_then(|p| p.0).map(GatewayPath),
                    headers: m.headers,
                    ..GatewayMatch::default()
                })
                .collect()
        };
        Rule {
            name: r.name,
            matches,
            backend_refs: r.backend_refs,
            timeouts: None,
            retry: None,
            filters: r.filters.for_grpc(),
        }
    }
}

/// A GRPCRoute object as the HTTPRoute it routes like.
pub(in crate::config) fn into_http(o: Object<GrpcRouteSpec>) -> Object<HttpRouteSpec> {
    Object {
        api_version: o.api_version,
        kind: o.kind,
        metadata: o.metadata,
        spec: o.spec.into(),
        _status: o._status,
    }
}
