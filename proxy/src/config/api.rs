//! Mesh documents read from the Kubernetes API rather than the file (HTTPRoute, SMI
//! TrafficSplit, HTTPRouteGroup, TCPRoute, TrafficTarget), joined with the file's documents
//! and with every service, written or discovered.
//!
//! Objects from an API server are read leniently: servers add defaulted fields and newer
//! versions add stanzas, so a field Skiff does not know is dropped and counted rather than
//! refusing the object. An object Skiff cannot honour (a bad regex, a parent service that
//! does not exist, a conflict with another route) is refused on its own, with the reason,
//! while every other object applies.

use std::collections::BTreeMap;

use serde::Serialize;

use super::mesh::{self, Document};
use super::{AccessSpec, ProxySpec, ServiceRoutes};

/// An object from the API, as the API server sent it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiObject {
    /// Its kind (`HTTPRoute`, ...).
    pub(crate) kind: String,
    /// Its namespace.
    pub(crate) namespace: String,
    /// Its name.
    pub(crate) name: String,
    /// The whole object.
    pub(crate) value: serde_json::Value,
}

/// An object that could not be honoured, and why (shown on `/config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Refused {
    /// `kind namespace/name`.
    pub(crate) object: String,
    /// Why.
    pub(crate) reason: String,
}

/// The routes and access rules of the file's documents and the API's objects together.
#[derive(Clone, Debug)]
pub(crate) struct Joined {
    /// The routes attached to each service.
    pub(crate) routes: BTreeMap<String, ServiceRoutes>,
    /// Who may call this workload.
    pub(crate) access: AccessSpec,
    /// The objects refused, each alone.
    pub(crate) refused: Vec<Refused>,
    /// Fields dropped because Skiff does not know them, as `kind namespace/name: path`.
    pub(crate) ignored: Vec<String>,
}

/// The kinds watched in the API, by group: each is read in the version its API server
/// prefers among those Skiff reads ([`readable`]), so a cluster serving only an older SMI
/// version (as Linkerd's SMI extension does) is read too.
pub(crate) const KINDS: [(&str, &str); 7] = [
    ("split.smi-spec.io", "TrafficSplit"),
    ("specs.smi-spec.io", "HTTPRouteGroup"),
    ("gateway.networking.k8s.io", "HTTPRoute"),
    ("gateway.networking.k8s.io", "GRPCRoute"),
    ("policy.linkerd.io", "HTTPRoute"),
    ("access.smi-spec.io", "TrafficTarget"),
    ("specs.smi-spec.io", "TCPRoute"),
];

/// Whether Skiff reads `kind` in `api_version`.
pub(crate) fn readable(api_version: &str, kind: &str) -> bool {
    mesh::known(api_version, kind)
}

