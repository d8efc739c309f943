//! Opaque TCP: bytes forwarded as they are, both ways, with half-closes carried through.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Connects to `target` and copies bytes between it and `client` until both sides close.
pub(crate) async fn forward<I>(mut client: I, target: SocketAddr, connect_timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await
    {
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
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(%target, sent, received, "opaque connection closed")
        }
        Err(e) => tracing::debug!(%target, error = %e, "opaque connection ended with an error"),
    }
}
