//! [`Observed`]: a connection whose reads and writes are told to an [`IoObserver`] as they
//! pass, for what watches connections without touching their bytes (the byte counters of
//! the metrics, the idle clock of an opaque tunnel).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
