//! A fake Kubernetes API server for tests, on loopback, that follows the documented
//! list/watch contract closely enough for kube-rs's `runtime::watcher` and for kubectl.
//!
//! Skiff reads Services, EndpointSlices, Pods and route and policy objects from the API
//! server, and no real one can run where the tests run. A client of the API is only as good
//! as its handling of the contract's edges (a resourceVersion that expired, a watch that
//! ends or stalls, a relist after a restart), so the fake implements those edges as the
//! API server does, and lets the test cause each one. kubectl, an independent client, is
//! run against it (`tests/tests/fake_api_kubectl.rs`) to check that it speaks the same
//! protocol.
//!
//! # What it implements
//!
//! - **Kinds**: core `v1` `services`, `pods`, `namespaces`; `discovery.k8s.io/v1`
//!   `endpointslices`; `gateway.networking.k8s.io` `httproutes` (`v1`, `v1beta1`) and
//!   `grpcroutes` (`v1`, `v1alpha2`); `split.smi-spec.io` `trafficsplits` and
//!   `specs.smi-spec.io` `httproutegroups`, `tcproutes` (`v1alpha1`..`v1alpha4`);
//!   `access.smi-spec.io` `traffictargets` (`v1alpha1`..`v1alpha3`);
//!   `policy.linkerd.io/v1beta3` `httproutes`; more with [`FakeApiBuilder::resource`], fewer
//!   with [`FakeApiBuilder::unserve`].
//!   Objects are JSON values kept per (group, version, plural, namespace, name): an object
//!   is served under the version it was written with, with no conversion between versions.
//! - **Metadata**: `resourceVersion` from one global counter (as etcd's revision), `uid`,
//!   `creationTimestamp`, `generation` (bumped when anything but metadata and status
//!   changes). A write that changes nothing is a no-op: no new resourceVersion, no event.
//! - **Discovery**: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//!   `/apis/{group}/{version}`, in the legacy (unaggregated) JSON form only; kubectl asks for
//!   the aggregated form first and falls back.
//! - **Get and list**, namespaced and across namespaces: `labelSelector` (`a=b`, `a==b`,
//!   `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`), `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`, and the fields the API server allows for Pods and Namespaces),
//!   `limit` and `continue` (every page is the snapshot of the first page's
//!   resourceVersion; a token whose resourceVersion left the history gets 410 Expired with
//!   an inconsistent-continue token, as etcd after a compaction), `resourceVersion` and
//!   `resourceVersionMatch` (unset or `0`: the latest state; `N` with `NotOlderThan` or no
//!   match: the latest; `N` with `Exact`: the state at `N`, or 410 if it left the history;
//!   `N` beyond the current resourceVersion: 504 "Too large resource version" at once, where
//!   a real server first waits a few seconds). Contradicting options get the API server's
//!   422 or 400.
//! - **Watch** (`watch=true` or `1`) on a collection (or on an object's URL, as a watch with
//!   its name as field selector): `ADDED`/`MODIFIED`/`DELETED` lines after
//!   `resourceVersion`, in order, then live ones; unset or `0` starts with `ADDED` for every
//!   current object. An object that stops matching the selectors is sent as `DELETED` (its
//!   last matching state at the event's resourceVersion), one that starts matching as
//!   `ADDED`. `allowWatchBookmarks=true`: `BOOKMARK`s (kind, apiVersion and
//!   `metadata.resourceVersion` only) every [`FakeApiBuilder::bookmark_interval`] and on
//!   [`FakeApi::bookmark_now`]. A resourceVersion older than the bounded history answers 200
//!   with one `ERROR` event (a `Status` with code 410, reason `Expired`) and ends, as does a
//!   watch that falls behind the history while it runs. `timeoutSeconds` (capped by
//!   [`FakeApiBuilder::max_watch_timeout`], which is also the timeout of a watch without it)
//!   ends the stream cleanly. `sendInitialEvents=true` (with
//!   `resourceVersionMatch=NotOlderThan` and `allowWatchBookmarks=true`, which the API
//!   server requires) sends `ADDED` for the current objects and then a bookmark annotated
//!   `k8s.io/initial-events-end: "true"`; `sendInitialEvents=false` starts at the latest
//!   resourceVersion without them.
//! - **Writes**: from the test ([`FakeApi::apply`], [`FakeApi::delete`]) and over HTTP
//!   (`POST` to a collection, `PUT` to an object, checking `metadata.resourceVersion` when
//!   given, `DELETE` of an object), with the API server's 404/409/400/422 `Status` answers.
//! - **Authentication and authorization**: an optional bearer token (401 `Unauthorized`
//!   without it or with another, on every path, discovery included), and resources denied to some verbs
//!   with the API server's 403 message (`services is forbidden: User "…" cannot list
//!   resource "services" in API group "" at the cluster scope`). Plain HTTP by default, or
//!   HTTPS with a certificate the test gives ([`FakeApiBuilder::tls`], HTTP/2 and HTTP/1.1
//!   by ALPN): kubectl sends a token only over TLS.
//! - **Faults**: drop every open watch (the connection closes mid-body), stall them (nothing
//!   is sent, the connection stays) until released, 500 for the next requests (under a path
//!   prefix), a restart on a fresh history (the resourceVersion jumps by
//!   [`FRESH_HISTORY_JUMP`], older ones get 410), a compaction, and stopping the server
//!   (connections refused) and starting it again on the same address with the same objects.
//! - **Observation**: every request (method, path, query, verb, resource, status), counts by
//!   verb and resource, open watches, and the events and bookmarks each watch was sent.
//!
//! # What it does not implement
//!
//! No admission, defaulting, validation against schemas, or status subresources; no
//! `PATCH` (so no server-side apply and no `kubectl apply`), no `deletecollection`, no
//! `generateName`, finalizers or graceful deletion; namespaces need not exist for objects to
//! be written in them; no conversion between versions of a group; no aggregated discovery,
//! OpenAPI documents, Table output or protobuf (JSON only); no watch cache beyond the bounded
//! history (lists are served from the store, honouring `limit` even for `resourceVersion=0`,
//! which a real watch cache ignores); history is bounded by a number of events, not by time
//! as etcd's compaction is; a watch from a resourceVersion newer than the store's waits for
//! it (a real server gives up after a few seconds); no priority and fairness (no 429s); no
//! client certificates, impersonation or RBAC beyond the deny list; the request log grows
//! for the server's lifetime.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use discovery::{split_api_version, Registry, ResourceType};
use serve::{lock, Server, Settings, Shared};
use store::PutMode;

