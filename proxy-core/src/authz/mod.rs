//! Authorization of inbound calls: who may call which route, as SMI `TrafficTarget` says.
//!
//! A [`Policy`] lists allow rules: a set of source identities and the routes they may call.
//! Once any rule exists for this workload, everything not allowed is denied (403
//! `forbidden`); with no rule at all, every caller is allowed, as SMI specifies. The caller's
//! identity is the verified peer identity of its mTLS connection ([`Client::Identity`]); a
//! plaintext caller has none and matches no source. In audit mode a denial is logged and
//! counted but the request goes through, so a policy can be tried before it is enforced.

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::Request;
use tower::{Layer, Service};

use crate::error::{ProxyError, Reason};
use crate::limit::Client;
use crate::route::{HttpMatch, RequestHead};
use crate::BoxError;

/// Whether denials are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Denied requests get 403.
    #[default]
    Enforce,
    /// Denied requests are logged and counted, then let through.
    Audit,
}

/// Who may call while no rule applies (no TrafficTarget names the workload).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Everyone.
    #[default]
    Allow,
    /// Nobody.
    Deny,
    /// Everyone, each call logged and counted as `deny` would refuse it.
    Audit,
}

/// One allow rule (one `TrafficTarget`).
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its name, for logs.
    pub name: Arc<str>,
    /// The SPIFFE IDs allowed.
    pub sources: Vec<String>,
    /// The routes allowed, by name; an empty list allows no HTTP route.
    pub routes: Vec<(Arc<str>, HttpMatch)>,
    /// The TCP ports allowed (from TCPRoutes); an empty list with `any_port` allows all.
    pub ports: Vec<u16>,
    /// Whether a TCPRoute allowed every port.
    pub any_port: bool,
}

/// The inbound authorization policy of this workload.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Enforce or audit.
    pub mode: Mode,
    /// The allow rules; `None` when no TrafficTarget selects this workload (then `default`
    /// decides).
    pub rules: Option<Vec<Rule>>,
    /// Who may call while `rules` is `None`.
    pub default: DefaultPolicy,
    /// Why every call is refused while the rules are not known (say, not yet read from the
    /// Kubernetes API): not knowing must not mean allowing. `None` normally.
    pub closed: Option<&'static str>,
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No policy applies.
    Unrestricted,
    /// Allowed by a rule, on a route.
    Allowed {
        /// The rule (TrafficTarget) that allowed it.
        rule: Arc<str>,
        /// The route that matched.
        route: Arc<str>,
    },
    /// Not allowed.
    Denied,
}

impl Policy {
    /// Decides an HTTP request from `client`.
    pub fn check_http(&self, client: Option<&Client>, head: &RequestHead<'_>) -> Decision {
        if self.closed.is_some() {
            return Decision::Denied;
        }
        let Some(rules) = &self.rules else {
            return self.by_default();
        };
        let Some(Client::Identity(id)) = client else {
            return Decision::Denied;
        };
        rules
            .iter()
            .filter(|r| r.sources.iter().any(|s| **s == **id))
            .flat_map(|r| r.routes.iter().map(move |route| (r, route)))
            .find(|(_, (_, m))| m.matches(head))
            .map_or(Decision::Denied, |(rule, (name, _))| Decision::Allowed {
                rule: rule.name.clone(),
                route: name.clone(),
            })
    }

    /// Decides a TCP connection from `client` to `port`.
    pub fn check_tcp(&self, client: Option<&Client>, port: u16) -> Decision {
        if self.closed.is_some() {
            return Decision::Denied;
        }
        let Some(rules) = &self.rules else {
            return self.by_default();
        };
        let Some(Client::Identity(id)) = client else {
            return Decision::Denied;
        };
        rules
            .iter()
            .filter(|r| r.sources.iter().any(|s| **s == **id))
            .find(|r| r.any_port || r.ports.contains(&port))
            .map_or(Decision::Denied, |rule| Decision::Allowed {
                rule: rule.name.clone(),
                route: format!("tcp:{port}").into(),
            })
    }
}

impl Policy {
    fn by_default(&self) -> Decision {
        match self.default {
            DefaultPolicy::Allow => Decision::Unrestricted,
            DefaultPolicy::Deny | DefaultPolicy::Audit => Decision::Denied,
        }
    }

    /// Whether a denial is only logged and counted, then let through: in audit mode, or
    /// by an auditing default when no rule applies (and the rules are known).
    pub fn audits(&self) -> bool {
        self.mode == Mode::Audit
            || (self.rules.is_none()
                && self.closed.is_none()
                && self.default == DefaultPolicy::Audit)
    }
}

impl DefaultPolicy {
    /// Its name in config and metrics (Linkerd's name for the first).
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Allow => "all-unauthenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }
}

