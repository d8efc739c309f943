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
mod tests;
