//! The live state's rebuilds: every input stored before the build that reads it, and what a
//! rebuild logs and counts only when it is new.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde_json::json;

use super::*;

fn config(services: &[&str]) -> Config {
    let mut text =
        String::from("apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  services:\n");
    for name in services {
        text.push_str(&format!("    {name}: {{endpoints: [127.0.0.1:1]}}\n"));
    }
    crate::config::parse(&text, None).unwrap()
}

fn state(services: &[&str]) -> (Arc<State>, Registry) {
    let (metrics, registry) = Metrics::new();
    let state = State::new(&config(services), Arc::new(metrics)).unwrap();
    (Arc::new(state), registry)
}

/// Service `name` as discovery would give it, keyed `name.default:80`.
fn discovered(name: &str) -> BTreeMap<String, ServiceSpec> {
    let mut svc = config(&["x"]).proxy.services.remove("x").unwrap();
    svc.name = Some(name.to_owned());
    svc.namespace = Some("default".into());
    BTreeMap::from([(format!("{name}.default:80"), svc)])
}

fn routed(state: &State) -> Vec<String> {
    let mut names: Vec<String> = state
        .outbound
        .resolver
        .routes
        .load()
        .by_name
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn a_reload_is_seen_by_every_discovery_change_that_follows_it() {
    let (state, _registry) = state(&["file-0"]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Discovery changes as fast as they come, while the reloads go on.
    let discovery = {
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 1_000_000 {
                state.set_discovered(discovered(&format!("disc-{}", i % 2)));
                i += 1;
            }
        })
    };
    let mut missed = Vec::new();
    for i in 1..=1000 {
        state.apply(config(&[&format!("file-{i}")])).unwrap();
        // From here on, every build must start from this spec.
        if !routed(&state).contains(&format!("file-{i}")) {
            missed.push(i);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    discovery.join().unwrap();
    assert!(
        missed.is_empty(),
        "a discovery change rebuilt from the spec before these reloads: {missed:?}"
    );
}

fn counter(registry: &Registry, family: &str) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find(|l| l.starts_with(family))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn ignored_fields_and_refusals_are_counted_once_however_often_routes_are_rebuilt() {
    let (state, registry) = state(&["web", "web-v2"]);
    let route = |name: &str, parent: &str| ApiObject {
        kind: "HTTPRoute".into(),
        namespace: "default".into(),
        name: name.into(),
        value: json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"parentRefs": [{"kind": "Service", "name": parent}], "newStanza": {},
                     "rules": [{"backendRefs": [{"name": "web-v2"}]}]},
        }),
    };
    state.set_api_objects(vec![route("good", "web"), route("orphan", "nowhere")]);
    for i in 0..3 {
        state.set_discovered(discovered(&format!("other-{i}")));
    }
    assert_eq!(
        counter(&registry, "skiff_discovery_ignored_fields_total"),
        "skiff_discovery_ignored_fields_total 2",
        "each route's new stanza, once"
    );
    assert_eq!(
        counter(&registry, "skiff_discovery_refused_objects_total"),
        "skiff_discovery_refused_objects_total 1"
    );
    assert_eq!(state.refused().len(), 1);
}
