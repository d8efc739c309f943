//! Linkerd's inbound authorization families: `inbound_http_authz_allow_total`,
//! `inbound_http_authz_deny_total` and their `inbound_tcp_authz_*` twins, labelled with the
//! server, route and authorization that decided, and the caller.
//!
//! Skiff has no `Server` resource: the server is the inbound port under the workload's
//! default policy (`srv_kind="default"`, `srv_name` the policy's name, as Linkerd names its
//! default servers). An SMI TrafficTarget is the authorization (`authz_kind="traffictarget"`)
//! and its HTTPRouteGroup the route; a call no rule covers is allowed by the default
//! (`authz_kind="default"`) on the default route (`route_name="default"`). A request
//! denied here is counted here only, never in `request_total` / `response_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use proxy_core::authz::Verdict;
use proxy_core::limit::Client;

use crate::http::OTHER;
use crate::Labels;

/// SMI's access group: the group of a TrafficTarget.
const ACCESS_GROUP: &str = "access.smi-spec.io";
/// SMI's specs group: the group of an HTTPRouteGroup.
const SPECS_GROUP: &str = "specs.smi-spec.io";

/// The authorization families.
#[derive(Debug)]
pub struct AuthzFamilies {
    http_allow: Family<Labels, Counter>,
    http_deny: Family<Labels, Counter>,
    tcp_allow: Family<Labels, Counter>,
    tcp_deny: Family<Labels, Counter>,
    // Handles by the hash of what distinguishes one series from another, computed from the
    // borrowed decision: a decision costs a hash and a compare, no allocation; the owned key
    // is made once, on a series' first decision.
    cache: Mutex<Cache>,
    // The application's `ip:port` (`target_addr`) and the inbound port (`srv_port`).
    server: Mutex<(String, String)>,
    identity: AtomicBool,
    max_clients: AtomicUsize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    decision: &'static str,
    tcp: bool,
    default: &'static str,
    rule: Option<String>,
    route: Option<String>,
    client: Option<String>,
}

/// The handles, by hash (with the keys that share it), and how many there are.
#[derive(Debug, Default)]
struct Cache {
    by_hash: HashMap<u64, Vec<(Key, Counter)>>,
    len: usize,
}

/// A decision as its series tells it apart, borrowed from the request.
#[derive(Hash)]
struct Seen<'a> {
    decision: &'static str,
    tcp: bool,
    default: &'static str,
    rule: Option<&'a str>,
    route: Option<&'a str>,
    client: Option<&'a str>,
}

impl Seen<'_> {
    fn hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        Hash::hash(self, &mut h);
        h.finish()
    }

    fn is(&self, key: &Key) -> bool {
        self.decision == key.decision
            && self.tcp == key.tcp
            && self.default == key.default
            && self.rule == key.rule.as_deref()
            && self.route == key.route.as_deref()
            && self.client == key.client.as_deref()
    }

    fn to_key(&self) -> Key {
        Key {
            decision: self.decision,
            tcp: self.tcp,
            default: self.default,
            rule: self.rule.map(str::to_owned),
            route: self.route.map(str::to_owned),
            client: self.client.map(str::to_owned),
        }
    }
}