/// One decision, as the observer is told it.
#[derive(Clone, Copy, Debug)]
pub struct Verdict<'a> {
    /// `allow`, `deny`, or `audit-deny` when a denial was only logged.
    pub decision: &'static str,
    /// The rule (TrafficTarget) that allowed the call; `None` when no rule applied.
    pub rule: Option<&'a str>,
    /// The route that matched (`group/match`, or `tcp:<port>`); `None` when none did.
    pub route: Option<&'a str>,
    /// The caller.
    pub client: Option<&'a Client>,
    /// Who may call while no rule applies: the workload's server-wide policy.
    pub default: DefaultPolicy,
    /// Whether this was a TCP connection rather than an HTTP request.
    pub tcp: bool,
}

impl<'a> Verdict<'a> {
    /// The verdict of `decision` by `policy` on a call from `client`: `None` when nothing is
    /// counted (a denial let through by neither audit nor enforcement cannot happen).
    pub fn of(
        policy: &Policy,
        decision: &'a Decision,
        client: Option<&'a Client>,
        tcp: bool,
    ) -> Self {
        let (decision, rule, route) = match decision {
            Decision::Unrestricted => ("allow", None, None),
            Decision::Allowed { rule, route } => ("allow", Some(&**rule), Some(&**route)),
            Decision::Denied if policy.audits() => ("audit-deny", None, None),
            Decision::Denied => ("deny", None, None),
        };
        Self {
            decision,
            rule,
            route,
            client,
            default: policy.default,
            tcp,
        }
    }
}

/// What authorization decided for a request it let through, left in the request's
/// extensions for the layers below (the inbound series are labelled with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// The rule (TrafficTarget) that allowed it; `None` when no rule applied.
    pub rule: Option<Arc<str>>,
    /// The route that matched (`group/match`); `None` when none did.
    pub route: Option<Arc<str>>,
    /// The workload's default policy.
    pub default: DefaultPolicy,
    /// Whether a denial was only logged (audit).
    pub audited: bool,
}

/// Where decisions are counted.
pub trait AuthzObserver: Send + Sync + std::fmt::Debug + 'static {
    /// One decision.
    fn decided(&self, verdict: &Verdict<'_>);
}

/// Refuses requests the live [`Policy`] does not allow.
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    policy: Arc<ArcSwap<Policy>>,
    observer: Arc<dyn AuthzObserver>,
}

/// Applies [`Authorize`].
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    policy: Arc<ArcSwap<Policy>>,
    observer: Arc<dyn AuthzObserver>,
}

impl AuthorizeLayer {
    /// Checks requests against `policy` (swapped on config reload), counting in `observer`.
    pub fn new(policy: Arc<ArcSwap<Policy>>, observer: Arc<dyn AuthzObserver>) -> Self {
        Self { policy, observer }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
            observer: self.observer.clone(),
        }
    }
}

/// The future of [`Authorize`]: the inner future, or a `forbidden` rejection.
pub type ResponseFuture<F> = crate::future::MaybeRejected<F>;

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let policy = self.policy.load();
        let head = RequestHead {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        };
        let client = req.extensions().get::<Client>();
        let decision = policy.check_http(client, &head);
        self.observer
            .decided(&Verdict::of(&policy, &decision, client, false));
        let authorized = |rule, route, audited| Authorized {
            rule,
            route,
            default: policy.default,
            audited,
        };
        match decision {
            Decision::Unrestricted => {
                req.extensions_mut().insert(authorized(None, None, false));
            }
            Decision::Allowed { rule, route } => {
                crate::notes::note(req.extensions(), |n| {
                    n.authz = Some(format!("allow {route}"))
                });
                req.extensions_mut()
                    .insert(authorized(Some(rule), Some(route), false));
            }
            Decision::Denied => {
                let source = match client {
                    Some(Client::Identity(id)) => id.to_string(),
                    _ => "unauthenticated".to_owned(),
                };
                let path = head.uri.path();
                if policy.audits() {
                    crate::notes::note(req.extensions(), |n| n.authz = Some("audit-deny".into()));
                    tracing::warn!(%source, method = %head.method, path, "authorization would deny (audit mode)");
                    req.extensions_mut().insert(authorized(None, None, true));
                } else {
                    tracing::info!(%source, method = %head.method, path, "authorization denied");
                    let why = policy.closed.map(|c| format!(": {c}")).unwrap_or_default();
                    let err = ProxyError::new(
                        Reason::Forbidden,
                        format!("{source} may not call {} {path}{why}", head.method),
                    );
                    return ResponseFuture::new(Err(err));
                }
            }
        }
        ResponseFuture::new(Ok(self.inner.call(req)))
    }
}
