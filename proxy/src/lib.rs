//! Skiff, a sidecar L7 proxy for service meshes: the binary's library half.
//!
//! The `skiff` binary is a thin command line over this crate; the end-to-end tests drive the
//! same code through [`start`]. The folders follow a request (`docs/architecture.md` walks
//! the whole path):
//!
//! - `server/` accepts connections, detects their protocol and runs an HTTP server
//!   connection (or an opaque TCP forward) with the direction's stack;
//! - [`outbound`] and [`inbound`] are each direction's `ServiceBuilder` chain, assembled from
//!   `proxy-core`'s and `proxy-metrics`' middleware and this crate's upstream side;
//! - `routing/` resolves where a request goes from the live config, and holds the proxy's
//!   [`State`] and the config reloader;
//! - `upstream/` picks an endpoint and forwards the request over a pooled connection;
//! - `discovery/` keeps each service's endpoints (a fixed list or DNS);
//! - [`config`] parses the config file; [`tools`] holds the other `skiff` subcommands.

/// Implements `AsyncWrite` for an IO wrapper by delegating to its `io` field: the wrappers
/// in this crate only change how a connection is read.
macro_rules! delegate_async_write {
    ($wrapper:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<I> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
        }
    };
}

mod app;
mod buffers;
pub mod config;
mod discovery;
mod identity;
pub mod inbound;
pub mod logging;
pub mod outbound;
pub(crate) mod routing;
pub mod runtime;
pub(crate) mod server;
pub mod tools;
mod upstream;

pub use app::{start, Running};
pub use routing::State;
