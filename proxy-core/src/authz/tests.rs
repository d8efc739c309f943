use http::{HeaderMap, Method, Response, StatusCode, Uri};
use tower::{service_fn, ServiceExt};

use super::*;
use crate::route::PathMatch;

#[derive(Debug, Default)]
struct Count(std::sync::Mutex<Vec<(&'static str, String)>>);

impl AuthzObserver for Count {
    fn decided(&self, v: &Verdict<'_>) {
        let route = v.route.unwrap_or_default().to_owned();
        self.0.lock().unwrap().push((v.decision, route));
    }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn policy(mode: Mode) -> Policy {
    Policy {
        mode,
        rules: Some(vec![Rule {
            name: "api-from-web".into(),
            sources: vec![WEB.into()],
            routes: vec![(
                "api-routes/metrics".into(),
                HttpMatch {
                    path: Some(PathMatch::Exact("/metrics".into())),
                    methods: vec![Method::GET],
                    ..Default::default()
                },
            )],
            ports: vec![5432],
            any_port: false,
        }]),
        default: DefaultPolicy::Allow,
        closed: None,
    }
}

fn head_check(p: &Policy, client: Option<&Client>, method: Method, path: &str) -> Decision {
    let uri: Uri = path.parse().unwrap();
    let headers = HeaderMap::new();
    p.check_http(
        client,
        &RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
        },
    )
}

#[test]
fn only_listed_sources_on_listed_routes_are_allowed() {
    let p = policy(Mode::Enforce);
    let web = Client::Identity(WEB.into());
    let db = Client::Identity("spiffe://cluster.local/ns/shop/sa/db".into());
    let plain = Client::Addr([127, 0, 0, 1].into());
    assert_eq!(
        head_check(&p, Some(&web), Method::GET, "/metrics"),
        Decision::Allowed {
            rule: "api-from-web".into(),
            route: "api-routes/metrics".into()
        }
    );
    assert_eq!(
        head_check(&p, Some(&web), Method::POST, "/metrics"),
        Decision::Denied
    );
    assert_eq!(
        head_check(&p, Some(&web), Method::GET, "/other"),
        Decision::Denied
    );
    assert_eq!(
        head_check(&p, Some(&db), Method::GET, "/metrics"),
        Decision::Denied
    );
    assert_eq!(
        head_check(&p, Some(&plain), Method::GET, "/metrics"),
        Decision::Denied
    );
    assert_eq!(
        head_check(&Policy::default(), Some(&plain), Method::GET, "/x"),
        Decision::Unrestricted,
        "no TrafficTarget: allow all"
    );
    assert!(matches!(
        p.check_tcp(Some(&web), 5432),
        Decision::Allowed { .. }
    ));
    assert_eq!(p.check_tcp(Some(&web), 6379), Decision::Denied);
    assert_eq!(p.check_tcp(None, 5432), Decision::Denied);
}

#[tokio::test]
async fn the_layer_refuses_with_403_unless_auditing() {
    let inner = service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(())) });
    for (mode, allowed) in [(Mode::Enforce, false), (Mode::Audit, true)] {
        let count = std::sync::Arc::new(Count::default());
        let layer =
            AuthorizeLayer::new(Arc::new(ArcSwap::from_pointee(policy(mode))), count.clone());
        let mut req = Request::post("/metrics").body(()).unwrap();
        req.extensions_mut().insert(Client::Identity(WEB.into()));
        let result = layer.layer(inner).oneshot(req).await;
        assert_eq!(result.is_ok(), allowed, "{mode:?}");
        if let Err(e) = result {
            let e = e.downcast_ref::<ProxyError>().unwrap();
            assert_eq!(
                (e.reason(), e.status()),
                (Reason::Forbidden, StatusCode::FORBIDDEN)
            );
        }
        let decision = if allowed { "audit-deny" } else { "deny" };
        assert_eq!(count.0.lock().unwrap()[0].0, decision);
    }
}

#[tokio::test]
async fn a_closed_policy_refuses_everyone_and_says_why() {
    let closed = Policy {
        closed: Some("the access rules are not known yet"),
        ..Policy::default()
    };
    let web = Client::Identity(WEB.into());
    assert_eq!(
        head_check(&closed, Some(&web), Method::GET, "/x"),
        Decision::Denied,
        "no rules known is not allow-all"
    );
    assert_eq!(closed.check_tcp(Some(&web), 5432), Decision::Denied);
    let inner = service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(())) });
    let layer = AuthorizeLayer::new(
        Arc::new(ArcSwap::from_pointee(closed)),
        std::sync::Arc::new(Count::default()),
    );
    let mut req = Request::get("/x").body(()).unwrap();
    req.extensions_mut().insert(web);
    let e = layer.layer(inner).oneshot(req).await.unwrap_err();
    let e = e.downcast_ref::<ProxyError>().unwrap();
    assert_eq!(e.reason(), Reason::Forbidden);
    assert!(e.detail().contains("not known yet"), "{}", e.detail());
}

#[test]
fn the_default_decides_only_while_no_rule_applies() {
    let web = Client::Identity(WEB.into());
    let with = |default| Policy {
        default,
        ..Policy::default()
    };
    assert_eq!(
        head_check(&with(DefaultPolicy::Allow), Some(&web), Method::GET, "/x"),
        Decision::Unrestricted
    );
    let deny = with(DefaultPolicy::Deny);
    assert_eq!(
        head_check(&deny, Some(&web), Method::GET, "/x"),
        Decision::Denied
    );
    assert!(!deny.audits());
    let audit = with(DefaultPolicy::Audit);
    assert_eq!(
        head_check(&audit, Some(&web), Method::GET, "/x"),
        Decision::Denied
    );
    assert!(audit.audits(), "denied by the default, let through");
    // Once rules apply, an auditing default audits nothing.
    let ruled = Policy {
        default: DefaultPolicy::Audit,
        ..policy(Mode::Enforce)
    };
    assert!(!ruled.audits());
}
