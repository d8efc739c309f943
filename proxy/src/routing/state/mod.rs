//! The proxy's live state: the running config and everything built from it. A reload builds
//! the new routing state off to the side and swaps it in whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use proxy_metrics::admin::{FamilyFilter, Readiness};
use proxy_metrics::http::{
    access_log_writer, Observe, ObserveSettings, TargetMetrics, DEFAULT_ACCESS_LOG_FIELDS,
};
use proxy_metrics::tcp::ListenerMetrics;
use proxy_metrics::Metrics;

use crate::config::api::{self, ApiObject, Refused};
use crate::config::{AuthzMode, Config, DefaultPolicy, ProxySpec, ServiceRoutes, ServiceSpec};
use crate::discovery::kubernetes::{self, Kubernetes};
use crate::identity::Mesh;
use crate::routing::{InboundResolver, OutboundResolver};
use crate::upstream::pool::{Pools, Settings, Sharing};
use proxy_core::authz::{self, Mode, Policy};
use proxy_core::Direction;

/// Shared by every listener and connection.
#[derive(Debug)]
pub struct State {
    /// The running config.
    pub spec: ArcSwap<ProxySpec>,
    /// The running mesh documents (routes, splits) as written, for `/config`.
    pub documents: ArcSwap<Vec<serde_yaml_ng::Value>>,
    /// Outbound: the app's calls to other services.
    pub outbound: DirectionState<OutboundResolver>,
    /// Inbound: other workloads' calls to the local app.
    pub inbound: DirectionState<InboundResolver>,
    /// Upstream connection pools, shared across reloads.
    pub pools: Arc<Pools>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// What `/ready` reports.
    pub readiness: Arc<Readiness>,
    /// The mesh identity, when the config gives one (fixed until restart).
    pub mesh: Option<Arc<Mesh>>,
    /// Who may call the application (TrafficTarget), swapped on reload.
    pub authz: Arc<ArcSwap<Policy>>,
    /// Tap redaction and access log settings, swapped on reload.
    pub observe_settings: Arc<ArcSwap<ObserveSettings>>,
    /// Which metric families `/metrics` shows, swapped on reload.
    pub families: Arc<ArcSwap<FamilyFilter>>,
    /// The Kubernetes API, when `spec.discovery.kubernetes` is set (fixed until restart).
    pub(crate) kube: Option<Arc<Kubernetes>>,
    /// Services discovered from the Kubernetes API, by table key.
    discovered: ArcSwap<BTreeMap<String, ServiceSpec>>,
    /// The routes attached to services in the running config.
    routes: ArcSwap<BTreeMap<String, ServiceRoutes>>,
    /// Mesh documents from the Kubernetes API (routes, splits, access); `None` until every
    /// kind has been listed in every watched namespace.
    api_objects: ArcSwap<Option<Vec<ApiObject>>>,
    /// The last successful join of the file's documents with the API's, kept for when a
    /// join fails: the last good routes and access rules go on serving, not the file's alone.
    joined: ArcSwap<Option<api::Joined>>,
    /// The API objects that could not be honoured, for `/config`.
    refused: ArcSwap<Vec<Refused>>,
    /// Who may call the application by the file's TrafficTargets alone.
    file_authz: ArcSwap<Policy>,
    // One outbound rebuild at a time: a reload and a discovery change each build from both
    // sources, and the later build must see the other's input.
    rebuilding: Mutex<()>,
}

/// What one direction's requests and connections share: its router, where its unrouted
/// requests are counted, its listener's connection metrics, and its tap and access log.
#[derive(Debug)]
pub struct DirectionState<R> {
    /// Which direction this is.
    pub direction: Direction,
    /// Routes this direction's requests, from the live config.
    pub resolver: Arc<R>,
    /// Where requests nobody routed are counted.
    pub unrouted: Arc<TargetMetrics>,
    /// The listener's connection metrics.
    pub conns: ListenerMetrics,
    /// The tap and access log.
    pub observe: Arc<Observe>,
}

