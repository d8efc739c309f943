//! The tap stream's schema: the three events of a request as types, written by the proxy
//! (`/tap`) and read back by `skiff tap` and `skiff top`.
//!
//! One definition for both sides, so a field cannot be renamed on one and silently read as
//! missing on the other. The field names and values are a contract, documented in
//! `docs/observability.md` (Tap): each event is one JSON object per line, its kind under
//! `event`. The end event's fields are also the access log's (see
//! [`crate::http::DEFAULT_ACCESS_LOG_FIELDS`]), looked up by their serialized names.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use proxy_core::classify::Classification;
use proxy_core::Direction;
use serde::{Deserialize, Serialize};

/// One tap event, tagged by its kind: `{"event":"request",...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
// An event lives only until it is written out as a line (or read from one): boxing the
// large variant would cost an allocation per event for no saving.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// The request arrived.
    Request(RequestEvent),
    /// The response headers arrived.
    Response(ResponseEvent),
    /// The response body ended (or failed, or the client went away).
    End(EndEvent),
}

/// Header names and values as shown by tap (sensitive values already `[redacted]`); sorted
/// by name, so two events of the same request list them alike.
pub type Headers = BTreeMap<String, String>;

/// The `request` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// The request number, shared by the request's three events.
    pub id: u64,
    /// Which listener took the request.
    pub direction: Direction,
    /// The method.
    pub method: String,
    /// The authority as the client sent it (`Host` or the URI's).
    pub authority: String,
    /// The path, without the query string.
    pub path: String,
    /// The caller: its verified SPIFFE ID over mesh mTLS, else its IP address.
    pub client: String,
    /// The request headers.
    pub headers: Headers,
}

/// The `response` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseEvent {
    /// The request number.
    pub id: u64,
    /// Which listener took the request.
    pub direction: Direction,
    /// The method.
    pub method: String,
    /// The authority as the client sent it.
    pub authority: String,
    /// The path, without the query string.
    pub path: String,
    /// The route taken; `null` when none.
    pub route: Option<String>,
    /// The status sent to the client.
    pub status: u16,
    /// Milliseconds from the request's arrival to the response headers.
    pub latency_ms: f64,
    /// The response headers.
    pub headers: Headers,
}

/// The `end` event: every access log field, the proxy's classification of the response,
/// and a body sample when the client asked for one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndEvent {
    /// When the request arrived, in Unix seconds (millisecond precision).
    pub ts: f64,
    /// The request number.
    pub id: u64,
    /// Which listener took the request.
    pub direction: Direction,
    /// The method.
    pub method: String,
    /// The authority as the client sent it.
    pub authority: String,
    /// The path, without the query string.
    pub path: String,
    /// The caller.
    pub client: String,
    /// The route taken; `null` when none.
    pub route: Option<String>,
    /// The status sent to the client.
    pub status: u16,
    /// Milliseconds from the request's arrival to the end of the response body.
    pub duration_ms: f64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// The gRPC status, from the trailers or a trailers-only response.
    pub grpc_status: Option<u32>,
    /// The `skiff-error` reason when Skiff answered or cut the response. A string rather
    /// than a `Reason`, so a reader older than the proxy still reads reasons added since.
    pub error: Option<String>,
    /// Success or failure, as the proxy's shared classifier decided: the same value as the
    /// `classification` label this response was counted under in `response_total` and
    /// `/stats`, so tools need no rule of their own.
    pub classification: Classification,
    /// Tries made: 0 when refused before any, 1 without retries.
    pub tries: u32,
    /// The backend the route's split drew for the last try.
    pub backend: Option<String>,
    /// The endpoint of the last try.
    pub endpoint: Option<SocketAddr>,
    /// The endpoint's breaker state when the last try was admitted.
    pub breaker: Option<String>,
    /// The authorization decision (inbound).
    pub authz: Option<String>,
    /// A fault injected on purpose by the route's fault policy (`delay:2s`, `abort:503`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// The trace id: W3C `traceparent`, else B3, else `x-request-id`.
    pub trace_id: Option<String>,
    /// The first bytes of the response body, as text, when the tap client asked for them
    /// (`body=N`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl Event {
    /// The request number the event belongs to.
    pub fn id(&self) -> u64 {
        match self {
            Self::Request(e) => e.id,
            Self::Response(e) => e.id,
            Self::End(e) => e.id,
        }
    }

    /// The status sent to the client, once known.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Request(_) => None,
            Self::Response(e) => Some(e.status),
            Self::End(e) => Some(e.status),
        }
    }

    /// The event as one NDJSON line.
    pub fn to_line(&self) -> Bytes {
        match serde_json::to_vec(self) {
            Ok(mut line) => {
                line.push(b'\n');
                Bytes::from(line)
            }
            // Unreachable with these types (string keys, plain values; serde_json writes a
            // non-finite number as null), but a lost event is better than a panicking proxy.
            Err(e) => {
                tracing::warn!(error = %e, "tap event not serialized");
                Bytes::new()
            }
        }
    }

    /// Reads one line of the stream; `None` for a line that is not an event (a blank line,
    /// or an event kind this reader does not know).
    pub fn from_line(line: &[u8]) -> Option<Self> {
        serde_json::from_slice(line).ok()
    }
}
