//! The fake Kubernetes API server (`skiff_e2e::fake_api`) on its own, filled with a cluster
//! of a given size, so that the real `skiff` binary can be measured against it
//! (`benches/load/discovery.sh`): what discovery costs a proxy in API connections, watches,
//! events and memory when the cluster is large and the workload calls a few services of it.
//!
//! ```sh
//! cargo run --release -p skiff-e2e --example fake_apiserver -- \
//!     --listen 127.0.0.1:19600 --admin 127.0.0.1:19601 \
//!     --services 1000 --endpoints-per-service 10 --backends 20
//! ```
//!
//! It writes `--services` Services (`svc-0000`, ... in namespaces `ns-0` .. `ns-{N-1}`, one
//! TCP port 80 named `http` each, a cluster IP each), one EndpointSlice per Service with
//! `--endpoints-per-service` ready endpoints on port 8080 at distinct addresses in
//! 127.64.0.0/10, and the Pod each endpoint's `targetRef` names. Objects have the fields
//! and one `managedFields` entry as a real API server returns them, since the proxy
//! decodes and keeps every Service it lists. It fills the store while not listening, so that
//! no client lists a half-written cluster, then prints its URL and serves until killed.
//!
//! The endpoints of the first `--backends` Services are real HTTP servers, in this process
//! (one listener per endpoint address, answering the Service's name), so that the proxy can
//! call those Services; the other endpoints refuse connections.
//!
//! The admin listener (plain text, for scripts):
//! - `GET /counts`: one `key value` per line: requests by verb and resource
//!   (`requests.list.services 2`), watches open by resource (`watches.open.endpointslices
//!   20`), and the events and bookmarks sent on watches of each resource, open or finished
//!   (`watch.events.endpointslices 1`).
//! - `GET /move?service=svc-0003`: an endpoint change, as a rollout makes it: the Service's
//!   first endpoint is replaced by a new Pod at a new address (the Pod is written first,
//!   then the slice; a new backend listens there if the Service had backends).
//! - `GET /relabel?service=svc-0003`: a change to the Service object itself (a label).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use skiff_e2e::fake_api::FakeApi;
use skiff_e2e::{backend_at, ok, TestBody};

const USAGE: &str = "usage: fake_apiserver [--listen ADDR] [--admin ADDR] [--token TOKEN] \
[--services N] [--endpoints-per-service M] [--namespaces K] [--backends B] \
[--bookmark-interval SECONDS]";

/// The port every endpoint listens on.
const TARGET_PORT: u16 = 8080;

/// What to build and where to listen.
#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    admin: SocketAddr,
    token: Option<String>,
    services: usize,
    endpoints: usize,
    namespaces: usize,
    backends: usize,
    bookmarks: u64,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            services: 1000,
            endpoints: 10,
            namespaces: 10,
            backends: 20,
            // A real API server's watch cache sends a bookmark about once a minute.
            bookmarks: 60,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
            let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}\n{USAGE}");
            match flag.as_str() {
                "--listen" => args.listen = value()?.parse().map_err(|e| bad(&e))?,
                "--admin" => args.admin = value()?.parse().map_err(|e| bad(&e))?,
                "--token" => args.token = Some(value()?),
                "--services" => args.services = value()?.parse().map_err(|e| bad(&e))?,
                "--endpoints-per-service" => {
                    args.endpoints = value()?.parse().map_err(|e| bad(&e))?;
                }
                "--namespaces" => args.namespaces = value()?.parse().map_err(|e| bad(&e))?,
                "--backends" => args.backends = value()?.parse().map_err(|e| bad(&e))?,
                "--bookmark-interval" => args.bookmarks = value()?.parse().map_err(|e| bad(&e))?,
                "--help" | "-h" => return Err(USAGE.into()),
                _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
            }
        }
        // Cluster IPs are 10.96.0.1 to 10.96.255.250, endpoints 127.64.0.1 to 127.127.255.250.
        if args.namespaces == 0
            || args.services > 64_000
            || args.services.saturating_mul(args.endpoints) > 4_000_000
        {
            return Err(format!(
                "--namespaces must be at least 1, --services at most 64000 and \
                 --services x --endpoints-per-service at most 4000000\n{USAGE}"
            ));
        }
        if args.backends > args.services {
            return Err(format!("--backends must not exceed --services\n{USAGE}"));
        }
        Ok(args)
    }
}