impl State {
    /// The connection metrics of `direction`'s listener.
    pub fn conns(&self, direction: Direction) -> &ListenerMetrics {
        match direction {
            Direction::Outbound => &self.outbound.conns,
            Direction::Inbound => &self.inbound.conns,
        }
    }

    /// Builds the state for `config`, loading its identity's credentials if it has one.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        Self::with_discovery(config, metrics, None, Arc::default())
    }

    /// [`State::new`], with services discovered through `kube` when given.
    pub(crate) fn with_discovery(
        config: &Config,
        metrics: Arc<Metrics>,
        kube: Option<Arc<Kubernetes>>,
        readiness: Arc<Readiness>,
    ) -> Result<Self, String> {
        let spec = config.proxy.clone();
        let pools = Arc::new(Pools::new(client_settings(&spec)).with_metrics(metrics.tcp.clone()));
        let http = &metrics.http;
        cardinality(&spec, &metrics);
        tracing_settings(&spec, &metrics);
        let mesh = match &spec.identity {
            None => None,
            Some(identity) => Some(
                Mesh::new(&spec, identity, &metrics.identity, &readiness)
                    .map_err(|e| format!("spec.identity: {e}"))?,
            ),
        };
        let outbound = OutboundResolver::new(&spec, &config.routes, &pools, http, mesh.as_ref())
            .with_kubernetes(kube.clone());
        let observe_settings = Arc::new(ArcSwap::from_pointee(observe_settings(&spec)));
        let log = access_log_writer();
        let side = |direction| Side {
            direction,
            metrics: &metrics,
            observe_settings: &observe_settings,
            log: &log,
        };
        let inbound = Arc::new(InboundResolver::new(&spec, &pools, http));
        Ok(Self {
            outbound: side(Direction::Outbound).with(Arc::new(outbound)),
            inbound: side(Direction::Inbound).with(inbound),
            spec: ArcSwap::from_pointee(spec),
            documents: ArcSwap::from_pointee(config.mesh_documents.clone()),
            pools,
            metrics,
            readiness,
            mesh,
            authz: Arc::new(ArcSwap::from_pointee(policy(config))),
            families: Arc::new(ArcSwap::from_pointee(family_filter(&config.proxy))),
            observe_settings,
            kube,
            discovered: ArcSwap::default(),
            routes: ArcSwap::from_pointee(config.routes.clone()),
            api_objects: ArcSwap::default(),
            joined: ArcSwap::default(),
            refused: ArcSwap::default(),
            file_authz: ArcSwap::from_pointee(policy(config)),
            rebuilding: Mutex::new(()),
        })
    }

    /// Applies a reloaded config. Listener addresses, the connection limit and worker count
    /// are fixed at start; a change to them is logged and takes effect on restart.
    ///
    /// A change of identity or mTLS mode is refused as a whole (the running config keeps
    /// serving): applied halfway, it would send meshed services' traffic in plaintext or
    /// enforce authorization on callers that cannot prove who they are.
    pub fn apply(&self, config: Config) -> Result<(), String> {
        let identity_changed = match &self.mesh {
            Some(mesh) => mesh.differs_from(&config.proxy),
            None => config.proxy.identity.is_some(),
        };
        if identity_changed {
            return Err(
                "spec.identity and spec.inbound.mtls apply only at start: restart Skiff to change them"
                    .into(),
            );
        }
        let authz = policy(&config);
        let spec = config.proxy;
        let old = self.spec.load();
        let fixed = [
            (
                "outbound.listen",
                old.outbound.listen != spec.outbound.listen,
            ),
            ("inbound.listen", old.inbound.listen != spec.inbound.listen),
            ("admin.listen", old.admin.listen != spec.admin.listen),
            (
                "limits.maxConnections",
                old.limits.max_connections != spec.limits.max_connections,
            ),
            ("workers", old.workers != spec.workers),
            ("discovery", old.discovery != spec.discovery),
            (
                "admin.allowRemote",
                old.admin.allow_remote != spec.admin.allow_remote,
            ),
            (
                "admin.shutdownEndpoint",
                old.admin.shutdown_endpoint != spec.admin.shutdown_endpoint,
            ),
        ];
        for (field, changed) in fixed {
            if changed {
                tracing::warn!(field, "changed in config; takes effect when Skiff restarts");
            }
        }
        self.pools.set_settings(client_settings(&spec));
        self.inbound
            .resolver
            .update(&spec, &self.pools, &self.metrics.http);
        self.observe_settings
            .store(Arc::new(observe_settings(&spec)));
        self.families.store(Arc::new(family_filter(&spec)));
        cardinality(&spec, &self.metrics);
        tracing_settings(&spec, &self.metrics);
        // Every input of the outbound build is stored under the rebuild lock, before the
        // build: a discovery change that rebuilds next must see this spec, not the last.
        let rebuilding = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        self.routes.store(Arc::new(config.routes));
        self.file_authz.store(Arc::new(authz));
        self.documents.store(Arc::new(config.mesh_documents));
        self.spec.store(Arc::new(spec));
        self.rebuild_outbound(&rebuilding);
        Ok(())
    }

    /// Replaces the services discovered from the Kubernetes API (the whole table): the
    /// outbound routes are rebuilt, keeping every service whose entry did not change (with
    /// its endpoints and their state).
    pub(crate) fn set_discovered(&self, services: BTreeMap<String, ServiceSpec>) {
        let count = services.len();
        if self.replace(&self.discovered, services) {
            tracing::info!(
                services = count,
                "services discovered from the Kubernetes API"
            );
        }
    }

    /// Replaces the mesh documents read from the Kubernetes API (all of them): routes and
    /// access rules are joined again with the file's.
    pub(crate) fn set_api_objects(&self, objects: Vec<ApiObject>) {
        let count = objects.len();
        if self.replace(&self.api_objects, Some(objects)) {
            tracing::info!(objects = count, "mesh documents from the Kubernetes API");
        }
    }

    /// Stores `value` in `slot` and rebuilds outbound routing, under the rebuild lock;
    /// nothing when the value is unchanged. Returns whether it changed.
    fn replace<T: PartialEq>(&self, slot: &ArcSwap<T>, value: T) -> bool {
        let rebuilding = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        if **slot.load() == value {
            return false;
        }
        slot.store(Arc::new(value));
        self.rebuild_outbound(&rebuilding);
        true
    }

    /// The API objects that could not be honoured, each with its reason.
    pub(crate) fn refused(&self) -> Arc<Vec<Refused>> {
        self.refused.load_full()
    }

    /// The services discovered so far, by table key.
    pub(crate) fn discovered(&self) -> Arc<BTreeMap<String, ServiceSpec>> {
        self.discovered.load_full()
    }

    /// Builds outbound routing and the access policy from the running spec, the discovered
    /// services and the API's documents (`_held`: the rebuild lock, taken by the caller).
    fn rebuild_outbound(&self, _held: &MutexGuard<'_, ()>) {
        let spec = self.spec.load();
        let merged = with_discovered(&spec, &self.discovered.load());
        let file_policy = self.file_authz.load_full();
        let (routes, authz) = match &**self.api_objects.load() {
            // The API's documents are not all listed yet: the file's routes serve, but
            // nobody may call in, as a TrafficTarget not yet seen may restrict this workload.
            None if self.kube.is_some() && self.mesh.is_some() => (
                self.routes.load_full(),
                Policy {
                    rules: Some(Vec::new()),
                    closed: Some("the access rules are not read from the Kubernetes API yet"),
                    ..(*file_policy).clone()
                },
            ),
            None => (self.routes.load_full(), (*file_policy).clone()),
            Some(objects) if objects.is_empty() => {
                self.refused.store(Arc::default());
                self.joined.store(Arc::default());
                (self.routes.load_full(), (*file_policy).clone())
            }
            Some(objects) => {
                match api::join(&self.documents.load(), &merged, objects) {
                    Ok(joined) => {
                        self.note_join(&joined);
                        let routes = Arc::new(joined.routes.clone());
                        let rules = joined.access.rules.clone();
                        self.joined.store(Arc::new(Some(joined)));
                        (
                            routes,
                            Policy {
                                rules,
                                closed: None,
                                ..(*file_policy).clone()
                            },
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot join the Kubernetes API's mesh documents; the last joined routes and access rules go on serving");
                        match &**self.joined.load() {
                        Some(last) => (
                            Arc::new(last.routes.clone()),
                            Policy {
                                rules: last.access.rules.clone(),
                                closed: None,
                                ..(*file_policy).clone()
                            },
                        ),
                        None => (
                            self.routes.load_full(),
                            Policy {
                                rules: Some(Vec::new()),
                                closed: Some("the access rules from the Kubernetes API could not be joined"),
                                ..(*file_policy).clone()
                            },
                        ),
                    }
                    }
                }
            }
        };
        self.authz.store(Arc::new(authz));
        self.outbound.resolver.update(
            &merged,
            &routes,
            &self.pools,
            &self.metrics.http,
            self.mesh.as_ref(),
        );
    }

    /// Logs and counts what a join refused or ignored that the last join did not: a
    /// rebuild for another reason (an endpoint change, a reload) repeats nothing.
    fn note_join(&self, joined: &api::Joined) {
        let last = self.joined.load();
        let last = last.as_ref().as_ref();
        for refused in &joined.refused {
            if !self.refused.load().contains(refused) {
                tracing::warn!(object = %refused.object, reason = %refused.reason, "refused a mesh document from the Kubernetes API");
                self.metrics.discovery.refused();
            }
        }
        let new_fields: Vec<&String> = joined
            .ignored
            .iter()
            .filter(|f| !last.is_some_and(|l| l.ignored.contains(f)))
            .collect();
        if !new_fields.is_empty() {
            tracing::debug!(fields = ?new_fields, "fields Skiff does not know, ignored");
            self.metrics.discovery.ignored_fields(new_fields.len());
        }
        self.refused.store(Arc::new(joined.refused.clone()));
    }
}

