//! `spec.limits`: the protocol and resource limits every connection is held to.

use std::num::{NonZeroU32, NonZeroUsize};

use serde::{Deserialize, Serialize};

use super::Dur;

/// Protocol and resource limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Most connections open at once across data listeners; beyond it, accepting pauses.
    pub max_connections: NonZeroUsize,
    /// How long an HTTP/1 client may take to send its request headers.
    pub header_read_timeout: Dur,
    /// Longest pause between two frames of a request body.
    pub body_idle_timeout: Dur,
    /// Most header fields per request (431 beyond).
    pub max_header_count: NonZeroUsize,
    /// Most bytes of header names and values per request (431 beyond).
    pub max_header_bytes: NonZeroUsize,
    /// How long protocol detection waits for a client's first bytes before treating the
    /// connection as opaque TCP (server-speaks-first protocols send nothing).
    pub detect_timeout: Dur,
    /// Upstream TCP connect timeout.
    pub connect_timeout: Dur,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle_timeout: Dur,
    /// How long an opaque TCP connection may carry no byte either way before it is closed;
    /// `0s`: never.
    pub opaque_idle_timeout: Dur,
    /// How long an HTTP/1 keep-alive connection may sit between requests before it is
    /// closed; `0s`: never.
    pub idle_timeout: Dur,
    /// How long a write to a peer (client or upstream) may wait with the peer reading
    /// nothing before the connection is cut; `0s`: never.
    pub write_stall_timeout: Dur,
    /// HTTP/2 server limits.
    pub http2: Http2Limits,
    /// How upstream HTTP/2 connections are shared.
    pub upstream_http2: UpstreamHttp2Limits,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_connections: NonZeroUsize::new(10_000).expect("non-zero"),
            header_read_timeout: Dur::secs(10),
            body_idle_timeout: Dur::secs(60),
            max_header_count: NonZeroUsize::new(100).expect("non-zero"),
            max_header_bytes: NonZeroUsize::new(32 * 1024).expect("non-zero"),
            detect_timeout: Dur::secs(1),
            connect_timeout: Dur::secs(1),
            upstream_idle_timeout: Dur::secs(90),
            opaque_idle_timeout: Dur::secs(3600),
            idle_timeout: Dur::secs(3600),
            write_stall_timeout: Dur::secs(60),
            http2: Http2Limits::default(),
            upstream_http2: UpstreamHttp2Limits::default(),
        }
    }
}

/// HTTP/2 server limits (set explicitly; the library defaults are not a policy).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Http2Limits {
    /// Streams a client may have open on one connection.
    pub max_concurrent_streams: u32,
    /// Most bytes of decoded headers per request (HPACK bombs stop here).
    pub max_header_list_size: u32,
    /// Streams a client may reset before they are accepted (Rapid Reset).
    pub max_pending_reset_streams: usize,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_header_list_size: 32 * 1024,
            max_pending_reset_streams: 20,
        }
    }
}

/// How the HTTP/2 connections to one endpoint (an HTTP/2 backend, or a peer proxy) are
/// shared between the proxy's clients.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamHttp2Limits {
    /// Most connections per endpoint; another is opened only when the others' streams are
    /// all in use.
    pub connections: NonZeroUsize,
    /// Most streams put on one connection (fewer if the peer allows fewer).
    pub streams_per_connection: NonZeroU32,
    /// Percent of one connection's streams a single client connection may hold.
    pub client_share: Percent,
}

impl Default for UpstreamHttp2Limits {
    fn default() -> Self {
        Self {
            connections: NonZeroUsize::new(4).expect("non-zero"),
            streams_per_connection: NonZeroU32::new(100).expect("non-zero"),
            client_share: Percent(50),
        }
    }
}

/// A share from 1 to 100 percent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Percent(u8);

impl Percent {
    /// The value, 1 to 100.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u32> for Percent {
    type Error = String;

    fn try_from(v: u32) -> Result<Self, String> {
        match u8::try_from(v) {
            Ok(p @ 1..=100) => Ok(Self(p)),
            _ => Err(format!("{v} is not a percentage from 1 to 100")),
        }
    }
}

impl From<Percent> for u32 {
    fn from(p: Percent) -> u32 {
        u32::from(p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ok, rejected, HEAD};

    #[test]
    fn upstream_http2_sharing_parses_and_a_share_outside_1_to_100_is_refused() {
        let c = ok(&format!(
            "{HEAD}spec:\n  limits:\n    upstreamHttp2: {{connections: 2, clientShare: 25}}\n"
        ));
        let sharing = &c.proxy.limits.upstream_http2;
        assert_eq!(
            (sharing.connections.get(), sharing.client_share.get()),
            (2, 25)
        );
        assert_eq!(sharing.streams_per_connection.get(), 100, "the default");
        for bad in ["0", "101"] {
            let e = rejected(
                &format!("{HEAD}spec:\n  limits:\n    upstreamHttp2:\n      clientShare: {bad}\n"),
                "is not a percentage from 1 to 100",
            );
            assert_eq!(e.line, Some(6), "{e:?}");
        }
    }
}
