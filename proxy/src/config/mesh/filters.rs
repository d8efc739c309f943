//! Gateway API HTTPRoute `filters`, at rule level and at `backendRefs` level, parsed into
//! `proxy_core::filter` values.
//!
//! A filter Skiff implements is checked here (its type names its one stanza, header names
//! and values are valid, a redirect's status is one Gateway API allows). A filter Skiff does
//! not implement (`ExtensionRef`, `CORS`, anything newer) parses,
//! and makes the route it is on refused, with the reason: honouring the rest of the route
//! without it would send traffic where its author did not mean it to go.

use std::sync::Arc;

use http::uri::Scheme;
use proxy_core::filter::{Filters, HeaderModifier, PathModifier, Redirect, Rewrite};
use serde::{Deserialize, Deserializer};

/// One filter, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFilter {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_header_modifier: Option<RawHeaderModifier>,
    #[serde(default)]
    response_header_modifier: Option<RawHeaderModifier>,
    #[serde(default)]
    request_redirect: Option<RawRedirect>,
    #[serde(default)]
    url_rewrite: Option<RawRewrite>,
    #[serde(default)]
    request_mirror: Option<RawMirror>,
    // Stanzas of filters Skiff does not implement: read, so the route can be refused
    // by type rather than for an unknown field.
    #[serde(default, rename = "extensionRef")]
    _extension_ref: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "cors")]
    _cors: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "externalAuth")]
    _external_auth: Option<serde_yaml_ng::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct RawHeaderModifier {
    #[serde(default)]
    set: Vec<RawHeader>,
    #[serde(default)]
    add: Vec<RawHeader>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRedirect {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<RawPathModifier>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    status_code: Option<u16>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMirror {
    backend_ref: MirrorRef,
    #[serde(default)]
    percent: Option<u32>,
    #[serde(default)]
    fraction: Option<RawFraction>,
}

#[derive(Clone, Debug, Deserialize)]
struct RawFraction {
    numerator: u32,
    #[serde(default = "hundred")]
    denominator: u32,
}

fn hundred() -> u32 {
    100
}

/// A mirror's backend, as written (resolved to a service with the rule's backends).
#[derive(Clone, Debug, Deserialize)]
pub(in crate::config) struct MirrorRef {
    pub(in crate::config) name: String,
    #[serde(default)]
    pub(in crate::config) namespace: Option<String>,
    #[serde(default)]
    pub(in crate::config) port: Option<u16>,
}

/// A `RequestMirror`: where, and which share of requests (`numerator` in `denominator`).
#[derive(Clone, Debug)]
pub(in crate::config) struct MirrorSpec {
    pub(in crate::config) backend: MirrorRef,
    pub(in crate::config) numerator: u32,
    pub(in crate::config) denominator: u32,
}

#[derive(Clone, Debug, Deserialize)]
struct RawRewrite {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<RawPathModifier>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPathModifier {
    #[serde(rename = "type")]
    kind: PathModifierKind,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
enum PathModifierKind {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

/// A path change whose prefixes (for `ReplacePrefixMatch`) come from the rule's matches.
#[derive(Clone, Debug)]
enum PathSpec {
    Full(String),
    Prefix(String),
}

/// The filters of a rule or a backend, checked; prefix replacements wait for the rule's
/// `PathPrefix` matches ([`FiltersSpec::build`]).
#[derive(Clone, Debug, Default)]
pub(in crate::config) struct FiltersSpec {
    request_headers: Option<HeaderModifier>,
    response_headers: Option<HeaderModifier>,
    redirect: Option<(Redirect, Option<PathSpec>)>,
    rewrite: Option<(Option<String>, Option<PathSpec>)>,
    /// `RequestMirror`s (repeatable).
    pub(in crate::config) mirrors: Vec<MirrorSpec>,
    /// Why the route cannot be honoured, when a filter is not implemented.
    pub(in crate::config) unsupported: Option<String>,
}

impl<'de> Deserialize<'de> for FiltersSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<RawFilter>::deserialize(d)?;
        parse(raw).map_err(serde::de::Error::custom)
    }
}

fn parse(raw: Vec<RawFilter>) -> Result<FiltersSpec, String> {
    let mut spec = FiltersSpec::default();
    for (i, filter) in raw.into_iter().enumerate() {
        let RawFilter {
            kind,
            request_header_modifier,
            response_header_modifier,
            request_redirect,
            url_rewrite,
            request_mirror,
            ..
        } = filter;
        let missing = |field: &str| format!("[{i}]: type {kind} needs `{field}`");
        // Every filter Skiff implements but RequestMirror appears at most once.
        let once = |taken: bool| {
            if taken {
                Err(format!("[{i}]: a second {kind} filter"))
            } else {
                Ok(())
            }
        };
        match kind.as_str() {
            "RequestHeaderModifier" => {
                let m = request_header_modifier.ok_or_else(|| missing("requestHeaderModifier"))?;
                once(spec.request_headers.replace(modifier(m, i)?).is_some())?;
            }
            "ResponseHeaderModifier" => {
                let m =
                    response_header_modifier.ok_or_else(|| missing("responseHeaderModifier"))?;
                once(spec.response_headers.replace(modifier(m, i)?).is_some())?;
            }
            "RequestRedirect" => {
                let r = request_redirect.ok_or_else(|| missing("requestRedirect"))?;
                once(spec.redirect.replace(redirect(r, i)?).is_some())?;
            }
            "URLRewrite" => {
                let r = url_rewrite.ok_or_else(|| missing("urlRewrite"))?;
                let path = r.path.map(|p| path(p, i)).transpose()?;
                let hostname = r.hostname.map(|h| hostname(h, i)).transpose()?;
                once(spec.rewrite.replace((hostname, path)).is_some())?;
            }
            "RequestMirror" => {
                let m = request_mirror.ok_or_else(|| missing("requestMirror"))?;
                let (numerator, denominator) = match (m.percent, m.fraction) {
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "[{i}]: a mirror takes percent or fraction, not both"
                        ))
                    }
                    (Some(p), None) if p <= 100 => (p, 100),
                    (None, Some(f)) if f.denominator >= 1 && f.numerator <= f.denominator => {
                        (f.numerator, f.denominator)
                    }
                    (None, None) => (1, 1),
                    _ => {
                        return Err(format!(
                            "[{i}]: a mirror's percent is 0 to 100, its fraction at most 1"
                        ))
                    }
                };
                spec.mirrors.push(MirrorSpec {
                    backend: m.backend_ref,
                    numerator,
                    denominator,
                });
            }
            other => {
                spec.unsupported.get_or_insert_with(|| {
                    format!("filters[{i}]: type {other} is not supported by Skiff")
                });
            }
        }
    }
    if spec.redirect.is_some() && spec.rewrite.is_some() {
        return Err("RequestRedirect and URLRewrite cannot be on one rule".into());
    }
    Ok(spec)
}