/// Joins `config`'s documents with `objects`, against `spec`'s services (the file's and
/// the discovered ones).
pub(crate) fn join(
    config_documents: &[serde_yaml_ng::Value],
    spec: &ProxySpec,
    objects: &[ApiObject],
) -> Result<Joined, String> {
    let mut documents: Vec<(usize, Document)> = Vec::new();
    for (index, value) in config_documents.iter().enumerate() {
        let field = |name: &str| value.get(name).and_then(|k| k.as_str()).unwrap_or_default();
        // The file's documents parsed when it was loaded; they parse again.
        let doc = mesh::parse_document(field("apiVersion"), field("kind"), value.clone())
            .map_err(|e| format!("config document {}: {e}", index + 1))?;
        documents.push((index, doc));
    }
    let first_api = documents.len();
    let mut refused = Vec::new();
    let mut ignored = Vec::new();
    let mut names = Vec::new();
    for object in objects {
        // A TrafficTarget binds the proxy it names; one without an identity is named by
        // none (the file would refuse it, but the API's are for every workload).
        if object.kind == "TrafficTarget" && spec.identity.is_none() {
            continue;
        }
        let label = label(object);
        match lenient(&object.kind, object.value.clone()) {
            Ok((doc, dropped)) => {
                ignored.extend(dropped.into_iter().map(|p| format!("{label}: {p}")));
                names.push(label);
                documents.push((first_api + names.len() - 1, doc));
            }
            Err(reason) => refused.push(Refused {
                object: label,
                reason,
            }),
        }
    }
    // Refuse the API objects with problems, one round at a time, until the rest join: a
    // problem can come from a combination (two TrafficSplits for one service), and the
    // file's own documents joined alone when it was loaded.
    let own_id = spec
        .identity
        .as_ref()
        .map(|i| i.own_id(&spec.namespace))
        .transpose()
        .map_err(|e| format!("spec.identity: {e}"))?;
    // TrafficTargets live in their destination's namespace: this proxy's own.
    let own_ns = own_id
        .as_ref()
        .and_then(|id| id.workload_parts())
        .map_or(spec.namespace.as_str(), |(ns, _)| ns);
    for _ in 0..=documents.len() {
        let access = mesh::resolve_access(own_id.as_ref(), own_ns, &documents);
        let routes = mesh::resolve(spec, &documents);
        let problems = match (routes, access) {
            (
                Ok(mesh::Resolved {
                    routes,
                    refused: unsupported,
                }),
                Ok(mut access),
            ) => {
                // The file's were reported when it loaded; the API's are refused here.
                for (index, reason) in unsupported.into_iter().filter(|(i, _)| *i >= first_api) {
                    refused.push(Refused {
                        object: names[index - first_api].clone(),
                        reason,
                    });
                }
                // A refused TrafficTarget naming this proxy restricted it to rules now
                // unknown: what the others allow stands, and nothing more (fail closed).
                let own = own_id.as_ref().and_then(|id| id.workload_parts());
                let restricted = objects.iter().any(|o| {
                    o.kind == "TrafficTarget"
                        && own.is_some_and(|own| names_as_destination(o, own))
                        && refused.iter().any(|r| r.object == label(o))
                });
                if restricted && access.rules.is_none() {
                    access.rules = Some(Vec::new());
                }
                return Ok(Joined {
                    routes,
                    access,
                    refused,
                    ignored,
                });
            }
            (Err(a), Err(b)) => [a, b].concat(),
            (Err(p), _) | (_, Err(p)) => p,
        };
        let mut blamed: Vec<usize> = problems
            .iter()
            .filter(|(i, _)| *i >= first_api && *i != usize::MAX)
            .map(|(i, _)| *i)
            .collect();
        if blamed.is_empty() {
            let (_, message) = &problems[0];
            return Err(format!("the config's own documents: {message}"));
        }
        blamed.sort_unstable();
        blamed.dedup();
        for (index, message) in problems.iter().filter(|(i, _)| blamed.contains(i)) {
            refused.push(Refused {
                object: names[index - first_api].clone(),
                reason: message.clone(),
            });
        }
        documents.retain(|(i, _)| !blamed.contains(i));
    }
    Err("the API's documents could not be joined".into())
}

/// An object's name in logs and on `/config`: `kind namespace/name`.
fn label(object: &ApiObject) -> String {
    format!("{} {}/{}", object.kind, object.namespace, object.name)
}

/// Whether TrafficTarget `object` names service account `(namespace, name)` as its
/// destination, read from the raw object so that it works for one that could not be
/// parsed; one whose destination cannot be read counts when it lives in that namespace.
fn names_as_destination(object: &ApiObject, (own_ns, own_sa): (&str, &str)) -> bool {
    let destination = &object.value["spec"]["destination"];
    let ns = destination["namespace"]
        .as_str()
        .unwrap_or(&object.namespace);
    match destination["name"].as_str() {
        Some(name) => name == own_sa && ns == own_ns,
        None => object.namespace == own_ns,
    }
}

/// Parses an API object as `kind`, ignoring the fields Skiff does not know (each named by
/// its path), and refusing only what it cannot read.
fn lenient(kind: &str, value: serde_json::Value) -> Result<(Document, Vec<String>), String> {
    let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
    let mut ignored = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        if mesh::reported(&path) {
            ignored.push(path);
        }
    };
    let document = serde_ignored::Deserializer::new(&value, &mut note);
    match mesh::parse_document(&api_version, kind, document) {
        // Access kinds fail closed: refused, not read without the field.
        Ok(_) if mesh::is_access_kind(kind) && !ignored.is_empty() => Err(format!(
            "{}: {kind} has no such field, and access documents take no unknown fields",
            ignored.join(", ")
        )),
        Ok(doc) => Ok((doc, ignored)),
        Err(e) => Err(format!("{}: {}", e.path(), e.inner())),
    }
}

#[cfg(test)]
mod tests {
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
        let rbac = include_str!("../../../deploy/discovery-rbac.yaml");
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
}
