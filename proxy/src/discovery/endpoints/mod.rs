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
use proxy_metrics::http::Destination;
use proxy_metrics::Labels;
use tokio::task::JoinHandle;

mod lazy;

use crate::config::DnsSpec;
use crate::discovery::dns::Resolver;
use crate::discovery::kubernetes::{Kubernetes, Resolved};
use crate::identity::Mesh;
use crate::upstream::pool::{MeshPeer, Pool, Pools};
use proxy_tls::SpiffeId;

use lazy::{Lazy, LazyShared, Waiting};

/// One endpoint of one service.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Its connections (shared with other services that name the same address).
    pub pool: Arc<Pool>,
    /// Its circuit breaker, if the service has one.
    pub gate: Option<Arc<Gate>>,
    /// Its load, for the balancer.
    pub load: Load,
    /// Its metric labels (`dst_*`, and `server_id` when meshed), with their handles.
    pub destination: Option<Arc<Destination>>,
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
pub(crate) struct Maker {
    pools: Arc<Pools>,
    peer: Option<Arc<MeshPeer>>,
    breaker: Option<BreakerConfig>,
    // The service's metric labels (`dst_service`, `dst_namespace`, and those the config
    // gives), which every endpoint carries.
    labels: Labels,
    // What its connections are counted under besides: direction and authority.
    tcp_labels: Labels,
}

/// One endpoint to build: its address, the peer it must prove to be (when meshed), and the
/// labels of its Pod.
type Wanted = (SocketAddr, Option<Arc<MeshPeer>>, Labels);

impl Maker {
    /// Endpoints drawing pools from `pools`, meshed with `peer` when given (a discovered
    /// endpoint's comes from its Pod), with breakers when `breaker` says, labelled `labels`
    /// (`dst_*`, and `authority` for their connections).
    pub(crate) fn new(
        pools: &Arc<Pools>,
        peer: Option<Arc<MeshPeer>>,
        breaker: Option<BreakerConfig>,
        labels: Labels,
    ) -> Self {
        // The service's authority labels its connections, but not its requests' endpoints:
        // a request's series already name the service it was sent to.
        let (authority, labels): (Labels, Labels) =
            labels.into_iter().partition(|(k, _)| *k == "authority");
        let direction = if labels.is_empty() {
            "inbound"
        } else {
            "outbound"
        };
        let mut tcp_labels: Labels = vec![("direction", direction.to_owned())];
        tcp_labels.extend(authority);
        Self {
            pools: pools.clone(),
            peer,
            breaker,
            labels,
            tcp_labels,
        }
    }

    fn build(&self, addrs: &[SocketAddr], old: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
        let wanted: Vec<Wanted> = addrs
            .iter()
            .map(|a| (*a, self.peer.clone(), Labels::new()))
            .collect();
        self.build_each(&wanted, old)
    }