mod discovery;
mod rest;
mod route;
mod select;
mod serve;
mod store;
mod watch;

#[cfg(test)]
mod tests;

/// How far the resourceVersion jumps on [`FakeApi::restart_with_fresh_history`].
pub const FRESH_HISTORY_JUMP: u64 = 1000;

/// One request, as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path, as sent.
    pub path: String,
    /// Query string, as sent (still percent-encoded).
    pub query: String,
    /// The API verb (`get`, `list`, `watch`, `create`, `update`, `delete`...) of a request
    /// on objects; `None` for discovery and unknown paths.
    pub verb: Option<&'static str>,
    /// The resource of a request on objects: `services`, or `plural.group` for named groups
    /// (`httproutes.gateway.networking.k8s.io`).
    pub resource: Option<String>,
    /// The namespace of a namespaced URL.
    pub namespace: Option<String>,
    /// The response's status code.
    pub status: u16,
}

/// One watch, open or finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRecord {
    /// `services`, or `plural.group`.
    pub resource: String,
    /// The namespace watched, `None` across all namespaces.
    pub namespace: Option<String>,
    /// The query string it was opened with.
    pub query: String,
    /// `ADDED`, `MODIFIED`, `DELETED` and `ERROR` events sent.
    pub events: usize,
    /// `BOOKMARK` events sent.
    pub bookmarks: usize,
    /// Whether it is still open.
    pub open: bool,
}

/// How to start a [`FakeApi`].
#[derive(Clone, Debug)]
pub struct FakeApiBuilder {
    settings: Settings,
    history: usize,
    addr: SocketAddr,
    registry: Registry,
}

impl Default for FakeApiBuilder {
    fn default() -> Self {
        Self {
            settings: Settings {
                token: None,
                user: "system:serviceaccount:default:default".into(),
                bookmark_interval: Some(Duration::from_secs(1)),
                max_watch_timeout: Duration::from_secs(1800),
                tls: None,
            },
            history: 1000,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            registry: Registry::builtin(),
        }
    }
}

impl FakeApiBuilder {
    /// Requires `Authorization: Bearer {token}` on every request.
    pub fn token(mut self, token: &str) -> Self {
        self.settings.token = Some(token.into());
        self
    }

    /// The user 403 messages name (default `system:serviceaccount:default:default`).
    pub fn user(mut self, user: &str) -> Self {
        self.settings.user = user.into();
        self
    }

    /// How many events the history keeps (default 1000); older resourceVersions expire.
    pub fn history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// How often watches that allow bookmarks get one (default every second); `None` for
    /// only when [`FakeApi::bookmark_now`] asks.
    pub fn bookmark_interval(mut self, every: Option<Duration>) -> Self {
        self.settings.bookmark_interval = every;
        self
    }

    /// The longest a watch lasts (default 30 minutes, a real server's minimum request
    /// timeout), and how long one without `timeoutSeconds` lasts.
    pub fn max_watch_timeout(mut self, max: Duration) -> Self {
        self.settings.max_watch_timeout = max;
        self
    }

