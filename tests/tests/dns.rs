//! Endpoints from DNS, against a DNS server the test runs on loopback: the proxy follows a
//! changed answer as its TTL runs out, a request in flight to an endpoint that left the
//! answer finishes, a name that stops existing leaves the service without endpoints, and a
//! truncated answer is asked for again over TCP.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hyper::StatusCode;
use skiff_e2e::dns::DnsServer;
use skiff_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_endpoints_follow_the_answer_and_requests_in_flight_finish() {
    // Endpoint "a" streams `/long` (for the request left in flight); "b" listens on the same
    // port of another loopback address, as a new pod would.
    let (feeds_tx, mut a_bodies) = tokio::sync::mpsc::channel(4);
    let a = backend(move |req| {
        let feeds_tx = feeds_tx.clone();
        async move {
            if req.uri().path() != "/long" {
                return ok("a");
            }
            let (tx, body) = channel_body();
            feeds_tx.send(tx).await.unwrap();
            let mut rsp = hyper::Response::new(body);
            rsp.headers_mut().insert("x-backend", "a".parse().unwrap());
            rsp
        }
    })
    .await;
    let port = a.addr.port();
    let b = backend_at(SocketAddr::from(([127, 0, 0, 2], port)), |_req| async {
        ok("b")
    })
    .await;

    let dns = DnsServer::start(&[Ipv4Addr::new(127, 0, 0, 1)], 0).await;
    let proxy = ProxyConfig::new(1)
        .spec(json!({"dns": {
            "nameservers": [dns.addr.to_string()],
            "minTtl": "50ms",
            "maxTtl": "1s",
        }}))
        .service_with("web", &[], json!({"dns": format!("web.test.:{port}")}))
        .start()
        .await;
    let outbound = proxy.outbound_addr;
    let answer = || async move {
        let rsp = h1(outbound)
            .await
            .send_request(get("web", "/"))
            .await
            .unwrap();
        let reason = rsp.headers().get("skiff-error").cloned();
        (rsp.status(), reason, body_text(rsp).await)
    };
    eventually(
        Duration::from_secs(10),
        "the first answer is used",
        || async { answer().await.2 == "a" },
    )
    .await;
    let long = LongRequest::start(outbound, "web", "a", &mut a_bodies).await;

    dns.set(&[Ipv4Addr::new(127, 0, 0, 2)], 0);
    eventually(
        Duration::from_secs(10),
        "the new answer is used",
        || async { answer().await.2 == "b" },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(answer().await.2, "b");
    }
    assert!(b.requests() >= 20);
    // The request to the endpoint that left the answer completes.
    long.finish().await;

    // The name stops existing (a headless Service scaled to zero): no endpoints.
    dns.set(&[], 0);
    eventually(
        Duration::from_secs(10),
        "no endpoints once the name is gone",
        || async {
            let (status, reason, _) = answer().await;
            status == StatusCode::SERVICE_UNAVAILABLE && reason.is_some_and(|r| r == "no-endpoints")
        },
    )
    .await;
    assert!(dns.queries() >= 6, "A and AAAA asked for each answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_answers_are_asked_for_again_over_tcp() {
    let web = hello("over tcp").await;
    let dns = DnsServer::start(&[Ipv4Addr::new(127, 0, 0, 1)], 0).await;
    dns.truncate(true);
    let proxy = ProxyConfig::new(1)
        .spec(json!({"dns": {"nameservers": [dns.addr.to_string()], "minTtl": "1s"}}))
        .service_with(
            "web",
            &[],
            json!({"dns": format!("web.test.:{}", web.addr.port())}),
        )
        .start()
        .await;
    let outbound = proxy.outbound_addr;
    eventually(
        Duration::from_secs(10),
        "the TCP answer is used",
        || async move {
            let rsp = h1(outbound)
                .await
                .send_request(get("web", "/"))
                .await
                .unwrap();
            body_text(rsp).await == "over tcp"
        },
    )
    .await;
    assert!(dns.tcp_queries() >= 1, "asked over TCP");
}