fn modifier(raw: RawHeaderModifier, i: usize) -> Result<HeaderModifier, String> {
    let name = |n: &str| {
        http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("[{i}]: {n:?} is not a header name"))
    };
    let pairs = |list: Vec<RawHeader>| {
        list.into_iter()
            .map(|h| {
                let value = http::HeaderValue::try_from(h.value.as_str())
                    .map_err(|_| format!("[{i}]: {:?} is not a header value", h.value))?;
                Ok((name(&h.name)?, value))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let m = HeaderModifier {
        set: pairs(raw.set)?,
        add: pairs(raw.add)?,
        remove: raw
            .remove
            .iter()
            .map(|n| name(n))
            .collect::<Result<_, _>>()?,
    };
    let mut names: Vec<&str> = m
        .set
        .iter()
        .chain(&m.add)
        .map(|(n, _)| n.as_str())
        .chain(m.remove.iter().map(http::HeaderName::as_str))
        .collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("[{i}]: header {} is named twice", w[0]));
    }
    Ok(m)
}

/// A host name alone (no port, no wildcard), as `Host` can carry it.
fn hostname(h: String, i: usize) -> Result<String, String> {
    let valid = !h.is_empty()
        && !h.contains([':', '*', '/'])
        && http::uri::Authority::try_from(h.as_str()).is_ok();
    if valid {
        Ok(h)
    } else {
        Err(format!("[{i}].hostname: {h:?} is not a host name"))
    }
}

