//! The kinds the fake serves, and the discovery documents that describe them.
//!
//! Clients find a resource's URL from discovery before they can list it: kubectl maps
//! `services` or `httproutes.gateway.networking.k8s.io` to a group, version and scope from
//! `/api`, `/apis` and each group-version's `APIResourceList`, and kube-rs's dynamic APIs do
//! the same. The documents are built from the one registry the store and the router use, so
//! a kind cannot be listed in discovery and missing from the URLs, or the other way round.

use serde_json::{json, Value};

/// The verbs every kind answers to, as discovery lists them.
const VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// A group, its versions (the preferred one first), and the kinds each version serves:
/// plural, kind, namespaced, short names.
type Builtin = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str, bool, &'static [&'static str])],
);

/// The kinds Skiff reads (and the namespaces they live in), by group. A kind listed for a
/// group is served in every version of the group given with it.
const BUILTIN: &[Builtin] = &[
    (
        "",
        &["v1"],
        &[
            ("services", "Service", true, &["svc"]),
            ("pods", "Pod", true, &["po"]),
            ("namespaces", "Namespace", false, &["ns"]),
        ],
    ),
    (
        "discovery.k8s.io",
        &["v1"],
        &[("endpointslices", "EndpointSlice", true, &[])],
    ),
    (
        "gateway.networking.k8s.io",
        &["v1", "v1beta1"],
        &[("httproutes", "HTTPRoute", true, &[])],
    ),
    (
        "gateway.networking.k8s.io",
        &["v1", "v1alpha2"],
        &[("grpcroutes", "GRPCRoute", true, &[])],
    ),
    (
        "split.smi-spec.io",
        &["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"],
        &[("trafficsplits", "TrafficSplit", true, &[])],
    ),
    (
        "specs.smi-spec.io",
        &["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"],
        &[
            ("httproutegroups", "HTTPRouteGroup", true, &[]),
            ("tcproutes", "TCPRoute", true, &[]),
        ],
    ),
    (
        "access.smi-spec.io",
        &["v1alpha3", "v1alpha2", "v1alpha1"],
        &[("traffictargets", "TrafficTarget", true, &[])],
    ),
    (
        "policy.linkerd.io",
        &["v1beta3"],
        &[("httproutes", "HTTPRoute", true, &[])],
    ),
];

/// One resource of one group-version: what a URL segment like `services` stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResourceType {
    /// API group, empty for the core group.
    pub(crate) group: String,
    /// Version within the group.
    pub(crate) version: String,
    /// Plural resource name, as in URLs.
    pub(crate) plural: String,
    /// Kind of its objects.
    pub(crate) kind: String,
    /// Whether its objects live in a namespace.
    pub(crate) namespaced: bool,
    /// Short names kubectl accepts (`svc`).
    pub(crate) short_names: Vec<String>,
}

impl ResourceType {
    /// `v1` or `group/version`, as in objects' `apiVersion`.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `httproutes.gateway.networking.k8s.io`: the name the API server uses
    /// for the resource in messages, and the one requests are counted under.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Every kind the fake serves, in a fixed order (an index names a kind everywhere).
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    types: Vec<ResourceType>,
}

/// Splits `v1` or `group/version` into group and version.
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

impl Registry {
    /// The built-in kinds.
    pub(crate) fn builtin() -> Self {
        let mut registry = Self { types: Vec::new() };
        for (group, versions, kinds) in BUILTIN {
            for version in *versions {
                for (plural, kind, namespaced, short) in *kinds {
                    registry.add(ResourceType {
                        group: (*group).into(),
                        version: (*version).into(),
                        plural: (*plural).into(),
                        kind: (*kind).into(),
                        namespaced: *namespaced,
                        short_names: short.iter().map(|s| (*s).into()).collect(),
                    });
                }
            }
        }
        registry
    }

    /// Adds a kind, unless the same group, version and plural is already there.
    pub(crate) fn add(&mut self, resource: ResourceType) {
        if self
            .find(&resource.group, &resource.version, &resource.plural)
            .is_none()
        {
            self.types.push(resource);
        }
    }

    /// The kind at `index`.
    pub(crate) fn get(&self, index: usize) -> &ResourceType {
        &self.types[index]
    }

    /// The index of a resource by URL segments.
    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The index of a resource by an object's `apiVersion` and `kind`.
    pub(crate) fn find_kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        let (group, version) = split_api_version(api_version);
        self.types
            .iter()
            .position(|t| t.group == group && t.version == version && t.kind == kind)
    }

    /// Stops serving a group-version.
    pub(crate) fn remove(&mut self, group: &str, version: &str) {
        self.types
            .retain(|t| !(t.group == group && t.version == version));
    }

    /// Stops serving one kind of a group-version.
    pub(crate) fn remove_kind(&mut self, group: &str, version: &str, kind: &str) {
        self.types
            .retain(|t| !(t.group == group && t.version == version && t.kind == kind));
    }

    /// Whether a group-version is served at all.
    fn serves(&self, group: &str, version: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.group == group && t.version == version)
    }

    /// Named groups in order of first appearance, each with its versions (preferred first).
    fn groups(&self) -> Vec<(&str, Vec<&str>)> {
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            let at = match groups.iter().position(|(g, _)| *g == t.group) {
                Some(at) => at,
                None => {
                    groups.push((&t.group, Vec::new()));
                    groups.len() - 1
                }
            };
            if !groups[at].1.contains(&t.version.as_str()) {
                groups[at].1.push(&t.version);
            }
        }
        groups
    }

    /// `/api`: the core group's versions.
    pub(crate) fn api_versions(&self, server_address: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        })
    }

    /// `/apis`: every named group.
    pub(crate) fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(group, versions)| group_doc(group, &versions))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/{group}`: one named group, or `None` if it is not served.
    pub(crate) fn group(&self, group: &str) -> Option<Value> {
        let (name, versions) = self.groups().into_iter().find(|(g, _)| *g == group)?;
        let mut doc = group_doc(name, &versions);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        Some(doc)
    }

    /// `/api/v1` or `/apis/{group}/{version}`: the resources of a group-version, or `None`
    /// if it is not served.
    pub(crate) fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        if !self.serves(group, version) {
            return None;
        }
        let resources: Vec<Value> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .map(|t| {
                let mut doc = json!({
                    "name": t.plural,
                    "singularName": t.kind.to_ascii_lowercase(),
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": VERBS,
                });
                if !t.short_names.is_empty() {
                    doc["shortNames"] = json!(t.short_names);
                }
                doc
            })
            .collect();
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
    }
}

/// An `APIGroup` body (without kind and apiVersion, which only `/apis/{group}` carries).
fn group_doc(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions[0],
    })
}

/// `/version`: a recent Kubernetes release, so clients that check the server's version
/// (kubectl's version skew warning, gcloud's kubectl dispatcher) pick current behaviour.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.4",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
