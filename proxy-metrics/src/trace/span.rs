//! A finished request as an OTLP span: OpenTelemetry's HTTP attribute names where they
//! exist, and Skiff's own (`skiff.*`) for what only the proxy knows.

use std::net::SocketAddr;

use proxy_core::classify::Classification;
use proxy_core::notes::Noted;
use proxy_core::Direction;

use super::otlp::{self, KeyValue, SpanKind};
use super::Begun;
use crate::http::Ending;

/// What is known of a request when its response ends.
#[derive(Debug)]
pub struct SpanEnd<'a> {
    /// The method.
    pub method: &'a str,
    /// The authority as the client sent it.
    pub authority: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The address of the connection's peer: the caller (a server span's).
    pub peer: Option<SocketAddr>,
    /// The caller's verified identity (a server span's).
    pub caller_identity: Option<&'a str>,
    /// What the layers noted: route, backend, endpoint, tries, fault.
    pub noted: &'a Noted,
    /// How the response ended.
    pub ending: &'a Ending<'a>,
}

impl Begun {
    /// Ends the span and queues it for export.
    pub fn end(&self, end: &SpanEnd<'_>) {
        let span = self.to_span(end);
        self.tracer.send(span);
    }

    pub(super) fn to_span(&self, end: &SpanEnd<'_>) -> otlp::Span {
        let ending = end.ending;
        let noted = end.noted;
        // Bounded, as everything a queued span holds: the queue is bounded by count.
        let path = clip(end.path, MAX_PATH);
        let mut attrs = vec![
            KeyValue::string("http.request.method", end.method),
            KeyValue::string("url.path", path),
            KeyValue::string("url.scheme", "http"),
            KeyValue::string("skiff.direction", self.direction.as_str()),
            KeyValue::int("skiff.tries", i64::from(noted.tries)),
        ];
        // Status 0: the client went away before a response began (see `cancelled`).
        if ending.status != 0 {
            attrs.push(KeyValue::int(
                "http.response.status_code",
                i64::from(ending.status),
            ));
        }
        let authority = clip(end.authority, MAX_AUTHORITY);
        let (host, port) = split_authority(authority);
        if !host.is_empty() {
            attrs.push(KeyValue::string("server.address", host));
        }
        if let Some(port) = port {
            attrs.push(KeyValue::int("server.port", i64::from(port)));
        }
        let kind = match self.direction {
            Direction::Inbound => {
                if let Some(peer) = end.peer {
                    attrs.push(KeyValue::string("client.address", peer.ip().to_string()));
                    push_peer(&mut attrs, peer);
                }
                if let Some(id) = end.caller_identity {
                    attrs.push(KeyValue::string("skiff.peer.identity", id));
                }
                SpanKind::Server
            }
            Direction::Outbound => {
                if let Some(endpoint) = noted.endpoint {
                    push_peer(&mut attrs, endpoint);
                }
                if let Some(id) = &noted.peer_identity {
                    attrs.push(KeyValue::string("skiff.peer.identity", id.as_ref()));
                }
                attrs.push(KeyValue::string(
                    "url.full",
                    format!("http://{authority}{path}"),
                ));
                SpanKind::Client
            }
        };
        if let Some(route) = &noted.route {
            attrs.push(KeyValue::string("skiff.route", route.as_ref()));
        }
        if let Some(backend) = &noted.backend {
            attrs.push(KeyValue::string("skiff.backend", backend.as_str()));
        }
        if let Some(endpoint) = noted.endpoint {
            attrs.push(KeyValue::string("skiff.endpoint", endpoint.to_string()));
        }
        if let Some(fault) = &noted.fault {
            attrs.push(KeyValue::string("skiff.fault", fault.as_str()));
        }
        if let Some(code) = ending.grpc_status {
            attrs.push(KeyValue::int("rpc.grpc.status_code", i64::from(code)));
        }
        if let Some(reason) = ending.error {
            attrs.push(KeyValue::string("skiff.error", reason.as_str()));
        }
        // OpenTelemetry's HTTP conventions: a server span's status stays unset for a 4xx
        // (the client's error, not the server's); a client span's is an error.
        let client_error = kind == SpanKind::Server && (400..500).contains(&ending.status);
        let failed = ending.classification == Classification::Failure && !client_error;
        let status = failed.then(|| {
            let why = match (ending.error, ending.grpc_status) {
                (Some(reason), _) => reason.as_str().to_owned(),
                (None, Some(code)) if code != 0 => format!("grpc-status {code}"),
                _ if ending.status == 0 => "cancelled".to_owned(),
                _ => ending.status.to_string(),
            };
            attrs.push(KeyValue::string("error.type", why.clone()));
            otlp::Status {
                message: why,
                code: otlp::STATUS_ERROR,
            }
        });
        let name = match &noted.route {
            Some(route) => format!("{} {route}", end.method),
            None => end.method.to_owned(),
        };
        // The duration is measured on the monotonic clock; only the start is wall time.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let duration = (ending.duration_ms * 1_000_000.0).max(0.0) as u64;
        // Sampled, and (bits 8 and 9) whether the parent is known and remote: a server
        // span's parent is the caller's; a client span's, the application's.
        let remote_flags = match self.parent {
            Some(_) => 0x300,
            None => 0x100,
        };
        otlp::Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: self.trace_state.clone(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: kind as i32,
            start_time_unix_nano: self.start_unix_nanos,
            end_time_unix_nano: self.start_unix_nanos.saturating_add(duration),
            attributes: attrs,
            status,
            flags: 0x01 | remote_flags,
        }
    }
}

/// The longest `url.path` recorded (longer ones are cut at a character boundary).
const MAX_PATH: usize = 1024;
/// The longest authority recorded.
const MAX_AUTHORITY: usize = 256;

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn push_peer(attrs: &mut Vec<KeyValue>, addr: SocketAddr) {
    attrs.push(KeyValue::string(
        "network.peer.address",
        addr.ip().to_string(),
    ));
    attrs.push(KeyValue::int("network.peer.port", i64::from(addr.port())));
}

/// `host[:port]`, with IPv6 literals in brackets, into host and port.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host, port);
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}
