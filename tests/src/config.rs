//! The proxy's config for a test, built as a typed tree instead of text.
//!
//! Skiff's config is YAML, where indentation is structure: a fragment pasted at the wrong
//! depth still parses, as something else (a service setting two spaces short lands under
//! `services` as a service of its own, or under `spec`). Here every fragment is a
//! [`serde_json::Value`] written with `json!` and handed to the method for the place it
//! belongs (a service, `spec`, `inbound`, another document), which merges it there; the tree
//! becomes YAML text only when the proxy is started or the file written.

use std::net::SocketAddr;

use serde_json::{json, Map, Value};
use skiff::Running;

/// How to start a proxy for a test: the `kind: Proxy` document, with its three listeners on
/// `127.0.0.1:0`, and the documents that follow it (routes, splits, access policies).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    proxy: Value,
    documents: Vec<Value>,
}

impl ProxyConfig {
    /// A config whose inbound app is `app_port`, with no services.
    pub fn new(app_port: u16) -> Self {
        Self {
            proxy: json!({
                "apiVersion": "skiff.dev/v1alpha1",
                "kind": "Proxy",
                "spec": {
                    "outbound": {"listen": "127.0.0.1:0", "passthrough": false},
                    "inbound": {"listen": "127.0.0.1:0", "appPort": app_port},
                    "admin": {"listen": "127.0.0.1:0"},
                },
            }),
            documents: Vec::new(),
        }
    }

    /// Adds a service with static `endpoints` (none for a DNS service).
    pub fn service(self, name: &str, endpoints: &[SocketAddr]) -> Self {
        self.service_with(name, endpoints, json!({}))
    }

    /// Adds a service with more settings, a map merged into the service's own, e.g.
    /// `json!({"retry": {"attempts": 3}})`.
    pub fn service_with(mut self, name: &str, endpoints: &[SocketAddr], settings: Value) -> Self {
        let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        let mut service = json!({ "endpoints": endpoints });
        merge(&mut service, settings, "service settings");
        let spec = self.proxy["spec"].as_object_mut().expect("spec is a map");
        let services = spec
            .entry("services")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .expect("services is a map");
        // Added twice, the second would silently merge into the first.
        assert!(
            services.insert(name.to_owned(), service).is_none(),
            "service {name} is added twice"
        );
        self
    }

    /// Merges a map into `spec`, e.g. `json!({"limits": {"maxConnections": 2}})`; maps are
    /// merged key by key at every depth, anything else replaces what was there.
    pub fn spec(mut self, more: Value) -> Self {
        merge(&mut self.proxy["spec"], more, "spec");
        self
    }

    /// Merges a map into `spec.outbound`, e.g. `json!({"passthrough": true})`.
    pub fn outbound(self, more: Value) -> Self {
        self.spec(json!({ "outbound": object(more, "outbound") }))
    }

    /// Merges a map into `spec.inbound`, e.g. `json!({"maxInFlight": 2})`.
    pub fn inbound(self, more: Value) -> Self {
        self.spec(json!({ "inbound": object(more, "inbound") }))
    }

    /// Merges a map into `spec.admin`, e.g. `json!({"allowRemote": true})`.
    pub fn admin(self, more: Value) -> Self {
        self.spec(json!({ "admin": object(more, "admin") }))
    }

    /// Appends a whole document (an HTTPRoute, TrafficSplit, TrafficTarget...) after the
    /// Proxy document, in the order added.
    pub fn document(mut self, document: Value) -> Self {
        self.documents.push(object(document, "a document"));
        self
    }

    /// The YAML text of this config: the Proxy document, then the others, each after `---`.
    pub fn yaml(&self) -> String {
        let mut text = to_yaml(&self.proxy);
        for document in &self.documents {
            text.push_str("---\n");
            text.push_str(&to_yaml(document));
        }
        text
    }

    /// Starts the proxy.
    pub async fn start(&self) -> Running {
        let config = skiff::config::parse(&self.yaml(), None).unwrap_or_else(|e| panic!("{e}"));
        skiff::start(config).await.expect("proxy starts")
    }
}

fn to_yaml(value: &Value) -> String {
    serde_yaml_ng::to_string(value).expect("a JSON tree serialises as YAML")
}

/// `value`, checked to be a map: a fragment of any other shape would replace the map it is
/// merged into rather than add to it.
fn object(value: Value, what: &str) -> Value {
    assert!(value.is_object(), "{what} must be a map, not {value}");
    value
}

/// Merges the map `from` into `into`: maps key by key at every depth, anything else
/// (scalars, lists) replacing what was there.
fn merge(into: &mut Value, from: Value, what: &str) {
    fn deep(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(into), Value::Object(from)) => {
                for (key, value) in from {
                    deep(into.entry(key).or_insert(Value::Null), value);
                }
            }
            (into, from) => *into = from,
        }
    }
    deep(into, object(from, what));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_land_where_their_method_says() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let cfg = ProxyConfig::new(8080)
            .service_with("web", &[addr], json!({"retry": {"attempts": 3}}))
            .spec(json!({"limits": {"maxConnections": 2}}))
            .spec(json!({"limits": {"detectTimeout": "1s"}}))
            .inbound(json!({"maxInFlight": 2}))
            .outbound(json!({"passthrough": true}))
            .document(json!({"kind": "HTTPRoute"}));
        let spec = &cfg.proxy["spec"];
        assert_eq!(
            spec["services"]["web"],
            json!({"endpoints": ["127.0.0.1:9000"], "retry": {"attempts": 3}})
        );
        assert_eq!(
            spec["limits"],
            json!({"maxConnections": 2, "detectTimeout": "1s"})
        );
        assert_eq!(
            spec["inbound"],
            json!({"listen": "127.0.0.1:0", "appPort": 8080, "maxInFlight": 2})
        );
        assert_eq!(spec["outbound"]["passthrough"], true);
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&cfg.yaml())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs, [cfg.proxy.clone(), json!({"kind": "HTTPRoute"})]);
    }

    #[test]
    #[should_panic(expected = "service web is added twice")]
    fn a_service_added_twice_is_a_mistake() {
        let _ = ProxyConfig::new(1).service("web", &[]).service("web", &[]);
    }
}
