//! Joining the API's objects with the file's: leniency, refusals one at a time, ports,
//! consumer routes and failing closed.

use serde_json::json;

use super::*;

fn spec() -> ProxySpec {
    let text = "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  namespace: shop\n  services:\n    web: {endpoints: [127.0.0.1:1]}\n    web-v2: {endpoints: [127.0.0.1:2]}\n";
    crate::config::parse(text, None).unwrap().proxy
}

fn object(kind: &str, name: &str, value: serde_json::Value) -> ApiObject {
    ApiObject {
        kind: kind.into(),
        namespace: "shop".into(),
        name: name.into(),
        value,
    }
}

fn route(name: &str, parent: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop", "uid": "u", "managedFields": []},
        "spec": {"parentRefs": [{"kind": "Service", "name": parent}],
                 "rules": [{"backendRefs": [{"name": "web-v2"}]}]},
        "status": {}
    })
}

/// `web` and `web-v2` as discovered, each with ports 80 and 9090.
fn multi_port_spec() -> ProxySpec {
    let mut spec = spec();
    let template = spec.services.remove("web").unwrap();
    spec.services.clear();
    for name in ["web", "web-v2"] {
        for port in [80, 9090] {
            let mut svc = template.clone();
            svc.name = Some(name.into());
            svc.namespace = Some("shop".into());
            svc.port = port;
            svc.endpoints = crate::config::EndpointSource::Kubernetes {
                namespace: "shop".into(),
                service: name.into(),
                port_name: Some(if port == 80 { "http" } else { "metrics" }.into()),
            };
            spec.services.insert(format!("{name}.shop:{port}"), svc);
        }
    }
    spec
}

fn backends_of(joined: &Joined, key: &str) -> Vec<Option<String>> {
    joined.routes[key].routes[0]
        .backends
        .iter()
        .map(|b| b.service.clone())
        .collect()
}

#[test]
fn a_route_on_one_port_of_a_multi_port_service_attaches_to_that_port_only() {
    let mut value = route("r", "web");
    value["spec"]["parentRefs"][0]["port"] = json!(9090);
    value["spec"]["rules"][0]["backendRefs"][0]["port"] = json!(9090);
    let joined = join(&[], &multi_port_spec(), &[object("HTTPRoute", "r", value)]).unwrap();
    assert!(joined.refused.is_empty(), "{:?}", joined.refused);
    let keys: Vec<&String> = joined.routes.keys().collect();
    assert_eq!(keys, ["web.shop:9090"]);
    assert_eq!(
        backends_of(&joined, "web.shop:9090"),
        [Some("web-v2.shop:9090".to_owned())]
    );
    // Another route on the other port is no conflict.
    let mut other = route("other", "web");
    other["spec"]["parentRefs"][0]["port"] = json!(80);
    let mut first = route("r", "web");
    first["spec"]["parentRefs"][0]["port"] = json!(9090);
    let objects = [
        object("HTTPRoute", "r", first),
        object("HTTPRoute", "other", other),
    ];
    let joined = join(&[], &multi_port_spec(), &objects).unwrap();
    assert!(joined.refused.is_empty(), "{:?}", joined.refused);
    assert_eq!(joined.routes["web.shop:80"].routes[0].name, "other");
    assert_eq!(joined.routes["web.shop:9090"].routes[0].name, "r");
}

#[test]
fn routes_without_ports_attach_to_every_port_with_backends_on_the_same_port() {
    let split = json!({
        "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "s", "namespace": "shop"},
        "spec": {"service": "web", "backends": [{"service": "web-v2", "weight": 1}]}
    });
    for (kind, value) in [("HTTPRoute", route("r", "web")), ("TrafficSplit", split)] {
        let joined = join(&[], &multi_port_spec(), &[object(kind, "r", value)]).unwrap();
        assert!(joined.refused.is_empty(), "{kind}: {:?}", joined.refused);
        for port in [80, 9090] {
            assert_eq!(
                backends_of(&joined, &format!("web.shop:{port}")),
                [Some(format!("web-v2.shop:{port}"))],
                "{kind} on port {port}"
            );
        }
    }
    // A sectionName is a port's name.
    let mut by_name = route("r", "web");
    by_name["spec"]["parentRefs"][0]["sectionName"] = json!("metrics");
    let joined = join(
        &[],
        &multi_port_spec(),
        &[object("HTTPRoute", "r", by_name)],
    )
    .unwrap();
    let keys: Vec<&String> = joined.routes.keys().collect();
    assert_eq!(keys, ["web.shop:9090"]);
    let mut nowhere = route("r", "web");
    nowhere["spec"]["parentRefs"][0]["port"] = json!(7);
    let joined = join(
        &[],
        &multi_port_spec(),
        &[object("HTTPRoute", "r", nowhere)],
    )
    .unwrap();
    assert!(
        joined.refused[0].reason.contains("on port 7"),
        "{:?}",
        joined.refused
    );
}

