//! A WebSocket echo backend and a client that sends a mebibyte through the tunnel, for the
//! tests that upgrade through one proxy and through two meshed ones.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{backend, read_response, text, Backend};

/// A backend that accepts any WebSocket handshake, then echoes until the client half-closes
/// and closes its side.
pub async fn echo_backend() -> Backend {
    backend(|mut req: Request<Incoming>| async move {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.unwrap();
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = io.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await.unwrap();
            }
            io.shutdown().await.unwrap();
        });
        let mut rsp = Response::new(text(""));
        *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        rsp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        rsp.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        rsp.headers_mut().insert(
            "sec-websocket-accept",
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
        );
        rsp
    })
    .await
}

/// Upgrades a connection to `proxy` for `host`, sends 1 MiB and half-closes, and checks
/// that the same mebibyte comes back and the tunnel then closes cleanly.
pub async fn echo_a_mebibyte(proxy: SocketAddr, host: &str) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let handshake = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(handshake.as_bytes()).await.unwrap();
    let head = read_response(&mut s).await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("upgrade"), Some("websocket"));

    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = s.into_split();
    let expected = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap(); // half-close: the backend sees EOF and closes too
    });
    let mut echoed = Vec::with_capacity(expected.len());
    tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut echoed))
        .await
        .expect("the tunnel closes cleanly")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), expected.len());
    assert!(echoed == expected, "echoed bytes match");
}