impl AuthzFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            http_allow: Family::default(),
            http_deny: Family::default(),
            tcp_allow: Family::default(),
            tcp_deny: Family::default(),
            cache: Mutex::default(),
            server: Mutex::default(),
            identity: AtomicBool::new(false),
            max_clients: AtomicUsize::new(1000),
        };
        registry.register(
            "inbound_http_authz_allow",
            "Inbound HTTP requests allowed, by server, route and authorization",
            this.http_allow.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "Inbound HTTP requests denied (answered 403), by server and route",
            this.http_deny.clone(),
        );
        registry.register(
            "inbound_tcp_authz_allow",
            "Inbound TCP connections allowed, by server and authorization",
            this.tcp_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "Inbound TCP connections denied (closed), by server",
            this.tcp_deny.clone(),
        );
        this
    }

    /// Where the application listens (`target_addr`), the inbound port (`srv_port`),
    /// whether this proxy has an identity, and how many callers are told apart.
    pub fn set_server(&self, target_addr: &str, port: u16, identity: bool, max_clients: usize) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if server.0 != target_addr || server.1 != port.to_string() {
            *server = (target_addr.to_owned(), port.to_string());
            // Handles carry the old labels: resolve them again.
            *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Cache::default();
        }
        self.identity.store(identity, Ordering::Relaxed);
        self.max_clients
            .store(max_clients.max(1), Ordering::Relaxed);
    }

    /// Counts one decision.
    pub fn decided(&self, v: &Verdict<'_>) {
        let mut seen = Seen {
            decision: v.decision,
            tcp: v.tcp,
            default: v.default.as_str(),
            rule: v.rule,
            route: v.route,
            client: match v.client {
                Some(Client::Identity(id)) => Some(id),
                _ => None,
            },
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let Cache { by_hash, len } = &mut *cache;
        let mut hash = seen.hash();
        let known = |by_hash: &HashMap<u64, Vec<(Key, Counter)>>, hash, seen: &Seen<'_>| {
            by_hash
                .get(&hash)
                .and_then(|keys| keys.iter().find(|(k, _)| seen.is(k)))
                .map(|(_, c)| c.clone())
        };
        let counter = match known(by_hash, hash, &seen) {
            Some(c) => c,
            None => {
                if *len >= self.max_clients.load(Ordering::Relaxed) && seen.client.is_some() {
                    // Beyond the cap, callers are told apart no more.
                    seen.client = Some(OTHER);
                    hash = seen.hash();
                }
                match known(by_hash, hash, &seen) {
                    Some(c) => c,
                    None => {
                        let key = seen.to_key();
                        let c = self.family(&key).get_or_create(&self.labels(&key)).clone();
                        by_hash.entry(hash).or_default().push((key, c.clone()));
                        *len += 1;
                        c
                    }
                }
            }
        };
        counter.inc();
    }

    fn family(&self, key: &Key) -> &Family<Labels, Counter> {
        match (key.tcp, key.decision == "allow") {
            (false, true) => &self.http_allow,
            (false, false) => &self.http_deny,
            (true, true) => &self.tcp_allow,
            (true, false) => &self.tcp_deny,
        }
    }

    fn labels(&self, key: &Key) -> Labels {
        let (target_addr, port) = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut labels: Labels = vec![("target_addr", target_addr)];
        labels.extend(policy_labels(&Policy {
            default: key.default,
            port: &port,
            tcp: key.tcp,
            allowed: key.decision == "allow",
            rule: key.rule.as_deref(),
            route: key.route.as_deref(),
        }));
        match &key.client {
            Some(id) => {
                labels.push(("tls", "true".to_owned()));
                labels.push(("client_id", id.clone()));
            }
            None if self.identity.load(Ordering::Relaxed) => {
                labels.push(("tls", "no_identity".to_owned()));
                labels.push(("no_tls_reason", "no_tls_from_remote".to_owned()));
            }
            None => labels.push(("tls", "disabled".to_owned())),
        }
        labels
    }
}

/// What decided a call, for its labels.
pub(crate) struct Policy<'a> {
    /// The default policy's name (the server's).
    pub(crate) default: &'static str,
    /// The inbound port.
    pub(crate) port: &'a str,
    /// A TCP connection: no route.
    pub(crate) tcp: bool,
    /// Allowed: an authorization is named.
    pub(crate) allowed: bool,
    /// The TrafficTarget that allowed it.
    pub(crate) rule: Option<&'a str>,
    /// The route (`group/match`) that matched.
    pub(crate) route: Option<&'a str>,
}

/// Linkerd's server, route and (for an allowed call) authorization labels of a decision.
pub(crate) fn policy_labels(p: &Policy<'_>) -> Labels {
    let mut labels: Labels = vec![
        ("srv_group", String::new()),
        ("srv_kind", "default".to_owned()),
        ("srv_name", p.default.to_owned()),
        ("srv_port", p.port.to_owned()),
    ];
    if !p.tcp {
        // `group/match` names an HTTPRouteGroup's match; Linkerd's route is the object.
        let (group, kind, name) = match p.route {
            Some(route) => (
                SPECS_GROUP,
                "httproutegroup",
                route.split('/').next().unwrap_or(route),
            ),
            None => ("", "default", "default"),
        };
        labels.push(("route_group", group.to_owned()));
        labels.push(("route_kind", kind.to_owned()));
        labels.push(("route_name", name.to_owned()));
    }
    if p.allowed {
        let (group, kind, name) = match p.rule {
            Some(rule) => (ACCESS_GROUP, "traffictarget", rule),
            None => ("", "default", p.default),
        };
        labels.push(("authz_group", group.to_owned()));
        labels.push(("authz_kind", kind.to_owned()));
        labels.push(("authz_name", name.to_owned()));
    }
    labels
}

