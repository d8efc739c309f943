//! The objects the fake API server's tests store, shared by `fake_api.rs` and
//! `fake_api_kubectl.rs`: two test targets (the kubectl one has its own harness), so the
//! helpers live here and each includes this file by `#[path]`.

use serde_json::{json, Value};

/// A Service `name` in `namespace`, labelled `app: name`, on port 80.
pub(crate) fn service(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"ports": [{"port": 80}]},
    })
}

/// An EndpointSlice `name` in `shop` for `service`, with one IPv4 endpoint.
pub(crate) fn slice(name: &str, service: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}],
    })
}
