//! The labels `skiff inject` gives a pod template, naming the workload its pods belong to
//! (`skiff.dev/proxy-deployment: web`). A scrape job turns them into a `deployment` label on
//! every series, so dashboards and alerts can follow a workload: a pod's own name changes
//! with each rollout, the workload's does not. With `--linkerd-compat`, also the labels
//! Linkerd's injector writes, which linkerd-viz's scrape job selects and labels pods by.

use serde_yaml_ng::Value;

use super::Options;

/// The workload kinds Linkerd's injector writes a `linkerd.io/proxy-<kind>` label for
/// (`pkg/inject/inject.go`, `populateMeta`): a bare Pod and an Argo Rollout get none.
const LINKERD_KINDS: [&str; 7] = [
    "deployment",
    "replicationcontroller",
    "replicaset",
    "job",
    "daemonset",
    "statefulset",
    "cronjob",
];

/// Checks a Kubernetes namespace name (an RFC 1123 label).
pub(super) fn namespace_name(s: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("not a namespace name (lower-case letters, digits and '-', at most 63)".to_owned())
    }
}

/// Whether Kubernetes takes `s` as a label value: a workload's name may be longer (up to
/// 253), and a label that the API server refuses would make the whole manifest fail.
fn label_value(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The workload a pod template belongs to, as its pods' labels name it.
#[derive(Debug)]
pub(super) struct Owner {
    /// The kind, lower-case (`deployment`, `cronjob`, `pod`), as Linkerd spells it.
    kind: String,
    name: Option<String>,
    namespace: Option<String>,
}

impl Owner {
    pub(super) fn of(doc: &Value, kind: &str) -> Self {
        let meta = |key: &str| {
            doc.get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .filter(|v| label_value(v))
                .map(str::to_owned)
        };
        Self {
            kind: kind.to_ascii_lowercase(),
            name: meta("name"),
            namespace: meta("namespace"),
        }
    }

    /// `kind/name` (`deployment/web`), when the workload has a name.
    pub(super) fn workload(&self) -> Option<String> {
        self.name
            .as_ref()
            .map(|name| format!("{}/{name}", self.kind))
    }

    /// The labels injection gives the pod template. Skiff's own always (when the workload has
    /// a name); with `--linkerd-compat`, also those Linkerd's injector writes, which
    /// linkerd-viz's scrape job keeps pods by (`control-plane-ns`) and maps to the series'
    /// labels (`proxy-deployment` to `deployment`, `workload-ns` to `workload_ns`). Linkerd
    /// writes `workload-ns` even when the manifest names no namespace, as `""`; it is left
    /// out here, since Prometheus drops an empty label all the same.
    pub(super) fn labels(&self, options: &Options) -> Vec<(String, String)> {
        let mut labels = Vec::new();
        let kind = &self.kind;
        if let Some(name) = &self.name {
            labels.push((format!("skiff.dev/proxy-{kind}"), name.clone()));
        }
        if options.linkerd_compat {
            labels.push((
                "linkerd.io/control-plane-ns".to_owned(),
                options.linkerd_namespace.clone(),
            ));
            if let Some(name) = self
                .name
                .as_ref()
                .filter(|_| LINKERD_KINDS.contains(&kind.as_str()))
            {
                labels.push((format!("linkerd.io/proxy-{kind}"), name.clone()));
            }
            if let Some(namespace) = &self.namespace {
                labels.push(("linkerd.io/workload-ns".to_owned(), namespace.clone()));
            }
        }
        labels
    }
}
