//! Upstream connections: one [`Pool`] per endpoint address, shared by every service and every
//! config generation that names the address, so a reload never drops a warm connection.
//!
//! HTTP/1 connections are kept in an idle list and reused one request at a time; HTTP/2
//! requests share a few multiplexed connections per endpoint, fairly between clients (see
//! [`multiplex`]). Failures are mapped
//! here, where it is known whether anything was sent: a refused connect is
//! `upstream-connect` (safe to retry), a connection lost mid-exchange is `upstream-reset`.
//!
//! A pool for a meshed endpoint (a service with an expected identity) speaks HTTP/2 over
//! mutual TLS, with the credentials current when each connection is dialled, and refuses
//! a peer that is not the expected identity.

mod endpoint;
mod multiplex;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use proxy_metrics::identity::IdentityFamilies;
use proxy_metrics::tcp::TcpFamilies;
use proxy_metrics::Labels;
use proxy_tls::{Identity, SpiffeId};

pub(crate) use endpoint::{Pool, Protocol};
pub(crate) use multiplex::DownstreamConn;
pub(crate) use multiplex::Sharing;

/// Settings every upstream connection uses.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long an idle HTTP/1 connection is kept for reuse.
    pub idle_timeout: Duration,
    /// Most idle HTTP/1 connections kept per endpoint.
    pub max_idle: usize,
    /// How HTTP/2 connections to an endpoint are shared.
    pub sharing: Sharing,
    /// How long a write may wait with the upstream reading nothing (zero: for ever).
    pub write_stall: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(90),
            max_idle: 256,
            sharing: Sharing::default(),
            write_stall: Duration::from_secs(60),
        }
    }
}

/// What a meshed endpoint must be, and what we present to it.
#[derive(Debug)]
pub struct MeshPeer {
    /// The identity the endpoint must prove.
    pub id: SpiffeId,
    /// Our credentials.
    pub identity: Arc<Identity>,
    /// The longest a handshake may take.
    pub handshake_timeout: Duration,
    /// Where failed handshakes are counted.
    pub metrics: Arc<IdentityFamilies>,
}

/// Hands out the pool of each endpoint address.
#[derive(Debug, Default)]
pub struct Pools {
    // Shared with every pool, so a reload's new timeouts apply to warm endpoints too.
    settings: Arc<ArcSwap<Settings>>,
    // Weak: a pool lives as long as some service's endpoint list holds it. Meshed and
    // plaintext pools to one address are distinct.
    pools: Mutex<HashMap<PoolKey, Weak<Pool>>>,
    // Where connections opened to upstreams are counted (`peer="dst"`).
    tcp: Option<Arc<TcpFamilies>>,
}

/// An endpoint address, and the identity expected there when the pool is meshed.
type PoolKey = (SocketAddr, Option<SpiffeId>);

