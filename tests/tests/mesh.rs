//! Mutual TLS between two real proxies: a client's HTTP/1 request goes app -> proxy A ->
//! (mTLS, HTTP/2) -> proxy B -> backend and arrives as HTTP/1, as if sent directly; the
//! wrong peer identity, plaintext on a strict mesh port, and credential rotation under load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Request, StatusCode, Version};
use proxy_tls::devca::DevCa;
use skiff_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(86_400);

/// Credentials for `ns/sa` from `ca`, in a fresh directory.
fn credentials(ca: &DevCa, ns: &str, sa: &str) -> PathBuf {
    let dir = temp_dir(&format!("{ns}-{sa}"));
    ca.write_workload(&dir, ns, sa, DAY).unwrap();
    dir
}

fn identity(dir: &Path, ns: &str, sa: &str) -> String {
    format!(
        "  identity: {{dir: '{}', namespace: {ns}, serviceAccount: {sa}, reloadInterval: 20ms}}\n",
        dir.display()
    )
}

/// Proxy B: the server side, in front of `app` as shop/api.
async fn server_proxy(ca: &DevCa, app: SocketAddr) -> (Running, PathBuf) {
    let dir = credentials(ca, "shop", "api");
    let proxy = ProxyConfig::new(app.port())
        .extra(&identity(&dir, "shop", "api"))
        .start()
        .await;
    (proxy, dir)
}

/// Proxy A: the client side, as shop/web, with service `api` at `b` expecting `expect`.
async fn client_proxy(ca: &DevCa, b: SocketAddr, expect: &str) -> Running {
    let dir = credentials(ca, "shop", "web");
    ProxyConfig::new(1)
        .extra(&identity(&dir, "shop", "web"))
        .service_with(
            "api",
            &[b],
            &format!("      identity: spiffe://cluster.local/ns/shop/sa/{expect}\n"),
        )
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_crosses_the_mesh_over_mtls_http2_and_arrives_as_sent() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = hello("api").await;
    let (b, _) = server_proxy(&ca, app.addr).await;
    let a = client_proxy(&ca, b.inbound_addr, "api").await;

    let mut c = h1(a.outbound_addr).await;
    let req = Request::post("/orders?id=7")
        .header("host", "api")
        .header("x-request-id", "abc")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body(text("payload"))
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(body_text(rsp).await, "api");

    let seen = app.last();
    assert_eq!(
        seen.version,
        Version::HTTP_11,
        "restored as HTTP/1 for the app"
    );
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/orders?id=7");
    assert_eq!(seen.headers["host"], "api");
    assert_eq!(seen.headers["x-request-id"], "abc");
    assert!(
        !seen.headers.contains_key("x-hop"),
        "hop-by-hop headers stay behind"
    );
    let skiff: Vec<_> = seen
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("skiff-"))
        .collect();
    assert!(
        skiff.is_empty(),
        "no skiff-* headers reach the app: {skiff:?}"
    );
    assert_eq!(app.connections(), 1);

    // B saw a TLS connection (detected) and no handshake failure.
    let (_, metrics) = admin_get(b.admin_addr, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("skiff_protocol_detect_total")
                && l.contains("tls")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        !metrics.contains("skiff_tls_handshake_failures_total{"),
        "{metrics}"
    );
    let (_, a_metrics) = admin_get(a.admin_addr, "/metrics").await;
    assert!(
        a_metrics.contains("skiff_identity_cert_expiry_timestamp_seconds"),
        "{a_metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_peer_identity_and_plaintext_are_refused() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = hello("api").await;
    let (b, _) = server_proxy(&ca, app.addr).await;

    // A expects shop/db at B's address; B is shop/api.
    let a = client_proxy(&ca, b.inbound_addr, "db").await;
    let mut c = h1(a.outbound_addr).await;
    let rsp = c.send_request(get("api", "/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(rsp.headers()["skiff-error"], "upstream-connect");
    let body = body_text(rsp).await;
    assert!(body.contains("mTLS"), "{body}");

    // Plaintext to B's mesh port is refused (strict mTLS): the connection just closes.
    let mut plain = tokio::net::TcpStream::connect(b.inbound_addr)
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "no HTTP answer on a strict mesh port: {answer:?}"
    );
    assert_eq!(app.requests(), 0, "nothing reached the app");
    let (_, metrics) = admin_get(b.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"reason="plaintext""#), "{metrics}");
}