fn target(name: &str, destination: &str, group: &str) -> ApiObject {
    object(
        "TrafficTarget",
        name,
        json!({
            "apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"destination": {"kind": "ServiceAccount", "name": destination},
                     "rules": [{"kind": "HTTPRouteGroup", "name": group}],
                     "sources": [{"kind": "ServiceAccount", "name": "web"}]}
        }),
    )
}

#[test]
fn a_refused_traffic_target_naming_this_proxy_closes_it_rather_than_opening_it() {
    let text = "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  namespace: shop\n  identity: {dir: /nonexistent, serviceAccount: api}\n  services:\n    web: {endpoints: [127.0.0.1:1]}\n";
    let spec = crate::config::parse(text, None).unwrap().proxy;
    // Its HTTPRouteGroup does not exist: refused, so its rules are unknown.
    let joined = join(&[], &spec, &[target("t", "api", "missing")]).unwrap();
    assert_eq!(joined.refused.len(), 1, "{:?}", joined.refused);
    assert_eq!(
        joined.access.rules.as_deref().map(<[_]>::len),
        Some(0),
        "restricted to nothing, not open to all"
    );
    // One naming another workload leaves this one unrestricted.
    let joined = join(&[], &spec, &[target("t", "other", "missing")]).unwrap();
    assert!(joined.access.rules.is_none());
    // One that cannot even be parsed, in this namespace, counts as naming it.
    let mut garbled = target("g", "api", "missing");
    garbled.value["spec"]["destination"] = json!("api");
    let joined = join(&[], &spec, &[garbled]).unwrap();
    assert_eq!(joined.access.rules.as_deref().map(<[_]>::len), Some(0));
}

#[test]
fn consumer_routes_apply_to_their_namespace_only_and_win_over_the_producers() {
    // This proxy is in shop; Service api (and its versions) in backend.
    let mut spec = spec();
    let template = spec.services.remove("web").unwrap();
    spec.services.clear();
    for name in ["api", "api-v2", "api-v3"] {
        let mut svc = template.clone();
        svc.name = Some(name.into());
        svc.namespace = Some("backend".into());
        spec.services.insert(format!("{name}.backend:80"), svc);
    }
    let in_ns = |ns: &str, name: &str, to: &str| {
        let mut value = route(name, "api");
        value["metadata"]["namespace"] = json!(ns);
        value["spec"]["parentRefs"][0]["namespace"] = json!("backend");
        value["spec"]["rules"][0]["backendRefs"] =
            json!([{"name": to, "namespace": "backend", "port": 80}]);
        ApiObject {
            kind: "HTTPRoute".into(),
            namespace: ns.into(),
            name: name.into(),
            value,
        }
    };
    let producer = in_ns("backend", "producer", "api-v2");
    let consumer = in_ns("shop", "consumer", "api-v3");
    let elsewhere = in_ns("other", "elsewhere", "api-v2");
    let names = |objects: &[ApiObject]| {
        let joined = join(&[], &spec, objects).unwrap();
        assert!(joined.refused.is_empty(), "{:?}", joined.refused);
        joined.routes["api.backend:80"]
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(std::slice::from_ref(&producer)), ["producer"]);
    assert_eq!(names(&[producer.clone(), consumer.clone()]), ["consumer"]);
    assert_eq!(
        names(&[consumer, producer.clone()]),
        ["consumer"],
        "in any order"
    );
    assert_eq!(names(&[producer, elsewhere.clone()]), ["producer"]);
    let joined = join(&[], &spec, &[elsewhere]).unwrap();
    assert!(
        joined.routes.is_empty(),
        "another namespace's consumer route"
    );
}

