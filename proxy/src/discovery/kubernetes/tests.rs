//! The mapping from Kubernetes objects to Skiff's model, on synthetic objects.

use serde_json::json;

use super::model::{endpoints, pod_info, service_table, services};
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::config::EndpointSource;

/// The addresses that take new requests.
fn addresses<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: Option<&str>,
) -> Vec<SocketAddr> {
    endpoints(slices, port_name)
        .into_iter()
        .map(|e| e.addr)
        .collect()
}

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).expect("a Service")
}

fn slice(value: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(value).expect("an EndpointSlice")
}

fn web() -> Service {
    service(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http-alt"},
                {"name": "admin", "port": 9090, "targetPort": 9091},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]
        }
    }))
}

#[test]
fn a_service_with_two_tcp_ports_is_two_services_with_both_cluster_ips() {
    let table: BTreeMap<String, ServiceSpec> = services(&web()).into_iter().collect();
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        ["web.shop:80", "web.shop:9090"],
        "the UDP port is left out"
    );
    let http = &table["web.shop:80"];
    assert_eq!(http.name.as_deref(), Some("web"));
    assert_eq!(http.namespace.as_deref(), Some("shop"));
    assert_eq!(http.port, 80);
    assert_eq!(
        http.cluster_ips,
        [
            "10.96.0.10".parse::<IpAddr>().unwrap(),
            "fd00::10".parse().unwrap()
        ]
    );
    assert_eq!(
        http.endpoints,
        EndpointSource::Kubernetes {
            namespace: "shop".into(),
            service: "web".into(),
            port_name: Some("http".into()),
        }
    );
}

#[test]
fn headless_external_name_and_filtered_namespaces() {
    let headless = service(json!({
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
    }));
    let external = service(json!({
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "api.example.com", "ports": [{"port": 443}]}
    }));
    let elsewhere = service(json!({
        "metadata": {"name": "web", "namespace": "other"},
        "spec": {"ports": [{"port": 80}]}
    }));
    let all = [headless, external, elsewhere];
    let table = service_table(&all, &["shop".to_owned()]);
    assert_eq!(table.keys().collect::<Vec<_>>(), ["db.shop:5432"]);
    let db = &table["db.shop:5432"];
    assert!(
        db.cluster_ips.is_empty(),
        "a headless Service has no virtual IP"
    );
    assert_eq!(
        db.endpoints,
        EndpointSource::Kubernetes {
            namespace: "shop".into(),
            service: "db".into(),
            port_name: None,
        }
    );
    assert_eq!(
        service_table(&all, &[]).len(),
        2,
        "every namespace when none is listed"
    );
}

#[test]
fn endpoints_from_several_slices_both_families_and_named_ports() {
    let v4 = slice(json!({
        "metadata": {"name": "web-abc", "namespace": "shop"},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9091}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2"]},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.0.0.4"], "conditions": {"ready": false}}
        ]
    }));
    let v4_more = slice(json!({
        "metadata": {"name": "web-def", "namespace": "shop"},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}}]
    }));
    let v6 = slice(json!({
        "metadata": {"name": "web-v6", "namespace": "shop"},
        "addressType": "IPv6",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["fd00::1"], "conditions": {"ready": true}}]
    }));
    let fqdn = slice(json!({
        "metadata": {"name": "web-fqdn", "namespace": "shop"},
        "addressType": "FQDN",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["web.example.com"]}]
    }));
    let slices = [v4, v4_more, v6, fqdn];
    let http: Vec<String> = addresses(&slices, Some("http"))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        http,
        [
            "10.0.0.1:8080",
            "10.0.0.2:8080",
            "10.0.0.5:8080",
            "[fd00::1]:8080"
        ],
        "ready (or unset) only; terminating and not-ready ones take no new requests"
    );
    let admin = addresses(&slices, Some("admin"));
    assert_eq!(
        admin.len(),
        2,
        "the admin port's number comes from its own slice port"
    );
    assert!(admin.iter().all(|a| a.port() == 9091));
    assert!(addresses(&slices, Some("grpc")).is_empty(), "no such port");
}

