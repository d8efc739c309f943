//! Config files: errors located by line and field, hot reload that swaps routing for new
//! requests while a request in flight on the old route completes, and a bad reload that
//! leaves the running config serving.

use std::time::Duration;

use http::StatusCode;
use skiff_e2e::*;

#[test]
fn invalid_files_are_rejected_with_file_line_and_field() {
    let dir = temp_dir("invalid");
    let path = dir.join("skiff.yaml");
    std::fs::write(
        &path,
        "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  inbound:\n    appPort: 8080\n    apPort: 1\n",
    )
    .unwrap();
    let errors = skiff::config::load_file(&path).expect_err("rejected").0;
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(e.line, Some(6));
    assert!(
        e.message.starts_with("spec.inbound.apPort: unknown field"),
        "{}",
        e.message
    );
}

async fn start_from_file(cfg: &ProxyConfig, path: &std::path::Path) -> Running {
    std::fs::write(path, cfg.yaml()).unwrap();
    let config = skiff::config::load_file(path).unwrap_or_else(|e| panic!("{e}"));
    skiff::start(config).await.unwrap()
}

/// Rewrites the config file to send `web` to `b`, then waits until new requests land there.
async fn route_web_to(
    path: &std::path::Path,
    b: &Backend,
    spec: &serde_json::Value,
    outbound: std::net::SocketAddr,
) {
    let yaml = ProxyConfig::new(1)
        .service("web", &[b.addr])
        .spec(spec.clone())
        .yaml();
    std::fs::write(path, yaml).unwrap();
    eventually(
        Duration::from_secs(10),
        "new requests reach the new backend",
        || async move {
            let mut c = h1(outbound).await;
            let rsp = c.send_request(get("web", "/")).await.unwrap();
            // Only `b` answers without `x-backend`; the old streaming backend's body never
            // ends, so it must not be read.
            rsp.headers().get("x-backend").is_none() && body_text(rsp).await == "b"
        },
    )
    .await;
}

async fn metric_line(admin: std::net::SocketAddr, prefix: &str) -> Option<String> {
    let (_, m) = admin_get(admin, "/metrics").await;
    m.lines().find(|l| l.starts_with(prefix)).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reroutes_new_requests_while_a_long_request_completes() {
    let (a, mut a_bodies) = streaming_backend("a").await;
    let b = hello("b").await;
    let dir = temp_dir("reload");
    let path = dir.join("skiff.yaml");
    let fast_reload = json!({"reloadInterval": "20ms"});
    let proxy = start_from_file(
        &ProxyConfig::new(1)
            .service("web", &[a.addr])
            .spec(fast_reload.clone()),
        &path,
    )
    .await;

    // A long request to A: headers back, body still streaming.
    let long = LongRequest::start(proxy.outbound_addr, "web", "a", &mut a_bodies).await;

    route_web_to(&path, &b, &fast_reload, proxy.outbound_addr).await;

    // The request in flight on the old route still completes, intact.
    long.finish().await;
    let ok = metric_line(
        proxy.admin_addr,
        r#"skiff_config_reloads_total{result="ok"}"#,
    )
    .await;
    assert!(ok.is_some_and(|l| l.ends_with(" 1")));
}

/// The proxy on a config file of `dir_name` that routes `web` to `backend`, re-read every
/// 20 ms.
async fn web_on_a_file(dir_name: &str, backend: &Backend) -> (Running, std::path::PathBuf) {
    let path = temp_dir(dir_name).join("skiff.yaml");
    let cfg = ProxyConfig::new(1)
        .service("web", &[backend.addr])
        .spec(json!({"reloadInterval": "20ms"}));
    (start_from_file(&cfg, &path).await, path)
}

/// Writes `text` over `path`, waits until the reload is refused (the first refusal
/// counted), and returns what `web` answers then: its status and body.
async fn refused_reload(
    proxy: &Running,
    path: &std::path::Path,
    text: String,
) -> (StatusCode, String) {
    std::fs::write(path, text).unwrap();
    let admin = proxy.admin_addr;
    eventually(
        Duration::from_secs(10),
        "the reload is refused and counted",
        || async move {
            metric_line(admin, r#"skiff_config_reloads_total{result="error"}"#)
                .await
                .is_some_and(|l| l.ends_with(" 1"))
        },
    )
    .await;
    let mut c = h1(proxy.outbound_addr).await;
    let rsp = c.send_request(get("web", "/")).await.unwrap();
    (rsp.status(), body_text(rsp).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_is_rejected_and_the_old_config_keeps_serving() {
    let a = hello("a").await;
    let b = hello("b").await;
    let (proxy, path) = web_on_a_file("bad-reload", &a).await;
    let fast_reload = json!({"reloadInterval": "20ms"});

    // Unknown field plus a new route: the whole file is refused, including the route.
    let bad = ProxyConfig::new(1)
        .service("web", &[b.addr])
        .spec(fast_reload.clone())
        .spec(json!({"limits": {"headerReadTimeot": "1s"}}))
        .yaml();
    let (status, body) = refused_reload(&proxy, &path, bad).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "a", "still on the old config");
    assert_eq!(admin_get(proxy.admin_addr, "/ready").await.0, 200);

    // Fixing the file applies it.
    route_web_to(&path, &b, &fast_reload, proxy.outbound_addr).await;
}

/// A file nested 40,000 levels deep (80 KB of `[[[...]]]`, which the YAML parser would
/// chew on for seconds) is refused at once with its line, and the proxy keeps serving its
/// last config meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_file_is_refused_at_once_and_serving_goes_on() {
    let a = hello("a").await;
    let (proxy, path) = web_on_a_file("deep-reload", &a).await;
    let deep = format!(
        "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  x: {}{}\n",
        "[".repeat(40_000),
        "]".repeat(40_000)
    );
    let refused = skiff::config::parse(&deep, None).unwrap_err().to_string();
    assert!(
        refused.contains("4:") && refused.contains("levels deep"),
        "{refused}"
    );
    let (_, body) = refused_reload(&proxy, &path, deep).await;
    assert_eq!(body, "a", "still on the old config");
}
