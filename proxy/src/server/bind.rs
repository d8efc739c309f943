//! Binding a listener in both address families.
//!
//! A listener's address in the config is one socket address, IPv4 by default. In a
//! dual-stack pod, callers and redirected connections also come over IPv6: the kubelet's
//! probes and Prometheus to the pod's IPv6 address, and `init-iptables`' IPv6 rules to
//! `[::1]` (outbound) and the pod's IPv6 address (inbound). So an IPv4 wildcard or
//! loopback address gets an IPv6 twin on the same port: `0.0.0.0:P` also `[::]:P` (IPv6
//! only, beside the IPv4 socket) and `127.0.0.1:P` also `[::1]:P`. The twin is best
//! effort: where the host has no IPv6, or the port is taken in IPv6, the listener serves
//! IPv4 alone and says so in a debug log. Any other address (a specific one, or already
//! IPv6) is bound as written.
//!
//! Every socket listens with a backlog of [`BACKLOG`]: the 128 of a plain
//! `TcpListener::bind` overflowed when a thousand clients connected at once, and the
//! connections beyond it waited a second for the SYN to be sent again.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// A listener's sockets: the configured address, and its IPv6 twin when it has one.
#[derive(Debug)]
pub(crate) struct Bound {
    /// The configured address (its port chosen by the kernel if it was 0).
    pub(crate) primary: TcpListener,
    /// The IPv6 twin, on the same port.
    pub(crate) twin: Option<TcpListener>,
}

/// Binds `addr` (named `what` in errors) and, when it has one, its IPv6 twin.
pub(crate) fn bind(addr: SocketAddr, what: &str) -> io::Result<Bound> {
    let primary = listen(addr, false).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the {what} listener on {addr}: {e}"),
        )
    })?;
    let port = primary.local_addr()?.port();
    let twin = twin_of(addr.ip()).and_then(|ip| {
        let at = SocketAddr::new(ip, port);
        match bind_v6_only(at) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!(%at, error = %e, listener = what, "serving IPv4 only: no IPv6 twin");
                None
            }
        }
    });
    Ok(Bound { primary, twin })
}

/// The IPv6 address that mirrors an IPv4 wildcard or loopback address.
fn twin_of(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some(Ipv6Addr::UNSPECIFIED.into()),
        IpAddr::V4(v4) if v4.is_loopback() => Some(Ipv6Addr::LOCALHOST.into()),
        _ => None,
    }
}

/// An IPv6-only listening socket: `[::]` must not claim the IPv4 port the primary holds.
fn bind_v6_only(at: SocketAddr) -> io::Result<TcpListener> {
    listen(at, true)
}

/// Connections the kernel queues for a listener before they are accepted (it caps this at
/// `net.core.somaxconn`, 4096 by default).
pub(crate) const BACKLOG: i32 = 4096;

/// A listening socket on `at` with a backlog of [`BACKLOG`]; an IPv6 one is IPv6-only when
/// `v6_only`, else it takes the system's default (dual-stack on Linux).
pub(crate) fn listen(at: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
    if v6_only {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&at.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_and_loopback_get_twins_and_other_addresses_do_not() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(twin_of(ip("0.0.0.0")), Some(ip("::")));
        assert_eq!(twin_of(ip("127.0.0.1")), Some(ip("::1")));
        assert_eq!(twin_of(ip("10.0.0.7")), None);
        assert_eq!(twin_of(ip("::")), None);
    }

    #[tokio::test]
    async fn the_twin_takes_the_same_port_in_ipv6_beside_the_ipv4_socket() {
        let bound = bind("0.0.0.0:0".parse().unwrap(), "test").unwrap();
        let port = bound.primary.local_addr().unwrap().port();
        let twin = bound.twin.expect("this host has IPv6");
        assert_eq!(
            twin.local_addr().unwrap(),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
        );
        // Both families connect, each to its own socket.
        let v6 = tokio::net::TcpStream::connect((Ipv6Addr::LOCALHOST, port));
        let (accepted, _) = tokio::join!(twin.accept(), v6);
        assert!(accepted.unwrap().1.is_ipv6());
        let v4 = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let (accepted, _) = tokio::join!(bound.primary.accept(), v4);
        assert!(accepted.unwrap().1.is_ipv4());
    }

    /// A burst of clients is queued by the kernel, not dropped: 600 connect at once to a
    /// listener that accepts none of them yet, and every handshake completes. With a plain
    /// `TcpListener::bind` (backlog 128) the SYNs beyond the queue are dropped and those
    /// connects hang in SYN retries past the bound.
    #[tokio::test]
    async fn a_burst_of_connects_is_queued_until_accepted() {
        let bound = bind("127.0.0.1:0".parse().unwrap(), "test").unwrap();
        let addr = bound.primary.local_addr().unwrap();
        let connects = (0..600).map(|_| tokio::net::TcpStream::connect(addr));
        let all = futures_util::future::join_all(connects);
        let streams = tokio::time::timeout(std::time::Duration::from_secs(20), all)
            .await
            .expect("every connect completes without waiting for a SYN retry");
        assert!(streams.iter().all(Result::is_ok));
    }
}
