//! Opaque TCP: bytes forwarded as they are, both ways, with half-closes carried through,
//! until both sides close or no byte has passed either way for `limits.opaqueIdleTimeout`
//! (a silent tunnel would otherwise hold its connection slot for ever).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::LimitsSpec;

/// Connects to `target` and copies bytes between it and `client` until both sides close,
/// or until the connection has been idle for the limits' opaque idle timeout.
pub(crate) async fn forward<I>(client: I, target: SocketAddr, limits: &LimitsSpec)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let connect = tokio::time::timeout(limits.connect_timeout.0, TcpStream::connect(target));
    let upstream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%target, error = %e, error_code = "upstream-connect", "opaque connection refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%target, error_code = "upstream-connect", "opaque connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    copy(client, upstream, target, limits.opaque_idle_timeout.0).await;
}

/// Copies both ways until both sides close, or nothing has passed for `idle` (zero: no
/// limit).
async fn copy<A, B>(client: A, upstream: B, target: SocketAddr, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (mut client, mut upstream) = (
        Active::new(client, &last, start),
        Active::new(upstream, &last, start),
    );
    let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copied);
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = start + since + idle;
        tokio::select! {
            result = &mut copied => {
                match result {
                    Ok((sent, received)) => tracing::debug!(%target, sent, received, "opaque connection closed"),
                    Err(e) => tracing::debug!(%target, error = %e, "opaque connection ended with an error"),
                }
                return;
            }
            () = tokio::time::sleep_until(deadline), if !idle.is_zero() => {
                // Bytes may have passed since the deadline was set: only a full idle
                // period closes.
                if Instant::now() >= start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle {
                    tracing::info!(%target, ?idle, "opaque connection idle; closed");
                    return;
                }
            }
        }
    }
}

/// One side of a tunnel, noting when bytes last passed (milliseconds since `start`).
struct Active<'a, T> {
    io: T,
    last: &'a AtomicU64,
    start: Instant,
}

impl<'a, T> Active<'a, T> {
    fn new(io: T, last: &'a AtomicU64, start: Instant) -> Self {
        Self { io, last, start }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const TARGET: ([u8; 4], u16) = ([127, 0, 0, 1], 9);

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_closes_after_the_idle_timeout_and_traffic_keeps_it_open() {
        let idle = Duration::from_secs(600);
        let (client, mut app) = tokio::io::duplex(64);
        let (upstream, mut server) = tokio::io::duplex(64);
        let start = Instant::now();
        let tunnel = tokio::spawn(copy(client, upstream, TARGET.into(), idle));
        // A byte each way after 9 minutes: the tunnel is not idle.
        tokio::time::sleep(Duration::from_secs(540)).await;
        app.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        tunnel.await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(540 + 600),
            "closed a full idle period after the last byte"
        );
        // Closed: the application's side sees the end.
        assert_eq!(app.read(&mut byte).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_idle_timeout_keeps_a_silent_tunnel() {
        let (client, _app) = tokio::io::duplex(64);
        let (upstream, _server) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(copy(client, upstream, TARGET.into(), Duration::ZERO));
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        assert!(!tunnel.is_finished());
        tunnel.abort();
    }
}