fn path(raw: RawPathModifier, i: usize) -> Result<PathSpec, String> {
    let value = match raw.kind {
        PathModifierKind::ReplaceFullPath => raw.replace_full_path.map(PathSpec::Full),
        PathModifierKind::ReplacePrefixMatch => raw.replace_prefix_match.map(PathSpec::Prefix),
    };
    let value = value.ok_or_else(|| format!("[{i}].path: type {:?} needs its value", raw.kind))?;
    let (PathSpec::Full(p) | PathSpec::Prefix(p)) = &value;
    if !p.starts_with('/') {
        return Err(format!("[{i}].path: {p:?} must start with /"));
    }
    Ok(value)
}

fn redirect(raw: RawRedirect, i: usize) -> Result<(Redirect, Option<PathSpec>), String> {
    let scheme = match raw.scheme.as_deref() {
        None => None,
        Some("http") => Some(Scheme::HTTP),
        Some("https") => Some(Scheme::HTTPS),
        Some(other) => return Err(format!("[{i}].scheme: {other:?} is not http or https")),
    };
    // Gateway API's default is 302; 301 is core, 303, 307 and 308 extended.
    let status = match raw.status_code.unwrap_or(302) {
        code @ (301 | 302 | 303 | 307 | 308) => {
            http::StatusCode::from_u16(code).expect("a valid status")
        }
        other => {
            return Err(format!(
                "[{i}].statusCode: {other} is not one of 301, 302, 303, 307, 308"
            ))
        }
    };
    let path = raw.path.map(|p| path(p, i)).transpose()?;
    Ok((
        Redirect {
            scheme,
            hostname: raw.hostname.map(|h| hostname(h, i)).transpose()?,
            port: raw.port,
            path: None,
            status,
        },
        path,
    ))
}

impl FiltersSpec {
    /// The filters, with prefix replacements over the rule's `prefixes`; `None` when there
    /// are none. A prefix replacement on a rule without a `PathPrefix` match is an error.
    pub(in crate::config) fn build(
        &self,
        prefixes: &[String],
    ) -> Result<Option<Arc<Filters>>, String> {
        let path = |p: &Option<PathSpec>| -> Result<Option<PathModifier>, String> {
            match p {
                None => Ok(None),
                Some(PathSpec::Full(full)) => Ok(Some(PathModifier::Full(full.clone()))),
                Some(PathSpec::Prefix(with)) if prefixes.is_empty() => Err(format!(
                    "ReplacePrefixMatch {with:?} needs a PathPrefix match on its rule"
                )),
                Some(PathSpec::Prefix(with)) => Ok(Some(PathModifier::Prefix {
                    prefixes: prefixes.to_vec(),
                    with: with.clone(),
                })),
            }
        };
        let redirect = match &self.redirect {
            None => None,
            Some((r, p)) => Some(Redirect {
                path: path(p)?,
                ..r.clone()
            }),
        };
        let rewrite = match &self.rewrite {
            None => None,
            Some((hostname, p)) => Some(Rewrite {
                hostname: hostname.clone(),
                path: path(p)?,
            }),
        };
        // Mirrors get their services when the route is built.
        let filters = Filters {
            request_headers: self.request_headers.clone(),
            response_headers: self.response_headers.clone(),
            redirect,
            rewrite,
            mirrors: Vec::new(),
        };
        Ok((!filters.is_empty()).then(|| Arc::new(filters)))
    }

    /// These filters on a GRPCRoute, which has no redirect or rewrite: either refuses it.
    pub(in crate::config) fn for_grpc(mut self) -> Self {
        if self.redirect.is_some() || self.rewrite.is_some() {
            self.unsupported.get_or_insert_with(|| {
                "filters: a GRPCRoute has no RequestRedirect or URLRewrite".into()
            });
        }
        self
    }

    /// Whether a redirect is among them.
    pub(in crate::config) fn redirects(&self) -> bool {
        self.redirect.is_some()
    }

    /// Why these filters cannot be a backend's: only header changes can.
    pub(in crate::config) fn backend_problem(&self) -> Option<String> {
        if self.redirect.is_some() || self.rewrite.is_some() || !self.mirrors.is_empty() {
            Some("a backend's filters can change headers only (RequestRedirect, URLRewrite and RequestMirror belong on the rule)".into())
        } else {
            self.unsupported.clone()
        }
    }
}
