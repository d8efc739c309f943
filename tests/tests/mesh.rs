//! Mutual TLS between two real proxies: a client's HTTP/1 request goes app -> proxy A ->
//! (mTLS, HTTP/2) -> proxy B -> backend and arrives as HTTP/1, as if sent directly; the
//! wrong peer identity, plaintext on a strict mesh port, credential rotation under load, and
//! a reload that would change the identity. Authorization between them is in
//! `authorization.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{Request, StatusCode, Version};
use proxy_tls::devca::DevCa;
use skiff_e2e::mesh::{client_config, client_proxy, credentials, identity, server_proxy, DAY};
use skiff_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_crosses_the_mesh_over_mtls_http2_and_arrives_as_sent() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = hello("api").await;
    let (b, _) = server_proxy(&ca, app.addr).await;
    let a = client_proxy(&ca, "web", b.inbound_addr, "api").await;

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
    // Linkerd's names for the same facts, as its dashboards and alerts read them.
    assert!(
        a_metrics.contains("\nidentity_cert_expiration_timestamp_seconds "),
        "{a_metrics}"
    );
    assert!(
        a_metrics.contains("\nidentity_cert_refresh_count 1\n"),
        "{a_metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_peer_identity_and_plaintext_are_refused() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = hello("api").await;
    let (b, _) = server_proxy(&ca, app.addr).await;

    // A expects shop/db at B's address; B is shop/api.
    let a = client_proxy(&ca, "web", b.inbound_addr, "db").await;
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

/// Installs `files` in `dir` the way the kubelet updates a projected volume: a new
/// timestamped directory, a `..data` symlink swapped to it atomically, and stable
/// `tls.crt` / `tls.key` / `ca.crt` links through `..data`.
fn kubelet_swap(dir: &Path, generation: usize, files: [(&str, &str); 3]) {
    let name = format!("..2026_11_22_{generation}");
    std::fs::create_dir_all(dir.join(&name)).unwrap();
    for (file, content) in files {
        std::fs::write(dir.join(&name).join(file), content).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (file, _) in files {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), &link).unwrap();
        }
    }
}

fn swap_workload(dir: &Path, generation: usize, issued: &proxy_tls::devca::Issued, bundle: &str) {
    kubelet_swap(
        dir,
        generation,
        [
            ("tls.crt", &issued.cert_pem),
            ("tls.key", &issued.key_pem),
            ("ca.crt", bundle),
        ],
    );
}

