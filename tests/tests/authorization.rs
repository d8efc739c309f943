//! Authorization between two real meshed proxies, step by step as in the SMI conformance
//! tests: everyone may call a workload no TrafficTarget names; once one does, only listed
//! sources on listed routes; TrafficTargets added and removed by reload; audit mode, which
//! counts denials without enforcing them.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use proxy_tls::devca::DevCa;
use serde_json::Value;
use skiff_e2e::mesh::{client_proxy, credentials, identity};
use skiff_e2e::*;

/// The routes of shop/api that TrafficTargets name: `metrics` (any method) and `reads`.
fn routes() -> Value {
    json!({
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "api-routes", "namespace": "shop"},
        "spec": {"matches": [
            {"name": "metrics", "pathRegex": "/metrics", "methods": ["*"]},
            {"name": "reads", "pathRegex": ".*", "methods": ["GET"]},
        ]},
    })
}

/// A TrafficTarget `name` letting shop/`source` call shop/api on the route `matches`.
fn target(name: &str, source: &str, matches: &str) -> Value {
    json!({
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "destination": {"kind": "ServiceAccount", "name": "api", "namespace": "shop"},
            "rules": [{"kind": "HTTPRouteGroup", "name": "api-routes", "matches": [matches]}],
            "sources": [{"kind": "ServiceAccount", "name": source, "namespace": "shop"}],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_targets_allow_only_listed_sources_on_listed_routes() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = hello("api").await;
    let b_creds = credentials(&ca, "shop", "api");
    let dir = temp_dir("authz");
    let path = dir.join("skiff.yaml");
    let b_config = |targets: &[Value], audit: bool| {
        let mut c = ProxyConfig::new(app.addr.port())
            .spec(identity(&b_creds, "shop", "api"))
            .spec(json!({"reloadInterval": "20ms"}))
            .document(routes());
        if audit {
            c = c.inbound(json!({"authorization": "audit"}));
        }
        for t in targets {
            c = c.document(t.clone());
        }
        c.yaml()
    };
    std::fs::write(&path, b_config(&[], false)).unwrap();
    let b = skiff::start(skiff::config::load_file(&path).unwrap())
        .await
        .unwrap();
    let web = client_proxy(&ca, "web", b.inbound_addr, "api").await;
    let db = client_proxy(&ca, "db", b.inbound_addr, "api").await;
    let status = |proxy: SocketAddr, method: &'static str, path: &'static str| async move {
        let mut c = h1(proxy).await;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "api")
            .body(text(""))
            .unwrap();
        c.send_request(req).await.unwrap().status().as_u16()
    };
    // Re-writes B's config and waits until `check` holds.
    let reload = |yaml: String,
                  what: &'static str,
                  proxy: SocketAddr,
                  method: &'static str,
                  p: &'static str,
                  want: u16| {
        std::fs::write(&path, yaml).unwrap();
        async move {
            eventually(Duration::from_secs(10), what, || async move {
                status(proxy, method, p).await == want
            })
            .await;
        }
    };

    // No TrafficTarget names api: everyone may call.
    assert_eq!(status(web.outbound_addr, "POST", "/anything").await, 200);

    // A TrafficTarget for db only: deny by default for everyone else.
    let db_only = target("db-reads", "db", "reads");
    reload(
        b_config(std::slice::from_ref(&db_only), false),
        "web denied once a TrafficTarget exists",
        web.outbound_addr,
        "GET",
        "/",
        403,
    )
    .await;
    assert_eq!(
        status(db.outbound_addr, "GET", "/").await,
        200,
        "db is listed"
    );
    assert_eq!(
        status(db.outbound_addr, "POST", "/").await,
        403,
        "db may only read"
    );

    // Allow web on /metrics only (all methods).
    let web_metrics = target("web-metrics", "web", "metrics");
    reload(
        b_config(&[db_only.clone(), web_metrics], false),
        "web allowed on /metrics",
        web.outbound_addr,
        "POST",
        "/metrics",
        200,
    )
    .await;
    assert_eq!(status(web.outbound_addr, "GET", "/metrics").await, 200);
    assert_eq!(
        status(web.outbound_addr, "GET", "/other").await,
        403,
        "only /metrics"
    );

    // Allow web GET only (any path).
    let web_reads = target("web-reads", "web", "reads");
    reload(
        b_config(&[db_only.clone(), web_reads], false),
        "web allowed to GET anything",
        web.outbound_addr,
        "GET",
        "/other",
        200,
    )
    .await;
    assert_eq!(
        status(web.outbound_addr, "POST", "/other").await,
        403,
        "only GET"
    );

    // Remove web's TrafficTarget: denied again.
    reload(
        b_config(std::slice::from_ref(&db_only), false),
        "web denied again after removal",
        web.outbound_addr,
        "GET",
        "/other",
        403,
    )
    .await;

    // Audit mode: the denial is counted, not enforced.
    reload(
        b_config(std::slice::from_ref(&db_only), true),
        "audit mode lets web through",
        web.outbound_addr,
        "GET",
        "/other",
        200,
    )
    .await;
    let (_, metrics) = admin_get(b.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"skiff_authz_total{decision="deny""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"skiff_authz_total{decision="audit-deny""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"skiff_authz_total{decision="allow",route="api-routes/reads"}"#),
        "{metrics}"
    );
    // Linkerd's families: who decided, on which route, for whom. A denied request is
    // counted there alone, never in `response_total`.
    let line = |family: &str, parts: &[&str]| {
        metrics
            .lines()
            .any(|l| l.starts_with(family) && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        line(
            "inbound_http_authz_allow_total{",
            &[
                r#"srv_kind="default""#,
                r#"route_group="specs.smi-spec.io""#,
                r#"route_kind="httproutegroup""#,
                r#"route_name="api-routes""#,
                r#"authz_group="access.smi-spec.io""#,
                r#"authz_kind="traffictarget""#,
                r#"authz_name="db-reads""#,
                r#"tls="true""#,
                r#"client_id="spiffe://cluster.local/ns/shop/sa/db""#,
            ]
        ),
        "{metrics}"
    );
    assert!(
        line(
            "inbound_http_authz_deny_total{",
            &[
                r#"route_name="default""#,
                r#"client_id="spiffe://cluster.local/ns/shop/sa/web""#,
            ]
        ),
        "{metrics}"
    );
    assert!(
        !line("response_total{", &[r#"error="forbidden""#]),
        "denied requests stay out of response_total: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_decides_while_no_traffic_target_names_the_workload() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = hello("api").await;
    let b_creds = credentials(&ca, "shop", "api");
    for (default, want, decision) in [
        ("allow", 200, None),
        ("deny", 403, Some("deny")),
        ("audit", 200, Some("audit-deny")),
    ] {
        let b = ProxyConfig::new(app.addr.port())
            .spec(identity(&b_creds, "shop", "api"))
            .inbound(json!({"defaultPolicy": default}))
            .start()
            .await;
        let web = client_proxy(&ca, "web", b.inbound_addr, "api").await;
        let rsp = h1(web.outbound_addr)
            .await
            .send_request(get("api", "/x"))
            .await
            .unwrap();
        assert_eq!(rsp.status().as_u16(), want, "defaultPolicy {default}");
        let (_, metrics) = admin_get(b.admin_addr, "/metrics").await;
        match decision {
            Some(d) => assert!(
                metrics.contains(&format!("decision=\"{d}\"")),
                "{default}: {metrics}"
            ),
            None => assert!(!metrics.contains("decision=\"deny\""), "{default}"),
        }
    }
}
