//! Wrappers around connections that watch them without touching their bytes.
//!
//! [`Observed`]: a connection whose reads and writes are told to an [`IoObserver`] as they
//! pass (the byte counters of the metrics, the idle clock of an opaque tunnel).
//!
//! [`WriteStall`]: a connection whose peer stops reading is cut. Without it a client that
//! asks for a large response and never reads it holds its connection, and the buffers
//! behind it, for as long as it likes; enough of them exhaust the proxy's memory.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Instant, Sleep};

/// Told what a connection carries.
pub trait IoObserver {
    /// `n` bytes were read (never 0).
    fn read(&self, n: usize);
    /// `n` bytes were written (never 0).
    fn written(&self, n: usize);
    /// A read or write failed.
    fn failed(&self, _error: &io::Error) {}
}

/// `io`, observed by `observer`.
#[derive(Debug)]
pub struct Observed<I, O> {
    io: I,
    observer: O,
}

impl<I, O> Observed<I, O> {
    /// Observes `io`.
    pub fn new(io: I, observer: O) -> Self {
        Self { io, observer }
    }

    /// The connection.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The observer.
    pub fn observer(&self) -> &O {
        &self.observer
    }

    fn wrote(&self, polled: &Poll<io::Result<usize>>)
    where
        O: IoObserver,
    {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => self.observer.written(*n),
            Poll::Ready(Err(e)) => self.observer.failed(e),
            _ => {}
        }
    }
}

impl<I: AsyncRead + Unpin, O: IoObserver + Unpin> AsyncRead for Observed<I, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.observer.read(n);
        }
        if let Poll::Ready(Err(e)) = &polled {
            self.observer.failed(e);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin, O: IoObserver + Unpin> AsyncWrite for Observed<I, O> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `io`, failing its writes with `TimedOut` once a write or flush has waited `limit`
/// without the peer taking a byte.
#[derive(Debug)]
pub struct WriteStall<I> {
    io: I,
    limit: Option<Duration>,
    // Boxed because a sleeping timer is large; made on the first stall, then reset.
    timer: Option<Pin<Box<Sleep>>>,
    // Whether the timer is counting the current wait (a write that goes through ends it).
    armed: bool,
}

impl<I> WriteStall<I> {
    /// Watches `io`; `None` or a zero `limit`: never cut.
    pub fn new(io: I, limit: Option<Duration>) -> Self {
        Self {
            io,
            limit: limit.filter(|l| !l.is_zero()),
            timer: None,
            armed: false,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// Passes a write's (or flush's) outcome on; a wait longer than the limit becomes an
    /// error, with the waker registered for the limit's end meanwhile.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(limit) = self.limit else {
            return polled;
        };
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let timer = self.timer.get_or_insert_with(|| Box::pin(sleep(limit)));
        if !self.armed {
            timer.as_mut().reset(Instant::now() + limit);
            self.armed = true;
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer read nothing for {limit:?}"),
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStall<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStall<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_cut_after_the_limit() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let limit = Duration::from_secs(30);
        let mut io = WriteStall::new(ours, Some(limit));
        // The pipe takes a KiB; then the peer reads nothing.
        io.write_all(&[1; 1024]).await.unwrap();
        let start = Instant::now();
        let err = io.write_all(&[2; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            start.elapsed(),
            limit,
            "cut exactly one limit after the stall began"
        );
        let mut buf = vec![0; 1024];
        peer.read_exact(&mut buf).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let limit = Duration::from_secs(30);
        let mut io = WriteStall::new(ours, Some(limit));
        let reader = tokio::spawn(async move {
            let mut buf = vec![0; 1024];
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                peer.read_exact(&mut buf).await.unwrap();
            }
        });
        for _ in 0..10 {
            io.write_all(&[7; 1024]).await.unwrap();
        }
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_a_stalled_write_waits() {
        let (_peer, ours) = tokio::io::duplex(16);
        let mut io = WriteStall::new(ours, None);
        let write = io.write_all(&[0; 64]);
        assert!(tokio::time::timeout(Duration::from_secs(86_400), write)
            .await
            .is_err());
    }
}
