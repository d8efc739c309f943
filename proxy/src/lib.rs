//! Skiff, a sidecar L7 proxy for service meshes: the binary's library half.
//!
//! The `skiff` binary is a thin CLI over this crate; the end-to-end tests drive the same
//! code through [`start`]. The request path (DESIGN.md section 3) reads in this order:
//! [`serve`] accepts and detects, [`stack`] assembles the middleware of each direction from
//! `proxy-core` and `proxy-metrics`, [`target`] resolves where a request goes, and
//! [`forward`] sends it through [`client`]'s connection pools.

pub mod app;
pub mod client;
pub mod config;
pub mod demo;
pub mod detect;
pub mod drain;
pub mod endpoints;
pub mod forward;
pub mod head_timeout;
pub mod pick;
pub mod reload;
pub mod runtime;
pub mod serve;
pub mod stack;
pub mod state;
pub mod target;
pub mod tcp;

pub use app::{start, Running};