/// A fresh mesh handshake with B, as a client holding `issued` and trusting `bundle`.
async fn probe(
    b: SocketAddr,
    issued: &proxy_tls::devca::Issued,
    bundle: &str,
) -> Result<(), String> {
    let creds = proxy_tls::Credentials::from_pem(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        bundle.as_bytes(),
        None,
    )
    .map_err(|e| e.to_string())?;
    let api: proxy_tls::SpiffeId = "spiffe://cluster.local/ns/shop/sa/api".parse().unwrap();
    let config = creds.client_config(&api).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(b)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(api.server_name()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3 client auth completes after the client's first flight; a refused client
    // certificate shows as an alert on the next read.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_trust_rotate_under_load_without_a_failed_request() {
    let (ca1, ca2) = (
        DevCa::new("cluster.local").unwrap(),
        DevCa::new("cluster.local").unwrap(),
    );
    let (b1, b2) = (
        ca1.issue("shop", "api", DAY).unwrap(),
        ca2.issue("shop", "api", DAY).unwrap(),
    );
    let (w1, w2) = (
        ca1.issue("shop", "web", DAY).unwrap(),
        ca2.issue("shop", "web", DAY).unwrap(),
    );
    let (only1, both, only2) = (
        ca1.ca_pem(),
        format!("{}{}", ca1.ca_pem(), ca2.ca_pem()),
        ca2.ca_pem(),
    );

    // B starts before its credentials exist: not ready until they do.
    let app = hello("api").await;
    let b_dir = temp_dir("rotate-b");
    let b = ProxyConfig::new(app.addr.port())
        .spec(identity(&b_dir, "shop", "api"))
        .start()
        .await;
    assert_eq!(
        admin_get(b.admin_addr, "/ready").await.0,
        503,
        "no credentials yet"
    );
    swap_workload(&b_dir, 1, &b1, &only1);
    let admin = b.admin_addr;
    eventually(
        Duration::from_secs(10),
        "B ready once credentials load",
        || async move { admin_get(admin, "/ready").await.0 == 200 },
    )
    .await;

    let a_dir = temp_dir("rotate-a");
    swap_workload(&a_dir, 1, &w1, &only1);
    let a = client_config(&a_dir, "web", b.inbound_addr, "api", json!({}))
        .start()
        .await;

    // Load: requests through A and B for as long as the rotation takes (bounded).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outbound = a.outbound_addr;
    let load = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let mut c = h1(outbound).await;
            let (mut ok, mut failed) = (0usize, Vec::new());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            for _ in 0..200_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst)
                    || tokio::time::Instant::now() > deadline
                {
                    break;
                }
                match c.send_request(get("api", "/")).await {
                    Ok(rsp) if rsp.status() == StatusCode::OK => {
                        let _ = body_text(rsp).await;
                        ok += 1;
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(rsp) => failed.push(format!(
                        "{} {:?}",
                        rsp.status(),
                        rsp.headers().get("skiff-error")
                    )),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }
    });
    let reloads_ok = |admin: SocketAddr, n: usize| async move {
        let (_, m) = admin_get(admin, "/metrics").await;
        m.lines()
            .any(|l| l == format!("skiff_identity_reloads_total{{result=\"ok\"}} {n}"))
    };

    // 1. Both sides trust both CAs (overlap).
    swap_workload(&b_dir, 2, &b1, &both);
    swap_workload(&a_dir, 2, &w1, &both);
    eventually(
        Duration::from_secs(10),
        "bundles with both CAs loaded",
        || async move { reloads_ok(b.admin_addr, 2).await && reloads_ok(a.admin_addr, 2).await },
    )
    .await;
    // 2. New certificates from CA2.
    swap_workload(&b_dir, 3, &b2, &both);
    swap_workload(&a_dir, 3, &w2, &both);
    eventually(
        Duration::from_secs(10),
        "CA2 certificates loaded",
        || async move { reloads_ok(b.admin_addr, 3).await && reloads_ok(a.admin_addr, 3).await },
    )
    .await;
    // 3. CA1 retired.
    swap_workload(&b_dir, 4, &b2, &only2);
    swap_workload(&a_dir, 4, &w2, &only2);
    eventually(Duration::from_secs(10), "CA1 removed", || async move {
        reloads_ok(b.admin_addr, 4).await && reloads_ok(a.admin_addr, 4).await
    })
    .await;
    // 4. A corrupt update (a truncated key) is refused; the CA2 credentials stay.
    kubelet_swap(
        &b_dir,
        5,
        [
            ("tls.crt", &b2.cert_pem),
            ("tls.key", "-----BEGIN PRIVATE KEY-----\nMIG"),
            ("ca.crt", &only2),
        ],
    );
    eventually(
        Duration::from_secs(10),
        "the corrupt set is refused",
        || async move {
            let (_, m) = admin_get(admin, "/metrics").await;
            m.contains("skiff_identity_reloads_total{result=\"error\"} 1")
        },
    )
    .await;

    // Keep the load going a little past the last change (bounded by the loop's own limits).
    let seen = done.load(std::sync::atomic::Ordering::SeqCst);
    let counter = done.clone();
    eventually(
        Duration::from_secs(30),
        "more requests after the last change",
        || {
            let counter = counter.clone();
            async move { counter.load(std::sync::atomic::Ordering::SeqCst) >= seen + 500 }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    println!(
        "rotation under load: {ok} requests succeeded, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests during rotation: {failed:?}"
    );
    assert!(ok > 0);

    // New handshakes present the new certificate: a client trusting only CA2 (with a CA2
    // certificate) gets through; a client with a CA1 certificate is refused now that B no
    // longer trusts CA1.
    probe(b.inbound_addr, &w2, &only2)
        .await
        .expect("B presents its CA2 certificate");
    assert!(
        probe(b.inbound_addr, &w1, &both).await.is_err(),
        "CA1 clients refused after retirement"
    );
    // And traffic still flows after the corrupt update was refused.
    let mut c = h1(a.outbound_addr).await;
    let rsp = c.send_request(get("api", "/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_identity_is_refused_whole() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = hello("app").await;
    let creds = credentials(&ca, "shop", "api");
    let dir = temp_dir("identity-reload");
    let path = dir.join("skiff.yaml");
    let plain = ProxyConfig::new(app.addr.port()).spec(json!({"reloadInterval": "20ms"}));
    std::fs::write(&path, plain.yaml()).unwrap();
    let proxy = skiff::start(skiff::config::load_file(&path).unwrap())
        .await
        .unwrap();
    let meshed = ProxyConfig::new(app.addr.port())
        .spec(json!({"reloadInterval": "20ms"}))
        .spec(identity(&creds, "shop", "api"));
    std::fs::write(&path, meshed.yaml()).unwrap();
    let admin = proxy.admin_addr;
    eventually(
        Duration::from_secs(10),
        "the reload is refused",
        || async move {
            let (_, m) = admin_get(admin, "/metrics").await;
            m.contains(r#"skiff_config_reloads_total{result="error"} 1"#)
        },
    )
    .await;
    // Still the plaintext config: plain HTTP inbound works, and /config has no identity.
    let rsp = raw(proxy.inbound_addr, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_eq!(rsp.status, 200);
    let (_, config) = admin_get(admin, "/config").await;
    assert!(!config.contains("\"identity\""), "{config}");
}

/// A chunked HTTP/1.1 request whose trailers carry fields a trailer may not (framing and
/// hop-by-hop ones) crosses the mesh: the fields are dropped, the others arrive, and the
/// request is answered rather than left hanging by the HTTP/2 hop refusing them. A
/// well-behaved client on the same proxies is served alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_trailer_fields_are_dropped_on_the_mesh_hop() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = hello("api").await;
    let (b, _) = server_proxy(&ca, app.addr).await;
    let a = client_proxy(&ca, "web", b.inbound_addr, "api").await;
    let request = b"POST /upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\
        Trailer: x-checksum\r\n\r\n3\r\nabc\r\n0\r\ntransfer-encoding: chunked\r\n\
        connection: close\r\nkeep-alive: timeout=5\r\ncontent-length: 3\r\n\
        x-checksum: abc\r\n\r\n";
    let (hostile, calm) = tokio::join!(raw(a.outbound_addr, request), async {
        let mut c = h1(a.outbound_addr).await;
        let rsp = c.send_request(get("api", "/")).await.unwrap();
        rsp.status()
    });
    assert_eq!(hostile.status, 200, "{hostile:?}");
    assert_eq!(calm, StatusCode::OK);
    assert_eq!(app.requests(), 2, "both reached the app");
}

/// The application's chunked HTTP/1 response carries trailer fields HTTP/2 forbids
/// (`Connection`, `Keep-Alive`, `Transfer-Encoding`) back across the mesh's HTTP/2 hop: they
/// are dropped where the response changes protocol, the others arrive, and the response is
/// not reset. A well-behaved call is served alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_response_trailer_fields_are_dropped_on_the_mesh_hop() {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 2048];
                while let Ok(n) = s.read(&mut head).await {
                    if n == 0 {
                        return;
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                              Trailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\n\
                              connection: close\r\nkeep-alive: timeout=5\r\n\
                              transfer-encoding: chunked\r\nx-checksum: abc\r\n\r\n",
                        )
                        .await;
                }
            });
        }
    });
    let ca = DevCa::new("cluster.local").unwrap();
    let (b, _) = server_proxy(&ca, app_addr).await;
    let a = client_proxy(&ca, "web", b.inbound_addr, "api").await;
    // The whole response, as it came (chunked, with its trailer section), to its close.
    let whole = async {
        let mut s = tokio::net::TcpStream::connect(a.outbound_addr)
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: api\r\nTE: trailers\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
            .await
            .expect("the response ends")
            .unwrap();
        String::from_utf8_lossy(&all).to_ascii_lowercase()
    };
    let (text, calm) = tokio::join!(whole, async {
        let mut c = h1(a.outbound_addr).await;
        c.send_request(get("api", "/")).await.unwrap().status()
    });
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(
        text.contains("x-checksum: abc"),
        "the trailer arrives: {text}"
    );
    let trailers = text.split("\r\n0\r\n").nth(1).expect("a last chunk");
    for dropped in ["connection:", "keep-alive:", "transfer-encoding:"] {
        assert!(!trailers.contains(dropped), "{dropped} was dropped: {text}");
    }
    assert_eq!(calm, StatusCode::OK);
}

