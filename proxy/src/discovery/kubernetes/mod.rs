//! The Kubernetes API as a source of services and endpoints (`spec.discovery.kubernetes`).
//!
//! Services are watched in the namespaces the workload may call (all by default): each TCP
//! port of each Service becomes a service of the routing table, reached by its name and by
//! its cluster IPs, so neither needs writing into the config file. A Service's
//! EndpointSlices are watched lazily, from its first request, and dropped when it has gone
//! unused for `endpointsIdleTimeout`: a proxy holds state only for what its application
//! calls. Watches use kube-rs's watcher (list, then watch from the list's resourceVersion;
//! re-list on 410 Gone; retries with backoff), and every answer replaces the previous one
//! whole, so a watch that restarts never drops endpoints that are still there.

mod model;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::task::JoinHandle;

pub(crate) use model::{key, PodInfo, SliceEndpoint};

use proxy_metrics::admin::Readiness;
use proxy_metrics::discovery::DiscoveryFamilies;

use crate::config::api::ApiObject;
use crate::config::{KubernetesSpec, ServiceSpec};

/// A connection to the Kubernetes API.
pub(crate) struct Kubernetes {
    client: Client,
    spec: KubernetesSpec,
    observe: Observe,
}

/// Where watches report: metrics, and `/ready`'s note that the last state is stale.
#[derive(Clone, Debug)]
pub(crate) struct Observe {
    /// The discovery series.
    pub(crate) metrics: Arc<DiscoveryFamilies>,
    /// Told when some watch is failing (and when none is any more).
    pub(crate) readiness: Arc<Readiness>,
}

