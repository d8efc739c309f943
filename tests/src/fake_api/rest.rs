//! Get, list (with selectors, pagination and resourceVersion semantics) and the HTTP writes.
//!
//! A paginated list is one consistent snapshot: every page of it is served as of the first
//! page's resourceVersion (the continue token carries it), which is what lets a client read
//! a large collection in pages and then watch from the list's resourceVersion without
//! missing or repeating a change. A token whose resourceVersion has left the history can no
//! longer be served consistently and answers 410 Expired, as etcd does after a compaction.

use std::ops::Bound;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::discovery::ResourceType;
use super::route::Query;
use super::select::{FieldSelector, Filter, LabelSelector};
use super::serve::{json_response, lock, status, status_object, Body, Shared};
use super::store::{Key, PutMode, WriteError};

/// The objects a request is about: a kind, the namespace of a namespaced URL, and the name
/// of an object's URL.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) resource: usize,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
}

impl Target {
    fn key(&self) -> Key {
        (
            self.resource,
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }
}

/// 400 BadRequest with `message`.
pub(crate) fn bad_request(message: &str) -> Response<Body> {
    status(400, "BadRequest", message, None)
}

/// The 422 the API server gives for list options that contradict each other.
pub(crate) fn invalid_options(field: &str, message: &str) -> Response<Body> {
    let full = format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: {message}");
    status(
        422,
        "Invalid",
        &full,
        Some(json!({
            "group": "meta.k8s.io",
            "kind": "ListOptions",
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}],
        })),
    )
}

/// The 504 for a resourceVersion newer than the store's (a real server waits a few seconds
/// for it first).
pub(crate) fn too_large(asked: u64, current: u64) -> Response<Body> {
    status(
        504,
        "Timeout",
        &format!("Timeout: Too large resource version: {asked}, current: {current}"),
        Some(json!({
            "causes": [{
                "reason": "ResourceVersionTooLarge",
                "message": "Too large resource version",
            }],
            "retryAfterSeconds": 1,
        })),
    )
}

/// The 404 for an object that is not there.
fn object_not_found(rt: &ResourceType, name: &str) -> Response<Body> {
    let mut details = json!({"name": name, "kind": rt.plural});
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    status(
        404,
        "NotFound",
        &format!("{} {name:?} not found", rt.qualified()),
        Some(details),
    )
}

