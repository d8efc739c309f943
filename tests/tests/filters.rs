//! HTTPRoute filters through the real proxy, one test per behaviour the Gateway API mesh
//! conformance suite checks: request and response header changes at rule and backend level,
//! redirects (hostname, port, scheme, path, and the 303 / 307 / 308 statuses), and path and
//! host rewrites. The backends are real hyper servers; what they received is read from them.

use http::StatusCode;
use serde_json::Value;
use skiff_e2e::*;

/// An HTTPRoute attached to service `web` with `rules`.
fn httproute(rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web-route"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": rules,
        },
    })
}

/// A backend answering `name` and setting `x-upstream: name` and `x-drop: 1`.
async fn named(name: &'static str) -> Backend {
    backend(move |_req| async move {
        let mut rsp = ok(name);
        rsp.headers_mut()
            .insert("x-upstream", name.parse().unwrap());
        rsp.headers_mut().insert("x-drop", "1".parse().unwrap());
        rsp
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_change_requests_and_responses_at_rule_and_backend_level() {
    let (v1, v2) = (named("v1").await, named("v2").await);
    let proxy = ProxyConfig::new(1)
        .service("web", &[v1.addr])
        .service("web-v1", &[v1.addr])
        .service("web-v2", &[v2.addr])
        .document(httproute(json!([
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/rule"}}],
                "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
                        "add": [{"name": "x-header-add", "value": "header-add"}],
                        "remove": ["x-header-remove"]}},
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                        "set": [{"name": "x-route", "value": "rule"}],
                        "remove": ["x-drop"]}}
                ],
                "backendRefs": [{"name": "web-v1", "port": 80}]
            },
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/backend"}}],
                "backendRefs": [
                    {"name": "web-v1", "port": 80, "filters": [
                        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                            "set": [{"name": "x-backend", "value": "v1"}]}}]},
                    {"name": "web-v2", "port": 80, "weight": 0}
                ]
            }
        ])))
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    let mut req = get("web", "/rule/x");
    req.headers_mut()
        .insert("x-header-set", "original".parse().unwrap());
    req.headers_mut()
        .insert("x-header-add", "original-val-add".parse().unwrap());
    req.headers_mut()
        .insert("x-header-remove", "gone".parse().unwrap());
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["x-route"], "rule");
    assert_eq!(rsp.headers()["x-upstream"], "v1");
    assert!(!rsp.headers().contains_key("x-drop"));
    let seen = v1.last().headers;
    assert_eq!(seen["x-header-set"], "set-overwrites-values");
    let added: Vec<_> = seen.get_all("x-header-add").iter().collect();
    assert_eq!(added, ["original-val-add", "header-add"]);
    assert!(!seen.contains_key("x-header-remove"));

    // The backend's own filter, only on requests sent to it.
    let rsp = c.send_request(get("web", "/backend")).await.unwrap();
    assert_eq!(rsp.headers()["x-drop"], "1", "no rule filter here");
    assert_eq!(v1.last().headers["x-backend"], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_answer_with_the_new_location_and_status() {
    let web = named("web").await;
    let rule = |prefix: &str, redirect: Value| {
        json!({
            "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]
        })
    };
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .document(httproute(json!([
            rule("/hostname", json!({"hostname": "example.org"})),
            rule("/port", json!({"port": 8083, "statusCode": 307})),
            rule("/scheme", json!({"scheme": "https", "statusCode": 308})),
            rule("/full", json!({"path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}, "statusCode": 303})),
            rule("/prefix", json!({"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/two"}, "statusCode": 301})),
        ])))
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    for (path, status, location) in [
        ("/hostname/a", 302, "http://example.org/hostname/a"),
        ("/port?x=1", 307, "http://web:8083/port?x=1"),
        ("/scheme", 308, "https://web/scheme"),
        ("/full/deep", 303, "http://web/one"),
        ("/prefix/deep", 301, "http://web/two/deep"),
    ] {
        let rsp = c.send_request(get("web", path)).await.unwrap();
        assert_eq!(rsp.status().as_u16(), status, "{path}");
        assert_eq!(rsp.headers()["location"], location, "{path}");
        assert!(!rsp.headers().contains_key("skiff-error"), "{path}");
        body_text(rsp).await;
    }
    assert_eq!(web.requests(), 0, "a redirect never reaches the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_change_the_path_and_host_sent_upstream() {
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .document(httproute(json!([
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/prefix/one"}}],
                "filters": [{"type": "URLRewrite", "urlRewrite": {
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/one"}}}]
            },
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/full"}}],
                "filters": [{"type": "URLRewrite", "urlRewrite": {
                    "hostname": "elsewhere.example",
                    "path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}}}]
            }
        ])))
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    for (path, want_path, want_host) in [
        ("/prefix/one/two?q=1", "/one/two?q=1", "web"),
        ("/prefix/one", "/one", "web"),
        ("/full/x/y", "/one", "elsewhere.example"),
    ] {
        let rsp = c.send_request(get("web", path)).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK, "{path}");
        body_text(rsp).await;
        let seen = web.last();
        assert_eq!(seen.uri.to_string(), want_path, "{path}");
        assert_eq!(seen.headers["host"], want_host, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_a_copy_and_a_dead_or_slow_mirror_changes_nothing_for_the_primary() {
    let primary = backend(|req| async move {
        // Read the body as an application would.
        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
        ok("primary")
    })
    .await;
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = bodies.clone();
    let shadow = backend(move |req| {
        let seen = seen.clone();
        async move {
            let bytes = http_body_util::BodyExt::collect(req.into_body())
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&bytes).into_owned());
            ok("shadow")
        }
    })
    .await;
    let slow = backend(|_req| async {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        ok("late")
    })
    .await;
    let dead = dead_addr();
    let mirrored = |prefix: &str, to: &str| {
        json!({
            "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "filters": [{"type": "RequestMirror", "requestMirror": {
                "backendRef": {"name": to, "port": 80}}}],
            "backendRefs": [{"name": "web", "port": 80}]
        })
    };
    let proxy = ProxyConfig::new(1)
        .service("web", &[primary.addr])
        .service("shadow", &[shadow.addr])
        .service("slow", &[slow.addr])
        .service("dead", &[dead.addr])
        .document(httproute(json!([
            mirrored("/copy", "shadow"),
            mirrored("/slow", "slow"),
            mirrored("/dead", "dead"),
        ])))
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    for path in ["/copy", "/slow", "/dead"] {
        for _ in 0..20 {
            let rsp = c.send_request(get("web", path)).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::OK, "{path}");
            assert_eq!(body_text(rsp).await, "primary", "{path}");
        }
    }
    // A request with a body (sized, as most are): the copy carries the same body.
    let post = http::Request::post("/copy")
        .header("host", "web")
        .body(text("payload"))
        .unwrap();
    let rsp = c.send_request(post).await.unwrap();
    assert_eq!(body_text(rsp).await, "primary");
    // Each copy of /copy reached the shadow, with the request's path and body.
    eventually(std::time::Duration::from_secs(10), "21 copies", || async {
        shadow.requests() == 21
    })
    .await;
    assert_eq!(shadow.last().uri.path(), "/copy");
    assert_eq!(
        bodies.lock().unwrap().last().map(String::as_str),
        Some("payload")
    );
    assert_eq!(primary.requests(), 61, "every primary request, once");
    eventually(std::time::Duration::from_secs(10), "copies counted", || async {
        let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
        metrics.contains(r#"skiff_mirror_requests_total{route="web-route",backend="shadow",result="answered"} 21"#)
    })
    .await;
    eventually(std::time::Duration::from_secs(10), "dead mirror counted", || async {
        let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
        metrics.contains(r#"skiff_mirror_requests_total{route="web-route",backend="dead",result="failed"} 20"#)
    })
    .await;
}