/// The cluster's shape: names and addresses of its objects.
#[derive(Debug)]
struct Cluster {
    namespaces: usize,
    endpoints: usize,
    backends: usize,
    // Endpoint addresses handed out so far (the next one is new).
    next_endpoint: AtomicUsize,
    // Pods created by `/move`, for their names.
    moves: AtomicUsize,
}

impl Cluster {
    fn name(i: usize) -> String {
        format!("svc-{i:04}")
    }

    fn namespace(&self, i: usize) -> String {
        format!("ns-{}", i % self.namespaces)
    }

    /// The `n`th endpoint address: distinct, in 127.64.0.0/10, never .0 or .255.
    fn address(n: usize) -> Ipv4Addr {
        let host = (n % 250) as u8 + 1;
        let net = n / 250;
        Ipv4Addr::new(127, 64 + (net / 256) as u8, (net % 256) as u8, host)
    }

    /// The Service `i`, as `kubectl apply` leaves it.
    fn service(&self, i: usize) -> Value {
        let (name, namespace) = (Self::name(i), self.namespace(i));
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": name, "namespace": namespace,
                "labels": {"app": name, "app.kubernetes.io/part-of": "bench"},
                "managedFields": [{
                    "manager": "kubectl-client-side-apply", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-12-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:app.kubernetes.io/part-of": {}}},
                        "f:spec": {
                            "f:internalTrafficPolicy": {},
                            "f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}
                            }},
                            "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}
                        }
                    }
                }]
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": ip, "clusterIPs": [ip],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
            },
            "status": {"loadBalancer": {}}
        })
    }

    /// The EndpointSlice of Service `i`, with `endpoints` (address, Pod name).
    fn slice(&self, i: usize, endpoints: &[(Ipv4Addr, String)]) -> Value {
        let (name, namespace) = (Self::name(i), self.namespace(i));
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(addr, pod)| {
                json!({
                    "addresses": [addr.to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": format!("node-{}", u32::from(*addr) % 50),
                    "zone": "zone-a",
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace,
                                  "uid": format!("00000000-0000-4000-8000-{:012}", u32::from(*addr))}
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-x7k2p"), "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    "app": name
                },
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                     "uid": format!("00000000-0000-4000-9000-{i:012}"),
                                     "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{
                    "manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "discovery.k8s.io/v1", "time": "2026-12-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:addressType": {}, "f:endpoints": {}, "f:metadata": {
                        "f:labels": {".": {}, "f:app": {}, "f:endpointslice.kubernetes.io/managed-by": {},
                                     "f:kubernetes.io/service-name": {}},
                        "f:ownerReferences": {".": {}, "k:{\"uid\":\"0\"}": {}}
                    }, "f:ports": {}}
                }]
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
            "endpoints": endpoints
        })
    }

    /// A Pod of Service `i`'s Deployment, running at `addr`.
    fn pod(&self, i: usize, pod: &str, addr: Ipv4Addr) -> Value {
        let (name, namespace) = (Self::name(i), self.namespace(i));
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod, "namespace": namespace,
                "labels": {"app": name, "pod-template-hash": "5d8f9c7b6"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": format!("{name}-5d8f9c7b6"),
                                     "uid": format!("00000000-0000-4000-a000-{i:012}"),
                                     "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "serviceAccountName": name,
                "nodeName": format!("node-{}", u32::from(addr) % 50),
                "containers": [{"name": "app", "image": "registry.example/app:1.0",
                                "ports": [{"name": "http", "containerPort": TARGET_PORT, "protocol": "TCP"}]}]
            },
            "status": {"phase": "Running", "podIP": addr.to_string(), "podIPs": [{"ip": addr.to_string()}]}
        })
    }

    /// The index of Service `name`.
    fn index(name: &str) -> Option<usize> {
        name.strip_prefix("svc-")?.parse().ok()
    }
}

