//! A service's endpoints: a fixed list, or a DNS name re-resolved in the background (a
//! headless Kubernetes Service resolves to its pods). Requests pick endpoints round-robin;
//! balancing by load comes with the balancer layer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::client::{Pool, Pools};

/// The endpoints of one service.
#[derive(Debug)]
pub struct Endpoints {
    current: Arc<ArcSwap<Vec<Arc<Pool>>>>,
    next: AtomicUsize,
    // Stops re-resolution when the service is replaced by a reload.
    _resolver: Option<AbortOnDrop>,
}

impl Endpoints {
    /// A fixed list.
    pub fn fixed(addrs: &[SocketAddr], pools: &Pools) -> Self {
        let list = addrs.iter().map(|a| pools.get(*a)).collect();
        Self {
            current: Arc::new(ArcSwap::from_pointee(list)),
            next: AtomicUsize::new(0),
            _resolver: None,
        }
    }

    /// `host:port`, resolved now and every `refresh`. Until the first answer the service has
    /// no endpoints (503 `no-endpoints`); a failed lookup keeps the last good answer.
    pub fn dns(host: String, port: u16, refresh: Duration, pools: Arc<Pools>) -> Self {
        let current: Arc<ArcSwap<Vec<Arc<Pool>>>> = Arc::default();
        let target = current.clone();
        let task = tokio::spawn(async move {
            let mut last: Vec<SocketAddr> = Vec::new();
            loop {
                match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(addrs) => {
                        let mut addrs: Vec<SocketAddr> = addrs.collect();
                        addrs.sort();
                        addrs.dedup();
                        if addrs != last {
                            tracing::info!(%host, endpoints = ?addrs, "DNS endpoints changed");
                            target.store(Arc::new(addrs.iter().map(|a| pools.get(*a)).collect()));
                            last = addrs;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%host, error = %e, "DNS lookup failed; keeping the last answer")
                    }
                }
                tokio::time::sleep(refresh).await;
            }
        });
        Self {
            current,
            next: AtomicUsize::new(0),
            _resolver: Some(AbortOnDrop(task)),
        }
    }

    /// The next endpoint, round-robin; `None` when there are none.
    pub fn next(&self) -> Option<Arc<Pool>> {
        let list = self.current.load();
        if list.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        Some(list[i].clone())
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
    use crate::client::Settings;

    #[test]
    fn round_robin_over_fixed_endpoints() {
        let pools = Pools::new(Settings::default());
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let e = Endpoints::fixed(&addrs, &pools);
        let picks: Vec<u16> = (0..4).map(|_| e.next().unwrap().addr().port()).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        assert!(Endpoints::fixed(&[], &pools).next().is_none());
    }

    #[tokio::test]
    async fn dns_names_resolve_in_the_background() {
        let pools = Arc::new(Pools::new(Settings::default()));
        let e = Endpoints::dns("localhost".into(), 9, Duration::from_secs(60), pools);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while e.next().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "localhost never resolved"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(e.next().unwrap().addr().ip().is_loopback());
    }
}
