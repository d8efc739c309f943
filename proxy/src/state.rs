//! The proxy's live state: the running config and everything built from it. A reload builds
//! the new routing state off to the side and swaps it in whole.

use std::sync::Arc;

use arc_swap::ArcSwap;
use proxy_metrics::admin::{FamilyFilter, Readiness};
use proxy_metrics::http::{
    access_log_writer, Observe, ObserveSettings, TargetMetrics, DEFAULT_ACCESS_LOG_FIELDS,
};
use proxy_metrics::tcp::ListenerMetrics;
use proxy_metrics::Metrics;

use crate::client::{Pools, Settings};
use crate::config::{AuthzMode, Config, ProxySpec};
use crate::identity::Mesh;
use crate::target::{InboundResolver, OutboundResolver};
use proxy_core::authz::{Mode, Policy};

/// Shared by every listener and connection.
#[derive(Debug)]
pub struct State {
    /// The running config.
    pub spec: ArcSwap<ProxySpec>,
    /// The running mesh documents (routes, splits) as written, for `/config`.
    pub documents: ArcSwap<Vec<serde_yaml_ng::Value>>,
    /// Outbound routing.
    pub outbound: Arc<OutboundResolver>,
    /// Inbound routing (the local app).
    pub inbound: Arc<InboundResolver>,
    /// Upstream connection pools, shared across reloads.
    pub pools: Arc<Pools>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Where outbound requests nobody routed are counted.
    pub unrouted_outbound: Arc<TargetMetrics>,
    /// Where inbound requests nobody routed are counted.
    pub unrouted_inbound: Arc<TargetMetrics>,
    /// Outbound listener connection metrics.
    pub outbound_conns: ListenerMetrics,
    /// Inbound listener connection metrics.
    pub inbound_conns: ListenerMetrics,
    /// What `/ready` reports.
    pub readiness: Arc<Readiness>,
    /// The mesh identity, when the config gives one (fixed until restart).
    pub mesh: Option<Arc<Mesh>>,
    /// Who may call the application (TrafficTarget), swapped on reload.
    pub authz: Arc<ArcSwap<Policy>>,
    /// Tap redaction and access log settings, swapped on reload.
    pub observe_settings: Arc<ArcSwap<ObserveSettings>>,
    /// The outbound tap and access log.
    pub outbound_observe: Arc<Observe>,
    /// The inbound tap and access log.
    pub inbound_observe: Arc<Observe>,
    /// Which metric families `/metrics` shows, swapped on reload.
    pub families: Arc<ArcSwap<FamilyFilter>>,
}

impl State {
    /// Builds the state for `config`, loading its identity's credentials if it has one.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        let spec = config.proxy.clone();
        let pools = Arc::new(Pools::new(client_settings(&spec)));
        let http = &metrics.http;
        let readiness = Arc::<Readiness>::default();
        cardinality(&spec, &metrics);
        let mesh = match &spec.identity {
            None => None,
            Some(identity) => Some(
                Mesh::new(&spec, identity, &metrics.identity, &readiness)
                    .map_err(|e| format!("spec.identity: {e}"))?,
            ),
        };
        let outbound = OutboundResolver::new(&spec, &config.routes, &pools, http, mesh.as_ref());
        let observe_settings = Arc::new(ArcSwap::from_pointee(observe_settings(&spec)));
        let log = access_log_writer();
        let observe = |direction| {
            Arc::new(Observe::new(
                direction,
                metrics.tap.clone(),
                observe_settings.clone(),
                Some(log.clone()),
            ))
        };
        let (outbound_observe, inbound_observe) = (observe("outbound"), observe("inbound"));
        Ok(Self {
            outbound: Arc::new(outbound),
            inbound: Arc::new(InboundResolver::new(&spec, &pools, http)),
            unrouted_outbound: http.target("outbound", "", "", None),
            unrouted_inbound: http.target("inbound", "", "", None),
            outbound_conns: metrics.tcp.listener("outbound"),
            inbound_conns: metrics.tcp.listener("inbound"),
            spec: ArcSwap::from_pointee(spec),
            documents: ArcSwap::from_pointee(config.mesh_documents.clone()),
            pools,
            metrics,
            readiness,
            mesh,
            authz: Arc::new(ArcSwap::from_pointee(policy(config))),
            outbound_observe,
            inbound_observe,
            families: Arc::new(ArcSwap::from_pointee(family_filter(&config.proxy))),
            observe_settings,
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
        self.outbound.update(
            &spec,
            &config.routes,
            &self.pools,
            &self.metrics.http,
            self.mesh.as_ref(),
        );
        self.inbound.update(&spec, &self.pools, &self.metrics.http);
        self.authz.store(Arc::new(authz));
        self.observe_settings
            .store(Arc::new(observe_settings(&spec)));
        self.families.store(Arc::new(family_filter(&spec)));
        cardinality(&spec, &self.metrics);
        self.spec.store(Arc::new(spec));
        self.documents.store(Arc::new(config.mesh_documents));
        Ok(())
    }
}

fn family_filter(spec: &ProxySpec) -> FamilyFilter {
    FamilyFilter {
        include: spec.metrics.include.clone(),
        exclude: spec.metrics.exclude.clone(),
    }
}

fn cardinality(spec: &ProxySpec, metrics: &Metrics) {
    metrics.http.limits().set(
        spec.metrics.max_label_values.get(),
        spec.metrics.idle_expiry.0,
    );
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
    }
}

fn client_settings(spec: &ProxySpec) -> Settings {
    Settings {
        connect_timeout: spec.limits.connect_timeout.0,
        idle_timeout: spec.limits.upstream_idle_timeout.0,
        ..Settings::default()
    }
}
