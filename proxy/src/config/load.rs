//! Reading config files: YAML documents, each checked for its `apiVersion` and `kind`, then
//! parsed into its typed form. Every error names the file, line, column and field.

use std::fmt;
use std::path::{Path, PathBuf};

use proxy_tls::SpiffeId;
use serde::Deserialize;

use super::mesh;
use super::{Config, ProxySpec};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, starting with the field path when there is one.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in a config file (one per document at most: a document's parse stops
/// at its first error).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

const PROXY_API_VERSION: &str = "skiff.dev/v1alpha1";

/// Just enough of a document to know what it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
}

/// The `kind: Proxy` document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProxyDocument {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default, rename = "metadata")]
    _metadata: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    spec: ProxySpec,
}

/// Reads and parses `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse(&text, Some(path))
}

/// Parses config text; `path` names the file in errors.
pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigErrors> {
    let file = path.map_or_else(|| "<embedded>".to_owned(), |p| p.display().to_string());
    let yaml_error = |e: serde_yaml_ng::Error, path: Option<String>| {
        let loc = e.location();
        ConfigError {
            file: file.clone(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message: bare_message(&e, path),
        }
    };
    let shape = |line: Option<usize>, message: String| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line,
            column: None,
            message,
        }])
    };
    if text.len() > super::depth::MAX_BYTES {
        return Err(shape(
            None,
            format!(
                "the file is {} bytes; a config may have at most {}",
                text.len(),
                super::depth::MAX_BYTES
            ),
        ));
    }
    if let Some(line) = super::depth::too_deep(text) {
        return Err(shape(
            Some(line),
            format!(
                "nested more than {} levels deep (mappings and lists); a config needs far fewer",
                super::depth::MAX_DEPTH
            ),
        ));
    }
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    // Occurrences of each ignored field name already placed, per document.
    let mut seen_fields: Vec<(usize, String)> = Vec::new();
    let mut proxy: Option<(usize, ProxySpec)> = None;
    let mut mesh_documents = Vec::new();

    // Two passes over the same text: the first reads each document's kind, the second parses
    // it as that kind, so errors keep their positions.
    let mut headers = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let header = Option::<Header>::deserialize(document);
        // After a syntax error the stream cannot be resynchronised; stop there.
        let stop = header.is_err();
        headers.push(header);
        if stop {
            break;
        }
    }
    let documents = serde_yaml_ng::Deserializer::from_str(text);
    let starts = document_lines(text);
    for (index, (header, document)) in headers.into_iter().zip(documents).enumerate() {
        let doc_error = |message: String| ConfigError {
            file: file.clone(),
            line: starts.get(index).copied(),
            column: None,
            message,
        };
        let header = match header {
            Ok(Some(h)) => h,
            Ok(None) => continue, // an empty document
            Err(e) => {
                errors.push(yaml_error(e, None));
                continue;
            }
        };
        match (header.api_version.as_deref(), header.kind.as_deref()) {
            (Some(PROXY_API_VERSION), Some("Proxy")) => {
                match serde_path_to_error::deserialize::<_, ProxyDocument>(document) {
                    Ok(_) if proxy.is_some() => {
                        errors.push(doc_error("more than one `kind: Proxy` document".into()));
                    }
                    Ok(doc) => proxy = Some((index, doc.spec)),
                    Err(e) => {
                        let path = e.path().to_string();
                        errors.push(yaml_error(e.into_inner(), Some(path)));
                    }
                }
            }
            (v, Some("Proxy")) => errors.push(doc_error(format!(
                "apiVersion: `kind: Proxy` needs apiVersion {PROXY_API_VERSION}, got {}",
                v.unwrap_or("none")
            ))),
            (Some(v), Some(kind)) if mesh::known(v, kind) => {
                // Fields these kinds do not have are ignored, each named in a warning: a
                // newer spec version or an API server's defaults add stanzas.
                let mut ignored = Vec::new();
                let mut note = |path: serde_ignored::Path<'_>| {
                    let path = path.to_string();
                    if mesh::reported(&path) {
                        ignored.push(path);
                    }
                };
                let document = serde_ignored::Deserializer::new(document, &mut note);
                let parsed = mesh::parse_document(v, kind, document);
                for path in ignored {
                    let field = path.rsplit('.').next().unwrap_or(&path).to_owned();
                    let line = field_line(text, &starts, index, &field, &mut seen_fields);
                    // Access kinds fail closed: an unknown field there is an error.
                    let (list, message) = if mesh::is_access_kind(kind) {
                        (&mut errors, format!("{path}: {kind} has no field {field} (access documents take no unknown fields: ignoring one could let in what it meant to keep out)"))
                    } else {
                        (
                            &mut warnings,
                            format!("{path}: {kind} has no field {field}; ignored"),
                        )
                    };
                    list.push(ConfigError {
                        file: file.clone(),
                        line,
                        column: None,
                        message,
                    });
                }
                match parsed {
                    Ok(doc) => mesh_documents.push((index, doc)),
                    Err(e) => {
                        let path = e.path().to_string();
                        errors.push(yaml_error(e.into_inner(), Some(path)));
                    }
                }
            }
            (v, Some(kind)) if mesh::KINDS.iter().any(|(_, k)| *k == kind) => {
                let versions: Vec<&str> = mesh::KINDS
                    .iter()
                    .filter(|(_, k)| *k == kind)
                    .map(|(v, _)| *v)
                    .collect();
                errors.push(doc_error(format!(
                    "apiVersion: kind {kind} is read as apiVersion {}, got {}",
                    versions.join(", "),
                    v.unwrap_or("none")
                )));
            }
            (_, Some(kind)) => errors.push(doc_error(format!(
                "kind: {kind} is not supported by this version of Skiff"
            ))),
            (_, None) => errors.push(doc_error(
                "kind: every document needs `apiVersion` and `kind`".into(),
            )),
        }
    }
    if errors.is_empty() && proxy.is_none() {
        errors.push(ConfigError {
            file: file.clone(),
            line: None,
            column: None,
            message: format!("no `kind: Proxy` document (apiVersion {PROXY_API_VERSION})"),
        });
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let (proxy_index, proxy) = proxy.expect("checked above");
    let proxy_error = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: starts.get(proxy_index).copied(),
            column: None,
            message,
        }])
    };
    let own_id = match &proxy.identity {
        Some(identity) => {
            for domain in &identity.federated_trust_domains {
                SpiffeId::workload(domain, "ns", "sa").map_err(|e| {
                    proxy_error(format!("spec.identity.federatedTrustDomains: {e}"))
                })?;
            }
            Some(
                identity
                    .own_id(&proxy.namespace)
                    .map_err(|e| proxy_error(format!("spec.identity: {e}")))?,
            )
        }
        None => {
            if proxy.inbound.default_policy != super::DefaultPolicy::Allow {
                return Err(proxy_error(
                    "spec.inbound.defaultPolicy: deny and audit need this proxy's own \
                     `spec.identity` (without one, no caller can be told apart)"
                        .into(),
                ));
            }
            if let Some((name, _)) = proxy.services.iter().find(|(_, s)| s.identity.is_some()) {
                return Err(proxy_error(format!(
                    "spec.services.{name}.identity: mTLS to a service needs this proxy's own \
                     `spec.identity`"
                )));
            }
            None
        }
    };
    let mut by_vip = std::collections::HashMap::new();
    for (name, svc) in &proxy.services {
        for ip in &svc.cluster_ips {
            if let Some(other) = by_vip.insert((*ip, svc.port), name) {
                return Err(proxy_error(format!(
                    "spec.services.{name}.clusterIP: {ip} port {} is also service {other}'s",
                    svc.port
                )));
            }
        }
    }
    // TrafficTargets live in their destination's namespace: this proxy's own.
    let own_ns = own_id
        .as_ref()
        .and_then(|id| id.workload_parts())
        .map_or(proxy.namespace.as_str(), |(ns, _)| ns);
    let access = mesh::resolve_access(own_id.as_ref(), own_ns, &mesh_documents);
    let routes = mesh::resolve(&proxy, &mesh_documents).and_then(|r| access.map(|a| (r, a)));
    let (
        mesh::Resolved {
            routes,
            refused: unsupported,
        },
        access,
    ) = routes.map_err(|problems| {
        ConfigErrors(
            problems
                .into_iter()
                .map(|(index, message)| {
                    // Problems of the Proxy document's own fields carry no document index.
                    let index = if index == usize::MAX {
                        proxy_index
                    } else {
                        index
                    };
                    ConfigError {
                        file: file.clone(),
                        line: starts.get(index).copied(),
                        column: None,
                        message,
                    }
                })
                .collect(),
        )
    })?;
    for (index, reason) in unsupported {
        warnings.push(ConfigError {
            file: file.clone(),
            line: starts.get(index).copied(),
            column: None,
            message: format!("route refused, the rest of the file applies: {reason}"),
        });
    }
    // The mesh documents as written, for `/config`.
    let written: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(text)
        .enumerate()
        .filter(|(i, _)| mesh_documents.iter().any(|(m, _)| m == i))
        .filter_map(|(_, d)| serde_yaml_ng::Value::deserialize(d).ok())
        .collect();
    Ok(Config {
        source: path.map(PathBuf::from),
        text: text.to_owned(),
        proxy,
        routes,
        access,
        mesh_documents: written,
        warnings,
    })
}

