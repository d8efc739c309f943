//! Draining: `/ready` turns 503, new connections are refused, and a request in flight
//! completes before shutdown returns. (The binary's SIGTERM handling runs the same drain;
//! `proxy/tests/signal.rs` checks it with a real signal.)

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use skiff_e2e::*;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_refuses_new_connections() {
    let (slow, mut bodies) = streaming_backend("slow").await;
    let proxy = ProxyConfig::new(1)
        .service("slow", &[slow.addr])
        .start()
        .await;
    let (out, admin) = (proxy.outbound_addr, proxy.admin_addr);

    let mut client = h1(out).await;
    let rsp = client.send_request(get("slow", "/")).await.unwrap();
    let feed = bodies.recv().await.unwrap();

    let shutdown = tokio::spawn(proxy.drain_with(Duration::from_secs(20)));
    eventually(
        Duration::from_secs(5),
        "/ready reports 503",
        || async move { admin_get(admin, "/ready").await.0 == 503 },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "new connections are refused",
        || async move { TcpStream::connect(out).await.is_err() },
    )
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the request in flight"
    );

    feed.send(Frame::data(Bytes::from_static(b"all done")))
        .await
        .unwrap();
    drop(feed);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"all done");
    assert!(shutdown.await.unwrap(), "drained within the grace period");
}
