//! Discovery from the Kubernetes API, end to end: the real proxy, with
//! `spec.discovery.kubernetes` pointing at the fake API server (`skiff_e2e::fake_api`, which
//! follows the list/watch contract) through a kubeconfig, in front of real hyper backends.
//! Services become callable by name with no `services` table; endpoints follow their
//! EndpointSlices, also while requests flow; the proxy keeps serving its last state when the
//! API server goes away, and resyncs when it returns or when a watch is told 410 Gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};
use skiff_e2e::fake_api::FakeApi;
use skiff_e2e::*;

#[path = "discovery/labels.rs"]
mod labels;

const TOKEN: &str = "skiff-test-token";

/// A kubeconfig for the fake API server.
fn kubeconfig(api: &FakeApi, name: &str) -> PathBuf {
    api.kubeconfig(TOKEN, name)
}

fn service(name: &str, port: u16, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "port": port, "targetPort": "http"}]
        }
    })
}

/// The EndpointSlice `slice` of Service `svc`, with `addrs` ready (all on one port).
fn slice(svc: &str, slice: &str, addrs: &[SocketAddr]) -> Value {
    let port = addrs.first().map_or(1, |a| a.port());
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice, "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

async fn api() -> FakeApi {
    FakeApi::builder().token(TOKEN).start().await
}

async fn proxy(api: &FakeApi, name: &str) -> Running {
    ProxyConfig::new(1)
        .spec(json!({
            "namespace": "shop",
            "discovery": {"kubernetes": {"kubeconfig": kubeconfig(api, name)}}
        }))
        .start()
        .await
}

/// The body (or the `skiff-error` reason) a request to `host` gets.
async fn call(outbound: SocketAddr, host: &str) -> (StatusCode, String) {
    let rsp = h1(outbound)
        .await
        .send_request(get(host, "/"))
        .await
        .unwrap();
    let status = rsp.status();
    let reason = rsp
        .headers()
        .get("skiff-error")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = body_text(rsp).await;
    (status, reason.unwrap_or(body))
}

/// Backends answering their own name, on one port of 127.0.0.1, 127.0.0.2, ... as pods of
/// one Deployment would.
async fn pods(names: &[&'static str]) -> Vec<(Backend, SocketAddr)> {
    let first = hello(names[0]).await;
    let port = first.addr.port();
    let mut all = vec![(first.clone(), first.addr)];
    for (i, name) in names.iter().copied().enumerate().skip(1) {
        let addr = SocketAddr::from(([127, 0, 0, 1 + i as u8], port));
        let b = backend_at(addr, move |_req| async move { ok(name) }).await;
        all.push((b, addr));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_called_by_name_and_follow_their_endpoint_slices() {
    let api = api().await;
    let pods = pods(&["a", "b"]).await;
    api.apply(service("web", 80, "10.96.0.10"));
    api.apply(slice("web", "web-1", &[pods[0].1]));
    let proxy = proxy(&api, "discovery-follow").await;
    let out = proxy.outbound_addr;

    eventually(
        Duration::from_secs(10),
        "ready after the first list",
        || async { admin_get(proxy.admin_addr, "/ready").await.0 == 200 },
    )
    .await;
    // Every spelling of the name, with no services table.
    for host in ["web", "web.shop", "web.shop.svc.cluster.local:80"] {
        assert_eq!(
            call(out, host).await,
            (StatusCode::OK, "a".into()),
            "{host}"
        );
    }
    // A rollout: the slice now names the new pod.
    api.apply(slice("web", "web-1", &[pods[1].1]));
    eventually(Duration::from_secs(10), "the new endpoint", || async {
        call(out, "web").await.1 == "b"
    })
    .await;
    // A second slice adds an endpoint; both take requests.
    api.apply(slice("web", "web-2", &[pods[0].1]));
    eventually(Duration::from_secs(10), "both endpoints", || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(call(out, "web").await.1);
        }
        seen.len() == 2
    })
    .await;
    // A name the API does not know.
    let (status, reason) = call(out, "nothere").await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no-endpoints")
    );
    // The Service goes: so does the name.
    api.delete("v1", "Service", "shop", "web");
    eventually(Duration::from_secs(10), "the deleted Service", || async {
        call(out, "web").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_, config) = admin_get(proxy.admin_addr, "/config").await;
    assert!(!config.contains("\"web.shop:80\""), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_replaced_one_by_one_under_load_fail_no_request() {
    let api = api().await;
    let pods = pods(&["p0", "p1", "p2", "p3", "p4", "p5"]).await;
    let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.1).collect();
    api.apply(service("web", 80, "10.96.0.11"));
    api.apply(slice("web", "web-1", &addrs[0..3]));
    let proxy = proxy(&api, "discovery-rollout").await;
    let out = proxy.outbound_addr;
    eventually(Duration::from_secs(10), "the first endpoints", || async {
        call(out, "web").await.0 == StatusCode::OK
    })
    .await;

    // About 200 requests a second on one keep-alive connection while the three endpoints
    // are replaced one at a time (a rolling update with maxSurge 0); old pods keep serving
    // for a while after they leave the slice, as terminating pods do.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = sent.clone();
    let load = tokio::spawn(async move {
        let mut conn = h1(out).await;
        let (mut ok, mut failed) = (0u32, Vec::new());
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for _ in 0..4_000 {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_rx.changed() => break,
            }
            let rsp = conn.send_request(get("web", "/")).await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if rsp.status() == StatusCode::OK {
                ok += 1;
            } else {
                failed.push(rsp.status());
            }
            let _ = body_text(rsp).await;
        }
        (ok, failed)
    });
    for step in 0..3 {
        let mut now: Vec<SocketAddr> = addrs[step + 1..3].to_vec();
        now.extend_from_slice(&addrs[3..4 + step]);
        api.apply(slice("web", "web-1", &now));
        // The old pod stops getting requests once the proxy has the new slice. (A new pod
        // is tried as P2C's peak-EWMA lets it in, which with fast old pods can take a
        // while: it starts from a conservative latency estimate.)
        let gone = pods[step].0.clone();
        eventually(
            Duration::from_secs(10),
            "the old pod gets no more requests",
            || {
                let gone = gone.clone();
                async move {
                    let before = gone.requests();
                    for _ in 0..10 {
                        call(out, "web").await;
                    }
                    gone.requests() == before
                }
            },
        )
        .await;
    }
    // Keep the load on a little after the last change (bounded by the loop's count).
    let done = sent.load(std::sync::atomic::Ordering::Relaxed);
    eventually(
        Duration::from_secs(10),
        "200 more requests after the rollout",
        || {
            let sent = sent.clone();
            async move { sent.load(std::sync::atomic::Ordering::Relaxed) >= done + 200 }
        },
    )
    .await;
    stop_tx.send_replace(true);
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(ok >= 200, "the load ran ({ok} requests)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_state_serves_while_the_api_is_away_and_resyncs_after_gone() {
    let api = api().await;
    let pods = pods(&["a", "b", "c"]).await;
    api.apply(service("web", 80, "10.96.0.12"));
    api.apply(slice("web", "web-1", &[pods[0].1]));
    let proxy = proxy(&api, "discovery-outage").await;
    let out = proxy.outbound_addr;
    eventually(Duration::from_secs(10), "served", || async {
        call(out, "web").await.1 == "a"
    })
    .await;

    // The API server goes away: the last state keeps serving.
    api.stop().await;
    for _ in 0..20 {
        assert_eq!(call(out, "web").await, (StatusCode::OK, "a".into()));
    }
    // It comes back with what changed meanwhile: the proxy lists again and follows.
    api.apply(slice("web", "web-1", &[pods[1].1]));
    api.start_again().await;
    eventually(
        Duration::from_secs(20),
        "resynced after the outage",
        || async { call(out, "web").await.1 == "b" },
    )
    .await;

    // A fresh history: resuming the watches gets 410 Gone, and the proxy lists again,
    // serving meanwhile.
    api.restart_with_fresh_history();
    api.drop_watches();
    assert_eq!(call(out, "web").await.1, "b");
    api.apply(slice("web", "web-1", &[pods[2].1]));
    eventually(
        Duration::from_secs(20),
        "resynced after 410 Gone",
        || async { call(out, "web").await.1 == "c" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_list_and_file_services_served_meanwhile() {
    let api = api().await;
    let app = hello("pinned").await;
    api.stop().await;
    let proxy = ProxyConfig::new(1)
        .service("pinned", &[app.addr])
        .spec(json!({
            "namespace": "shop",
            "discovery": {"kubernetes": {"kubeconfig": kubeconfig(&api, "discovery-ready")}}
        }))
        .start()
        .await;
    let (status, body) = admin_get(proxy.admin_addr, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("Kubernetes API"), "{body}");
    assert_eq!(
        call(proxy.outbound_addr, "pinned").await,
        (StatusCode::OK, "pinned".into())
    );
    api.start_again().await;
    eventually(Duration::from_secs(20), "ready once listed", || async {
        admin_get(proxy.admin_addr, "/ready").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_resource_is_counted_and_disturbs_nothing_else() {
    let api = api().await;
    let pods = pods(&["a"]).await;
    let pinned = hello("pinned").await;
    api.apply(service("web", 80, "10.96.0.13"));
    api.apply(slice("web", "web-1", &[pods[0].1]));
    api.deny("endpointslices.discovery.k8s.io", &["list", "watch"]);
    let proxy = ProxyConfig::new(1)
        .service("pinned", &[pinned.addr])
        .spec(json!({
            "namespace": "shop",
            "discovery": {"kubernetes": {"kubeconfig": kubeconfig(&api, "discovery-403")}}
        }))
        .start()
        .await;
    let out = proxy.outbound_addr;
    eventually(Duration::from_secs(10), "services listed", || async {
        admin_get(proxy.admin_addr, "/ready").await.0 == 200
    })
    .await;
    // The Service is known, but its endpoints cannot be read: no endpoints, after waiting
    // for a first answer that cannot come.
    let (status, reason) = call(out, "web").await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no-endpoints")
    );
    // Having waited once, the next requests do not wait again for what cannot come.
    let start = tokio::time::Instant::now();
    assert_eq!(call(out, "web").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Counted, and said on /ready, which stays 200: everything else is served.
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"skiff_discovery_errors_total{resource="endpointslices",reason="403"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"skiff_discovery_stale{resource="endpointslices"} 1"#));
    let (status, body) = admin_get(proxy.admin_addr, "/ready").await;
    assert_eq!(status, 200);
    assert!(body.contains("serving the last known state"), "{body}");
    assert_eq!(call(out, "pinned").await, (StatusCode::OK, "pinned".into()));
    // Granted: the retrying watch lists, and the service answers.
    api.allow_all();
    eventually(Duration::from_secs(30), "served once allowed", || async {
        call(out, "web").await == (StatusCode::OK, "a".into())
    })
    .await;
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"skiff_discovery_stale{resource="endpointslices"} 0"#));
    assert!(metrics.contains(r#"skiff_discovery_watches{resource="services"} 1"#));
}

fn http_route(name: &str, parent: &str, backends: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop", "generation": 3,
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
            "rules": [{"backendRefs": backends}]
        },
        // What an API server or a controller adds: read leniently.
        "status": {"parents": []}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_the_api_split_traffic_and_a_bad_one_is_refused_alone() {
    let api = api().await;
    let pods = pods(&["apex", "v1", "v2"]).await;
    for (name, ip, pod) in [
        ("web", "10.96.1.1", 0),
        ("web-v1", "10.96.1.2", 1),
        ("web-v2", "10.96.1.3", 2),
    ] {
        api.apply(service(name, 80, ip));
        api.apply(slice(name, &format!("{name}-1"), &[pods[pod].1]));
    }
    let proxy = proxy(&api, "discovery-routes").await;
    let out = proxy.outbound_addr;
    eventually(Duration::from_secs(10), "the apex answers", || async {
        call(out, "web").await.1 == "apex"
    })
    .await;

    // A 90/10 split, with a field this version does not know (ignored, counted).
    let mut route = http_route(
        "web-split",
        "web",
        json!([{"name": "web-v1", "port": 80, "weight": 90}, {"name": "web-v2", "port": 80, "weight": 10}]),
    );
    route["spec"]["rules"][0]["sessionPersistence"] = json!({"sessionName": "x"});
    api.apply(route);
    // And one Skiff cannot honour (its parent does not exist): refused alone.
    api.apply(http_route(
        "orphan",
        "nothere",
        json!([{"name": "web-v1", "port": 80}]),
    ));
    eventually(Duration::from_secs(10), "the split applies", || async {
        call(out, "web").await.1 != "apex"
    })
    .await;
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..200 {
        match call(out, "web").await.1.as_str() {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // 10% of 200 is 20; 3 and 45 are more than four standard deviations away.
    assert!(v2 > 3 && v2 < 45 && v1 > v2, "v1 {v1}, v2 {v2}");
    let (_, config) = admin_get(proxy.admin_addr, "/config").await;
    assert!(config.contains("HTTPRoute shop/orphan"), "{config}");
    assert!(config.contains("nothere"), "{config}");
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("skiff_discovery_refused_objects_total 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("skiff_discovery_ignored_fields_total 0"),
        "{metrics}"
    );

    // Deleting the route restores the default: the apex's own endpoints.
    api.delete(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "shop",
        "web-split",
    );
    eventually(Duration::from_secs(10), "the default again", || async {
        call(out, "web").await.1 == "apex"
    })
    .await;
}

/// A proxy as `shop/sa` with discovery from `api`, and with `more` in its spec.
async fn meshed_proxy(
    ca: &proxy_tls::devca::DevCa,
    api: &FakeApi,
    sa: &str,
    app_port: u16,
) -> Running {
    use skiff_e2e::mesh::{credentials, identity};
    let dir = credentials(ca, "shop", sa);
    ProxyConfig::new(app_port)
        .spec(identity(&dir, "shop", sa))
        .spec(json!({
            "namespace": "shop",
            "discovery": {"kubernetes": {"kubeconfig": kubeconfig(api, &format!("discovery-{sa}"))}}
        }))
        .start()
        .await
}

/// The `api` Service, whose one endpoint is `b`'s mTLS port on a Pod that skiff inject
/// marked, running as service account `api`.
fn api_service_in_front_of(api: &FakeApi, b: &Running) {
    api.apply(service("api", 80, "10.96.2.1"));
    let mut s = slice("api", "api-1", &[b.inbound_addr]);
    s["endpoints"][0]["targetRef"] = json!({"kind": "Pod", "name": "api-0", "namespace": "shop"});
    api.apply(s);
    api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api-0", "namespace": "shop",
                     "annotations": {"skiff.dev/injected": "true"}},
        "spec": {"serviceAccountName": "api", "containers": []}
    }));
}

/// A TrafficTarget letting `source` call shop/api on HTTPRouteGroup `group`'s `all`.
fn target(name: &str, source: &str, group: &str) -> Value {
    json!({
        "apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "destination": {"kind": "ServiceAccount", "name": "api", "namespace": "shop"},
            "rules": [{"kind": "HTTPRouteGroup", "name": group, "matches": ["all"]}],
            "sources": [{"kind": "ServiceAccount", "name": source, "namespace": "shop"}]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_stays_closed_until_every_access_kind_is_listed_and_while_a_target_is_refused() {
    let ca = proxy_tls::devca::DevCa::new("cluster.local").unwrap();
    let api = api().await;
    let app = hello("api").await;
    // TrafficTargets cannot be listed yet: B does not know who may call it.
    api.deny("traffictargets.access.smi-spec.io", &["list", "watch"]);
    let b = meshed_proxy(&ca, &api, "api", app.addr.port()).await;
    api_service_in_front_of(&api, &b);
    let web = meshed_proxy(&ca, &api, "web", 1).await;
    eventually(Duration::from_secs(10), "B refuses web", || async {
        call(web.outbound_addr, "api").await == (StatusCode::FORBIDDEN, "forbidden".into())
    })
    .await;
    let (status, body) = admin_get(b.admin_addr, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("route and access documents"), "{body}");
    let rsp = h1(web.outbound_addr)
        .await
        .send_request(get("api", "/"))
        .await
        .unwrap();
    let body = body_text(rsp).await;
    assert!(
        body.contains("not read from the Kubernetes API yet"),
        "{body}"
    );

    // Listed, with none naming B: everyone may call, and B is ready.
    api.allow_all();
    eventually(
        Duration::from_secs(30),
        "web let in once listed",
        || async { call(web.outbound_addr, "api").await == (StatusCode::OK, "api".into()) },
    )
    .await;
    eventually(Duration::from_secs(10), "B ready", || async {
        admin_get(b.admin_addr, "/ready").await.0 == 200
    })
    .await;

    // The only TrafficTarget naming B is refused (its HTTPRouteGroup does not exist): B
    // cannot know what it allows, so it allows nobody rather than everybody.
    api.apply(target("db-only", "db", "missing-group"));
    eventually(Duration::from_secs(10), "refused, and closed", || async {
        let (_, config) = admin_get(b.admin_addr, "/config").await;
        config.contains("TrafficTarget shop/db-only")
            && call(web.outbound_addr, "api").await == (StatusCode::FORBIDDEN, "forbidden".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_pods_are_called_over_mtls_and_traffic_targets_from_the_api_apply() {
    let ca = proxy_tls::devca::DevCa::new("cluster.local").unwrap();
    let api = api().await;
    let app = hello("api").await;
    // B: shop/api's proxy, reading its TrafficTargets from the API.
    let b = meshed_proxy(&ca, &api, "api", app.addr.port()).await;
    api_service_in_front_of(&api, &b);
    let web = meshed_proxy(&ca, &api, "web", 1).await;
    let db = meshed_proxy(&ca, &api, "db", 1).await;
    let status = |proxy: SocketAddr| async move { call(proxy, "api").await };

    // Over mTLS with the Pod's identity: B sees the caller's SPIFFE ID.
    eventually(Duration::from_secs(10), "web reaches api", || async {
        status(web.outbound_addr).await == (StatusCode::OK, "api".into())
    })
    .await;
    let (_, metrics) = admin_get(b.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"client_id="spiffe://cluster.local/ns/shop/sa/web""#),
        "{metrics}"
    );

    // A TrafficTarget from the API lets only db call: web gets 403 from B.
    api.apply(json!({
        "apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
        "metadata": {"name": "api-routes", "namespace": "shop"},
        "spec": {"matches": [{"name": "all", "pathRegex": ".*", "methods": ["*"]}]}
    }));
    api.apply(target("db-only", "db", "api-routes"));
    eventually(Duration::from_secs(10), "web forbidden", || async {
        status(web.outbound_addr).await == (StatusCode::FORBIDDEN, "forbidden".into())
    })
    .await;
    eventually(Duration::from_secs(10), "db allowed", || async {
        status(db.outbound_addr).await == (StatusCode::OK, "api".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_service_stops_being_watched_and_is_watched_again_when_called() {
    let api = api().await;
    let pods = pods(&["a"]).await;
    api.apply(service("web", 80, "10.96.3.1"));
    api.apply(slice("web", "web-1", &[pods[0].1]));
    let proxy = ProxyConfig::new(1)
        .spec(json!({
            "namespace": "shop",
            "discovery": {"kubernetes": {
                "kubeconfig": kubeconfig(&api, "discovery-idle"),
                "endpointsIdleTimeout": "1s"
            }}
        }))
        .start()
        .await;
    let out = proxy.outbound_addr;
    let slice_watches = || {
        api.watches()
            .iter()
            .filter(|w| w.open && w.resource.starts_with("endpointslices"))
            .count()
    };
    eventually(Duration::from_secs(10), "served", || async {
        call(out, "web").await.1 == "a"
    })
    .await;
    // (The watch opens right after the list that answered the request.)
    eventually(Duration::from_secs(10), "watched while in use", || async {
        slice_watches() == 1
    })
    .await;
    // Unused for the idle timeout: the watch goes.
    eventually(Duration::from_secs(10), "the idle watch closed", || async {
        slice_watches() == 0
    })
    .await;
    // Called again: watched again, and the first request waits for the answer.
    assert_eq!(call(out, "web").await, (StatusCode::OK, "a".into()));
    eventually(Duration::from_secs(10), "watched again", || async {
        slice_watches() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_whose_pod_cannot_be_read_is_not_called_until_it_can_be() {
    let api = api().await;
    let pods = pods(&["a"]).await;
    api.apply(service("web", 80, "10.96.3.2"));
    let mut s = slice("web", "web-1", &[pods[0].1]);
    s["endpoints"][0]["targetRef"] = json!({"kind": "Pod", "name": "web-0", "namespace": "shop"});
    api.apply(s);
    api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop"},
        "spec": {"serviceAccountName": "web", "containers": []}
    }));
    // Whether web-0 runs Skiff (and expects mTLS) cannot be known: it is not called in
    // plaintext meanwhile.
    api.deny("pods", &["get"]);
    let proxy = proxy(&api, "discovery-pod-403").await;
    let out = proxy.outbound_addr;
    eventually(Duration::from_secs(10), "listed", || async {
        admin_get(proxy.admin_addr, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(
        call(out, "web").await,
        (StatusCode::SERVICE_UNAVAILABLE, "no-endpoints".into())
    );
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"skiff_discovery_errors_total{resource="pods",reason="403"}"#),
        "{metrics}"
    );
    // Readable again: the read is retried without any change to the slice.
    api.allow_all();
    eventually(
        Duration::from_secs(20),
        "called once its Pod is read",
        || async { call(out, "web").await == (StatusCode::OK, "a".into()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_watch_that_stops_is_no_longer_counted_stale() {
    let api = api().await;
    api.apply(service("web", 80, "10.96.3.3"));
    api.deny("endpointslices.discovery.k8s.io", &["list", "watch"]);
    let proxy = ProxyConfig::new(1)
        .spec(json!({
            "namespace": "shop",
            "discovery": {"kubernetes": {
                "kubeconfig": kubeconfig(&api, "discovery-stale-stop"),
                "endpointsIdleTimeout": "1s"
            }}
        }))
        .start()
        .await;
    let stale = || async {
        let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
        metrics.contains(r#"skiff_discovery_stale{resource="endpointslices"} 1"#)
    };
    eventually(Duration::from_secs(10), "listed", || async {
        admin_get(proxy.admin_addr, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(call(proxy.outbound_addr, "web").await.0, 503);
    assert!(stale().await, "the failing watch is stale");
    // Unused, the watch stops: nothing is stale any more, and /ready says so.
    eventually(
        Duration::from_secs(10),
        "not stale once stopped",
        || async { !stale().await },
    )
    .await;
    let (status, body) = admin_get(proxy.admin_addr, "/ready").await;
    assert_eq!(status, 200);
    assert!(!body.contains("last known state"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_smi_versions_and_linkerds_httproutes_apply_from_the_api() {
    // As with Linkerd's SMI extension: TrafficSplit served in v1alpha1 and v1alpha2 only.
    let api = FakeApi::builder()
        .token(TOKEN)
        .unserve("split.smi-spec.io/v1alpha4")
        .unserve("split.smi-spec.io/v1alpha3")
        .start()
        .await;
    let pods = pods(&["apex", "v1", "v2"]).await;
    for (name, ip, pod) in [
        ("web", "10.96.4.1", 0),
        ("web-v1", "10.96.4.2", 1),
        ("web-v2", "10.96.4.3", 2),
    ] {
        api.apply(service(name, 80, ip));
        api.apply(slice(name, &format!("{name}-1"), &[pods[pod].1]));
    }
    let proxy = proxy(&api, "discovery-versions").await;
    let out = proxy.outbound_addr;
    eventually(Duration::from_secs(10), "the apex answers", || async {
        call(out, "web").await.1 == "apex"
    })
    .await;
    // Skiff reads the preferred of the versions served, v1alpha2. A split written as
    // v1alpha1 reads back through it unconverted: quantity weights, a qualified name.
    api.apply(json!({
        "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
        "metadata": {"name": "canary", "namespace": "shop"},
        "spec": {"service": "web.shop.svc.cluster.local", "backends": [
            {"service": "web-v1", "weight": "0m"},
            {"service": "web-v2", "weight": 1}
        ]}
    }));
    eventually(Duration::from_secs(10), "the split applies", || async {
        call(out, "web").await.1 == "v2"
    })
    .await;
    assert!(api
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/apis/split.smi-spec.io/v1alpha2/")));
    api.delete(
        "split.smi-spec.io/v1alpha2",
        "TrafficSplit",
        "shop",
        "canary",
    );
    // Linkerd's own HTTPRoute kind, parented by the Service.
    api.apply(json!({
        "apiVersion": "policy.linkerd.io/v1beta3", "kind": "HTTPRoute",
        "metadata": {"name": "to-v1", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "core", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}]}]}
    }));
    eventually(
        Duration::from_secs(10),
        "Linkerd's HTTPRoute applies",
        || async { call(out, "web").await.1 == "v1" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_is_read_in_the_first_version_that_serves_it() {
    // As Gateway API v1.0: HTTPRoute in v1, GRPCRoute only in v1alpha2.
    let api = FakeApi::builder()
        .token(TOKEN)
        .unserve_kind("gateway.networking.k8s.io/v1", "GRPCRoute")
        .start()
        .await;
    let pods = pods(&["apex", "v2"]).await;
    for (name, ip, pod) in [("web", "10.96.5.1", 0), ("web-v2", "10.96.5.2", 1)] {
        api.apply(service(name, 80, ip));
        api.apply(slice(name, &format!("{name}-1"), &[pods[pod].1]));
    }
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "GRPCRoute",
        "metadata": {"name": "echo", "namespace": "shop"},
        "spec": {"parentRefs": [{"kind": "Service", "name": "web", "port": 80}],
                 "rules": [{"matches": [{"method": {"service": "echo.Echo"}}],
                            "backendRefs": [{"name": "web-v2", "port": 80}]}]}
    }));
    let proxy = proxy(&api, "discovery-grpc-version").await;
    let out = proxy.outbound_addr;
    eventually(
        Duration::from_secs(10),
        "the v1alpha2 GRPCRoute applies",
        || async {
            let rsp = h1(out)
                .await
                .send_request(get("web", "/echo.Echo/Say"))
                .await
                .unwrap();
            body_text(rsp).await == "v2"
        },
    )
    .await;
}