    /// Endpoints each meshed with its own peer (or plaintext); one kept from `old` when its
    /// address, expected identity and labels are the same.
    fn build_each(&self, wanted: &[Wanted], old: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
        wanted
            .iter()
            .map(|(addr, peer, pod)| {
                let id = peer.as_ref().map(|p| &p.id);
                let mut labels = self.labels.clone();
                labels.extend(pod.iter().cloned());
                if let Some(id) = id {
                    labels.push(("server_id", id.to_string()));
                }
                let destination = Destination::new(labels);
                let same = |e: &&Arc<Endpoint>| {
                    e.pool.addr() == *addr
                        && e.pool.peer_id() == id
                        && e.destination.as_ref().map(|d| d.labels()) == Some(destination.labels())
                };
                if let Some(kept) = old.iter().find(same) {
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
                    pool: self.pools.get_for(*addr, peer.as_ref(), &{
                        let mut tcp = self.tcp_labels.clone();
                        tcp.extend(
                            destination
                                .labels()
                                .iter()
                                .filter(|(k, _)| *k != "server_id")
                                .cloned(),
                        );
                        tcp
                    }),
                    gate,
                    load: Load::default(),
                    destination: Some(Arc::new(destination)),
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
    // Endpoints watched only while the service is used (Kubernetes EndpointSlices).
    lazy: Option<Lazy>,
}

impl Endpoints {
    /// A fixed list (meshed with `peer`, when given).
    pub(crate) fn fixed(addrs: &[SocketAddr], maker: Maker) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(maker.build(addrs, &[]))),
            next: AtomicUsize::new(0),
            dns: None,
            _resolver: None,
            lazy: None,
        }
    }

    /// A Kubernetes Service port's EndpointSlices, watched from the first request (which
    /// waits for the first answer, see [`Endpoints::synced`]) until the service has gone
    /// unused for `endpointsIdleTimeout`. Endpoints that stay across answers keep their
    /// pools, breaker states and load, as with DNS.
    ///
    /// An endpoint whose Pod runs Skiff is called over mutual TLS and must prove its Pod's
    /// service account (in this proxy's trust domain); the others are called in plaintext,
    /// as is everything when this proxy has no identity of its own.
    pub(crate) fn kubernetes(
        kube: Arc<Kubernetes>,
        namespace: String,
        service: String,
        port_name: Option<String>,
        mesh: Option<Arc<Mesh>>,
        maker: Maker,
    ) -> Self {
        // Each endpoint gets its own peer and labels, from its Pod.
        let current: Arc<ArcSwap<Vec<Arc<Endpoint>>>> = Arc::default();
        let shared = Arc::new(LazyShared::new(kube.spec().endpoints_idle_timeout.0));
        let (target, state) = (current.clone(), shared.clone());
        // Called under the gate, with this watch's generation.
        let start = move |generation: u64| {
            let (target, state, maker) = (target.clone(), state.clone(), maker.clone());
            let (ns, svc, mesh) = (namespace.clone(), service.clone(), mesh.clone());
            tracing::debug!(namespace = %ns, service = %svc, "watching EndpointSlices");
            let watch = kube.watch_endpoints(&namespace, &service, port_name.clone(), {
                let (target, state) = (target.clone(), state.clone());
                move |resolved: Vec<Resolved>| {
                    let peers: Vec<Wanted> = resolved
                        .iter()
                        .map(|r| {
                            let peer = peer_of(mesh.as_deref(), &ns, r);
                            let inbound = r.pod.as_ref().and_then(|p| p.inbound_port);
                            let addr = match (&peer, inbound) {
                                // A meshed pod in explicit mode: its Skiff's own port.
                                (Some(_), Some(port)) => SocketAddr::new(r.endpoint.addr.ip(), port),
                                _ => r.endpoint.addr,
                            };
                            (addr, peer, pod_labels(r))
                        })
                        .collect();
                    state.publish(generation, || {
                    let old = target.load_full();
                    let changed = old.len() != peers.len()
                        || old.iter().zip(&peers).any(|(e, (addr, peer, _))| {
                            e.pool.addr() != *addr || e.pool.peer_id() != peer.as_ref().map(|p| &p.id)
                        });
                    if changed {
                        let addrs: Vec<SocketAddr> = peers.iter().map(|(a, _, _)| *a).collect();
                        let meshed = peers.iter().filter(|(_, p, _)| p.is_some()).count();
                        tracing::info!(namespace = %ns, service = %svc, endpoints = ?addrs, meshed, "Kubernetes endpoints changed");
                        target.store(Arc::new(maker.build_each(&peers, &old)));
                    }
                    });
                }
            });
            tokio::spawn(state.expire(watch, target))
        };
        Self {
            current,
            next: AtomicUsize::new(0),
            dns: None,
            _resolver: None,
            lazy: Some(Lazy {
                shared,
                start: Box::new(start),
                task: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Whether a request can pick now: false only while lazily watched endpoints wait for
    /// their first answer (the request then waits with [`Endpoints::synced`]). Notes the
    /// use first, so that a watch the idle timer is stopping is started again, and then
    /// reported as waiting, rather than a request picking from endpoints being forgotten.
    pub(crate) fn is_synced(&self) -> bool {
        self.lazy.as_ref().is_none_or(|l| {
            l.use_now();
            *l.shared.synced.borrow()
        })
    }

    /// Waits for the first answer of lazily watched endpoints, for at most `within`; at
    /// once for the others.
    /// Once a wait has run out, later requests do not wait again until the watch is
    /// restarted: an answer that cannot come (a 403, say) must not add `within` to every
    /// request.
    pub(crate) async fn synced(&self, within: Duration) {
        if let Some(lazy) = &self.lazy {
            lazy.use_now();
            if lazy.shared.gave_up.load(Ordering::Acquire) {
                return;
            }
            // A request waiting for the first answer is a use: the watch is not idle.
            let _waiting = Waiting::new(&lazy.shared);
            let mut synced = lazy.shared.synced.subscribe();
            if tokio::time::timeout(within, synced.wait_for(|s| *s))
                .await
                .is_err()
            {
                lazy.shared.gave_up.store(true, Ordering::Release);
            }
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
        maker: Maker,
    ) -> Self {
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
            lazy: None,
        }
    }

    /// The resolver settings of DNS endpoints (a reload changing them rebuilds the service).
    pub(crate) fn dns_settings(&self) -> Option<&DnsSpec> {
        self.dns.as_ref()
    }

    /// The current endpoints and a round-robin starting index. (A request's use of lazily
    /// watched endpoints is noted once, by [`Endpoints::is_synced`] or
    /// [`Endpoints::synced`], before it picks.)
    pub(crate) fn snapshot(&self) -> (Arc<Vec<Arc<Endpoint>>>, usize) {
        (
            self.current.load_full(),
            self.next.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// The metric labels of an endpoint's Pod, as Linkerd's destination labels name them:
/// `dst_pod`, its owner (`dst_deployment`, `dst_statefulset`, ...) and `dst_serviceaccount`.
fn pod_labels(resolved: &Resolved) -> Labels {
    let mut labels = Labels::new();
    if let Some(name) = &resolved.endpoint.pod {
        labels.push(("dst_pod", name.clone()));
    }
    if let Some(pod) = &resolved.pod {
        if let Some((kind, name)) = &pod.owner {
            if let Some(key) = owner_label(kind) {
                labels.push((key, name.clone()));
            }
        }
        labels.push(("dst_serviceaccount", pod.service_account.clone()));
    }
    labels
}

/// The label naming a Pod's owner of `kind`, for the kinds Linkerd labels.
pub(crate) fn owner_label(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "dst_deployment",
        "StatefulSet" => "dst_statefulset",
        "DaemonSet" => "dst_daemonset",
        "ReplicaSet" => "dst_replicaset",
        "ReplicationController" => "dst_replicationcontroller",
        // Linkerd's name: `job` is Prometheus's own label.
        "Job" => "dst_k8s_job",
        "CronJob" => "dst_cronjob",
        _ => return None,
    })
}

/// The peer an endpoint must be: its Pod's service account, when the Pod runs Skiff and this
/// proxy has an identity to call it with.
fn peer_of(mesh: Option<&Mesh>, namespace: &str, resolved: &Resolved) -> Option<Arc<MeshPeer>> {
    let mesh = mesh?;
    let pod = resolved.pod.as_ref().filter(|p| p.meshed)?;
    let trust_domain = mesh.id.trust_domain();
    match SpiffeId::workload(trust_domain, namespace, &pod.service_account) {
        Ok(id) => Some(mesh.peer(&id)),
        Err(e) => {
            tracing::warn!(namespace, account = %pod.service_account, error = %e, "no SPIFFE ID for a meshed endpoint; calling it in plaintext");
            None
        }
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
        let e = Endpoints::fixed(&addrs, Maker::new(&pools, None, None, Labels::new()));
        let (list, _) = e.snapshot();
        let ports: Vec<u16> = list.iter().map(|e| e.pool.addr().port()).collect();
        assert_eq!(ports, [1, 2]);
        assert!(
            Endpoints::fixed(&[], Maker::new(&pools, None, None, Labels::new()))
                .snapshot()
                .0
                .is_empty()
        );
    }

    #[tokio::test]
    async fn dns_names_resolve_in_the_background() {
        let pools = Arc::new(Pools::new(Settings::default()));
        let resolver = Arc::new(Resolver::new(&DnsSpec::default()));
        let e = Endpoints::dns(
            "localhost".into(),
            9,
            None,
            resolver,
            Maker::new(&pools, None, None, Labels::new()),
        );
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
