//! Routes and weighted splits through the real proxy: Gateway API HTTPRoute and SMI
//! TrafficSplit documents, route precedence, 404 when no attached route matches, the
//! `route` metric label, weights measured over many requests, invalid and empty backends,
//! per-route policies, and weights changed by a reload while a long request completes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::Value;
use skiff_e2e::*;

/// Sends `n` GETs for `path` over one connection and counts the answers by body.
async fn tally(outbound: SocketAddr, host: &str, path: &str, n: usize) -> HashMap<String, usize> {
    let mut c = h1(outbound).await;
    let mut seen = HashMap::new();
    for _ in 0..n {
        let rsp = c.send_request(get(host, path)).await.unwrap();
        let key = match rsp.status() {
            StatusCode::OK => body_text(rsp).await,
            other => format!(
                "{} {}",
                other.as_u16(),
                rsp.headers()
                    .get("skiff-error")
                    .map_or("", |v| v.to_str().unwrap())
            ),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

fn share(seen: &HashMap<String, usize>, key: &str, n: usize) -> f64 {
    seen.get(key).copied().unwrap_or(0) as f64 * 100.0 / n as f64
}

/// An HTTPRoute named `name` attached to service `web`, with `rules`.
fn httproute(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"kind": "Service", "name": "web"}],
            "rules": rules,
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_httproute_split_lands_within_5_points_over_1000_requests() {
    let (v1, v2) = (hello("v1").await, hello("v2").await);
    let proxy = ProxyConfig::new(1)
        .service("web", &[v1.addr])
        .service("web-v1", &[v1.addr])
        .service("web-v2", &[v2.addr])
        .document(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web-canary"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [{"backendRefs": [
                    {"name": "web-v1", "port": 80, "weight": 90},
                    {"name": "web-v2", "port": 80, "weight": 10},
                ]}],
            },
        }))
        .start()
        .await;
    let seen = tally(proxy.outbound_addr, "web", "/", 1000).await;
    let (p1, p2) = (share(&seen, "v1", 1000), share(&seen, "v2", 1000));
    println!("90/10 split over 1000 requests: v1 {p1}%, v2 {p2}%");
    assert!((85.0..=95.0).contains(&p1), "{seen:?}");
    assert!((5.0..=15.0).contains(&p2), "{seen:?}");
    assert_eq!(p1 + p2, 100.0, "every request succeeded: {seen:?}");

    // The route's name labels its series, split by the backend that served each request
    // (`dst_service`); Linkerd's route family counts the route once.
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    let sum = |family: &str, parts: &[&str]| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(family) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let route = r#"route="web-canary""#;
    assert_eq!(sum("request_total{", &[route]), 1000.0, "{metrics}");
    let v1 = sum("request_total{", &[route, r#"dst_service="web-v1""#]);
    let v2 = sum("request_total{", &[route, r#"dst_service="web-v2""#]);
    assert_eq!(v1 + v2, 1000.0, "{metrics}");
    assert!(v2 > 0.0, "{metrics}");
    assert_eq!(
        sum("route_request_total{", &[r#"rt_route="web-canary""#]),
        1000.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matches_pick_backends_and_unmatched_requests_get_404() {
    let (api, login, canary) = (
        hello("api").await,
        hello("login").await,
        hello("canary").await,
    );
    let proxy = ProxyConfig::new(1)
        .service("web", &[api.addr])
        .service("api", &[api.addr])
        .service("login", &[login.addr])
        .service("canary", &[canary.addr])
        .document(httproute(
            "web",
            json!([
                {
                    "name": "api",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                    "backendRefs": [{"name": "api"}],
                },
                {
                    "name": "login",
                    "matches": [{
                        "path": {"type": "Exact", "value": "/api/login"},
                        "method": "POST",
                    }],
                    "backendRefs": [{"name": "login"}],
                },
                {
                    "name": "beta",
                    "matches": [{
                        "path": {"type": "RegularExpression", "value": "/api/v[0-9]+/.*"},
                        "headers": [{"name": "x-beta", "value": "on"}],
                        "queryParams": [{
                            "name": "tenant",
                            "type": "RegularExpression",
                            "value": "acme|globex",
                        }],
                    }],
                    "backendRefs": [{"name": "canary"}],
                },
            ]),
        ))
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    let mut send = async |req: Request<TestBody>| {
        let rsp = c.send_request(req).await.unwrap();
        let status = rsp.status();
        let reason = rsp
            .headers()
            .get("skiff-error")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, reason, body_text(rsp).await)
    };
    assert_eq!(send(get("web", "/api/users")).await.2, "api");
    let login_post = Request::post("/api/login")
        .header("host", "web")
        .body(text(""))
        .unwrap();
    assert_eq!(send(login_post).await.2, "login");
    assert_eq!(
        send(get("web", "/api/login")).await.2,
        "api",
        "GET is not the login rule's"
    );
    let beta = Request::get("/api/v2/x?tenant=acme")
        .header("host", "web")
        .header("x-beta", "on")
        .body(text(""))
        .unwrap();
    assert_eq!(send(beta).await.2, "canary");
    let wrong_tenant = Request::get("/api/v2/x?tenant=initech")
        .header("host", "web")
        .header("x-beta", "on")
        .body(text(""))
        .unwrap();
    assert_eq!(send(wrong_tenant).await.2, "api");

    let (status, reason, body) = send(get("web", "/other")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(reason.as_deref(), Some("no-route"));
    assert!(
        body.contains("no route of service web matches GET /other"),
        "{body}"
    );
    assert_eq!(
        api.requests() + login.requests() + canary.requests(),
        5,
        "the 404 reached no backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smi_split_sends_matching_requests_to_backends_and_the_rest_to_the_apex() {
    let (apex, v2) = (hello("apex").await, hello("v2").await);
    let proxy = ProxyConfig::new(1)
        .service("web", &[apex.addr])
        .service("web-v2", &[v2.addr])
        .document(json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "HTTPRouteGroup",
            "metadata": {"name": "ab-test"},
            "spec": {"matches": [{
                "name": "firefox-users",
                "headers": [{"user-agent": ".*Firefox.*"}],
            }]},
        }))
        .document(json!({
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": "ab-test"},
            "spec": {
                "service": "web",
                "matches": [{"kind": "HTTPRouteGroup", "name": "ab-test"}],
                "backends": [
                    {"service": "web", "weight": 0},
                    {"service": "web-v2", "weight": 100},
                ],
            },
        }))
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    for _ in 0..20 {
        let firefox = Request::get("/")
            .header("host", "web")
            .header("user-agent", "Mozilla/5.0 Firefox/128.0")
            .body(text(""))
            .unwrap();
        let rsp = c.send_request(firefox).await.unwrap();
        assert_eq!(body_text(rsp).await, "v2", "weight 0 gets nothing");
        let rsp = c.send_request(get("web", "/")).await.unwrap();
        assert_eq!(
            body_text(rsp).await,
            "apex",
            "unmatched requests go to the apex"
        );
    }
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"route="ab-test/firefox-users""#),
        "the matched SMI route labels metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_backends_answer_500_and_empty_ones_503() {
    let apex = hello("apex").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[apex.addr])
        .service_with(
            "empty",
            &[],
            json!({"dns": "no-such-host.invalid:80", "dnsRefresh": "1h"}),
        )
        .document(httproute(
            "web",
            json!([
                {
                    "matches": [{"path": {"value": "/gone"}}],
                    "backendRefs": [{"name": "not-configured"}],
                },
                {
                    "matches": [{"path": {"value": "/wrong-port"}}],
                    "backendRefs": [{"name": "web", "port": 8080}],
                },
                {
                    "matches": [{"path": {"value": "/empty"}}],
                    "backendRefs": [{"name": "empty"}],
                },
            ]),
        ))
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    for path in ["/gone", "/wrong-port"] {
        let rsp = c.send_request(get("web", path)).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(rsp.headers()["skiff-error"], "invalid-backend");
        let body = body_text(rsp).await;
        assert!(body.contains("is not a configured service"), "{body}");
    }
    let rsp = c.send_request(get("web", "/empty")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.headers()["skiff-error"], "no-endpoints");
    assert_eq!(apex.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_policies_apply_to_their_route_only() {
    // Every other request fails with 503.
    let flaky = backend(|_req| {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        async move {
            if N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                .is_multiple_of(2)
            {
                let mut rsp = ok("unavailable");
                *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                rsp
            } else {
                ok("fine")
            }
        }
    })
    .await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[flaky.addr])
        .spec(json!({"routePolicies": {
            "web/limited": {"rateLimit": {"requestsPerSecond": 0.001, "burst": 3}},
        }}))
        .document(httproute(
            "web",
            json!([
                {
                    "name": "retried",
                    "matches": [{"path": {"value": "/retried"}}],
                    "retry": {"codes": [503], "attempts": 2, "backoff": "1ms"},
                },
                {"name": "plain", "matches": [{"path": {"value": "/plain"}}]},
                {"name": "limited", "matches": [{"path": {"value": "/limited"}}]},
            ]),
        ))
        .start()
        .await;
    let retried = tally(proxy.outbound_addr, "web", "/retried", 50).await;
    assert_eq!(
        retried.get("fine"),
        Some(&50),
        "the route's retry policy: {retried:?}"
    );
    let plain = tally(proxy.outbound_addr, "web", "/plain", 50).await;
    assert!(
        plain.get("503 ").copied().unwrap_or(0) >= 20,
        "no retries off the route: {plain:?}"
    );
    let limited = tally(proxy.outbound_addr, "web", "/limited", 10).await;
    assert_eq!(
        limited.get("429 rate-limited"),
        Some(&7),
        "burst of 3, then refused: {limited:?}"
    );
    let plain = tally(proxy.outbound_addr, "web", "/plain", 10).await;
    assert!(
        !plain.contains_key("429 rate-limited"),
        "other routes are not limited"
    );
}

/// A connection to `to` from the loopback address `from`.
async fn h1_from(from: [u8; 4], to: SocketAddr) -> H1 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(to).await.unwrap();
    h1_over(stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_rate_limits_keep_one_client_from_spending_anothers_share() {
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service_with(
            "web",
            &[web.addr],
            json!({"rateLimit": {"requestsPerSecond": 0.001, "burst": 5, "perClient": true}}),
        )
        .start()
        .await;
    let mut noisy = h1_from([127, 0, 0, 2], proxy.outbound_addr).await;
    let mut refused = 0;
    for _ in 0..20 {
        let rsp = noisy.send_request(get("web", "/")).await.unwrap();
        if rsp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(rsp.headers()["skiff-error"], "rate-limited");
            assert!(rsp.headers().contains_key("retry-after"));
            refused += 1;
        }
        let _ = body_text(rsp).await;
    }
    assert_eq!(refused, 15, "the noisy client gets its burst of 5");
    let mut quiet = h1_from([127, 0, 0, 3], proxy.outbound_addr).await;
    for _ in 0..5 {
        let rsp = quiet.send_request(get("web", "/")).await.unwrap();
        assert_eq!(
            rsp.status(),
            StatusCode::OK,
            "another client keeps its own share"
        );
        let _ = body_text(rsp).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_stream_idle_past_stream_idle_is_cut() {
    let (stream, mut bodies) = streaming_backend("s").await;
    let proxy = ProxyConfig::new(1)
        .service_with(
            "web",
            &[stream.addr],
            json!({"timeouts": {"streamIdle": "300ms"}}),
        )
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    let rsp = c.send_request(get("web", "/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let feed = bodies.recv().await.unwrap();
    feed.send(Frame::data(Bytes::from_static(b"tick")))
        .await
        .unwrap();
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "tick");
    // Nothing more comes: the proxy cuts the stream (the client sees an incomplete body).
    let next = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("cut well before 10s");
    assert!(matches!(next, Some(Err(_))), "{next:?}");
    drop(feed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_weights_for_new_requests_while_a_long_request_completes() {
    let (a, mut a_bodies) = streaming_backend("a").await;
    let b = hello("b").await;
    let dir = temp_dir("reweight");
    let path = dir.join("skiff.yaml");
    let config = |wa: u32, wb: u32| {
        ProxyConfig::new(1)
            .service("web", &[a.addr])
            .service("web-a", &[a.addr])
            .service("web-b", &[b.addr])
            .spec(json!({"reloadInterval": "20ms"}))
            .document(json!({
                "apiVersion": "split.smi-spec.io/v1alpha4",
                "kind": "TrafficSplit",
                "metadata": {"name": "web"},
                "spec": {
                    "service": "web",
                    "backends": [
                        {"service": "web-a", "weight": wa},
                        {"service": "web-b", "weight": wb},
                    ],
                },
            }))
            .yaml()
    };
    std::fs::write(&path, config(100, 0)).unwrap();
    let proxy = skiff::start(skiff::config::load_file(&path).unwrap())
        .await
        .unwrap();

    let long = LongRequest::start(proxy.outbound_addr, "web", "a", &mut a_bodies).await;

    std::fs::write(&path, config(0, 100)).unwrap();
    let outbound = proxy.outbound_addr;
    eventually(
        Duration::from_secs(10),
        "new requests follow the new weights",
        || async move {
            let mut c = h1(outbound).await;
            let rsp = c.send_request(get("web", "/")).await.unwrap();
            rsp.headers().get("x-backend").is_none() && body_text(rsp).await == "b"
        },
    )
    .await;
    let after = tally(outbound, "web", "/", 50).await;
    assert_eq!(after.get("b"), Some(&50), "{after:?}");

    long.finish().await;
}