/// A WebSocket upgrade to a meshed service crosses on a mutual TLS connection of its own
/// (HTTP/1.1 by ALPN: an upgrade cannot ride the HTTP/2 connection between proxies), through
/// a strict peer that would refuse plaintext: 1 MiB each way, a clean close, and the callee's
/// proxy counts the request under the caller's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_a_meshed_service_crosses_over_mtls() {
    let ca = DevCa::new("cluster.local").unwrap();
    let ws = skiff_e2e::websocket::echo_backend().await;
    let (b, _) = server_proxy(&ca, ws.addr).await;
    let a = client_proxy(&ca, "web", b.inbound_addr, "api").await;

    skiff_e2e::websocket::echo_a_mebibyte(a.outbound_addr, "api").await;
    assert_eq!(ws.last().headers["upgrade"], "websocket");

    let (_, metrics) = admin_get(b.admin_addr, "/metrics").await;
    let upgrade = metrics.lines().find(|l| {
        l.starts_with("response_total{")
            && l.contains("direction=\"inbound\"")
            && l.contains("status_code=\"101\"")
    });
    let upgrade = upgrade.unwrap_or_else(|| panic!("no inbound 101 in\n{metrics}"));
    assert!(
        upgrade.contains("client_id=\"spiffe://cluster.local/ns/shop/sa/web\""),
        "{upgrade}"
    );
    assert!(
        !metrics.contains("skiff_tls_handshake_failures_total{"),
        "{metrics}"
    );
}