impl Pools {
    /// Pools using `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            pools: Mutex::default(),
            tcp: None,
        }
    }

    /// Pools whose connections are counted in `tcp`.
    pub fn with_metrics(mut self, tcp: Arc<TcpFamilies>) -> Self {
        self.tcp = Some(tcp);
        self
    }

    /// Changes the settings of every pool, existing ones included (they read them live).
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// The plaintext pool for `addr` (passthrough traffic), created if no one holds one.
    /// Its connection series stay when it goes (it lives one request).
    pub fn get(&self, addr: SocketAddr) -> Arc<Pool> {
        self.pool(addr, None, &[("direction", "outbound".to_owned())], false)
    }

    /// The pool for `addr`, meshed with `peer` if given. A new pool's connections are
    /// counted under `labels` (`direction`, `authority`, `dst_*`), with the endpoint and
    /// its identity: a pool shared by several services keeps the labels of the first.
    pub fn get_for(
        &self,
        addr: SocketAddr,
        peer: Option<&Arc<MeshPeer>>,
        labels: &[(&'static str, String)],
    ) -> Arc<Pool> {
        self.pool(addr, peer, labels, true)
    }

    fn pool(
        &self,
        addr: SocketAddr,
        peer: Option<&Arc<MeshPeer>>,
        labels: &[(&'static str, String)],
        forget_on_drop: bool,
    ) -> Arc<Pool> {
        let key = (addr, peer.map(|p| p.id.clone()));
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
            return pool;
        }
        let handles = self.tcp.as_ref().map(|tcp| {
            let mut all: Labels = vec![("peer", "dst".to_owned())];
            all.extend(labels.iter().cloned());
            all.push(("target_addr", addr.to_string()));
            match peer {
                Some(p) => {
                    all.push(("tls", "true".to_owned()));
                    all.push(("server_id", p.id.to_string()));
                }
                None => all.extend(tcp.plaintext("not_provided_by_service_discovery")),
            }
            proxy_metrics::tcp::LazyConnHandles::new(tcp.clone(), all)
        });
        let pool = Arc::new(Pool::new(
            addr,
            self.settings.clone(),
            peer.cloned(),
            handles,
            forget_on_drop,
        ));
        // Forgotten pools are swept only when the map is full and would grow: sweeping on
        // every insert made a config of N endpoints cost O(N^2) to load (100,000 endpoints
        // took minutes); this way the work is proportional to the inserts, and the map
        // stays within about twice the most pools ever alive at once.
        if pools.len() == pools.capacity() {
            pools.retain(|_, p| p.strong_count() > 0);
        }
        pools.insert(key, Arc::downgrade(&pool));
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scrape of `registry`, in the text format.
    fn scrape(registry: &prometheus_client::registry::Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[tokio::test]
    async fn an_endpoints_connection_series_come_with_its_first_connection_and_go_with_its_pool() {
        let (metrics, registry) = proxy_metrics::Metrics::new();
        let pools = Pools::new(Settings::default()).with_metrics(metrics.tcp);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap();
        let labels = [("dst_pod", "web-1".to_owned())];
        let pool = pools.get_for(endpoint, None, &labels);
        // Known but never dialled: no series (a proxy may know thousands such endpoints).
        assert!(!scrape(&registry).contains(r#"dst_pod="web-1""#));
        let connection = pool.connect().await.unwrap();
        let scraped = scrape(&registry);
        assert!(
            scraped.contains(r#"tcp_open_total{peer="dst",dst_pod="web-1""#),
            "{scraped}"
        );
        drop(connection);
        // Another service naming the same endpoint shares the pool: nothing goes yet.
        let shared = pools.get_for(endpoint, None, &labels);
        drop(pool);
        assert!(scrape(&registry).contains(r#"dst_pod="web-1""#));
        drop(shared);
        assert!(!scrape(&registry).contains(r#"dst_pod="web-1""#));

        // A passthrough pool's series stay after it: here a refused connection's.
        let passthrough = pools.get("127.0.0.2:9".parse().unwrap());
        assert!(
            passthrough.connect().await.is_err(),
            "nothing listens there"
        );
        drop(passthrough);
        assert!(scrape(&registry).contains(r#"target_addr="127.0.0.2:9""#));
    }

    /// Pools nobody holds are forgotten, in work proportional to the pools made: 20,000
    /// passthrough pools, a few alive at a time, leave a map the size of a few, and 20,000
    /// held at once are all found again.
    #[test]
    fn forgotten_pools_are_swept_as_the_map_fills() {
        let pools = Pools::new(Settings::default());
        let addr = |i: u32| SocketAddr::from((std::net::Ipv4Addr::from(0x7f01_0000 + i), 9));
        let mut alive = Vec::new();
        for i in 0..20_000 {
            alive.push(pools.get(addr(i)));
            if alive.len() > 4 {
                alive.remove(0);
            }
        }
        let len = pools.pools.lock().unwrap().len();
        assert!(len <= 16, "{len} entries for at most 5 live pools");

        let held: Vec<_> = (0..20_000).map(|i| pools.get(addr(i))).collect();
        for (i, pool) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(pool, &pools.get(addr(i as u32))));
        }
    }
}
