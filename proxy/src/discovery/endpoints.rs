//! A service's endpoints: a fixed list, or a DNS name re-resolved in the background as its
//! TTL runs out (a headless Kubernetes Service resolves to its pods). Each endpoint has its
//! connection pool and, when the service has a breaker, its own circuit-breaker [`Gate`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use proxy_core::balance::Load;
use proxy_core::breaker::{self, BreakerObserver, Gate};
use tokio::task::JoinHandle;

use crate::config::DnsSpec;
use crate::discovery::dns::Resolver;
use crate::upstream::pool::{MeshPeer, Pool, Pools};

/// One endpoint of one service.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Its connections (shared with other services that name the same address).
    pub pool: Arc<Pool>,
    /// Its circuit breaker, if the service has one.
    pub gate: Option<Arc<Gate>>,
    /// Its load, for the balancer.
    pub load: Load,
}

/// How to give endpoints breakers: the service's settings and where transitions are told.
#[derive(Clone, Debug)]
pub(crate) struct BreakerConfig {
    /// Ejection rules.
    pub settings: breaker::Settings,
    /// Metrics.
    pub observer: Arc<dyn BreakerObserver>,
}

/// Builds endpoints for addresses, keeping those already built (and their breaker state).
#[derive(Clone, Debug)]
struct Maker {
    pools: Arc<Pools>,
    peer: Option<Arc<MeshPeer>>,
    breaker: Option<BreakerConfig>,
}

impl Maker {
    fn build(&self, addrs: &[SocketAddr], old: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
        addrs
            .iter()
            .map(|addr| {
                if let Some(kept) = old.iter().find(|e| e.pool.addr() == *addr) {
                    return kept.clone();
                }
                let gate = self.breaker.as_ref().map(|b| {
                    Arc::new(Gate::new(
                        addr.to_string(),
                        b.settings.clone(),
                        b.observer.clone(),
                    ))
                });
                Arc::new(Endpoint {
                    pool: self.pools.get_for(*addr, self.peer.as_ref()),
                    gate,
                    load: Load::default(),
                })
            })
            .collect()
    }
}

/// The endpoints of one service.
#[derive(Debug)]
pub(crate) struct Endpoints {
    current: Arc<ArcSwap<Vec<Arc<Endpoint>>>>,
    next: AtomicUsize,
    dns: Option<DnsSpec>,
    // Stops re-resolution when the service is replaced by a reload.
    _resolver: Option<AbortOnDrop>,
}

impl Endpoints {
    /// A fixed list (meshed with `peer`, when given).
    pub(crate) fn fixed(
        addrs: &[SocketAddr],
        pools: &Arc<Pools>,
        peer: Option<Arc<MeshPeer>>,
        breaker: Option<BreakerConfig>,
    ) -> Self {
        let maker = Maker {
            pools: pools.clone(),
            peer,
            breaker,
        };
        Self {
            current: Arc::new(ArcSwap::from_pointee(maker.build(addrs, &[]))),
            next: AtomicUsize::new(0),
            dns: None,
            _resolver: None,
        }
    }

    /// `host:port`, resolved now and again when the answer's TTL runs out (or every
    /// `refresh`, when set). Until the first answer the service has no endpoints (503
    /// `no-endpoints`); a failed lookup keeps the last good answer and asks again after
    /// `minTtl`. A name that stops existing leaves the service without endpoints. Endpoints
    /// that stay keep their pools and breaker states; requests in flight to one that goes
    /// hold it until they finish.
    pub(crate) fn dns(
        host: String,
        port: u16,
        refresh: Option<Duration>,
        resolver: Arc<Resolver>,
        pools: &Arc<Pools>,
        peer: Option<Arc<MeshPeer>>,
        breaker: Option<BreakerConfig>,
    ) -> Self {
        let maker = Maker {
            pools: pools.clone(),
            peer,
            breaker,
        };
        let current: Arc<ArcSwap<Vec<Arc<Endpoint>>>> = Arc::default();
        let target = current.clone();
        let settings = resolver.settings().clone();
        let task = tokio::spawn(async move {
            let mut last: Option<Vec<SocketAddr>> = None;
            loop {
                let wait = match resolver.lookup(&host).await {
                    Ok(answer) => {
                        let addrs: Vec<SocketAddr> = answer
                            .addrs
                            .iter()
                            .map(|ip| SocketAddr::new(*ip, port))
                            .collect();
                        if last.as_ref() != Some(&addrs) {
                            tracing::info!(%host, endpoints = ?addrs, ttl = ?answer.ttl, "DNS endpoints changed");
                            let old = target.load_full();
                            target.store(Arc::new(maker.build(&addrs, &old)));
                            last = Some(addrs);
                        }
                        answer.ttl
                    }
                    Err(e) => {
                        tracing::warn!(%host, error = %e, "DNS lookup failed; keeping the last answer");
                        resolver.settings().min_ttl.0
                    }
                };
                tokio::time::sleep(refresh.unwrap_or(wait)).await;
            }
        });
        Self {
            current,
            next: AtomicUsize::new(0),
            dns: Some(settings),
            _resolver: Some(AbortOnDrop(task)),
        }
    }

    /// The resolver settings of DNS endpoints (a reload changing them rebuilds the service).
    pub(crate) fn dns_settings(&self) -> Option<&DnsSpec> {
        self.dns.as_ref()
    }

    /// The current endpoints and a round-robin starting index.
    pub(crate) fn snapshot(&self) -> (Arc<Vec<Arc<Endpoint>>>, usize) {
        (
            self.current.load_full(),
            self.next.fetch_add(1, Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::pool::Settings;

    #[test]
    fn fixed_endpoints_keep_their_order() {
        let pools = Arc::new(Pools::new(Settings::default()));
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let e = Endpoints::fixed(&addrs, &pools, None, None);
        let (list, _) = e.snapshot();
        let ports: Vec<u16> = list.iter().map(|e| e.pool.addr().port()).collect();
        assert_eq!(ports, [1, 2]);
        assert!(Endpoints::fixed(&[], &pools, None, None)
            .snapshot()
            .0
            .is_empty());
    }

    #[tokio::test]
    async fn dns_names_resolve_in_the_background() {
        let pools = Arc::new(Pools::new(Settings::default()));
        let resolver = Arc::new(Resolver::new(&DnsSpec::default()));
        let e = Endpoints::dns("localhost".into(), 9, None, resolver, &pools, None, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while e.snapshot().0.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "localhost never resolved"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(e.snapshot().0[0].pool.addr().ip().is_loopback());
    }
}