#[test]
fn an_unnamed_port_matches_the_slice_port_without_a_name() {
    let s = slice(json!({
        "metadata": {"name": "db-1", "namespace": "shop"},
        "addressType": "IPv4",
        "ports": [{"port": 5432, "protocol": "TCP", "name": ""}],
        "endpoints": [{"addresses": ["10.0.1.1"]}]
    }));
    assert_eq!(
        addresses([&s], None),
        ["10.0.1.1:5432".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn endpoints_carry_their_pod_and_zone() {
    let s = slice(json!({
        "metadata": {"name": "web-1", "namespace": "shop"},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "zone": "eu-1a", "targetRef": {"kind": "Pod", "name": "web-7d4-abcde", "namespace": "shop"}},
            {"addresses": ["10.0.0.9"]}
        ]
    }));
    let all = endpoints([&s], Some("http"));
    assert_eq!(all[0].pod.as_deref(), Some("web-7d4-abcde"));
    assert_eq!(all[0].zone.as_deref(), Some("eu-1a"));
    assert_eq!(all[1].pod, None, "a slice written by hand may name no Pod");
}

#[test]
fn pods_give_their_account_owner_and_whether_skiff_runs_beside_them() {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "web-7d4f9-abcde", "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d4f9"},
            "annotations": {"skiff.dev/injected": "true", "skiff.dev/inbound-port": "4143"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4f9", "uid": "u1", "controller": true}]
        },
        "spec": {"serviceAccountName": "web", "containers": []}
    }))
    .unwrap();
    let info = pod_info(&pod);
    assert_eq!(info.service_account, "web");
    assert!(info.meshed);
    assert_eq!(info.owner, Some(("Deployment".into(), "web".into())));
    assert_eq!(
        info.inbound_port,
        Some(4143),
        "explicit mode: its Skiff's port"
    );

    let bare: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "db-0", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u2", "controller": true}]},
        "spec": {"containers": []}
    }))
    .unwrap();
    let info = pod_info(&bare);
    assert_eq!(
        info.service_account, "default",
        "a Pod without one runs as `default`"
    );
    assert!(!info.meshed, "not injected: called in plaintext");
    assert_eq!(info.owner, Some(("StatefulSet".into(), "db".into())));
}

/// The `deploy/` example is consistent: its Proxy document writes no services, and the
/// routes and access rules of its mesh.yaml join, with nothing refused, the services its
/// app.yaml's Services become.
#[test]
fn the_deploy_example_needs_no_services_table() {
    let config_map: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(include_str!("../../../../deploy/example/skiff-config.yaml"))
            .unwrap();
    let text = config_map["data"]["skiff.yaml"].as_str().unwrap();
    let mut spec = crate::config::parse(text, None).unwrap().proxy;
    assert!(spec.services.is_empty());
    assert!(spec.discovery.kubernetes.is_some());

    let docs = |text: &str| -> Vec<serde_json::Value> {
        serde_yaml_ng::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    };
    let services: Vec<Service> = docs(include_str!("../../../../deploy/example/app.yaml"))
        .into_iter()
        .filter(|d| d["kind"] == "Service")
        .map(service)
        .collect();
    spec.services = service_table(&services, &[]);
    // Access rules are joined for the proxy they name; routes are what is checked here.
    spec.identity = None;
    let objects: Vec<crate::config::api::ApiObject> =
        docs(include_str!("../../../../deploy/example/mesh.yaml"))
            .into_iter()
            .map(|value| crate::config::api::ApiObject {
                kind: value["kind"].as_str().unwrap().to_owned(),
                namespace: value["metadata"]["namespace"].as_str().unwrap().to_owned(),
                name: value["metadata"]["name"].as_str().unwrap().to_owned(),
                value,
            })
            .collect();
    let joined = crate::config::api::join(&[], &spec, &objects).unwrap();
    assert!(joined.refused.is_empty(), "{:?}", joined.refused);
    let canary = &joined.routes["api.skiff-demo:80"].routes[0];
    assert_eq!(canary.name, "api-canary");
    let backends: Vec<Option<&str>> = canary
        .backends
        .iter()
        .map(|b| b.service.as_deref())
        .collect();
    assert_eq!(
        backends,
        [
            Some("api-v1.skiff-demo:4143"),
            Some("api-v2.skiff-demo:4143")
        ]
    );
}