impl fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kubernetes")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// A client with the kubeconfig `spec` names, else the pod's service-account
    /// credentials. Nothing is sent yet: an unreachable API server is found by the watches.
    pub(crate) async fn connect(
        spec: &KubernetesSpec,
        observe: Observe,
    ) -> Result<Arc<Self>, String> {
        let config = match &spec.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::incluster().map_err(|e| {
                format!("no in-cluster credentials ({e}); set discovery.kubernetes.kubeconfig")
            })?,
        };
        let client = Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
        Ok(Arc::new(Self {
            client,
            spec: spec.clone(),
            observe,
        }))
    }

    /// The settings it was made with.
    pub(crate) fn spec(&self) -> &KubernetesSpec {
        &self.spec
    }

    /// Watches Services until the task is aborted. `publish` gets the whole table of
    /// discovered services once every watched namespace has been listed, then after every
    /// change.
    pub(crate) fn watch_services(
        &self,
        publish: impl Fn(BTreeMap<String, ServiceSpec>) + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        let apis: Vec<Api<Service>> = if self.spec.namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            self.spec
                .namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect()
        };
        let allowed = self.spec.namespaces.clone();
        // Until every namespace is listed, a partial table would drop services.
        let joined = Joined::new(apis.len(), move |all: &[&Store<Service>]| {
            let services = all.iter().flat_map(|s| s.values());
            publish(model::service_table(services, &allowed));
        });
        let tasks = apis
            .into_iter()
            .enumerate()
            .map(|(i, api)| {
                tokio::spawn(follow(
                    api,
                    watcher::Config::default(),
                    "services",
                    self.observe.clone(),
                    joined.scope(i),
                ))
            })
            .collect();
        hold_all(tasks)
    }

    /// Watches the mesh documents (routes, splits, access) until the task is aborted, in
    /// the watched namespaces. `publish` gets every object of every kind once every kind
    /// has been listed in every namespace, then after each change. A kind whose CRD is not
    /// installed (404) simply has no objects.
    pub(crate) fn watch_documents(
        &self,
        publish: impl Fn(Vec<ApiObject>) + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        let namespaces: Vec<Option<String>> = if self.spec.namespaces.is_empty() {
            vec![None]
        } else {
            self.spec.namespaces.iter().cloned().map(Some).collect()
        };
        let scopes: Vec<(&'static str, &'static str, Option<String>)> = crate::config::api::KINDS
            .iter()
            .flat_map(|(group, kind)| namespaces.iter().map(move |ns| (*group, *kind, ns.clone())))
            .collect();
        // Until every kind is listed, a TrafficTarget could be seen without its
        // HTTPRouteGroup, or not at all: nothing partial is published.
        let joined = Joined::new(scopes.len(), move |all: &[&Store<DynamicObject>]| {
            publish(api_objects(all.iter().copied()));
        });
        let tasks = scopes
            .into_iter()
            .enumerate()
            .map(|(i, (group, kind, ns))| {
                tokio::spawn(watch_kind(
                    self.client.clone(),
                    group,
                    kind,
                    ns,
                    self.observe.clone(),
                    joined.scope(i),
                ))
            })
            .collect();
        hold_all(tasks)
    }

    /// Watches the EndpointSlices of Service `namespace/service` until the task is
    /// aborted; `publish` gets the endpoints of its port `port_name`, each with its Pod's
    /// details, after the first list and after every change.
    ///
    /// Pods are read once each (`get`), when their address first appears: what Skiff needs
    /// of them (service account, owner, the injection mark) does not change in a Pod's
    /// life. An endpoint whose Pod cannot be read is not called (whether it expects mTLS is
    /// unknown); the failure is logged and counted, and the read retried every few seconds.
    pub(crate) fn watch_endpoints(
        &self,
        namespace: &str,
        service: &str,
        port_name: Option<String>,
        publish: impl Fn(Vec<Resolved>) + Send + 'static,
    ) -> JoinHandle<()> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("kubernetes.io/service-name={service}");
        let config = watcher::Config::default().labels(&selector);
        let (tx, mut rx) = tokio::sync::watch::channel(None::<Vec<SliceEndpoint>>);
        let observe = self.observe.clone();
        let slices = follow(
            api,
            config,
            "endpointslices",
            observe.clone(),
            move |store| {
                tx.send_replace(Some(model::endpoints(store.values(), port_name.as_deref())));
            },
        );
        let resolve = async move {
            let mut known: HashMap<String, Option<Arc<PodInfo>>> = HashMap::new();
            let mut failing: HashSet<String> = HashSet::new();
            loop {
                // The next answer; while some Pod could not be read, also a retry.
                let changed = if failing.is_empty() {
                    rx.changed().await.is_ok()
                } else {
                    tokio::select! {
                        changed = rx.changed() => changed.is_ok(),
                        () = tokio::time::sleep(POD_RETRY) => true,
                    }
                };
                if !changed {
                    break;
                }
                let Some(endpoints) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let unread: HashSet<String> = endpoints
                    .iter()
                    .filter_map(|e| e.pod.as_ref())
                    .filter(|name| !known.contains_key(*name))
                    .cloned()
                    .collect();
                // Read together (bounded): a rollout brings many new Pods at once.
                let reads: Vec<(String, Result<Option<PodInfo>, kube::Error>)> =
                    futures_util::stream::iter(unread)
                        .map(|name: String| {
                            let (pods, jobs) = (pods.clone(), jobs.clone());
                            async move {
                                let read = match pods.get_opt(&name).await {
                                    Ok(Some(pod)) => {
                                        Ok(Some(with_cron_job(model::pod_info(&pod), &jobs).await))
                                    }
                                    Ok(None) => Ok(None),
                                    Err(e) => Err(e),
                                };
                                (name, read)
                            }
                        })
                        .buffer_unordered(POD_READS)
                        .collect()
                        .await;
                for (name, read) in reads {
                    match read {
                        Ok(pod) => {
                            failing.remove(&name);
                            known.insert(name, pod.map(Arc::new));
                        }
                        Err(e) => {
                            observe.metrics.error("pods", client_reason(&e));
                            if failing.insert(name.clone()) {
                                tracing::warn!(pod = %name, error = %e, "cannot read the Pod behind an endpoint; not calling it until it can be read (it may expect mTLS)");
                            }
                        }
                    }
                }
                // An endpoint whose Pod could not be read is left out: called in plaintext,
                // a meshed Pod would get the request unencrypted and unauthenticated.
                // A Pod that left unread is not retried for ever.
                failing.retain(|name| endpoints.iter().any(|e| e.pod.as_ref() == Some(name)));
                let resolved: Vec<Resolved> = endpoints
                    .into_iter()
                    .filter_map(|endpoint| match &endpoint.pod {
                        None => Some(Resolved {
                            endpoint,
                            pod: None,
                        }),
                        Some(name) => known
                            .get(name)
                            .cloned()
                            .map(|pod| Resolved { endpoint, pod }),
                    })
                    .collect();
                // Forget Pods that left, so the cache stays the size of the Service.
                known.retain(|name, _| {
                    resolved
                        .iter()
                        .any(|r| r.endpoint.pod.as_ref() == Some(name))
                });
                publish(resolved);
            }
        };
        tokio::spawn(async move {
            tokio::join!(slices, resolve);
        })
    }
}

/// `info` with a Job owner replaced by the Job's CronJob, when it has one: the workload a
/// user knows (Linkerd labels such Pods `dst_cronjob`). The Job is only metadata: when it
/// cannot be read, the Pod stays the Job's.
async fn with_cron_job(mut info: PodInfo, jobs: &Api<Job>) -> PodInfo {
    let Some(("Job", job)) = info.owner.as_ref().map(|(k, n)| (k.as_str(), n.clone())) else {
        return info;
    };
    match jobs.get_opt(&job).await {
        Ok(Some(job)) => {
            let cron = job
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "CronJob");
            if let Some(cron) = cron {
                info.owner = Some(("CronJob".to_owned(), cron.name.clone()));
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(%job, error = %e, "cannot read the Job owning a Pod; labelling the Pod with its Job")
        }
    }
    info
}