/// The line of the next occurrence of `field:` as a key in document `index` (1-based), one
/// occurrence per call for the same field: serde names an ignored field by its path, not
/// its position.
fn field_line(
    text: &str,
    starts: &[usize],
    index: usize,
    field: &str,
    seen: &mut Vec<(usize, String)>,
) -> Option<usize> {
    let first = *starts.get(index)?;
    let last = starts.get(index + 1).copied().unwrap_or(usize::MAX);
    let before = seen
        .iter()
        .filter(|(i, f)| *i == index && f == field)
        .count();
    seen.push((index, field.to_owned()));
    let key = format!("{field}:");
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(n, _)| *n >= first && *n < last)
        .filter(|(_, line)| {
            line.match_indices(&key).any(|(at, _)| {
                line[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| matches!(c, ' ' | '{' | ',' | '-' | '"' | '\''))
            })
        })
        .nth(before)
        .map(|(n, _)| n)
}

/// The error's own words, with the field path in front: serde_yaml's message carries a
/// path that stops at the parent map for value errors and a position we report separately.
fn bare_message(e: &serde_yaml_ng::Error, path: Option<String>) -> String {
    let mut msg = e.to_string();
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = msg.strip_suffix(&suffix) {
            msg = stripped.to_owned();
        }
    }
    let Some(path) = path.filter(|p| p != ".") else {
        return msg;
    };
    // Drop serde_yaml's own (shorter) path prefix, if any.
    if let Some((prefix, rest)) = msg.split_once(": ") {
        if path.starts_with(prefix) && !prefix.contains(' ') {
            msg = rest.to_owned();
        }
    }
    format!("{path}: {msg}")
}

/// The 1-based line on which each YAML document starts (at its `---`, if it has one).
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            starts.push(i + 1);
            seen_content = true;
        } else if !seen_content && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            starts.push(1);
            seen_content = true;
        }
    }
    starts
}
