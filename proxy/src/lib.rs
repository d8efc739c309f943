//! Skiff, a sidecar L7 proxy for service meshes: the binary's library half.
//!
//! The `skiff` binary is a thin CLI over this crate; the end-to-end tests drive the same
//! code through [`start`]. The request path (DESIGN.md section 3) reads in this order:
//! [`serve`] accepts and detects, [`stack`] assembles the middleware of each direction from
//! `proxy-core` and `proxy-metrics`, [`target`] resolves where a request goes, and
//! [`forward`] sends it through [`client`]'s connection pools.

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

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn_service;
pub mod demo;
pub mod detect;
pub mod dns;
pub mod drain;
pub mod endpoints;
pub mod forward;
pub mod head_timeout;
pub mod identity;
pub mod init_iptables;
pub mod inject;
pub mod logging;
pub mod pick;
pub mod reload;
pub mod runtime;
pub mod serve;
pub mod stack;
pub mod state;
pub mod target;
pub mod tcp;

pub use app::{start, Running};
