//! Gateway API mesh (GAMMA) behaviours through the real proxy that the mesh conformance
//! suite checks beyond matching, weights and filters: consumer routes, which apply to the
//! callers in their own namespace and replace the producer's routes for them, and routes
//! per port of one Service.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use skiff_e2e::fake_api::FakeApi;
use skiff_e2e::*;

/// An HTTPRoute in `ns` on Service backend/api, sending to backend/`to`.
fn route(ns: &str, name: &str, to: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "api", "namespace": "backend", "port": 80}],
            "rules": [{"backendRefs": [{"name": to, "namespace": "backend", "port": 80}]}],
        },
    })
}

async fn body(outbound: SocketAddr, host: &str) -> String {
    let rsp = h1(outbound)
        .await
        .send_request(get(host, "/"))
        .await
        .unwrap();
    body_text(rsp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_route_applies_to_its_namespace_only_and_replaces_the_producers() {
    let (v1, v2, v3) = (hello("v1").await, hello("v2").await, hello("v3").await);
    // The same documents for a caller in `shop` and one in `other`.
    let caller = |ns: &'static str| {
        let (v1, v2, v3) = (v1.addr, v2.addr, v3.addr);
        async move {
            let in_backend = json!({"namespace": "backend"});
            ProxyConfig::new(1)
                .spec(json!({"namespace": ns}))
                .service_with("api", &[v1], in_backend.clone())
                .service_with("api-v2", &[v2], in_backend.clone())
                .service_with("api-v3", &[v3], in_backend)
                .document(route("backend", "producer", "api-v2"))
                .document(route("shop", "consumer", "api-v3"))
                .start()
                .await
        }
    };
    let (shop, other) = (caller("shop").await, caller("other").await);
    let host = "api.backend.svc.cluster.local";
    assert_eq!(
        body(shop.outbound_addr, host).await,
        "v3",
        "shop's own route"
    );
    assert_eq!(
        body(other.outbound_addr, host).await,
        "v2",
        "the producer's route"
    );
}

const TOKEN: &str = "gamma-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ports_of_one_service_take_their_own_routes() {
    let api = FakeApi::builder().token(TOKEN).start().await;
    let (http, admin) = (hello("http").await, hello("admin").await);
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.9.1", "clusterIPs": ["10.96.9.1"], "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 8080, "targetPort": "admin"}
        ]}
    }));
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": http.addr.port(), "protocol": "TCP"},
                  {"name": "admin", "port": admin.addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]
    }));
    // A route on port 8080 only, marking its responses.
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "admin-only", "namespace": "shop"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 8080}],
            "rules": [{"filters": [{"type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"set": [{"name": "x-route", "value": "admin-only"}]}}]}]
        }
    }));
    let proxy = ProxyConfig::new(1)
        .spec(json!({
            "namespace": "shop",
            "discovery": {"kubernetes": {"kubeconfig": api.kubeconfig(TOKEN, "gamma-ports")}}
        }))
        .start()
        .await;
    let out = proxy.outbound_addr;
    let call = |host: &'static str| async move {
        let rsp = h1(out).await.send_request(get(host, "/")).await.unwrap();
        let route = rsp
            .headers()
            .get("x-route")
            .map(|v| v.to_str().unwrap().to_owned());
        (body_text(rsp).await, route)
    };
    eventually(Duration::from_secs(10), "port 8080 routed", || async {
        call("web:8080").await == ("admin".into(), Some("admin-only".into()))
    })
    .await;
    assert_eq!(call("web:80").await, ("http".into(), None));
    assert_eq!(
        call("web").await,
        ("http".into(), None),
        "port 80 by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkerds_retry_and_timeout_annotations_on_a_route_are_honoured() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // Fails twice, then answers.
    let tries = Arc::new(AtomicUsize::new(0));
    let counted = tries.clone();
    let flaky = backend(move |_req| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut rsp = ok("ok");
            if n < 2 {
                *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            rsp
        }
    })
    .await;
    let slow = backend(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        ok("late")
    })
    .await;
    let annotated = |name: &str, annotations: Value| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"parentRefs": [{"kind": "Service", "name": name, "port": 80}]}
        })
    };
    let proxy = ProxyConfig::new(1)
        .service("flaky", &[flaky.addr])
        .service("slow", &[slow.addr])
        .document(annotated(
            "flaky",
            json!({"retry.linkerd.io/http": "5xx", "retry.linkerd.io/limit": "2"}),
        ))
        .document(annotated(
            "slow",
            json!({"timeout.linkerd.io/request": "200ms"}),
        ))
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    let rsp = c.send_request(get("flaky", "/")).await.unwrap();
    assert_eq!(rsp.status(), 200, "two retries after the first try");
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    body_text(rsp).await;
    let rsp = c.send_request(get("slow", "/")).await.unwrap();
    assert_eq!(rsp.status(), 504);
    assert_eq!(rsp.headers()["skiff-error"], "request-timeout");
}