    /// Serves HTTPS with `cert_pem` (the chain, leaf first) and `key_pem` instead of plain
    /// HTTP. kubectl sends credentials only over TLS (it drops `--token` for an `http://`
    /// server), so token tests with kubectl need it.
    ///
    /// # Panics
    ///
    /// If the PEM cannot be read.
    pub fn tls(mut self, cert_pem: &str, key_pem: &str) -> Self {
        let config = serve::tls_config(cert_pem, key_pem)
            .unwrap_or_else(|e| panic!("the fake API server's TLS {e}"));
        self.settings.tls = Some(Arc::new(config));
        self
    }

    /// Listens on `addr` (a loopback address; default `127.0.0.1:0`).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Serves one more kind: `api_version` (`group/version`), URL `plural`, `kind`.
    pub fn resource(
        mut self,
        api_version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
    ) -> Self {
        let (group, version) = split_api_version(api_version);
        self.registry.add(ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            short_names: Vec::new(),
        });
        self
    }

    /// Stops serving `api_version` (`group/version`), as a cluster whose CRD serves fewer
    /// versions would (Linkerd's SMI extension serves TrafficSplit v1alpha1 and v1alpha2).
    pub fn unserve(mut self, api_version: &str) -> Self {
        let (group, version) = split_api_version(api_version);
        self.registry.remove(group, version);
        self
    }

    /// Stops serving `kind` in `api_version` only (Gateway API v1.0 served HTTPRoute in
    /// `v1` but GRPCRoute only in `v1alpha2`).
    pub fn unserve_kind(mut self, api_version: &str, kind: &str) -> Self {
        let (group, version) = split_api_version(api_version);
        self.registry.remove_kind(group, version, kind);
        self
    }

    /// Starts the server; it is listening when this returns.
    ///
    /// # Panics
    ///
    /// If the address cannot be bound.
    pub async fn start(self) -> FakeApi {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("the fake API server cannot listen on {}: {e}", self.addr));
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared::new(
            self.settings,
            self.registry,
            self.history,
            addr,
        ));
        let server = serve::serve(shared.clone(), listener);
        FakeApi {
            addr,
            shared,
            server: Mutex::new(Some(server)),
        }
    }
}

/// A running fake API server. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeApi {
    /// Where it listens (the same address after [`FakeApi::stop`] and
    /// [`FakeApi::start_again`]).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<Server>>,
}

