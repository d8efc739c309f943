//! Starting and stopping a proxy: bind the listeners, spawn the accept loops, the admin
//! server and the config watcher, and drain everything on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proxy_metrics::admin::{self, Admin};
use proxy_metrics::Metrics;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::discovery::{self, kubernetes::Kubernetes};
use crate::routing::state::State;
use crate::server::accept_loop;
use crate::server::bind::bind;
use crate::server::drain;
use proxy_core::Direction;

/// Adds `value` to the `/config` view under `key`, unless there is nothing to show.
fn insert_unless_empty(
    map: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    value: &impl serde::Serialize,
    empty: bool,
) {
    if !empty {
        map.insert(key.into(), serde_json::to_value(value).unwrap_or_default());
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// Where the outbound listener is bound.
    pub outbound_addr: SocketAddr,
    /// Where the inbound listener is bound.
    pub inbound_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    state: Arc<State>,
    drain: drain::Controller,
    admin_stop: watch::Sender<bool>,
    watchers: Vec<JoinHandle<()>>,
    shutdown_requested: Arc<tokio::sync::Notify>,
}

/// Binds the listeners of `config` and starts serving. Listen addresses with port 0 get an
/// ephemeral port, reported in [`Running`].
pub async fn start(config: Config) -> io::Result<Running> {
    config.log_warnings();
    let spec = config.proxy.clone();
    let (metrics, registry) = Metrics::new();
    let readiness = Arc::<proxy_metrics::admin::Readiness>::default();
    let observe = discovery::kubernetes::Observe {
        metrics: metrics.discovery.clone(),
        readiness: readiness.clone(),
    };
    let kube = match &spec.discovery.kubernetes {
        Some(k) => Some(Kubernetes::connect(k, observe).await.map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("spec.discovery.kubernetes: {e}"),
            )
        })?),
        None => None,
    };
    let state = State::with_discovery(&config, Arc::new(metrics), kube, readiness)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let state = Arc::new(state);

    // Each listener also in IPv6 where its address is an IPv4 wildcard or loopback.
    let outbound = bind(spec.outbound.listen, "outbound")?;
    let inbound = bind(spec.inbound.listen, "inbound")?;
    let admin_listener = bind(spec.admin.listen, "admin")?;
    let (outbound_addr, inbound_addr, admin_addr) = (
        outbound.primary.local_addr()?,
        inbound.primary.local_addr()?,
        admin_listener.primary.local_addr()?,
    );

    let drain = drain::Controller::new();
    // A limit per listener (shared by its two families): callers flooding the inbound
    // listener never take the connections the application needs for its own calls, nor
    // the other way round.
    for (bound, direction) in [
        (outbound, Direction::Outbound),
        (inbound, Direction::Inbound),
    ] {
        let limit = Arc::new(Semaphore::new(spec.limits.max_connections.get()));
        for listener in std::iter::once(bound.primary).chain(bound.twin) {
            tokio::spawn(accept_loop(
                listener,
                direction,
                state.clone(),
                limit.clone(),
                drain.handle(),
            ));
        }
    }

    let (admin_stop, admin_stopped) = watch::channel(false);
    let view_state = state.clone();
    let shutdown_requested = Arc::new(tokio::sync::Notify::new());
    let stop = shutdown_requested.clone();
    let log_level: Option<proxy_metrics::admin::LogLevel> = crate::logging::installed()
        .then(|| Arc::new(crate::logging::set_filter) as proxy_metrics::admin::LogLevel);
    let admin = Arc::new(Admin {
        http: state.metrics.http.clone(),
        tap: state.metrics.tap.clone(),
        log_level,
        shutdown: spec
            .admin
            .shutdown_endpoint
            .then(|| Arc::new(move || stop.notify_one()) as Arc<dyn Fn() + Send + Sync>),
        allow_remote: spec.admin.allow_remote,
        families: state.families.clone(),
        registry: Arc::new(registry),
        readiness: state.readiness.clone(),
        config: Arc::new(move || {
            // The Proxy spec, plus the mesh documents (routes, splits) under `documents`.
            // With discovery, also what was discovered and what was refused.
            let mut view = serde_json::to_value(&*view_state.spec.load())
                .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
            if let Some(map) = view.as_object_mut() {
                let refused = view_state.refused();
                insert_unless_empty(map, "refused", &*refused, refused.is_empty());
                let discovered = view_state.discovered();
                insert_unless_empty(map, "discovered", &*discovered, discovered.is_empty());
                let documents = view_state.documents.load();
                insert_unless_empty(map, "documents", &**documents, documents.is_empty());
            }
            serde_json::to_string_pretty(&view).unwrap_or_default()
        }),
    });
    for listener in std::iter::once(admin_listener.primary).chain(admin_listener.twin) {
        tokio::spawn(admin::serve(listener, admin.clone(), admin_stopped.clone()));
    }

    // Background watchers, stopped when the drain starts.
    let mut watchers = Vec::new();
    if let Some(path) = config.source {
        watchers.push(tokio::spawn(crate::routing::reload::watch(
            path,
            config.text.into_bytes(),
            state.clone(),
        )));
    }
    // Idle series of capped labels go, checked at half the expiry.
    let sweeper = state.clone();
    watchers.push(tokio::spawn(async move {
        loop {
            let expiry = sweeper.metrics.http.limits().idle();
            let every = (expiry / 2).clamp(Duration::from_millis(10), Duration::from_secs(60));
            tokio::time::sleep(every).await;
            sweeper.metrics.http.sweep_idle();
        }
    }));
    if let Some(mesh) = &state.mesh {
        watchers.push(tokio::spawn(mesh.clone().watch(state.readiness.clone())));
    }
    if let Some(kube) = &state.kube {
        // Not ready until the first full lists: the file's services are served meanwhile,
        // and inbound calls are refused until the access rules are known.
        state.readiness.set_awaiting_documents(true);
        state.readiness.set_awaiting_discovery(true);
        let target = Arc::downgrade(&state);
        watchers.push(kube.watch_documents(move |objects| {
            if let Some(state) = target.upgrade() {
                state.set_api_objects(objects);
                state.readiness.set_awaiting_documents(false);
            }
        }));
        let target = Arc::downgrade(&state);
        watchers.push(kube.watch_services(move |services| {
            if let Some(state) = target.upgrade() {
                state.set_discovered(services);
                state.readiness.set_awaiting_discovery(false);
            }
        }));
    }
    state.readiness.set_loaded();
    match state.readiness.not_ready_because() {
        None => tracing::info!(%outbound_addr, %inbound_addr, %admin_addr, "Skiff is ready"),
        Some(why) => tracing::info!(
            %outbound_addr,
            %inbound_addr,
            %admin_addr,
            "Skiff is listening; not ready yet: {why}"
        ),
    }
    Ok(Running {
        outbound_addr,
        inbound_addr,
        admin_addr,
        state,
        drain,
        admin_stop,
        watchers,
        shutdown_requested,
    })
}

impl Running {
    /// Waits until `POST /shutdown` asks the proxy to stop (never, unless enabled).
    pub async fn shutdown_requested(&self) {
        self.shutdown_requested.notified().await;
    }

    /// The live state (for tests and the admin view).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Drains: `/ready` turns 503, listeners stop accepting (new connections are refused),
    /// open connections finish their in-flight requests, for at most the configured grace
    /// period. Returns whether everything finished in time.
    pub async fn shutdown(self) -> bool {
        let grace = self.state.spec.load().shutdown.grace_period.0;
        self.drain_with(grace).await
    }

    /// [`Running::shutdown`] with an explicit grace period.
    pub async fn drain_with(self, grace: Duration) -> bool {
        self.state.readiness.set_draining();
        for watcher in &self.watchers {
            watcher.abort();
        }
        tracing::info!(?grace, "draining");
        let clean = self.drain.drain(grace).await;
        if clean {
            tracing::info!("drained");
        } else {
            tracing::warn!(
                ?grace,
                "grace period over; closing the connections still open"
            );
        }
        let _ = self.admin_stop.send(true);
        clean
    }
}
