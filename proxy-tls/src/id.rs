//! SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing follows the SPIFFE ID rules (lower-case trust domain of letters, digits, `-`, `.`
//! and `_`; a non-root path without empty, `.` or `..` segments), so an ID that passes here
//! is one that every SPIFFE implementation reads the same way.

use std::fmt;
use std::str::FromStr;

/// A SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

/// Why a string is not a valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {id:?}: {why}")]
pub struct IdError {
    id: String,
    why: &'static str,
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = |why| IdError {
            id: s.to_owned(),
            why,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("the scheme must be spiffe://"))?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if domain.is_empty() {
            return Err(err("the trust domain is empty"));
        }
        let domain_ok = domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !domain_ok {
            return Err(err(
                "the trust domain may hold only lower-case letters, digits, '-', '.' and '_'",
            ));
        }
        if path.is_empty() {
            return Err(err(
                "a workload ID needs a path (the root ID names a trust domain)",
            ));
        }
        for segment in path.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(err("the path has an empty, '.' or '..' segment"));
            }
            let segment_ok = segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !segment_ok {
                return Err(err(
                    "path segments may hold only letters, digits, '-', '.' and '_'",
                ));
            }
        }
        Ok(Self {
            trust_domain: domain.to_owned(),
            path: format!("/{path}"),
        })
    }
}

impl SpiffeId {
    /// The workload ID of service account `sa` in namespace `ns`, in `trust_domain`.
    pub fn workload(trust_domain: &str, ns: &str, sa: &str) -> Result<Self, IdError> {
        format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}").parse()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace and service account, when the path has the Kubernetes shape.
    pub fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut parts = self.path.split('/').skip(1);
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The TLS server name a client sends to reach this workload: a DNS-shaped name
    /// (`<sa>.<ns>.serviceaccount.identity.<trust-domain>`), so a server can refuse
    /// connections meant for another identity before the handshake completes.
    pub fn server_name(&self) -> String {
        match self.workload_parts() {
            Some((ns, sa)) => format!("{sa}.{ns}.serviceaccount.identity.{}", self.trust_domain),
            None => format!("identity.{}", self.trust_domain),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse_and_print_back() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(id.workload_parts(), Some(("shop", "web")));
        assert_eq!(
            id.server_name(),
            "web.shop.serviceaccount.identity.cluster.local"
        );
        assert_eq!(
            SpiffeId::workload("cluster.local", "shop", "web").unwrap(),
            id
        );
    }

    #[test]
    fn invalid_ids_are_refused() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local/ns//sa",
            "spiffe://cluster.local/ns/./sa",
            "spiffe://cluster.local/ns/../sa",
            "spiffe://cluster.local/ns/a b",
            "spiffe://user@cluster.local/ns/a",
            "spiffe://cluster.local:8443/ns/a",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