/// `spec` with the discovered services added, except those a service written in the file
/// already is: the same name, namespace and port, or one of its cluster IPs on that port.
/// What a user writes wins, so a service can be pinned or given policies by hand.
fn with_discovered(spec: &ProxySpec, discovered: &BTreeMap<String, ServiceSpec>) -> ProxySpec {
    let mut merged = spec.clone();
    if discovered.is_empty() {
        return merged;
    }
    let written: Vec<(String, &str, u16)> = spec
        .services
        .iter()
        .map(|(name, s)| {
            let ns = s.namespace.as_deref().unwrap_or(&spec.namespace);
            (kubernetes::key(name, ns, s.port), ns, s.port)
        })
        .collect();
    let claimed: Vec<std::net::SocketAddr> = spec
        .services
        .values()
        .flat_map(|s| s.cluster_ips.iter().map(|ip| (*ip, s.port).into()))
        .collect();
    for (key, svc) in discovered {
        let by_name = written.iter().any(|(k, _, _)| k == key);
        let by_ip = svc
            .cluster_ips
            .iter()
            .any(|ip| claimed.contains(&(*ip, svc.port).into()));
        if !by_name && !by_ip {
            merged.services.insert(key.clone(), svc.clone());
        }
    }
    merged
}

/// What a [`DirectionState`] is built from, but its resolver.
struct Side<'a> {
    direction: Direction,
    metrics: &'a Metrics,
    observe_settings: &'a Arc<ArcSwap<ObserveSettings>>,
    log: &'a std::sync::mpsc::SyncSender<String>,
}

