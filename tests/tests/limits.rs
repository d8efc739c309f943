//! Local rate limits and concurrency limits through the real proxy.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Frame;
use skiff_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service_with(
            "web",
            &[web.addr],
            json!({"rateLimit": {"requestsPerSecond": 0.5, "burst": 3}}),
        )
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    for _ in 0..3 {
        let rsp = c.send_request(get("web", "/")).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        body_text(rsp).await;
    }
    let rsp = c.send_request(get("web", "/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rsp.headers()["skiff-error"], "rate-limited");
    assert_eq!(rsp.headers()["retry-after"], "2");
    body_text(rsp).await;
    assert_eq!(
        web.requests(),
        3,
        "the refused request never reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_in_flight_are_shed_until_one_finishes() {
    let (slow, mut bodies) = streaming_backend("slow").await;
    let proxy = ProxyConfig::new(1)
        .service_with("slow", &[slow.addr], json!({"maxInFlight": 2}))
        .start()
        .await;
    let mut a = h1(proxy.outbound_addr).await;
    let mut b = h1(proxy.outbound_addr).await;
    let ra = a.send_request(get("slow", "/a")).await.unwrap();
    let rb = b.send_request(get("slow", "/b")).await.unwrap();
    let (fa, _fb) = (bodies.recv().await.unwrap(), bodies.recv().await.unwrap());

    let shed = raw(
        proxy.outbound_addr,
        b"GET /c HTTP/1.1\r\nHost: slow\r\n\r\n",
    )
    .await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("skiff-error"), Some("load-shed"));
    assert_eq!(slow.requests(), 2);

    // Finishing one stream frees its slot.
    fa.send(Frame::data(Bytes::from_static(b"done")))
        .await
        .unwrap();
    drop(fa);
    assert_eq!(
        &ra.into_body().collect().await.unwrap().to_bytes()[..],
        b"done"
    );
    let out = proxy.outbound_addr;
    eventually(
        std::time::Duration::from_secs(5),
        "a slot is free again",
        || async move {
            let mut c = h1(out).await;
            let rsp = c.send_request(get("slow", "/d")).await.unwrap();
            rsp.status() == StatusCode::OK
        },
    )
    .await;
    drop(rb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_calls_to_the_app_can_be_rate_limited() {
    let app = hello("app").await;
    let proxy = ProxyConfig::new(app.addr.port())
        .inbound(json!({"rateLimit": {"requestsPerSecond": 1, "burst": 2}}))
        .start()
        .await;
    let mut c = h1(proxy.inbound_addr).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let rsp = c.send_request(get("app", "/")).await.unwrap();
        statuses.push(rsp.status().as_u16());
        body_text(rsp).await;
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(app.requests(), 2);
}
