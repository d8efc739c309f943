//! Circuit breaking through the real proxy: a dead endpoint is ejected, then traffic flows
//! only to the live ones; a service whose endpoints are all ejected fails fast.

use std::time::Duration;

use http::StatusCode;
use skiff_e2e::*;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_ejected_and_then_no_request_fails() {
    let (a, b) = (hello("a").await, hello("b").await);
    let dead_reserved = dead_addr();
    let dead = dead_reserved.addr;
    let proxy = ProxyConfig::new(1)
        .service_with(
            "web",
            &[a.addr, dead, b.addr],
            json!({
                "loadBalancer": "round-robin",
                "breaker": {"consecutiveFailures": 3, "backoff": "30s", "maxBackoff": "60s"},
            }),
        )
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    // Round-robin sends every third request to the dead endpoint until it is ejected.
    let mut failed_before = 0;
    for _ in 0..9 {
        let rsp = c.send_request(get("web", "/")).await.unwrap();
        if rsp.status() == StatusCode::BAD_GATEWAY {
            assert_eq!(rsp.headers()["skiff-error"], "upstream-connect");
            failed_before += 1;
        }
        body_text(rsp).await;
    }
    assert_eq!(failed_before, 3, "three failures eject it");

    for _ in 0..100 {
        let rsp = c.send_request(get("web", "/")).await.unwrap();
        assert_eq!(
            rsp.status(),
            StatusCode::OK,
            "no request fails after the ejection"
        );
        body_text(rsp).await;
    }
    assert_eq!(a.requests() + b.requests(), 106);

    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    let dead_state = m
        .lines()
        .find(|l| {
            l.starts_with("skiff_breaker_state{") && l.contains(&format!("endpoint=\"{dead}\""))
        })
        .expect("breaker state exported");
    assert!(dead_state.ends_with(" 1"), "Open: {dead_state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_no_request_fails_even_before_the_ejection() {
    let (a, b) = (hello("a").await, hello("b").await);
    let dead_reserved = dead_addr();
    let dead = dead_reserved.addr;
    let proxy = ProxyConfig::new(1)
        .service_with(
            "web",
            &[a.addr, dead, b.addr],
            json!({
                "breaker": {"consecutiveFailures": 3},
                "retry": {"attempts": 2, "backoff": "1ms", "maxBackoff": "1ms"},
            }),
        )
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    for _ in 0..200 {
        let rsp = c.send_request(get("web", "/")).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        body_text(rsp).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_is_ejected_requests_fail_fast_then_a_probe_restores() {
    // The endpoint is down at first, then comes up on the same port.
    let reserved = dead_addr();
    let addr = reserved.addr;
    let proxy = ProxyConfig::new(1)
        .service_with(
            "solo",
            &[addr],
            json!({"breaker": {"consecutiveFailures": 2, "backoff": "300ms", "maxBackoff": "300ms"}}),
        )
        .start()
        .await;
    for _ in 0..2 {
        let rsp = raw(proxy.outbound_addr, b"GET / HTTP/1.1\r\nHost: solo\r\n\r\n").await;
        assert_eq!(rsp.status, 502);
    }
    let rsp = raw(proxy.outbound_addr, b"GET / HTTP/1.1\r\nHost: solo\r\n\r\n").await;
    assert_eq!(rsp.status, 503);
    assert_eq!(rsp.header("skiff-error"), Some("circuit-open"));

    // Bring the endpoint up on the same port; after the ejection a probe closes the circuit.
    drop(reserved);
    let revived = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = revived.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(ok("back"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let out = proxy.outbound_addr;
    eventually(
        Duration::from_secs(5),
        "the probe restores the endpoint",
        || async move {
            raw(out, b"GET / HTTP/1.1\r\nHost: solo\r\n\r\n")
                .await
                .status
                == 200
        },
    )
    .await;
}