/// How long to wait before reading again a Pod that could not be read.
const POD_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// How many Pods are read at once.
const POD_READS: usize = 8;

/// An endpoint of a Service port with its Pod's details, when it has a Pod.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The address and where it runs.
    pub(crate) endpoint: SliceEndpoint,
    /// Its Pod.
    pub(crate) pod: Option<Arc<PodInfo>>,
}

/// How long to wait before asking again for a kind the API server does not serve (its CRD
/// may be installed later), or after discovery failed.
const REDISCOVER: std::time::Duration = std::time::Duration::from_secs(30);

/// Watches `kind` of `group` in `ns` (all namespaces when `None`), in the version the API
/// server prefers among those Skiff reads. A kind the server does not serve has no objects
/// (published as an empty list), and is asked for again every [`REDISCOVER`].
async fn watch_kind(
    client: Client,
    group: &'static str,
    kind: &'static str,
    ns: Option<String>,
    observe: Observe,
    changed: impl Fn(&Store<DynamicObject>) + Send + 'static,
) {
    let mut listed_empty = false;
    loop {
        match kube::discovery::group(&client, group).await {
            Ok(found) => {
                // The first version, in the server's preference, that Skiff reads and that
                // serves this kind (a group's versions need not all serve every kind).
                let resource = found
                    .versions()
                    .filter(|v| crate::config::api::readable(&format!("{group}/{v}"), kind))
                    .find_map(|v| {
                        found
                            .versioned_resources(v)
                            .into_iter()
                            .find(|(r, _)| r.kind == kind)
                    });
                if let Some((resource, _)) = resource {
                    let api: Api<DynamicObject> = match &ns {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                        None => Api::all_with(client.clone(), &resource),
                    };
                    // Runs until the task is aborted.
                    follow(
                        api,
                        watcher::Config::default(),
                        "documents",
                        observe,
                        changed,
                    )
                    .await;
                    return;
                }
            }
            Err(kube::Error::Discovery(_)) => {}
            Err(e) => {
                observe.metrics.error("documents", client_reason(&e));
                tracing::debug!(group, kind, error = %e, "API discovery failed; asking again");
                tokio::time::sleep(REDISCOVER.min(std::time::Duration::from_secs(5))).await;
                continue;
            }
        }
        // Not served: nothing to read, nothing wrong.
        if !listed_empty {
            tracing::debug!(
                group,
                kind,
                "not served by the API server; no objects of this kind"
            );
            changed(&BTreeMap::new());
            listed_empty = true;
        }
        tokio::time::sleep(REDISCOVER).await;
    }
}

/// Every object of every kind, in a stable order.
fn api_objects<'a>(stores: impl Iterator<Item = &'a Store<DynamicObject>>) -> Vec<ApiObject> {
    stores
        .flat_map(|s| s.values())
        .filter_map(|obj| {
            let kind = obj.types.as_ref()?.kind.clone();
            let value = serde_json::to_value(obj).ok()?;
            Some(ApiObject {
                kind,
                namespace: obj.metadata.namespace.clone().unwrap_or_default(),
                name: obj.metadata.name.clone().unwrap_or_default(),
                value,
            })
        })
        .collect()
}

/// Objects by namespace and name.
type Store<K> = BTreeMap<(String, String), K>;

/// Lists and watches `api`, calling `changed` with the whole store after each full list and
/// after each change; retries forever with backoff. Errors are logged when they change (a
/// 403 names the missing permission), so a persistent one is not repeated every retry.
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    observe: Observe,
    changed: impl Fn(&Store<K>) + Send + 'static,
) where
    K: kube::Resource + Clone + fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut watching = Watching::open(observe, what);
    let mut store: Store<K> = BTreeMap::new();
    let mut listing: Option<Store<K>> = None;
    let mut listed = false;
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                let reason = reason(&e);
                watching.observe.metrics.error(what, reason);
                // A mesh kind whose CRD is not installed (or was removed) has no objects,
                // and nothing is wrong: it counts as listed, empty.
                if what == "documents" && reason == "404" {
                    watching.recovered();
                    if !listed || !store.is_empty() {
                        store.clear();
                        listed = true;
                        changed(&store);
                    }
                    continue;
                }
                watching.failed(e.to_string());
                continue;
            }
        };
        watching.observe.metrics.event(what);
        // The watcher says Init before it sends its list request: only an answer is one.
        if !matches!(event, Event::Init) {
            watching.recovered();
        }
        match event {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(obj) => {
                if let Some(listing) = listing.as_mut() {
                    listing.insert(name_of(&obj), obj);
                }
            }
            Event::InitDone => {
                // A re-list (after 410 Gone, say) replaces the store whole: objects still
                // there are unchanged for the caller, who keeps their endpoints.
                store = listing.take().unwrap_or_default();
                listed = true;
                changed(&store);
            }
            Event::Apply(obj) => {
                store.insert(name_of(&obj), obj);
                changed(&store);
            }
            Event::Delete(obj) => {
                store.remove(&name_of(&obj));
                changed(&store);
            }
        }
    }
}

