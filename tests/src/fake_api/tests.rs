//! Unit tests of the fake's parts that need no socket: selectors, continue tokens, the
//! store's history and snapshots. The HTTP behaviour is tested in `tests/tests/fake_api.rs`.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use super::discovery::Registry;
use super::rest::{decode_continue, encode_continue};
use super::select::{FieldSelector, LabelSelector};
use super::store::{rfc3339, EventType, Expired, PutMode, Store, WriteError};

fn labelled(labels: Value) -> Value {
    json!({"metadata": {"name": "x", "namespace": "shop", "labels": labels}})
}

#[test]
fn label_selectors_follow_the_api_servers_rules() {
    let web = labelled(json!({"app": "web", "tier": "front"}));
    let none = labelled(json!({}));
    let cases: &[(&str, bool, bool)] = &[
        ("", true, true),
        ("app=web", true, false),
        ("app==web", true, false),
        ("app!=web", false, true),
        ("app!=api", true, true),
        ("app", true, false),
        ("!app", false, true),
        ("app=web,tier=front", true, false),
        ("app=web, tier=back", false, false),
        ("app in (api,web)", true, false),
        ("app in (api)", false, false),
        ("app notin (api)", true, true),
        ("app notin (web,api),tier", false, false),
        ("kubernetes.io/service-name!=web", true, true),
    ];
    for (selector, on_web, on_none) in cases {
        let s = LabelSelector::parse(selector).unwrap();
        assert_eq!(s.matches(&web), *on_web, "{selector:?} on web");
        assert_eq!(s.matches(&none), *on_none, "{selector:?} without labels");
    }
    for bad in ["=web", "app=we b", "app in api", "a,,b"] {
        assert!(LabelSelector::parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn field_selectors_take_the_fields_the_kind_has() {
    let pod = json!({"metadata": {"name": "web-1", "namespace": "shop"},
                     "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
    let s =
        FieldSelector::parse("metadata.name=web-1,metadata.namespace==shop", "Service").unwrap();
    assert!(s.matches(&pod));
    assert!(!FieldSelector::parse("metadata.name!=web-1", "Service")
        .unwrap()
        .matches(&pod));
    let s = FieldSelector::parse("spec.nodeName=n1,status.phase=Running", "Pod").unwrap();
    assert!(s.matches(&pod));
    assert_eq!(
        FieldSelector::parse("spec.nodeName=n1", "Service").unwrap_err(),
        "field label not supported: spec.nodeName"
    );
    assert!(FieldSelector::parse("metadata.name", "Service").is_err());
}

#[test]
fn continue_tokens_round_trip_and_refuse_garbage() {
    let token = encode_continue(42, "shop", "web");
    assert_eq!(
        decode_continue(&token),
        Some((42, ("shop".into(), "web".into())))
    );
    for bad in ["", "zz", "abc", "7b7d"] {
        assert_eq!(decode_continue(bad), None, "{bad:?}");
    }
}

#[test]
fn timestamps_are_rfc3339_utc() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // a leap day
    assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29, a 400-year leap
    assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
}

fn service(name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"ports": [{"port": port}]}})
}

fn services() -> usize {
    Registry::builtin().find("", "v1", "services").unwrap()
}

#[test]
fn writes_stamp_metadata_and_no_ops_make_no_event() {
    let mut store = Store::new(10);
    let (a, event) = store
        .put(services(), true, service("a", 80), PutMode::Apply)
        .unwrap();
    assert_eq!(event, Some(EventType::Added));
    assert_eq!(a["metadata"]["resourceVersion"], "1");
    assert_eq!(a["metadata"]["generation"], 1);
    let uid = a["metadata"]["uid"].clone();
    assert!(uid.is_string());

    // The same content again: nothing happens.
    let (same, event) = store
        .put(services(), true, service("a", 80), PutMode::Apply)
        .unwrap();
    assert_eq!((event, store.resource_version()), (None, 1));
    assert_eq!(same["metadata"]["resourceVersion"], "1");

    // A changed spec: a new resourceVersion and generation; uid and creation kept.
    let (b, event) = store
        .put(services(), true, service("a", 81), PutMode::Apply)
        .unwrap();
    assert_eq!(event, Some(EventType::Modified));
    assert_eq!(b["metadata"]["resourceVersion"], "2");
    assert_eq!(b["metadata"]["generation"], 2);
    assert_eq!(b["metadata"]["uid"], uid);
    assert_eq!(
        b["metadata"]["creationTimestamp"],
        a["metadata"]["creationTimestamp"]
    );

    // A label change is a modification that keeps the generation.
    let mut labelled = service("a", 81);
    labelled["metadata"]["labels"] = json!({"app": "web"});
    let (c, _) = store
        .put(services(), true, labelled, PutMode::Apply)
        .unwrap();
    assert_eq!(c["metadata"]["generation"], 2);

    // HTTP semantics: create refuses an existing object, update a stale resourceVersion.
    assert_eq!(
        store
            .put(services(), true, service("a", 1), PutMode::Create)
            .unwrap_err(),
        WriteError::AlreadyExists
    );
    let mut stale = service("a", 1);
    stale["metadata"]["resourceVersion"] = json!("1");
    assert_eq!(
        store
            .put(services(), true, stale, PutMode::Update)
            .unwrap_err(),
        WriteError::Conflict
    );
    assert_eq!(
        store
            .put(services(), true, service("b", 1), PutMode::Update)
            .unwrap_err(),
        WriteError::NotFound
    );
    let mut nameless = service("a", 1);
    nameless["metadata"].as_object_mut().unwrap().remove("name");
    assert!(matches!(
        store.put(services(), true, nameless, PutMode::Apply),
        Err(WriteError::Invalid(_))
    ));
}

#[test]
fn namespaces_default_and_cluster_scoped_objects_have_none() {
    let registry = Registry::builtin();
    let namespaces = registry.find("", "v1", "namespaces").unwrap();
    let mut store = Store::new(10);
    let mut svc = service("a", 80);
    svc["metadata"].as_object_mut().unwrap().remove("namespace");
    let (svc, _) = store.put(services(), true, svc, PutMode::Apply).unwrap();
    assert_eq!(svc["metadata"]["namespace"], "default");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "shop", "namespace": "ignored"}});
    let (ns, _) = store.put(namespaces, false, ns, PutMode::Apply).unwrap();
    assert!(ns["metadata"].get("namespace").is_none());
}