/// The labels of an inbound request authorization let through, on port `port`: as
/// [`policy_labels`], and an audited denial names the default policy that let it by.
pub(crate) fn authorized_labels(a: &proxy_core::authz::Authorized, port: &str) -> Labels {
    policy_labels(&Policy {
        default: a.default.as_str(),
        port,
        tcp: false,
        allowed: true,
        rule: a.rule.as_deref(),
        route: a.route.as_deref(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::authz::DefaultPolicy;

    /// The server labels of the app at 10.0.0.7:8080 behind inbound port 4143, no rule.
    const SERVER: [(&str, &str); 5] = [
        ("target_addr", "10.0.0.7:8080"),
        ("srv_group", ""),
        ("srv_kind", "default"),
        ("srv_name", "all-unauthenticated"),
        ("srv_port", "4143"),
    ];

    fn value(family: &Family<Labels, Counter>, labels: &[(&'static str, &str)]) -> u64 {
        let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        family.get_or_create(&labels).get()
    }

    #[test]
    fn tcp_decisions_count_in_their_own_families_without_a_route() {
        let f = AuthzFamilies::register(&mut Registry::default());
        f.set_server("10.0.0.7:8080", 4143, false, 1000);
        let verdict = |decision, rule| Verdict {
            decision,
            rule,
            route: rule.map(|_| "tcp:5432"),
            client: None,
            default: DefaultPolicy::Allow,
            tcp: true,
        };
        f.decided(&verdict("allow", Some("db-clients")));
        f.decided(&verdict("deny", None));
        f.decided(&verdict("deny", None));
        let server = SERVER;
        let allowed = [
            &server[..],
            &[
                ("authz_group", "access.smi-spec.io"),
                ("authz_kind", "traffictarget"),
                ("authz_name", "db-clients"),
                ("tls", "disabled"),
            ],
        ]
        .concat();
        assert_eq!(value(&f.tcp_allow, &allowed), 1);
        let denied = [&server[..], &[("tls", "disabled")]].concat();
        assert_eq!(value(&f.tcp_deny, &denied), 2);
        assert_eq!(value(&f.http_deny, &denied), 0, "not an HTTP decision");
    }

    #[test]
    fn each_decision_is_counted_with_the_server_route_and_authorization_that_made_it() {
        let f = AuthzFamilies::register(&mut Registry::default());
        f.set_server("10.0.0.7:8080", 4143, true, 1000);
        let web = Client::Identity("spiffe://td/ns/shop/sa/web".into());
        let verdict = |decision, rule, route, client| Verdict {
            decision,
            rule,
            route,
            client,
            default: DefaultPolicy::Allow,
            tcp: false,
        };
        f.decided(&verdict(
            "allow",
            Some("web-reads"),
            Some("api-routes/reads"),
            Some(&web),
        ));
        f.decided(&verdict(
            "allow",
            Some("web-reads"),
            Some("api-routes/reads"),
            Some(&web),
        ));
        f.decided(&verdict("deny", None, None, Some(&web)));
        f.decided(&verdict("allow", None, None, None));
        let server = SERVER;
        let by_rule = [
            &server[..],
            &[
                ("route_group", "specs.smi-spec.io"),
                ("route_kind", "httproutegroup"),
                ("route_name", "api-routes"),
                ("authz_group", "access.smi-spec.io"),
                ("authz_kind", "traffictarget"),
                ("authz_name", "web-reads"),
                ("tls", "true"),
                ("client_id", "spiffe://td/ns/shop/sa/web"),
            ],
        ]
        .concat();
        assert_eq!(value(&f.http_allow, &by_rule), 2);
        let denied = [
            &server[..],
            &[
                ("route_group", ""),
                ("route_kind", "default"),
                ("route_name", "default"),
                ("tls", "true"),
                ("client_id", "spiffe://td/ns/shop/sa/web"),
            ],
        ]
        .concat();
        assert_eq!(value(&f.http_deny, &denied), 1);
        let by_default = [
            &server[..],
            &[
                ("route_group", ""),
                ("route_kind", "default"),
                ("route_name", "default"),
                ("authz_group", ""),
                ("authz_kind", "default"),
                ("authz_name", "all-unauthenticated"),
                ("tls", "no_identity"),
                ("no_tls_reason", "no_tls_from_remote"),
            ],
        ]
        .concat();
        assert_eq!(value(&f.http_allow, &by_default), 1);
    }
}
