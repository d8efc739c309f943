//! Label and field selectors, as the API server parses and applies them to lists and
//! watches.
//!
//! A client that narrows a watch with a selector relies on the server's rule for objects
//! that change under it: one that stops matching arrives as `DELETED`, one that starts
//! matching as `ADDED` (the watch cache's rule). That needs the selector evaluated on both
//! the old and the new object, so selectors are values here rather than filters applied by
//! the client.

use serde_json::Value;

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelOp {
    /// `key=value` or `key==value`.
    Eq(String),
    /// `key!=value`: also true when the label is missing.
    NotEq(String),
    /// `key in (a,b)`.
    In(Vec<String>),
    /// `key notin (a,b)`: also true when the label is missing.
    NotIn(Vec<String>),
    /// `key`.
    Exists,
    /// `!key`.
    NotExists,
}

/// A parsed `labelSelector` (every requirement must hold; empty matches everything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<(String, LabelOp)>);

/// Splits a selector on the commas that separate requirements (not those inside `in (...)`).
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

/// A label key (`prefix/name`) or value: the characters Kubernetes allows in them.
fn valid_label_text(s: &str, key: bool) -> bool {
    if key && s.is_empty() {
        return false;
    }
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || (key && c == '/'))
}

fn parse_error(term: &str, why: &str) -> String {
    format!("unable to parse requirement: {why}: {term:?}")
}

/// Parses `(a, b)` after `in` or `notin`.
fn parse_set(term: &str, rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| parse_error(term, "expected a parenthesised set of values"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    if values.iter().any(|v| !valid_label_text(v, false)) {
        return Err(parse_error(term, "invalid label value"));
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses an equality- or set-based selector.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(requirements));
        }
        for term in split_terms(s) {
            let t = term.trim();
            let (key, op) = if let Some(key) = t.strip_prefix('!') {
                (key.trim(), LabelOp::NotExists)
            } else if let Some((k, v)) = t.split_once("!=") {
                (k.trim(), LabelOp::NotEq(v.trim().to_owned()))
            } else if let Some((k, v)) = t.split_once("==") {
                (k.trim(), LabelOp::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = t.split_once('=') {
                (k.trim(), LabelOp::Eq(v.trim().to_owned()))
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                (k.trim(), LabelOp::NotIn(parse_set(t, rest)?))
            } else if let Some((k, rest)) = t.split_once(" in ") {
                (k.trim(), LabelOp::In(parse_set(t, rest)?))
            } else {
                (t, LabelOp::Exists)
            };
            if !valid_label_text(key, true) {
                return Err(parse_error(t, "invalid label key"));
            }
            if let LabelOp::Eq(v) | LabelOp::NotEq(v) = &op {
                if !valid_label_text(v, false) {
                    return Err(parse_error(t, "invalid label value"));
                }
            }
            requirements.push((key.to_owned(), op));
        }
        Ok(Self(requirements))
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|(key, op)| {
            let value = labels.get(key).and_then(Value::as_str);
            match op {
                LabelOp::Eq(v) => value == Some(v.as_str()),
                LabelOp::NotEq(v) => value != Some(v.as_str()),
                LabelOp::In(set) => value.is_some_and(|x| set.iter().any(|v| v == x)),
                LabelOp::NotIn(set) => !value.is_some_and(|x| set.iter().any(|v| v == x)),
                LabelOp::Exists => value.is_some(),
                LabelOp::NotExists => value.is_none(),
            }
        })
    }

    /// Whether the selector has no requirements.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed `fieldSelector`: `(field, value, equal)` requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, String, bool)>);

/// Fields every kind can be selected by.
const COMMON_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

/// Fields some kinds add (the API server's per-kind field label conversions).
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Namespace" => &["status.phase"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `field=value`, `field==value` and `field!=value` terms for a kind; a field
    /// the kind cannot be selected by is refused, as the API server does.
    pub(crate) fn parse(s: &str, kind: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(requirements));
        }
        for term in s.split(',') {
            let t = term.trim();
            let (field, value, equal) = if let Some((f, v)) = t.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = t.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = t.split_once('=') {
                (f, v, true)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{t}'"));
            };
            let field = field.trim();
            if !COMMON_FIELDS.contains(&field) && !kind_fields(kind).contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            requirements.push((field.to_owned(), value.trim().to_owned(), equal));
        }
        Ok(Self(requirements))
    }

    /// Whether `object` satisfies every requirement (a missing field reads as empty).
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, value, equal)| {
            let mut at = object;
            for part in field.split('.') {
                at = &at[part];
            }
            let actual = match at {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }

    /// Whether the selector has no requirements.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A selector for one name (the watch of a single object's URL).
    pub(crate) fn with_name(mut self, name: &str) -> Self {
        self.0.push(("metadata.name".into(), name.into(), true));
        self
    }
}

/// What a list or watch selects: a kind, optionally one namespace, and the selectors.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    /// The kind's registry index.
    pub(crate) resource: usize,
    /// The namespace of a namespaced request, `None` across all namespaces.
    pub(crate) namespace: Option<String>,
    /// `labelSelector`.
    pub(crate) labels: LabelSelector,
    /// `fieldSelector`.
    pub(crate) fields: FieldSelector,
}

impl Filter {
    /// Whether an object of kind `resource` in `namespace` passes.
    pub(crate) fn matches(&self, resource: usize, namespace: &str, object: &Value) -> bool {
        resource == self.resource
            && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// Whether the filter has selectors (lists then leave out `remainingItemCount`).
    pub(crate) fn has_selectors(&self) -> bool {
        !self.labels.is_empty() || !self.fields.is_empty()
    }
}
