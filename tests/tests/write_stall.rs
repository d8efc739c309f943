//! `limits.writeStallTimeout`: a peer that stops reading what Skiff writes to it is cut
//! after the limit, on either side. A client that asks for a large response and never reads
//! it loses its connection (and the buffers behind it); an upstream that stops reading a
//! request body fails the request with 504 `upstream-timeout`. A well-behaved client is
//! served alongside each time.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Frame;
use skiff_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const BIG: usize = 8 * 1024 * 1024;

fn stall_limit() -> serde_json::Value {
    json!({"limits": {"writeStallTimeout": "300ms"}})
}

/// Reads until the connection ends, fails, or carries nothing for a while (a whole
/// response read, the connection kept alive); the bytes read.
async fn read_rest(s: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return total,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut() {
    let web = backend(|_req| async { ok(vec![b'x'; BIG]) }).await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .spec(stall_limit())
        .start()
        .await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(proxy.outbound_addr).await.unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    assert!(stalled.read(&mut first).await.unwrap() > 0);

    // While it reads nothing for longer than the limit, a well-behaved client is served.
    let calm = async {
        let mut c = h1(proxy.outbound_addr).await;
        let rsp = c.send_request(get("web", "/")).await.unwrap();
        body_text(rsp).await.len()
    };
    let (served, ()) = tokio::join!(calm, tokio::time::sleep(Duration::from_secs(1)));
    assert_eq!(served, BIG);

    // What was in flight drains, then the connection ends short of the body.
    let got = first.len() + read_rest(&mut stalled).await;
    assert!(
        got < BIG,
        "the stalled client was cut: {got} of {BIG} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_a_request_body_is_a_504() {
    // Reads the request head, then nothing: the body backs up.
    let deaf = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf_addr = deaf.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = deaf.accept().await {
            let mut head = [0u8; 512];
            let _ = s.read(&mut head).await;
            held.push(s);
        }
    });
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service("deaf", &[deaf_addr])
        .service("web", &[web.addr])
        .spec(stall_limit())
        .start()
        .await;

    let mut c = h1(proxy.outbound_addr).await;
    let (tx, body) = channel_body();
    let feed = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
        for _ in 0..BIG / chunk.len() {
            if tx.send(Frame::data(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    let req = Request::post("/upload")
        .header("host", "deaf")
        .header("content-length", BIG.to_string())
        .body(body)
        .unwrap();
    let (rsp, calm) = tokio::join!(c.send_request(req), async {
        let mut c = h1(proxy.outbound_addr).await;
        c.send_request(get("web", "/")).await.unwrap().status()
    });
    let rsp = rsp.unwrap();
    assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(rsp.headers()["skiff-error"], "upstream-timeout");
    assert_eq!(calm, StatusCode::OK);
    feed.abort();
}
