//! SMI access control: `TrafficTarget` and `TCPRoute` (every version, converted to
//! `access.smi-spec.io/v1alpha3` and `specs.smi-spec.io/v1alpha4` by `versions`), resolved
//! into the allow rules of this workload.
//!
//! Only TrafficTargets whose destination is this proxy's own service account count. Their
//! sources become SPIFFE IDs in this proxy's trust domain; their HTTPRouteGroup rules become
//! route matches (all of the group's matches when `matches` is omitted), their TCPRoute rules
//! become ports (every port when `ports` is empty).

use proxy_core::authz::Rule;
use proxy_tls::SpiffeId;
use serde::Deserialize;

use super::resolve::Problem;
use super::{smi_group_matches, Document, HttpRouteGroupSpec, Object};

#[derive(Clone, Debug, Deserialize)]
pub(in crate::config) struct TrafficTargetSpec {
    destination: IdentityRef,
    rules: Vec<TargetRule>,
    sources: Vec<IdentityRef>,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct IdentityRef {
    #[serde(rename = "kind")]
    _kind: ServiceAccountKind,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    /// v1alpha1 and v1alpha2: the one port a destination may be called on.
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
enum ServiceAccountKind {
    ServiceAccount,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct TargetRule {
    kind: RuleKind,
    name: String,
    #[serde(default)]
    matches: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
enum RuleKind {
    #[serde(rename = "HTTPRouteGroup")]
    HttpRouteGroup,
    #[serde(rename = "TCPRoute")]
    TcpRoute,
}

#[derive(Clone, Debug, Deserialize)]
pub(in crate::config) struct TcpRouteSpec {
    matches: TcpMatches,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct TcpMatches {
    #[serde(default, rename = "name")]
    _name: Option<String>,
    #[serde(default)]
    ports: Vec<u16>,
}

impl TrafficTargetSpec {
    /// A spec from its parts (TrafficTarget v1alpha1 has them at the top of the object).
    pub(super) fn new(
        destination: IdentityRef,
        rules: Vec<TargetRule>,
        sources: Vec<IdentityRef>,
    ) -> Self {
        Self {
            destination,
            rules,
            sources,
        }
    }
}

impl TcpRouteSpec {
    /// A TCPRoute of a version without `matches`: every port.
    pub(super) fn every_port() -> Self {
        Self {
            matches: TcpMatches {
                _name: None,
                ports: Vec::new(),
            },
        }
    }
}

/// This workload's access policy.
#[derive(Clone, Debug, Default)]
pub struct AccessSpec {
    /// The allow rules; `None` when no TrafficTarget names this workload (allow all).
    pub rules: Option<Vec<Rule>>,
}

/// Resolves the TrafficTargets naming `own` as their destination.
pub(in crate::config) fn resolve(
    own: Option<&SpiffeId>,
    local_ns: &str,
    documents: &[(usize, Document)],
) -> Result<AccessSpec, Vec<Problem>> {
    let mut problems = Vec::new();
    let targets: Vec<(usize, &Object<TrafficTargetSpec>)> = documents
        .iter()
        .filter_map(|(i, d)| match d {
            Document::TrafficTarget(t) => Some((*i, t)),
            _ => None,
        })
        .collect();
    let Some(own) = own else {
        if let Some((index, _)) = targets.first() {
            problems.push((
                *index,
                "kind: a TrafficTarget is enforced by the destination's proxy, which needs \
                 `spec.identity` to know who it is"
                    .to_owned(),
            ));
            return Err(problems);
        }
        return Ok(AccessSpec::default());
    };
    let Some((own_ns, own_sa)) = own.workload_parts() else {
        return Ok(AccessSpec::default());
    };
    let find = |kind: &str, ns: &str, name: &str| {
        documents.iter().find_map(|(_, d)| match (kind, d) {
            ("HTTPRouteGroup", Document::HttpRouteGroup(g))
                if g.metadata.name == name
                    && g.metadata.namespace.as_deref().unwrap_or(local_ns) == ns =>
            {
                Some(d)
            }
            ("TCPRoute", Document::TcpRoute(t))
                if t.metadata.name == name
                    && t.metadata.namespace.as_deref().unwrap_or(local_ns) == ns =>
            {
                Some(d)
            }
            _ => None,
        })
    };
    let mut rules = Vec::new();
    let mut selected = false;
    for (index, target) in targets {
        let ns = target.metadata.namespace.as_deref().unwrap_or(local_ns);
        let dest = &target.spec.destination;
        if dest.name != own_sa || dest.namespace.as_deref().unwrap_or(ns) != own_ns {
            continue;
        }
        selected = true;
        let mut rule = Rule {
            name: target.metadata.name.as_str().into(),
            sources: target
                .spec
                .sources
                .iter()
                .map(|s| {
                    let sns = s.namespace.as_deref().unwrap_or(ns);
                    format!("spiffe://{}/ns/{sns}/sa/{}", own.trust_domain(), s.name)
                })
                .collect(),
            routes: Vec::new(),
            ports: Vec::new(),
            any_port: false,
        };
        for (i, r) in target.spec.rules.iter().enumerate() {
            match r.kind {
                RuleKind::HttpRouteGroup => {
                    let Some(Document::HttpRouteGroup(group)) = find("HTTPRouteGroup", ns, &r.name)
                    else {
                        problems.push((
                            index,
                            format!(
                                "spec.rules[{i}]: no HTTPRouteGroup {} in namespace {ns}",
                                r.name
                            ),
                        ));
                        continue;
                    };
                    add_group(group, &r.matches, &mut rule, index, i, &mut problems);
                }
                RuleKind::TcpRoute => {
                    let Some(Document::TcpRoute(tcp)) = find("TCPRoute", ns, &r.name) else {
                        problems.push((
                            index,
                            format!("spec.rules[{i}]: no TCPRoute {} in namespace {ns}", r.name),
                        ));
                        continue;
                    };
                    if tcp.spec.matches.ports.is_empty() {
                        rule.any_port = true;
                    }
                    rule.ports.extend(&tcp.spec.matches.ports);
                }
            }
        }
        // v1alpha1 and v1alpha2 could name the destination's port: TCP on that port only.
        if let Some(port) = dest.port {
            if rule.any_port {
                rule.any_port = false;
                rule.ports = vec![port];
            } else {
                rule.ports.retain(|p| *p == port);
            }
        }
        rules.push(rule);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(AccessSpec {
        rules: selected.then_some(rules),
    })
}

fn add_group(
    group: &Object<HttpRouteGroupSpec>,
    names: &[String],
    rule: &mut Rule,
    index: usize,
    i: usize,
    problems: &mut Vec<Problem>,
) {
    for name in names {
        if !group.spec.matches.iter().any(|m| m.name == *name) {
            problems.push((
                index,
                format!(
                    "spec.rules[{i}].matches: HTTPRouteGroup {} has no match {name}",
                    group.metadata.name
                ),
            ));
        }
    }
    for m in &group.spec.matches {
        if names.is_empty() || names.contains(&m.name) {
            let route: std::sync::Arc<str> = format!("{}/{}", group.metadata.name, m.name).into();
            for alternative in smi_group_matches(m) {
                rule.routes.push((route.clone(), alternative));
            }
        }
    }
}