#[test]
fn the_deployed_cluster_role_grants_every_kind_watched() {
    let rbac = include_str!("../../../../deploy/discovery-rbac.yaml");
    let role: serde_yaml_ng::Value = serde_yaml_ng::Deserializer::from_str(rbac)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find(|d: &serde_yaml_ng::Value| d["kind"] == "ClusterRole")
        .unwrap();
    let granted = |group: &str, resource: &str| {
        role["rules"].as_sequence().unwrap().iter().any(|rule| {
            let has = |field: &str, want: &str| {
                rule[field]
                    .as_sequence()
                    .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(want)))
            };
            has("apiGroups", group) && has("resources", resource) && has("verbs", "watch")
        })
    };
    for (group, kind) in KINDS {
        let plural = format!("{}s", kind.to_ascii_lowercase());
        assert!(
            granted(group, &plural),
            "{plural}.{group} is watched but not granted"
        );
    }
}

#[test]
fn an_access_object_with_an_unknown_field_is_refused_not_read_without_it() {
    let tcp = object(
        "TCPRoute",
        "db",
        json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"matches": {"port": [5432]}}
        }),
    );
    let joined = join(&[], &spec(), &[tcp]).unwrap();
    assert_eq!(joined.refused.len(), 1, "{:?}", joined.refused);
    assert!(joined.refused[0].reason.contains("spec.matches.port"));
}

#[test]
fn unknown_fields_are_dropped_by_path_and_the_object_applies() {
    let mut value = route("r", "web");
    value["spec"]["rules"][0]["sessionPersistence"] = json!({"sessionName": "s"});
    value["spec"]["newStanza"] = json!(1);
    let joined = join(&[], &spec(), &[object("HTTPRoute", "r", value)]).unwrap();
    assert!(joined.refused.is_empty(), "{:?}", joined.refused);
    assert_eq!(joined.ignored.len(), 2, "{:?}", joined.ignored);
    assert!(joined
        .ignored
        .iter()
        .any(|f| f.contains("sessionPersistence")));
    assert!(joined.ignored.iter().any(|f| f.contains("newStanza")));
    assert_eq!(joined.routes["web"].routes.len(), 1);
}

#[test]
fn an_object_that_cannot_be_honoured_is_refused_alone() {
    let mut bad_regex = route("bad", "web-v2");
    bad_regex["spec"]["rules"][0]["matches"] =
        json!([{"path": {"type": "RegularExpression", "value": "(unclosed"}}]);
    // A filter Skiff does not implement: honouring the rest would send traffic where
    // its author did not mean it to go.
    let mut filtered = route("filtered", "web-v2");
    filtered["spec"]["rules"][0]["filters"] = json!([{"type": "ExtensionRef",
        "extensionRef": {"group": "example.com", "kind": "Thing", "name": "t"}}]);
    let objects = [
        object("HTTPRoute", "good", route("good", "web")),
        object("HTTPRoute", "orphan", route("orphan", "nothere")),
        object("HTTPRoute", "bad", bad_regex),
        object("HTTPRoute", "filtered", filtered),
    ];
    let joined = join(&[], &spec(), &objects).unwrap();
    let refused: Vec<&str> = joined.refused.iter().map(|r| r.object.as_str()).collect();
    assert_eq!(refused.len(), 3, "{:?}", joined.refused);
    assert!(refused.contains(&"HTTPRoute shop/orphan"));
    assert!(refused.contains(&"HTTPRoute shop/bad"));
    assert!(refused.contains(&"HTTPRoute shop/filtered"));
    let why = &joined
        .refused
        .iter()
        .find(|r| r.object.ends_with("filtered"))
        .unwrap()
        .reason;
    assert!(why.contains("ExtensionRef is not supported"), "{why}");
    assert!(joined.routes.contains_key("web"), "the good one applies");
}

#[test]
fn a_conflict_with_the_files_documents_refuses_the_api_object() {
    let file = serde_yaml_ng::to_value(route("from-file", "web")).unwrap();
    let split = json!({
        "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "s", "namespace": "shop"},
        "spec": {"service": "web", "backends": [{"service": "web-v2", "weight": 1}]}
    });
    let joined = join(&[file], &spec(), &[object("TrafficSplit", "s", split)]).unwrap();
    assert_eq!(joined.refused.len(), 1);
    assert!(
        joined.refused[0].reason.contains("HTTPRoutes"),
        "{:?}",
        joined.refused
    );
    assert_eq!(joined.routes["web"].routes[0].name, "from-file");
}