impl Observe {
    /// Tells `/ready` whether any watch is stale now.
    fn note_staleness(&self) {
        self.readiness
            .set_discovery_stale(self.metrics.stale_now() > 0);
    }
}

/// One open watch: counted as open while it lives, and as stale from a failure until the
/// next answer, or until it is dropped (a watch stopped while failing is no longer stale:
/// it is gone).
struct Watching {
    observe: Observe,
    what: &'static str,
    /// The last failure's message, while failing.
    failing: Option<String>,
}

impl Watching {
    fn open(observe: Observe, what: &'static str) -> Self {
        observe.metrics.watching(what, true);
        Self {
            observe,
            what,
            failing: None,
        }
    }

    /// A request failed: logged when the message changes, marked stale.
    fn failed(&mut self, message: String) {
        if self.failing.as_deref() == Some(&message) {
            return;
        }
        // A 403's message names the missing permission.
        tracing::warn!(what = self.what, error = %message, "Kubernetes watch failed; serving the last state, retrying");
        let was = self.failing.replace(message).is_some();
        self.observe.metrics.set_stale(self.what, true, was);
        self.observe.note_staleness();
    }

    /// An answer came: no longer stale.
    fn recovered(&mut self) {
        if self.failing.take().is_some() {
            tracing::info!(what = self.what, "Kubernetes watch recovered");
            self.observe.metrics.set_stale(self.what, false, true);
            self.observe.note_staleness();
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        if self.failing.take().is_some() {
            self.observe.metrics.set_stale(self.what, false, true);
            self.observe.note_staleness();
        }
        self.observe.metrics.watching(self.what, false);
    }
}

/// A failure's metric label: the API server's status code, or what failed before one.
fn reason(e: &watcher::Error) -> &'static str {
    let client = match e {
        watcher::Error::WatchError(status) => return code(status.code),
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::NoResourceVersion => return "no-resource-version",
    };
    client_reason(client)
}

/// A failed request's metric label.
fn client_reason(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(status) => code(status.code),
        kube::Error::Service(_) | kube::Error::HyperError(_) => "connect",
        _ => "other",
    }
}

fn code(code: u16) -> &'static str {
    match code {
        401 => "401",
        403 => "403",
        404 => "404",
        410 => "410",
        429 => "429",
        500..=599 => "5xx",
        _ => "other",
    }
}

fn name_of<K: kube::Resource>(obj: &K) -> (String, String) {
    let meta = obj.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The stores of several watches of one kind of answer (one per namespace, or per kind
/// and namespace), published together: once every watch has listed, then after each
/// change of any.
struct Joined<K> {
    stores: Arc<Mutex<Vec<Option<Store<K>>>>>,
    publish: Arc<Publish<K>>,
}

/// What [`Joined`] calls with every watch's store.
type Publish<K> = dyn Fn(&[&Store<K>]) + Send + Sync;

impl<K: Clone + Send + 'static> Joined<K> {
    fn new(scopes: usize, publish: impl Fn(&[&Store<K>]) + Send + Sync + 'static) -> Self {
        Self {
            stores: Arc::new(Mutex::new(vec![None; scopes])),
            publish: Arc::new(publish),
        }
    }

    /// What watch `i` calls with its store after each list and change.
    fn scope(&self, i: usize) -> impl Fn(&Store<K>) + Send + 'static {
        let (stores, publish) = (self.stores.clone(), self.publish.clone());
        move |store: &Store<K>| {
            let mut all = stores.lock().unwrap_or_else(|e| e.into_inner());
            all[i] = Some(store.clone());
            let listed: Option<Vec<&Store<K>>> = all.iter().map(Option::as_ref).collect();
            if let Some(listed) = listed {
                publish(&listed);
            }
        }
    }
}

/// A task that holds `tasks` until it is aborted, and then aborts them.
fn hold_all(tasks: Vec<JoinHandle<()>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _abort_all = AbortAll(tasks);
        std::future::pending::<()>().await;
    })
}

/// Aborts its tasks when dropped (the services watch is one task per namespace).
struct AbortAll(Vec<JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
