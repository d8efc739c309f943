//! `spec.discovery`: where services and endpoints come from besides the config file. With
//! `kubernetes` set, Skiff reads Services and EndpointSlices from the cluster's API
//! (`docs/discovery.md`), so a workload's config needs no `services` table.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Dur;

/// Sources of services and endpoints beyond the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// The Kubernetes API; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSpec>,
}

/// How to read the Kubernetes API.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesSpec {
    /// A kubeconfig file (for running on a laptop against a cluster); default: the pod's
    /// service-account credentials (in-cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespaces whose Services may be called; empty: all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// A service's endpoints are watched from its first request until it has had none for
    /// this long; at least 1s, as a shorter one would restart the watch (and make the next
    /// request wait for its first answer) between requests of any ordinary client.
    #[serde(deserialize_with = "at_least_a_second")]
    pub endpoints_idle_timeout: Dur,
}

fn at_least_a_second<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let idle = Dur::deserialize(d)?;
    if idle < Dur::secs(1) {
        return Err(serde::de::Error::custom(format!(
            "{idle} is too short: at least 1s, or endpoints would be watched again for \
             every other request"
        )));
    }
    Ok(idle)
}

impl Default for KubernetesSpec {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            namespaces: Vec::new(),
            endpoints_idle_timeout: Dur::secs(300),
        }
    }
}
