//! The `skiff` subcommands that are not the proxy itself: the terminal views of a running
//! proxy ([`stat`]: `stat`, `top`, `tap`), [`inject`] (adds the sidecar to manifests),
//! [`init_iptables`] (transparent mode's NAT rules) and [`demo`] (a proxy pair with backends,
//! on the embedded config). [`args`] types the whole command line.

pub mod args;
pub mod demo;
pub mod init_iptables;
pub mod inject;
pub mod stat;