/// A backend for an endpoint of Service `service`, answering its name.
async fn serve_endpoint(addr: Ipv4Addr, service: String) {
    let body = Bytes::from(service);
    backend_at(SocketAddr::from((addr, TARGET_PORT)), move |_req| {
        let body = body.clone();
        async move { ok(body) }
    })
    .await;
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut builder = FakeApi::builder()
        .addr(args.listen)
        // Enough history that no watch started during the run falls behind it.
        .history(args.services * 2 + 1000)
        .bookmark_interval(Some(Duration::from_secs(args.bookmarks)));
    if let Some(token) = &args.token {
        builder = builder.token(token);
    }
    let api = builder.start().await;
    // Filled while stopped: a client started first sees connections refused, then the
    // whole cluster in its first list.
    api.stop().await;
    let cluster = Arc::new(Cluster {
        namespaces: args.namespaces,
        endpoints: args.endpoints,
        backends: args.backends,
        next_endpoint: AtomicUsize::new(args.services * args.endpoints),
        moves: AtomicUsize::new(0),
    });
    for i in 0..args.services {
        api.apply(cluster.service(i));
        let mut endpoints = Vec::with_capacity(args.endpoints);
        for e in 0..args.endpoints {
            let addr = Cluster::address(i * args.endpoints + e);
            let pod = format!("{}-5d8f9c7b6-{e:05}", Cluster::name(i));
            api.apply(cluster.pod(i, &pod, addr));
            if i < args.backends {
                serve_endpoint(addr, Cluster::name(i)).await;
            }
            endpoints.push((addr, pod));
        }
        api.apply(cluster.slice(i, &endpoints));
    }
    api.start_again().await;

    let api = Arc::new(api);
    let admin = {
        let (api, cluster) = (api.clone(), cluster.clone());
        backend_at(args.admin, move |req| {
            let (api, cluster) = (api.clone(), cluster.clone());
            async move { admin(&api, &cluster, req).await }
        })
        .await
    };
    let sizes = object_sizes(&api, &cluster);
    println!(
        "fake API server {} (admin http://{}): {} Services in {} namespaces, {} endpoints each, \
         {} Services with backends; {sizes}",
        api.url(),
        admin.addr,
        args.services,
        args.namespaces.min(args.services),
        args.endpoints,
        args.backends,
    );
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}

/// The JSON size of one of each object, for scaling the results to other clusters.
fn object_sizes(api: &FakeApi, cluster: &Cluster) -> String {
    let size = |v: Option<Value>| v.map_or(0, |v| v.to_string().len());
    let (name, ns) = (Cluster::name(0), cluster.namespace(0));
    format!(
        "bytes as stored: Service {}, EndpointSlice {}, Pod {}",
        size(api.get("v1", "Service", &ns, &name)),
        size(api.get(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            &ns,
            &format!("{name}-x7k2p")
        )),
        size(api.get("v1", "Pod", &ns, &format!("{name}-5d8f9c7b6-00000"))),
    )
}

async fn admin(api: &FakeApi, cluster: &Cluster, req: Request<Incoming>) -> Response<TestBody> {
    let service = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("service=")))
        .map(str::to_owned);
    let answer = match (req.uri().path(), service) {
        ("/counts", _) => Ok(counts(api)),
        ("/move", Some(service)) => move_endpoint(api, cluster, &service).await,
        ("/relabel", Some(service)) => relabel(api, cluster, &service),
        _ => Err("GET /counts, /move?service=NAME or /relabel?service=NAME".to_owned()),
    };
    answer.map_or_else(
        |e| {
            let mut rsp = ok(e + "\n");
            *rsp.status_mut() = StatusCode::BAD_REQUEST;
            rsp
        },
        ok,
    )
}

