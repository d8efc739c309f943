//! A small stub resolver for services' DNS names. The system resolver (`getaddrinfo`) does
//! not say how long an answer is good for; this one asks the name servers of
//! `/etc/resolv.conf` (or `spec.dns.nameservers`) directly, so a headless Service's pod
//! addresses are re-resolved when their TTL runs out, within `minTtl` and `maxTtl`.
//!
//! It follows the resolv.conf rules a pod relies on (`search` domains, `ndots`), reads
//! `/etc/hosts` first, asks for A and AAAA records together, and falls back to TCP when a
//! UDP answer is truncated.

pub(crate) mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::config::DnsSpec;
use wire::{RecordType, Response, WireError};

/// Why a lookup failed (as opposed to finding that the name has no addresses).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DnsError {
    /// No name server answered in time.
    #[error("no DNS server answered for {0}")]
    Timeout(String),
    /// Sockets failed.
    #[error("DNS exchange failed: {0}")]
    Io(#[from] std::io::Error),
    /// Bad name or bad answer.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// The addresses a name has now, and how long that answer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Every address, sorted. Empty when the name does not exist (a headless Service with
    /// no ready pods).
    pub addrs: Vec<IpAddr>,
    /// The answer's TTL, already bounded by `minTtl` and `maxTtl`.
    pub ttl: Duration,
}

/// Resolves names the way a pod's resolver would, keeping TTLs.
#[derive(Debug)]
pub(crate) struct Resolver {
    settings: DnsSpec,
    nameservers: Vec<SocketAddr>,
    search: Vec<String>,
    ndots: usize,
    next_id: AtomicU16,
}

impl Resolver {
    /// Name servers from `spec`, else from `/etc/resolv.conf` (with its search domains).
    pub(crate) fn new(spec: &DnsSpec) -> Self {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Self::with_resolv_conf(spec, &conf)
    }

    fn with_resolv_conf(spec: &DnsSpec, conf: &str) -> Self {
        let conf = ResolvConf::parse(conf);
        let nameservers = if spec.nameservers.is_empty() {
            conf.nameservers
        } else {
            spec.nameservers.clone()
        };
        Self {
            settings: spec.clone(),
            nameservers,
            search: conf.search,
            ndots: conf.ndots,
            next_id: AtomicU16::new(std::process::id() as u16),
        }
    }

    /// The settings it was made with.
    pub(crate) fn settings(&self) -> &DnsSpec {
        &self.settings
    }

    /// How long to wait before asking again: the answer's TTL, bounded.
    pub(crate) fn bound(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.settings.min_ttl.0, self.settings.max_ttl.0)
    }

    /// Resolves `host` (an address, a name in `/etc/hosts`, or a DNS name).
    pub(crate) async fn lookup(&self, host: &str) -> Result<Answer, DnsError> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(self.answer(vec![ip], self.settings.max_ttl.0));
        }
        let hosts = tokio::fs::read_to_string("/etc/hosts")
            .await
            .unwrap_or_default();
        let local = in_hosts(&hosts, host.trim_end_matches('.'));
        if !local.is_empty() {
            return Ok(self.answer(local, self.settings.max_ttl.0));
        }
        for name in candidates(host, &self.search, self.ndots) {
            let (v4, v6) = tokio::join!(
                self.ask(&name, RecordType::A),
                self.ask(&name, RecordType::Aaaa)
            );
            // One family failing while the other answers still gives usable addresses.
            let (mut addrs, mut ttl, mut error) = (Vec::new(), None::<Duration>, None);
            for result in [v4, v6] {
                match result {
                    Ok(Some((list, t))) => {
                        addrs.extend(list);
                        ttl = Some(ttl.map_or(t, |old| old.min(t)));
                    }
                    Ok(None) => {}
                    Err(e) => error = Some(e),
                }
            }
            match (ttl, error) {
                (Some(ttl), _) => return Ok(self.answer(addrs, ttl)),
                (None, Some(e)) => return Err(e),
                (None, None) => continue, // this spelling does not exist: try the next
            }
        }
        Ok(self.answer(Vec::new(), self.settings.min_ttl.0))
    }

    fn answer(&self, mut addrs: Vec<IpAddr>, ttl: Duration) -> Answer {
        addrs.sort();
        addrs.dedup();
        Answer {
            addrs,
            ttl: self.bound(ttl),
        }
    }

    /// Asks each name server in turn until one answers; `None` for a negative answer.
    async fn ask(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Option<(Vec<IpAddr>, Duration)>, DnsError> {
        let mut last = DnsError::Timeout(name.to_owned());
        for server in &self.nameservers {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let query = wire::query(id, name, rtype)?;
            let timeout = self.settings.timeout.0;
            let exchange = async {
                match wire::parse(&udp(*server, &query, id, rtype).await?, id, rtype)? {
                    Response::Truncated => {
                        Ok(wire::parse(&tcp(*server, &query).await?, id, rtype)?)
                    }
                    other => Ok(other),
                }
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(Response::Addresses(addrs, ttl))) => return Ok(Some((addrs, ttl))),
                Ok(Ok(_)) => return Ok(None),
                Ok(Err(e)) => last = e,
                Err(_) => last = DnsError::Timeout(name.to_owned()),
            }
        }
        Err(last)
    }
}

/// Sends `query` over UDP and waits for the datagram that answers it (others are dropped:
/// a late answer to an earlier query, or a spoofing attempt).
async fn udp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    rtype: RecordType,
) -> Result<Vec<u8>, DnsError> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0; usize::from(wire::UDP_PAYLOAD)];
    loop {
        let n = socket.recv(&mut buf).await?;
        if !matches!(wire::parse(&buf[..n], id, rtype), Err(WireError::Mismatch)) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// Sends `query` over TCP (two-byte length prefixes), for answers too big for UDP.
async fn tcp(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, DnsError> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| WireError::Malformed)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The parts of resolv.conf a stub resolver uses.
#[derive(Debug, PartialEq, Eq)]
struct ResolvConf {
    nameservers: Vec<SocketAddr>,
    search: Vec<String>,
    ndots: usize,
}

impl ResolvConf {
    fn parse(text: &str) -> Self {
        let mut conf = Self {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A link-local IPv6 server's zone (`%eth0`) is dropped: rare in pods.
                    let ip = words.next().and_then(|w| w.split('%').next()?.parse().ok());
                    if let Some(ip) = ip {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search" | "domain") => {
                    conf.search = words.map(|w| w.trim_end_matches('.').to_owned()).collect();
                }
                Some("options") => {
                    for option in words {
                        if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse().ok())
                        {
                            conf.ndots = n;
                        }
                    }
                }
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers
                .push(SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        conf
    }
}

/// The spellings of `host` to try, in order: a name ending in a dot is absolute; one with at
/// least `ndots` dots is tried as written before the search domains; others after them.
fn candidates(host: &str, search: &[String], ndots: usize) -> Vec<String> {
    if let Some(absolute) = host.strip_suffix('.') {
        return vec![absolute.to_owned()];
    }
    let searched = search.iter().map(|domain| format!("{host}.{domain}"));
    if host.matches('.').count() >= ndots {
        std::iter::once(host.to_owned()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(host.to_owned())).collect()
    }
}

/// The addresses `/etc/hosts` gives `name`.
fn in_hosts(hosts: &str, name: &str) -> Vec<IpAddr> {
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests;
