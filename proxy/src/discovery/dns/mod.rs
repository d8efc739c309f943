//! DNS names of services (a headless Kubernetes Service resolves to its pods), resolved with
//! hickory-resolver so that each answer comes with its TTL: the system resolver
//! (`getaddrinfo`) does not say how long an answer is good for. A service's endpoints are
//! re-resolved when the TTL runs out, bounded by `spec.dns.minTtl` and `maxTtl`.
//!
//! The rules a pod relies on come from `/etc/resolv.conf` (`search` domains, `ndots`) and
//! `/etc/hosts`, as glibc applies them; `spec.dns.nameservers` replaces only the servers.
//! hickory asks for A and AAAA records together, randomises query IDs and source ports,
//! checks that an answer matches its question, and retries over TCP when a UDP answer is
//! truncated. Its cache is off: the endpoint set above keeps the last answer and decides
//! when to ask again, so a `maxTtl` shorter than a record's TTL is honoured.

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::DnsSpec;

/// Why a lookup failed (as opposed to finding that the name has no addresses).
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of {host} failed: {source}")]
pub(crate) struct DnsError {
    host: String,
    source: ResolveError,
}

/// The addresses a name has now, and how long that answer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Every address, sorted. Empty when the name does not exist (a headless Service with
    /// no ready pods).
    pub(crate) addrs: Vec<IpAddr>,
    /// The answer's TTL, already bounded by `minTtl` and `maxTtl`.
    pub(crate) ttl: Duration,
}

/// Resolves names the way a pod's resolver would, keeping TTLs.
#[derive(Debug)]
pub(crate) struct Resolver {
    settings: DnsSpec,
    inner: TokioResolver,
}

impl Resolver {
    /// Name servers from `spec`, else from `/etc/resolv.conf`; search domains and `ndots`
    /// from `/etc/resolv.conf`.
    pub(crate) fn new(spec: &DnsSpec) -> Self {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Self::with_resolv_conf(spec, &conf)
    }

    /// [`Resolver::new`] with resolv.conf given as text.
    pub(crate) fn with_resolv_conf(spec: &DnsSpec, resolv_conf: &str) -> Self {
        let (system, system_opts) = hickory_resolver::system_conf::parse_resolv_conf(resolv_conf)
            .unwrap_or_else(|e| {
                // No usable resolv.conf (or one without servers): the local server, as
                // glibc does, with no search domains.
                tracing::debug!(error = %e, "resolv.conf unusable; asking 127.0.0.1:53");
                let local =
                    NameServerConfigGroup::from_ips_clear(&[[127, 0, 0, 1].into()], 53, true);
                let mut opts = ResolverOpts::default();
                opts.ndots = 1;
                (ResolverConfig::from_parts(None, Vec::new(), local), opts)
            });
        let servers = if spec.nameservers.is_empty() {
            system.name_servers().to_vec().into()
        } else {
            servers(&spec.nameservers)
        };
        let config =
            ResolverConfig::from_parts(system.domain().cloned(), system.search().to_vec(), servers);
        let mut opts = ResolverOpts::default();
        opts.ndots = system_opts.ndots;
        opts.timeout = spec.timeout.0;
        // One try per server: the endpoint set asks again soon (at `minTtl`) after a failure.
        opts.attempts = 1;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Always;
        let inner = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        Self {
            settings: spec.clone(),
            inner,
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
        match self.inner.lookup_ip(host).await {
            Ok(lookup) => {
                // The shortest TTL of the chain (CNAMEs included) is how long it all holds.
                let ttl = lookup
                    .as_lookup()
                    .records()
                    .iter()
                    .map(|r| Duration::from_secs(u64::from(r.ttl())))
                    .min()
                    .unwrap_or(self.settings.max_ttl.0);
                Ok(self.answer(lookup.iter().collect(), ttl))
            }
            // The name does not exist, or has no addresses: no endpoints, asked again soon.
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                Ok(self.answer(Vec::new(), self.settings.min_ttl.0))
            }
            Err(source) => Err(DnsError {
                host: host.to_owned(),
                source,
            }),
        }
    }

    fn answer(&self, mut addrs: Vec<IpAddr>, ttl: Duration) -> Answer {
        addrs.sort();
        addrs.dedup();
        Answer {
            addrs,
            ttl: self.bound(ttl),
        }
    }
}

/// Each server over UDP, and over TCP for truncated answers.
fn servers(addrs: &[SocketAddr]) -> NameServerConfigGroup {
    let mut group = NameServerConfigGroup::with_capacity(addrs.len() * 2);
    for addr in addrs {
        group.merge(NameServerConfigGroup::from_ips_clear(
            &[addr.ip()],
            addr.port(),
            true,
        ));
    }
    group
}