/// Requests by verb and resource, open watches, and the events sent on watches.
fn counts(api: &FakeApi) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let requests = api.requests();
    counts.insert("requests".into(), requests.len());
    for r in &requests {
        // `endpointslices.discovery.k8s.io` as `endpointslices`.
        let resource = r.resource.as_deref().unwrap_or("none");
        let resource = resource.split('.').next().unwrap_or_default();
        let key = format!("requests.{}.{resource}", r.verb.unwrap_or("other"));
        *counts.entry(key).or_default() += 1;
    }
    counts.insert("watches.open".into(), api.open_watches());
    for w in api.watches() {
        let resource = w.resource.split('.').next().unwrap_or_default().to_owned();
        *counts
            .entry(format!("watches.started.{resource}"))
            .or_default() += 1;
        if w.open {
            *counts
                .entry(format!("watches.open.{resource}"))
                .or_default() += 1;
        }
        *counts
            .entry(format!("watch.events.{resource}"))
            .or_default() += w.events;
        *counts
            .entry(format!("watch.bookmarks.{resource}"))
            .or_default() += w.bookmarks;
        *counts.entry("watch.events".into()).or_default() += w.events;
    }
    counts.into_iter().fold(String::new(), |mut out, (k, v)| {
        let _ = writeln!(out, "{k} {v}");
        out
    })
}

/// Replaces Service `service`'s first endpoint by a new Pod at a new address.
async fn move_endpoint(api: &FakeApi, cluster: &Cluster, service: &str) -> Result<String, String> {
    let i = Cluster::index(service).ok_or(format!("no Service {service}"))?;
    let ns = cluster.namespace(i);
    let slice_name = format!("{service}-x7k2p");
    let mut slice = api
        .get("discovery.k8s.io/v1", "EndpointSlice", &ns, &slice_name)
        .ok_or(format!("no EndpointSlice {ns}/{slice_name}"))?;
    let addr = Cluster::address(cluster.next_endpoint.fetch_add(1, Ordering::Relaxed));
    let pod = format!(
        "{service}-7c4b8d9f5-m{:04}",
        cluster.moves.fetch_add(1, Ordering::Relaxed)
    );
    if i < cluster.backends {
        serve_endpoint(addr, service.to_owned()).await;
    }
    api.apply(cluster.pod(i, &pod, addr));
    let first = slice["endpoints"]
        .get_mut(0)
        .ok_or(format!("{slice_name} has no endpoints"))?;
    first["addresses"] = json!([addr.to_string()]);
    first["targetRef"]["name"] = json!(pod);
    first["targetRef"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", u32::from(addr)));
    slice["metadata"]
        .as_object_mut()
        .ok_or("a stored object has metadata")?
        .remove("resourceVersion");
    api.apply(slice);
    Ok(format!(
        "{ns}/{service}: first endpoint now {addr}:{TARGET_PORT} (Pod {pod}); {} endpoints\n",
        cluster.endpoints
    ))
}

/// Changes a label of Service `service`: an event for every watch of Services.
fn relabel(api: &FakeApi, cluster: &Cluster, service: &str) -> Result<String, String> {
    let i = Cluster::index(service).ok_or(format!("no Service {service}"))?;
    let ns = cluster.namespace(i);
    let mut svc = api
        .get("v1", "Service", &ns, service)
        .ok_or(format!("no Service {ns}/{service}"))?;
    let n = cluster.moves.fetch_add(1, Ordering::Relaxed);
    svc["metadata"]["labels"]["bench-revision"] = json!(n.to_string());
    api.apply(svc);
    Ok(format!("{ns}/{service}: relabelled\n"))
}
