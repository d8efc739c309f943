//! A client whose request body fails (it stalls past `bodyIdleTimeout`, or a chunk is
//! malformed) is answered with its own fault, 408 or 400, on every path: an HTTP/2
//! upstream and the mesh hop as well as HTTP/1. The failure is never counted against the
//! endpoint: its breaker, set here to open on the first failure, stays closed, the request
//! is not retried, and a well-behaved client is served alongside.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Frame;
use proxy_tls::devca::DevCa;
use skiff_e2e::mesh::{client_config, credentials, server_proxy};
use skiff_e2e::*;

/// Opens on the first endpoint failure, and stays open long past the test.
fn hair_trigger() -> serde_json::Value {
    json!({
        "breaker": {"consecutiveFailures": 1, "backoff": "60s", "maxBackoff": "60s"},
        "retry": {"attempts": 3, "nonIdempotent": true, "codes": [408, 502, 503, 504]},
    })
}

fn short_body_timeout() -> serde_json::Value {
    json!({"limits": {"bodyIdleTimeout": "200ms"}})
}

/// A proxy in front of `web` with the hair-trigger breaker and a short body timeout.
async fn guarded_proxy(web: &Backend) -> skiff::Running {
    ProxyConfig::new(1)
        .service_with("web", &[web.addr], hair_trigger())
        .spec(short_body_timeout())
        .start()
        .await
}

/// Whether `endpoint`'s breaker is open, from the proxy's scrape.
async fn breaker_open(admin: SocketAddr, endpoint: SocketAddr) -> bool {
    let (_, m) = admin_get(admin, "/metrics").await;
    m.lines()
        .find(|l| {
            l.starts_with("skiff_breaker_state{") && l.contains(&format!("endpoint=\"{endpoint}\""))
        })
        .is_some_and(|l| l.ends_with(" 1"))
}

/// Retries sent by the proxy, from its scrape.
async fn retries(admin: SocketAddr) -> f64 {
    let (_, m) = admin_get(admin, "/metrics").await;
    m.lines()
        .filter(|l| l.starts_with("skiff_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An HTTP/2 upload that sends three bytes and then nothing, its sender kept alive.
async fn stalled_h2_upload(
    proxy: SocketAddr,
) -> (
    http::Response<hyper::body::Incoming>,
    tokio::sync::mpsc::Sender<Frame<Bytes>>,
) {
    let mut c = h2(proxy).await;
    let (tx, body) = channel_body();
    tx.send(Frame::data(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    let req = Request::post("http://web/upload").body(body).unwrap();
    let rsp = c.send_request(req).await.unwrap();
    (rsp, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_upload_is_a_408_and_never_the_endpoints_fault() {
    let web = body_reader().await;
    let proxy = guarded_proxy(&web).await;
    let mut calm = h2(proxy.outbound_addr).await;

    for _ in 0..3 {
        let ((rsp, _held), good) = tokio::join!(stalled_h2_upload(proxy.outbound_addr), async {
            let req = Request::post("http://web/")
                .body(text("0123456789"))
                .unwrap();
            let rsp = calm.send_request(req).await.unwrap();
            (rsp.status(), body_text(rsp).await)
        });
        assert_eq!(rsp.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(rsp.headers()["skiff-error"], "request-timeout");
        assert_eq!(good, (StatusCode::OK, "read 10".to_owned()));
    }
    assert!(!breaker_open(proxy.admin_addr, web.addr).await);
    assert_eq!(
        retries(proxy.admin_addr).await,
        0.0,
        "no stalled upload was retried"
    );
    let rsp = calm
        .send_request(Request::get("http://web/").body(text("")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        rsp.status(),
        StatusCode::OK,
        "the endpoint still takes requests"
    );
}

/// A client proxy (shop/web) whose service `api` at `b` is meshed as shop/api, with the
/// hair-trigger breaker and a short body timeout.
async fn meshed_client(ca: &DevCa, b: SocketAddr) -> (skiff::Running, PathBuf) {
    let dir = credentials(ca, "shop", "web");
    let proxy = client_config(&dir, "web", b, "api", hair_trigger())
        .spec(short_body_timeout())
        .start()
        .await;
    (proxy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_failures_on_the_mesh_hop_are_the_clients() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = body_reader().await;
    let (b, _) = server_proxy(&ca, app.addr).await;
    let (a, _) = meshed_client(&ca, b.inbound_addr).await;
    let mut calm = h1(a.outbound_addr).await;

    // A stalled HTTP/1 upload: three bytes of ten, then nothing.
    let stalled = b"POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\nabc";
    // A chunked body whose second chunk size is not hex.
    let malformed = b"POST /upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n\
        3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n";
    for (request, status, reason) in [
        (&stalled[..], 408, "request-timeout"),
        (&malformed[..], 400, "bad-request"),
        (&stalled[..], 408, "request-timeout"),
    ] {
        let (hostile, good) = tokio::join!(raw(a.outbound_addr, request), async {
            let req = Request::post("/")
                .header("host", "api")
                .body(text("0123456789"))
                .unwrap();
            let rsp = calm.send_request(req).await.unwrap();
            (rsp.status(), body_text(rsp).await)
        });
        assert_eq!(hostile.status, status, "{hostile:?}");
        assert_eq!(hostile.header("skiff-error"), Some(reason));
        assert_eq!(good, (StatusCode::OK, "read 10".to_owned()));
    }
    assert!(!breaker_open(a.admin_addr, b.inbound_addr).await);
    let rsp = calm.send_request(get("api", "/")).await.unwrap();
    assert_eq!(
        rsp.status(),
        StatusCode::OK,
        "the peer still takes requests"
    );
    assert_eq!(
        retries(a.admin_addr).await,
        0.0,
        "no failed upload was retried"
    );
}

/// The same failures to a plain HTTP/1 upstream, which already kept the blame: guarded
/// here so every path stays alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_failures_to_an_http1_upstream_are_the_clients() {
    let web = body_reader().await;
    let proxy = guarded_proxy(&web).await;
    let stalled = b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nabc";
    let malformed = b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n\
        3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n";
    let rsp = raw(proxy.outbound_addr, stalled).await;
    assert_eq!(
        (rsp.status, rsp.header("skiff-error")),
        (408, Some("request-timeout"))
    );
    let rsp = raw(proxy.outbound_addr, malformed).await;
    assert_eq!(
        (rsp.status, rsp.header("skiff-error")),
        (400, Some("bad-request"))
    );
    assert!(!breaker_open(proxy.admin_addr, web.addr).await);
    let mut c = h1(proxy.outbound_addr).await;
    let rsp = c.send_request(get("web", "/")).await.unwrap();
    assert_eq!(body_text(rsp).await, "read 0");
    assert_eq!(
        retries(proxy.admin_addr).await,
        0.0,
        "neither failure was retried"
    );
}