impl FakeApi {
    /// A server with the defaults of [`FakeApiBuilder`]: no token, 1000 events of history,
    /// bookmarks every second.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// A builder for other settings.
    pub fn builder() -> FakeApiBuilder {
        FakeApiBuilder::default()
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`FakeApiBuilder::tls`]), for `--server` or
    /// a kubeconfig.
    pub fn url(&self) -> String {
        let scheme = if self.shared.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// A kubeconfig for this server with bearer `token` (context namespace `shop`), as
    /// `kubectl config view` would write it, in a fresh directory named after `name`.
    pub fn kubeconfig(&self, token: &str, name: &str) -> std::path::PathBuf {
        let dir = crate::temp_dir(name);
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: '{}'}}\n\
             users:\n- name: skiff\n  user: {{token: {token}}}\ncontexts:\n- name: fake\n  \
             context: {{cluster: fake, user: skiff, namespace: shop}}\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("the kubeconfig is written");
        path
    }

    /// Creates or replaces an object (by its `apiVersion`, `kind`, `metadata.namespace`,
    /// defaulting to `default` for namespaced kinds, and `metadata.name`); watches get
    /// `ADDED` or `MODIFIED`, or nothing if nothing changed. Returns the stored object, with
    /// its resourceVersion.
    ///
    /// # Panics
    ///
    /// If the kind is not served or the object has no name.
    pub fn apply(&self, object: Value) -> Value {
        let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let Some(resource) = self.shared.registry.find_kind(&api_version, &kind) else {
            panic!("the fake API server does not serve {kind} in {api_version:?}");
        };
        let namespaced = self.shared.registry.get(resource).namespaced;
        let stored = lock(&self.shared.store).put(resource, namespaced, object, PutMode::Apply);
        match stored {
            Ok((stored, _)) => {
                self.shared.changed();
                (*stored).clone()
            }
            Err(e) => panic!("the fake API server refused the object: {e:?}"),
        }
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds); watches get
    /// `DELETED`. Returns whether it was there.
    ///
    /// # Panics
    ///
    /// If the kind is not served.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let key = self.key(api_version, kind, namespace, name);
        let removed = lock(&self.shared.store).remove(&key).is_some();
        if removed {
            self.shared.changed();
        }
        removed
    }

    /// An object as stored, if it is there.
    ///
    /// # Panics
    ///
    /// If the kind is not served.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = self.key(api_version, kind, namespace, name);
        lock(&self.shared.store).get(&key).map(|o| (*o).clone())
    }

    fn key(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> store::Key {
        let Some(resource) = self.shared.registry.find_kind(api_version, kind) else {
            panic!("the fake API server does not serve {kind} in {api_version:?}");
        };
        let namespace = if self.shared.registry.get(resource).namespaced {
            namespace
        } else {
            ""
        };
        (resource, namespace.into(), name.into())
    }

    /// The current resourceVersion (that of the last write).
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    /// Refuses `resource` (`services`, or `plural.group` as in
    /// `httproutes.gateway.networking.k8s.io`) to `verbs` (every verb if empty) with 403.
    pub fn deny(&self, resource: &str, verbs: &[&str]) {
        self.shared.deny(resource, verbs);
    }

    /// Lifts every [`FakeApi::deny`].
    pub fn allow_all(&self) {
        self.shared.allow_all();
    }

    /// Ends every open watch abruptly: the connection closes before the chunked body ends.
    pub fn drop_watches(&self) {
        self.shared.control.dropping.send_modify(|n| *n += 1);
    }

    /// Stops every open watch (and those opened later) from sending anything, events,
    /// bookmarks or its end, with the connection kept open, until [`FakeApi::release_watches`].
    pub fn stall_watches(&self) {
        self.shared.control.stalled.send_replace(true);
    }

    /// Lets stalled watches go on.
    pub fn release_watches(&self) {
        self.shared.control.stalled.send_replace(false);
    }

    /// Sends a bookmark on every open watch that allows them.
    pub fn bookmark_now(&self) {
        self.shared.control.bookmarks.send_modify(|n| *n += 1);
    }

    /// Answers the next `n` requests whose path starts with `path_prefix` (every request if
    /// `None`) with 500 and a `Status`.
    pub fn fail_next(&self, n: usize, path_prefix: Option<&str>) {
        self.shared.fail_next(n, path_prefix.unwrap_or("/"));
    }

    /// Forgets the event history, as a compaction does: resourceVersions before the current
    /// one expire (watches from them, lists continued from them get 410).
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// An API server restart on a fresh history: open watches end abruptly, the
    /// resourceVersion jumps by [`FRESH_HISTORY_JUMP`], and every older resourceVersion
    /// expires, so clients resuming a watch get 410 and must list again. Objects stay.
    /// Returns the new resourceVersion.
    pub fn restart_with_fresh_history(&self) -> u64 {
        // Watches break first, as a restarting server's connections do; one that saw the
        // new history before its drop would end with a 410 instead.
        self.drop_watches();
        let rv = {
            let mut store = lock(&self.shared.store);
            store.fresh_history(FRESH_HISTORY_JUMP);
            store.resource_version()
        };
        self.shared.changes.send_replace(rv);
        rv
    }

    /// Stops the server: the listener closes (connections are refused) and every open
    /// connection is closed. Objects and history stay for [`FakeApi::start_again`].
    pub async fn stop(&self) {
        let server = lock(&self.server).take();
        self.drop_watches();
        if let Some(server) = server {
            server.stop().await;
        }
    }

    /// Starts the server again on the same address, with the same objects and history;
    /// it is listening when this returns. Does nothing if it is running.
    ///
    /// # Panics
    ///
    /// If the address cannot be bound again.
    pub async fn start_again(&self) {
        if lock(&self.server).is_some() {
            return;
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the fake API server cannot listen on {} again: {e}",
                    self.addr
                )
            });
        *lock(&self.server) = Some(serve::serve(self.shared.clone(), listener));
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests()
    }

    /// How many requests had `verb` on `resource` (as in [`RequestRecord`]).
    pub fn count(&self, verb: &str, resource: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.verb == Some(verb) && r.resource.as_deref() == Some(resource))
            .count()
    }

    /// How many watches are open now.
    pub fn open_watches(&self) -> usize {
        *self.shared.open_watches.borrow()
    }

    /// Waits until at least `n` watches are open.
    ///
    /// # Panics
    ///
    /// If that takes longer than `within`.
    pub async fn wait_for_watches(&self, n: usize, within: Duration) {
        let mut open = self.shared.open_watches.subscribe();
        let reached = tokio::time::timeout(within, open.wait_for(|&open| open >= n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "{n} watches were not open within {within:?} (open: {})",
            self.open_watches()
        );
    }

    /// Every watch so far (open or finished), in the order they were opened.
    pub fn watches(&self) -> Vec<WatchRecord> {
        lock(&self.shared.watches)
            .iter()
            .map(|w| lock(&w.record).clone())
            .collect()
    }
}