impl Side<'_> {
    fn with<R>(self, resolver: Arc<R>) -> DirectionState<R> {
        let direction = self.direction;
        DirectionState {
            direction,
            resolver,
            unrouted: self.metrics.http.target(direction, "", "", None),
            conns: self.metrics.tcp.listener(direction),
            observe: Arc::new(Observe::new(
                direction,
                self.metrics.tap.clone(),
                self.metrics.trace.clone(),
                self.observe_settings.clone(),
                Some(self.log.clone()),
            )),
        }
    }
}

fn family_filter(spec: &ProxySpec) -> FamilyFilter {
    FamilyFilter {
        include: spec.metrics.include.clone(),
        exclude: spec.metrics.exclude.clone(),
    }
}

/// The metric settings a config gives: the cardinality caps, whether plaintext is
/// `disabled` (no identity) or `no_identity`, and the labels of the inbound server.
fn cardinality(spec: &ProxySpec, metrics: &Metrics) {
    let max = spec.metrics.max_label_values.get();
    metrics.http.limits().set(max, spec.metrics.idle_expiry.0);
    let identity = spec.identity.is_some();
    metrics.http.set_identity(identity);
    metrics.http.set_inbound_port(spec.inbound.listen.port());
    metrics.tcp.set_identity(identity, max);
    let app = SocketAddr::new(spec.inbound.app_host, spec.inbound.app_port);
    metrics.identity.linkerd_authz.set_server(
        &app.to_string(),
        spec.inbound.listen.port(),
        identity,
        max,
    );
}

