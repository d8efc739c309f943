//! Protocol detection: what the client speaks, decided from its first bytes.
//!
//! Reads are bounded in bytes (a method name or the 24-byte HTTP/2 preface at most) and in
//! time: a client that sends nothing, as server-speaks-first protocols like MySQL do, is
//! treated as opaque TCP once the timeout passes. The bytes read are replayed to whatever
//! handles the connection next, by [`Prefixed`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// An HTTP/1 request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
    /// A TLS ClientHello.
    Tls,
    /// Something else.
    Opaque,
    /// Nothing arrived in time.
    OpaqueTimeout,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest method name we recognise (`PROPPATCH`, `MKCALENDAR`, ...) plus room.
const MAX_METHOD: usize = 20;

/// Decides from the bytes so far, or returns `None` when more are needed.
pub(crate) fn classify(buf: &[u8]) -> Option<Protocol> {
    let first = *buf.first()?;
    if proxy_tls::looks_like_client_hello(buf)? {
        return Some(Protocol::Tls);
    }
    if first == b'P' && buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    for (i, &b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b' ' if i > 0 => return Some(Protocol::Http1),
            b'A'..=b'Z' | b'-' | b'_' => {}
            _ => return Some(Protocol::Opaque),
        }
    }
    if buf.len() > MAX_METHOD {
        Some(Protocol::Opaque)
    } else {
        None
    }
}

/// Reads from `io` until the protocol is known, the peer stops, or `timeout` passes.
pub(crate) async fn detect<I>(mut io: I, timeout: Duration) -> io::Result<(Protocol, Prefixed<I>)>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(64);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let n = tokio::select! {
            n = io.read_buf(&mut buf) => n?,
            () = &mut deadline => {
                let p = if buf.is_empty() { Protocol::OpaqueTimeout } else { Protocol::Opaque };
                return Ok((p, Prefixed::new(buf, io)));
            }
        };
        if n == 0 {
            // The client closed its side before we could tell; whatever it sent is opaque.
            return Ok((Protocol::Opaque, Prefixed::new(buf, io)));
        }
        if let Some(p) = classify(&buf) {
            return Ok((p, Prefixed::new(buf, io)));
        }
        if buf.len() >= 64 {
            return Ok((Protocol::Opaque, Prefixed::new(buf, io)));
        }
    }
}

/// An IO that first yields bytes already read from it.
#[derive(Debug)]
pub(crate) struct Prefixed<I> {
    prefix: BytesMut,
    io: I,
}

impl<I> Prefixed<I> {
    /// `io`, with `prefix` replayed before its own bytes.
    pub(crate) fn new(prefix: BytesMut, io: I) -> Self {
        Self { prefix, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

delegate_async_write!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PROPFIND "), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tls));
        assert_eq!(classify(b"\x16"), None);
        assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Protocol::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(classify(b" GET"), Some(Protocol::Opaque));
        assert_eq!(classify(&[b'A'; 30]), Some(Protocol::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_falls_back_to_opaque_at_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let (p, _) = detect(server, Duration::from_millis(300)).await.unwrap();
        assert_eq!(p, Protocol::OpaqueTimeout);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        drop(client);
    }

    #[tokio::test]
    async fn bytes_read_are_replayed() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (p, mut io) = detect(server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(&all, b"GET / HTTP/1.1\r\n");
    }
}
