//! The proxy's mesh identity at run time: the first credential load (`/ready` waits for
//! it), then a poll of the credential files that installs good changes and refuses bad ones.
//!
//! The kubelet updates projected volumes by swapping a `..data` symlink, so a file's content
//! changes without its path changing; comparing content on each poll sees both that and a
//! plain rewrite, and a half-written set fails its checks and is tried again next poll.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_metrics::admin::Readiness;
use proxy_metrics::identity::IdentityFamilies;
use proxy_tls::{Identity, Reloaded, SpiffeId};

use crate::config::{IdentitySpec, MtlsMode, ProxySpec};
use crate::upstream::pool::MeshPeer;

/// The mesh side of the proxy: who it is and how its listeners treat TLS.
#[derive(Debug)]
pub struct Mesh {
    /// Its live credentials.
    pub identity: Arc<Identity>,
    /// Who it is.
    pub id: SpiffeId,
    /// Whether plaintext callers are let in on the inbound listener.
    pub mtls: MtlsMode,
    /// The longest a handshake may take.
    pub handshake_timeout: Duration,
    /// Identity metrics.
    pub metrics: Arc<IdentityFamilies>,
    spec: IdentitySpec,
    // The last refusal reported, so each distinct problem is logged and counted once.
    last_error: std::sync::Mutex<Option<String>>,
}

impl Mesh {
    /// Sets up the identity `spec` describes and tries the first load.
    pub fn new(
        spec: &ProxySpec,
        identity: &IdentitySpec,
        metrics: &Arc<IdentityFamilies>,
        readiness: &Readiness,
    ) -> Result<Arc<Self>, proxy_tls::id::IdError> {
        let id = identity.own_id(&spec.namespace)?;
        let mesh = Arc::new(Self {
            identity: Arc::new(
                Identity::new(identity.dir.clone(), Some(id.clone()))
                    .federated_with(identity.federated_trust_domains.clone()),
            ),
            id,
            mtls: spec.inbound.mtls,
            handshake_timeout: identity.handshake_timeout.0,
            metrics: metrics.clone(),
            spec: identity.clone(),
            last_error: std::sync::Mutex::default(),
        });
        readiness.set_awaiting_identity(true);
        mesh.reload(readiness);
        Ok(mesh)
    }

    /// The peer settings for a service whose endpoints must be `id`.
    pub fn peer(&self, id: &SpiffeId) -> Arc<MeshPeer> {
        Arc::new(MeshPeer {
            id: id.clone(),
            identity: self.identity.clone(),
            handshake_timeout: self.handshake_timeout,
            metrics: self.metrics.clone(),
        })
    }

    /// Whether a reloaded config changes anything this holds (fixed until restart).
    pub fn differs_from(&self, spec: &ProxySpec) -> bool {
        spec.identity.as_ref() != Some(&self.spec) || spec.inbound.mtls != self.mtls
    }

    /// Polls the credential files until the task is aborted.
    pub async fn watch(self: Arc<Self>, readiness: Arc<Readiness>) {
        // A floor, so `0s` cannot turn the watcher into a busy loop.
        let interval = self.spec.reload_interval.0.max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(interval).await;
            self.reload(&readiness);
        }
    }

    fn reload(&self, readiness: &Readiness) {
        let mut last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match self.identity.reload() {
            Ok(Reloaded::Unchanged) => {}
            Ok(Reloaded::Installed(id)) => {
                *last_error = None;
                let creds = self.identity.current();
                let expiry = creds
                    .as_ref()
                    .and_then(|c| c.not_after.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                self.metrics.reload(expiry);
                readiness.set_awaiting_identity(false);
                tracing::info!(%id, dir = %self.identity.dir().display(), "credentials loaded");
            }
            Err(e) => {
                let message = e.to_string();
                // One line per distinct problem, not one per poll.
                if last_error.as_deref() != Some(&message) {
                    self.metrics.reload(None);
                    if self.identity.current().is_some() {
                        tracing::error!(
                            dir = %self.identity.dir().display(),
                            "credentials refused, the ones in use stay: {message}"
                        );
                    } else {
                        tracing::error!(
                            dir = %self.identity.dir().display(),
                            "no valid credentials yet (not ready): {message}"
                        );
                    }
                    *last_error = Some(message);
                }
            }
        }
    }
}
