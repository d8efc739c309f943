//! Service-name lookup that accepts every spelling a Kubernetes client uses for a service:
//! `web`, `web.ns`, `web.ns.svc`, `web.ns.svc.cluster.local`, each with or without a port.
//! As with cluster DNS search paths, the bare `web` means the service in the workload's own
//! namespace.

use std::collections::HashMap;

use http::uri::Authority;

/// Maps service names (and their namespace-qualified forms) to targets.
#[derive(Debug, Clone)]
pub struct Table<T> {
    cluster_domain: String,
    local_namespace: String,
    by_name: HashMap<String, Vec<(u16, T)>>,
}

impl<T> Table<T> {
    /// An empty table for a workload in `local_namespace`, in a cluster whose DNS domain is
    /// `cluster_domain` (`cluster.local`).
    pub fn new(cluster_domain: impl Into<String>, local_namespace: impl Into<String>) -> Self {
        Self {
            cluster_domain: cluster_domain.into(),
            local_namespace: local_namespace.into(),
            by_name: HashMap::new(),
        }
    }

    /// Adds service `name` in `namespace`, listening on `port`.
    pub fn insert(&mut self, name: &str, namespace: &str, port: u16, target: T)
    where
        T: Clone,
    {
        let name = name.to_ascii_lowercase();
        let local = (namespace == self.local_namespace).then(|| name.clone());
        let spellings = [
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.{}", self.cluster_domain),
        ];
        for key in local.into_iter().chain(spellings) {
            self.by_name
                .entry(key)
                .or_default()
                .push((port, target.clone()));
        }
    }

    /// Finds the target for `authority`. Without a port the first service of that name
    /// matches; with one, only the service on that port.
    pub fn lookup(&self, authority: &Authority) -> Option<&T> {
        let host = authority.host().trim_end_matches('.');
        let entries = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_name.get(&host.to_ascii_lowercase())
        } else {
            self.by_name.get(host)
        }?;
        match authority.port_u16() {
            None => entries.first().map(|(_, t)| t),
            Some(port) => entries.iter().find(|(p, _)| *p == port).map(|(_, t)| t),
        }
    }

    /// Whether the table has no services.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table<&'static str> {
        let mut t = Table::new("cluster.local", "prod");
        t.insert("web", "prod", 80, "web");
        t.insert("db", "prod", 5432, "db");
        t.insert("cache", "infra", 6379, "cache");
        t
    }

    fn find(t: &Table<&'static str>, a: &str) -> Option<&'static str> {
        t.lookup(&a.parse().unwrap()).copied()
    }

    #[test]
    fn every_kubernetes_spelling_matches() {
        let t = table();
        for a in [
            "web",
            "web:80",
            "web.prod",
            "web.prod.svc:80",
            "web.prod.svc.cluster.local",
            "WEB.Prod.svc.cluster.local.:80",
        ] {
            assert_eq!(find(&t, a), Some("web"), "{a}");
        }
    }

    #[test]
    fn wrong_port_namespace_or_name_misses() {
        let t = table();
        assert_eq!(find(&t, "web:8080"), None);
        assert_eq!(find(&t, "web.staging"), None);
        assert_eq!(find(&t, "api"), None);
        assert_eq!(find(&t, "db:5432"), Some("db"));
    }

    #[test]
    fn bare_names_mean_the_local_namespace() {
        let t = table();
        assert_eq!(find(&t, "cache"), None);
        assert_eq!(find(&t, "cache.infra"), Some("cache"));
        assert_eq!(
            find(&t, "cache.infra.svc.cluster.local:6379"),
            Some("cache")
        );
    }
}