#[test]
fn history_is_bounded_and_older_resource_versions_expire() {
    let mut store = Store::new(3);
    for port in 1..=5 {
        store
            .put(services(), true, service("a", port), PutMode::Apply)
            .unwrap();
    }
    // Events 3, 4, 5 are kept: a watch may start at 2 or later.
    assert_eq!(store.events_after(1).unwrap_err(), Expired { oldest: 2 });
    let rvs: Vec<u64> = store
        .events_after(2)
        .unwrap()
        .iter()
        .map(|e| e.rv)
        .collect();
    assert_eq!(rvs, [3, 4, 5]);
    assert!(store.events_after(5).unwrap().is_empty());

    store.compact();
    assert!(store.events_after(4).is_err());
    assert!(store.events_after(5).unwrap().is_empty());

    store.fresh_history(1000);
    assert_eq!(store.resource_version(), 1005);
    assert!(store.events_after(5).is_err());
    assert!(store.events_after(1005).unwrap().is_empty());
}

#[test]
fn snapshots_undo_later_events() {
    let mut store = Store::new(100);
    store
        .put(services(), true, service("a", 80), PutMode::Apply)
        .unwrap(); // 1
    store
        .put(services(), true, service("b", 80), PutMode::Apply)
        .unwrap(); // 2
    store
        .put(services(), true, service("a", 81), PutMode::Apply)
        .unwrap(); // 3
    store
        .remove(&(services(), "shop".into(), "b".into()))
        .unwrap(); // 4
    store
        .put(services(), true, service("c", 80), PutMode::Apply)
        .unwrap(); // 5

    let at = |rv: u64| -> Vec<(String, u64)> {
        store
            .snapshot(services(), rv)
            .unwrap()
            .iter()
            .map(|((_, name), o)| {
                (
                    name.clone(),
                    o["spec"]["ports"][0]["port"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(at(0), []);
    assert_eq!(at(2), [("a".into(), 80), ("b".into(), 80)]);
    assert_eq!(at(3), [("a".into(), 81), ("b".into(), 80)]);
    assert_eq!(at(4), [("a".into(), 81)]);
    assert_eq!(at(5), [("a".into(), 81), ("c".into(), 80)]);

    // The deletion's event carries the object's last state at the deletion's version.
    let deleted = &store.events_after(3).unwrap()[0];
    assert_eq!(deleted.kind, EventType::Deleted);
    assert_eq!(deleted.object["metadata"]["resourceVersion"], "4");
    assert_eq!(
        deleted.prev.as_ref().unwrap()["metadata"]["resourceVersion"],
        "2"
    );
}

#[test]
fn discovery_lists_every_group_with_its_preferred_version_first() {
    let registry = Registry::builtin();
    let groups = registry.group_list();
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "discovery.k8s.io",
            "gateway.networking.k8s.io",
            "split.smi-spec.io",
            "specs.smi-spec.io",
            "access.smi-spec.io",
            "policy.linkerd.io"
        ]
    );
    let gateway = registry.group("gateway.networking.k8s.io").unwrap();
    assert_eq!(gateway["preferredVersion"]["version"], "v1");
    let versions: Vec<&str> = gateway["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v1beta1", "v1alpha2"]);
    let v1 = registry
        .resource_list("gateway.networking.k8s.io", "v1")
        .unwrap();
    assert_eq!(v1["resources"].as_array().unwrap().len(), 2);
    let alpha2 = registry
        .resource_list("gateway.networking.k8s.io", "v1alpha2")
        .unwrap();
    assert_eq!(alpha2["resources"][0]["kind"], "GRPCRoute");
    let core = registry.resource_list("", "v1").unwrap();
    assert_eq!(core["groupVersion"], "v1");
    assert_eq!(core["resources"][0]["shortNames"], json!(["svc"]));
    assert!(registry.resource_list("apps", "v1").is_none());
    assert_eq!(
        registry.find_kind("split.smi-spec.io/v1alpha2", "TrafficSplit"),
        registry.find("split.smi-spec.io", "v1alpha2", "trafficsplits")
    );
}
