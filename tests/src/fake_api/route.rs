//! URLs and query strings: what a request path names (a discovery document, a collection or
//! one object of a kind) and the API verb it asks for.
//!
//! Paths follow the API server's layout: `/api/v1/...` for the core group and
//! `/apis/{group}/{version}/...` for the others, with `namespaces/{ns}/` before the plural
//! of a namespaced kind and no namespace for a cluster-scoped one. Query values are decoded
//! as Go's `url.ParseQuery` does, since Go clients (kubectl) encode them that way.

use http::Method;
use serde_json::Value;

use super::discovery::{self, Registry};

/// Decodes a query component (`%XX`, and `+` as a space, as Go's url.ParseQuery does).
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded query parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: &str) -> Self {
        Self(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter as Go's strconv.ParseBool reads it; `Err` names a bad value.
    pub(crate) fn flag(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("" | "0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(other) => Err(format!("invalid value for {key}: {other:?}")),
        }
    }
}

/// What a URL names.
#[derive(Debug)]
pub(crate) enum Route {
    /// A discovery or version document.
    Document(Value),
    /// Objects of one kind: a collection (no name) or one object.
    Resource {
        resource: usize,
        namespace: Option<String>,
        name: Option<String>,
    },
    /// Nothing the fake serves (404).
    NotFound,
}

/// What `path` names.
pub(crate) fn route(registry: &Registry, server_address: &str, path: &str) -> Route {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let document = |doc: Option<Value>| doc.map_or(Route::NotFound, Route::Document);
    match segments.as_slice() {
        ["version"] => Route::Document(discovery::version()),
        ["api"] => Route::Document(registry.api_versions(server_address)),
        ["api", version] => document(registry.resource_list("", version)),
        ["apis"] => Route::Document(registry.group_list()),
        ["apis", group] => document(registry.group(group)),
        ["apis", group, version] => document(registry.resource_list(group, version)),
        ["api", version, rest @ ..] => resource_route(registry, "", version, rest),
        ["apis", group, version, rest @ ..] => resource_route(registry, group, version, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(registry: &Registry, group: &str, version: &str, rest: &[&str]) -> Route {
    let find = |plural: &str, namespaced: bool| {
        registry
            .find(group, version, plural)
            .filter(|&r| registry.get(r).namespaced == namespaced)
    };
    let (resource, namespace, name) = match rest {
        [plural] => match registry.find(group, version, plural) {
            Some(r) => (r, None, None),
            None => return Route::NotFound,
        },
        [plural, name] => match find(plural, false) {
            Some(r) => (r, None, Some(*name)),
            None => return Route::NotFound,
        },
        ["namespaces", ns, plural] => match find(plural, true) {
            Some(r) => (r, Some(*ns), None),
            None => return Route::NotFound,
        },
        ["namespaces", ns, plural, name] => match find(plural, true) {
            Some(r) => (r, Some(*ns), Some(*name)),
            None => return Route::NotFound,
        },
        _ => return Route::NotFound,
    };
    Route::Resource {
        resource,
        namespace: namespace.map(decode),
        name: name.map(decode),
    }
}

/// The RBAC verb of a request on objects.
pub(crate) fn verb(method: &Method, name: bool, watch: bool) -> Option<&'static str> {
    Some(match (method.as_str(), name) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}
