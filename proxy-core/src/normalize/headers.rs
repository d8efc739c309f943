//! The header rules behind [`super::Normalize`], as plain functions over request parts.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Version};

use super::HeaderLimits;
use crate::error::{ProxyError, Reason};

/// Headers that describe one hop and never travel further (RFC 9110 section 7.6.1), plus the
/// HTTP/2 upgrade pair that enables h2c request smuggling when forwarded. `Trailer` is not
/// one: it names the trailer fields to come, end to end, and an HTTP/1 sender (hyper's
/// among them) writes only the trailer fields it names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("http2-settings"),
];

fn bad(detail: &'static str) -> ProxyError {
    ProxyError::new(Reason::BadRequest, detail)
}

/// Refuses requests with more header fields or bytes than the limits allow.
pub(super) fn check_limits(headers: &HeaderMap, limits: &HeaderLimits) -> Result<(), ProxyError> {
    if headers.len() > limits.max_header_count {
        return Err(ProxyError::new(
            Reason::HeadersTooLarge,
            format!(
                "{} header fields, more than the limit of {}",
                headers.len(),
                limits.max_header_count
            ),
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(ProxyError::new(
            Reason::HeadersTooLarge,
            format!(
                "{bytes} bytes of headers, more than the limit of {}",
                limits.max_header_bytes
            ),
        ));
    }
    Ok(())
}

/// Refuses methods Skiff does not proxy.
///
/// Ambiguous HTTP/1 framing (Content-Length with Transfer-Encoding) never gets here: hyper
/// lets chunked win, drops the Content-Length and closes the connection after responding
/// (RFC 9112 section 6.1), and the upstream request is always re-framed.
pub(super) fn check_method(parts: &Parts) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(bad("CONNECT tunnels are not supported"));
    }
    // The asterisk-form target is for OPTIONS alone (RFC 9112 section 3.2.4).
    if parts.uri.path() == "*" && parts.method != Method::OPTIONS {
        return Err(bad("the request target * is only for OPTIONS"));
    }
    Ok(())
}

/// Derives the request's one authority and removes `Host`.
///
/// HTTP/1: an absolute-form URI wins over `Host` (RFC 9112 section 3.2.2); HTTP/1.1 without
/// exactly one `Host` is malformed. HTTP/2: `:authority` and `host`, when both are present,
/// must agree (RFC 9113 section 8.3.1).
pub(super) fn authority(parts: &mut Parts) -> Result<Option<Authority>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    parts.headers.remove(header::HOST);
    let host = host.map(|h| parse_authority(&h)).transpose()?;
    let uri_authority = parts.uri.authority().cloned();
    if let Some(a) = &uri_authority {
        if a.as_str().contains('@') {
            return Err(bad("userinfo is not allowed in the request URI"));
        }
    }

    if parts.version == Version::HTTP_2 {
        return match (uri_authority, host) {
            (Some(a), Some(h)) if !same_authority(&a, &h) => {
                Err(bad(":authority and host disagree"))
            }
            (Some(a), _) => Ok(Some(a)),
            (None, h) => Ok(h),
        };
    }
    match (uri_authority, host) {
        (Some(a), _) => Ok(Some(a)),
        (None, Some(h)) => Ok(Some(h)),
        (None, None) if parts.version == Version::HTTP_11 => Err(bad("missing Host header")),
        (None, None) => Ok(None),
    }
}

fn parse_authority(value: &HeaderValue) -> Result<Authority, ProxyError> {
    let a = Authority::try_from(value.as_bytes()).map_err(|_| bad("invalid Host header"))?;
    if a.host().is_empty() || a.as_str().contains('@') {
        return Err(bad("invalid Host header"));
    }
    Ok(a)
}

fn same_authority(a: &Authority, b: &Authority) -> bool {
    a.host().eq_ignore_ascii_case(b.host()) && a.port_u16() == b.port_u16()
}

/// Whether the request asks for a WebSocket upgrade (the only upgrade Skiff passes on).
pub(super) fn websocket_upgrade(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && has_token(&parts.headers, header::CONNECTION, "upgrade")
        && has_token(&parts.headers, header::UPGRADE, "websocket")
}

/// Puts back the two headers a WebSocket upgrade needs after hop-by-hop stripping.
pub(super) fn restore_websocket(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: the fixed list, every header the `Connection` header names,
/// and `TE` unless it is exactly `trailers` (which gRPC needs end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than a hashed removal
    // for each name on the list.
    let hop = |n: &HeaderName| *n == header::TE || HOP_BY_HOP.contains(n);
    if !headers.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let te_is_trailers = {
        let mut te = headers.get_all(header::TE).iter();
        matches!((te.next(), te.next()), (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    };
    if !te_is_trailers {
        headers.remove(header::TE);
    }
}

/// Removes the headers Skiff itself asserts, so neither a client nor an upstream can forge
/// them.
pub fn strip_skiff_headers(headers: &mut HeaderMap) {
    let forged = |n: &HeaderName| n.as_str().starts_with("skiff-");
    if !headers.keys().any(forged) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| forged(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Removes hop-by-hop and `skiff-*` headers from an upstream response; a `101 Switching
/// Protocols` keeps the pair that completes the upgrade.
pub fn strip_response_headers(headers: &mut HeaderMap, switching_protocols: bool) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    strip_skiff_headers(headers);
    if switching_protocols {
        if let Some(upgrade) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, upgrade);
        }
    }
}