/// Tracing on, off or to new settings: a changed `tracing` section takes effect on reload.
fn tracing_settings(spec: &ProxySpec, metrics: &Metrics) {
    let settings = spec.tracing.as_ref().map(|t| t.settings(&spec.namespace));
    metrics.trace.configure(settings);
}

fn observe_settings(spec: &ProxySpec) -> ObserveSettings {
    ObserveSettings {
        redact_headers: spec
            .admin
            .tap
            .redact_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        redact_body: spec
            .admin
            .tap
            .redact_body
            .iter()
            .map(|p| p.0.clone())
            .collect(),
        access_log: spec
            .access_log
            .enabled
            .then(|| match &spec.access_log.fields {
                Some(fields) => fields.iter().map(|f| f.as_str().to_owned()).collect(),
                None => DEFAULT_ACCESS_LOG_FIELDS
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect(),
            }),
    }
}

fn policy(config: &Config) -> Policy {
    Policy {
        mode: match config.proxy.inbound.authorization {
            AuthzMode::Enforce => Mode::Enforce,
            AuthzMode::Audit => Mode::Audit,
        },
        rules: config.access.rules.clone(),
        default: match config.proxy.inbound.default_policy {
            DefaultPolicy::Allow => authz::DefaultPolicy::Allow,
            DefaultPolicy::Deny => authz::DefaultPolicy::Deny,
            DefaultPolicy::Audit => authz::DefaultPolicy::Audit,
        },
        closed: None,
    }
}

fn client_settings(spec: &ProxySpec) -> Settings {
    Settings {
        connect_timeout: spec.limits.connect_timeout.0,
        idle_timeout: spec.limits.upstream_idle_timeout.0,
        write_stall: spec.limits.write_stall_timeout.0,
        sharing: Sharing {
            connections: spec.limits.upstream_http2.connections.get(),
            streams_per_connection: usize::try_from(
                spec.limits.upstream_http2.streams_per_connection.get(),
            )
            .unwrap_or(usize::MAX),
            client_share: spec.limits.upstream_http2.client_share.get(),
        },
        ..Settings::default()
    }
}

#[cfg(test)]
mod tests;
