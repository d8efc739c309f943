//! Opaque TCP: bytes forwarded as they are, both ways, with half-closes carried through,
//! until both sides close or no byte has passed either way for `limits.opaqueIdleTimeout`
//! (a silent tunnel would otherwise hold its connection slot for ever).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proxy_core::io::{IoObserver, Observed};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::LimitsSpec;
use crate::upstream::pool::Pool;

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

/// Carries `client`'s bytes to a meshed endpoint over mutual TLS (ALPN `skiff.tcp/1`),
/// whose proxy forwards them to its application, then copies as [`forward`] does.
pub(crate) async fn forward_meshed<I>(client: I, endpoint: &Pool, limits: &LimitsSpec)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let target = endpoint.addr();
    match endpoint.open_tcp().await {
        Ok(upstream) => copy(client, upstream, target, limits.opaque_idle_timeout.0).await,
        Err(e) => {
            tracing::warn!(%target, error = %e, error_code = "upstream-connect", "opaque connection over the mesh failed");
        }
    }
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
    let activity = || Activity { last: &last, start };
    let (mut client, mut upstream) = (
        Observed::new(client, activity()),
        Observed::new(upstream, activity()),
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

/// One side of a tunnel's observer: notes when bytes last passed (milliseconds since
/// `start`).
struct Activity<'a> {
    last: &'a AtomicU64,
    start: Instant,
}

impl Activity<'_> {
    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl IoObserver for Activity<'_> {
    fn read(&self, _: usize) {
        self.touch();
    }

    fn written(&self, _: usize) {
        self.touch();
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
