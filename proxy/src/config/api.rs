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

/// The kinds read from the API: `apiVersion`, `kind` and the resource's plural name.
pub(crate) const KINDS: [(&str, &str, &str); 5] = [
    (
        "split.smi-spec.io/v1alpha4",
        "TrafficSplit",
        "trafficsplits",
    ),
    (
        "specs.smi-spec.io/v1alpha4",
        "HTTPRouteGroup",
        "httproutegroups",
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
    (
        "access.smi-spec.io/v1alpha3",
        "TrafficTarget",
        "traffictargets",
    ),
    ("specs.smi-spec.io/v1alpha4", "TCPRoute", "tcproutes"),
];

/// Joins `config`'s documents with `objects`, against `spec`'s services (the file's and
/// the discovered ones).
pub(crate) fn join(
    config_documents: &[serde_yaml_ng::Value],
    spec: &ProxySpec,
    objects: &[ApiObject],
) -> Result<Joined, String> {
    let mut documents: Vec<(usize, Document)> = Vec::new();
    for (index, value) in config_documents.iter().enumerate() {
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        // The file's documents parsed when it was loaded; they parse again.
        let doc = mesh::parse_document(kind, value.clone())
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
        let label = format!("{} {}/{}", object.kind, object.namespace, object.name);
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
            (Ok(routes), Ok(access)) => {
                return Ok(Joined {
                    routes,
                    access,
                    refused,
                    ignored,
                })
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

/// Parses an API object as `kind`, dropping the fields Skiff does not know (each named by
/// its path), and refusing only what it cannot read.
fn lenient(kind: &str, mut value: serde_json::Value) -> Result<(Document, Vec<String>), String> {
    let mut dropped = Vec::new();
    // Bounded: each round removes one field.
    for _ in 0..64 {
        match mesh::parse_document(kind, &value) {
            Ok(doc) => return Ok((doc, dropped)),
            Err(e) => {
                let message = e.inner().to_string();
                let Some(field) = unknown_field(&message) else {
                    return Err(format!("{}: {message}", e.path()));
                };
                let path = e.path().to_string();
                if !remove(&mut value, &path, &field) {
                    return Err(format!("{path}: {message}"));
                }
                dropped.push(if path == "." {
                    field
                } else {
                    format!("{path}.{field}")
                });
            }
        }
    }
    Err("too many fields Skiff does not know".into())
}

/// The field name of serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Removes `field` from the map at `path` (serde_path_to_error's `a.b[0].c` form, where
/// the last segment may already be the unknown field itself).
fn remove(value: &mut serde_json::Value, path: &str, field: &str) -> bool {
    let mut at = value;
    let segments: Vec<&str> = if path == "." {
        Vec::new()
    } else {
        path.split('.').collect()
    };
    for segment in segments {
        let (name, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if name == field && indices.is_empty() {
            break;
        }
        if !name.is_empty() {
            match at.get_mut(name) {
                Some(next) => at = next,
                None => return false,
            }
        }
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            let Some(next) = index.parse::<usize>().ok().and_then(|i| at.get_mut(i)) else {
                return false;
            };
            at = next;
        }
    }
    at.as_object_mut()
        .is_some_and(|m| m.remove(field).is_some())
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
        // A filter is known and not supported: honouring the rest would send traffic
        // where its author did not mean it to go.
        let mut filtered = route("filtered", "web-v2");
        filtered["spec"]["rules"][0]["filters"] =
            json!([{"type": "RequestRedirect", "requestRedirect": {"hostname": "elsewhere"}}]);
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