/// The filter of a list or watch: kind, namespace, selectors (and the name, for an
/// object's URL); `Err` says what is wrong with a selector (a 400).
pub(crate) fn filter(shared: &Shared, target: &Target, query: &Query) -> Result<Filter, String> {
    let rt = shared.registry.get(target.resource);
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?;
    let fields = query.get("fieldSelector").unwrap_or_default();
    let mut fields = FieldSelector::parse(fields, &rt.kind)?;
    if let Some(name) = &target.name {
        fields = fields.with_name(name);
    }
    Ok(Filter {
        resource: target.resource,
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

/// An opaque continue token: the list's resourceVersion and the last key served. Zero
/// stands for "the latest", in the token an expired one is answered with.
pub(crate) fn encode_continue(rv: u64, namespace: &str, name: &str) -> String {
    let raw = json!({"rv": rv, "start": [namespace, name]}).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Reads a token made by [`encode_continue`].
pub(crate) fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return None;
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok())
        .collect::<Option<_>>()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let rv = value["rv"].as_u64()?;
    let namespace = value["start"][0].as_str()?.to_owned();
    let name = value["start"][1].as_str()?.to_owned();
    Some((rv, (namespace, name)))
}

/// `GET` of one object.
pub(crate) fn get(shared: &Shared, target: &Target) -> Response<Body> {
    let rt = shared.registry.get(target.resource);
    match lock(&shared.store).get(&target.key()) {
        Some(object) => json_response(StatusCode::OK, &object),
        None => object_not_found(rt, target.name.as_deref().unwrap_or_default()),
    }
}

/// `GET` of a collection.
pub(crate) fn list(shared: &Shared, target: &Target, query: &Query) -> Response<Body> {
    let rt = shared.registry.get(target.resource);
    let filter = match filter(shared, target, query) {
        Ok(filter) => filter,
        Err(why) => return bad_request(&why),
    };
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return bad_request(&format!("invalid limit: {l:?}")),
        },
    };
    let rv = query.get("resourceVersion").filter(|v| !v.is_empty());
    let rv_match = query.get("resourceVersionMatch").filter(|v| !v.is_empty());
    let token = query.get("continue").filter(|v| !v.is_empty());
    if let Some(m) = rv_match {
        if m != "Exact" && m != "NotOlderThan" {
            return invalid_options(
                "resourceVersionMatch",
                &format!(
                    "Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
                ),
            );
        }
        if rv.is_none() {
            return invalid_options(
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            );
        }
        if token.is_some() {
            return invalid_options(
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden when continue is provided",
            );
        }
        if m == "Exact" && rv == Some("0") {
            return invalid_options(
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            );
        }
    }
    if token.is_some() && rv.is_some_and(|v| v != "0") {
        return bad_request("specifying resource version is not allowed when using continue");
    }

    let store = lock(&shared.store);
    let current = store.resource_version();
    let (at, after) = match token {
        Some(token) => match decode_continue(token) {
            Some((0, start)) => (current, Some(start)),
            Some((rv, start)) => (rv, Some(start)),
            None => return bad_request(&format!("continue key is not valid: {token:?}")),
        },
        None => match rv {
            // "Most recent" and "any": the latest state is a valid answer to both.
            None | Some("0") => (current, None),
            Some(v) => {
                let Ok(asked) = v.parse::<u64>() else {
                    return bad_request(&format!("invalid resource version: {v:?}"));
                };
                if asked > current {
                    return too_large(asked, current);
                }
                // NotOlderThan (or no match): the latest state is not older than asked.
                (
                    if rv_match == Some("Exact") {
                        asked
                    } else {
                        current
                    },
                    None,
                )
            }
        },
    };
    let Ok(snapshot) = store.snapshot(target.resource, at) else {
        drop(store);
        return match after {
            Some((ns, name)) => expired_continue(&encode_continue(0, &ns, &name)),
            None => status(
                410,
                "Expired",
                "The resourceVersion for the provided list is too old.",
                Some(json!({})),
            ),
        };
    };
    drop(store);

    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let matching: Vec<_> = snapshot
        .range((start, Bound::Unbounded))
        .filter(|((ns, _), object)| filter.matches(target.resource, ns, object))
        .collect();
    let page = limit.map_or(matching.len(), |l| l.min(matching.len()));
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if page < matching.len() {
        let (ns, name) = matching[page - 1].0;
        metadata["continue"] = json!(encode_continue(at, ns, name));
        // As the API server: only without selectors is the remainder known cheaply.
        if !filter.has_selectors() {
            metadata["remainingItemCount"] = json!(matching.len() - page);
        }
    }
    let items: Vec<&Value> = matching[..page].iter().map(|(_, o)| o.as_ref()).collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

/// The 410 for a continue token from before the history, with the token that continues
/// from the same place at the latest resourceVersion (inconsistently), as etcd's answer has.
fn expired_continue(token: &str) -> Response<Body> {
    let mut body = status_object(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You \
         can start a new list without the continue parameter, or use the continue token in \
         this response to retrieve the remainder of the results. Continuing with the provided \
         token results in an inconsistent list - objects that were created, modified, or \
         deleted between the time the first chunk was returned and now may show up in the \
         list.",
        Some(json!({})),
    );
    body["metadata"]["continue"] = json!(token);
    json_response(StatusCode::GONE, &body)
}

/// `POST` (create) or `PUT` (update) of an object.
pub(crate) fn write(
    shared: &Shared,
    target: &Target,
    verb: &str,
    mut object: Value,
) -> Response<Body> {
    let rt = shared.registry.get(target.resource);
    if !object.is_object() {
        return bad_request("the request body is not a JSON object");
    }
    let expected = rt.api_version();
    match object["apiVersion"].as_str() {
        None => object["apiVersion"] = json!(expected),
        Some(given) if given != expected => {
            return bad_request(&format!(
                "the API version in the data ({given}) does not match the expected API \
                 version ({expected})"
            ));
        }
        Some(_) => {}
    }
    match object["kind"].as_str() {
        None => object["kind"] = json!(rt.kind),
        Some(given) if given != rt.kind => {
            return bad_request(&format!(
                "the kind in the data ({given}) does not match the expected kind ({})",
                rt.kind
            ));
        }
        Some(_) => {}
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if rt.namespaced {
        let Some(ns) = &target.namespace else {
            return status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                None,
            );
        };
        match object["metadata"]["namespace"].as_str() {
            Some(given) if !given.is_empty() && given != ns => {
                return bad_request(
                    "the namespace of the provided object does not match the namespace sent \
                     on the request",
                );
            }
            _ => object["metadata"]["namespace"] = json!(ns),
        }
    }
    if let Some(name) = &target.name {
        match object["metadata"]["name"].as_str() {
            Some(given) if given != name => {
                return bad_request(&format!(
                    "the name of the object ({given}) does not match the name on the URL ({name})"
                ));
            }
            _ => object["metadata"]["name"] = json!(name),
        }
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mode = if verb == "create" {
        PutMode::Create
    } else {
        PutMode::Update
    };
    let result = lock(&shared.store).put(target.resource, rt.namespaced, object, mode);
    match result {
        Ok((stored, event)) => {
            if event.is_some() {
                shared.changed();
            }
            let code = if verb == "create" {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(code, &stored)
        }
        Err(WriteError::Invalid(why)) => status(
            422,
            "Invalid",
            &format!("{} {name:?} is invalid: {why}", rt.kind),
            Some(json!({"name": name, "kind": rt.kind})),
        ),
        Err(WriteError::AlreadyExists) => status(
            409,
            "AlreadyExists",
            &format!("{} {name:?} already exists", rt.qualified()),
            Some(json!({"name": name, "kind": rt.plural})),
        ),
        Err(WriteError::NotFound) => object_not_found(rt, &name),
        Err(WriteError::Conflict) => status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified()
            ),
            Some(json!({"name": name, "kind": rt.plural})),
        ),
    }
}

/// `DELETE` of an object: answers with its last state.
pub(crate) fn delete(shared: &Shared, target: &Target) -> Response<Body> {
    let rt = shared.registry.get(target.resource);
    let removed = lock(&shared.store).remove(&target.key());
    match removed {
        Some(last) => {
            shared.changed();
            json_response(StatusCode::OK, &last)
        }
        None => object_not_found(rt, target.name.as_deref().unwrap_or_default()),
    }
}
