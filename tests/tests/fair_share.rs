//! A client that takes every stream the upstream allows on a shared HTTP/2 connection (it
//! opens them and never finishes their bodies) does not block other clients' requests to
//! the same endpoint: the proxy opens another connection rather than queue them, and one
//! client connection holds at most its share of any upstream connection. The same holds on
//! the mesh hop, where slow HTTP/1 uploads would otherwise fill the one connection to the
//! peer proxy. Outcomes are asserted: the well-behaved requests are all answered while the
//! hostile ones are still held open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tls::devca::DevCa;
use skiff_e2e::mesh::{client_proxy, credentials, identity};
use skiff_e2e::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Long enough never to fire in a passing run; a run that queues the good requests behind
/// the held streams fails here instead of hanging.
const GUARD: Duration = Duration::from_secs(20);

/// What an [`h2_backend`] has seen.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// An h2c-only backend allowing `max_streams` streams per connection, answering each
/// request once its body is read: `read <length>`.
async fn h2_backend(max_streams: u32) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            let counted = counted.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                counted.requests.fetch_add(1, Ordering::SeqCst);
                async move {
                    let n = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes().len(),
                        Err(_) => 0,
                    };
                    Ok::<_, Infallible>(Response::new(text(format!("read {n}"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    (addr, seen)
}

/// A POST whose body sends `abc` and then waits for the returned sender.
fn held_upload(uri: &str) -> (Request<TestBody>, tokio::sync::mpsc::Sender<Frame<Bytes>>) {
    let (tx, body) = channel_body();
    tx.try_send(Frame::data(Bytes::from_static(b"abc")))
        .unwrap();
    (Request::post(uri).body(body).unwrap(), tx)
}

/// Runs `calls` at once and returns their outputs.
async fn all<F>(calls: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// `n` well-behaved POSTs at once, each on its own HTTP/2 connection; their answers.
async fn calm_h2(proxy: SocketAddr, n: usize) -> Vec<(StatusCode, String)> {
    all((0..n).map(move |_| async move {
        let mut c = h2(proxy).await;
        let req = Request::post("http://web/")
            .body(text("0123456789"))
            .unwrap();
        let rsp = c.send_request(req).await.unwrap();
        (rsp.status(), body_text(rsp).await)
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_every_stream_of_an_h2_upstream_does_not_block_others() {
    let (web, seen) = h2_backend(4).await;
    let proxy = ProxyConfig::new(1).service("web", &[web]).start().await;
    // A first exchange, so the proxy has learnt the backend's stream limit.
    assert_eq!(calm_h2(proxy.outbound_addr, 1).await[0].1, "read 10");

    // The hostile client: twelve uploads on one connection, none of them finished.
    let mut hostile = h2(proxy.outbound_addr).await;
    let mut held = Vec::new();
    for _ in 0..12 {
        let (req, tx) = held_upload("http://web/upload");
        let rsp = tokio::spawn(hostile.send_request(req));
        held.push((rsp, tx));
    }
    // It holds its share (two of four streams) on each of the four connections it makes the
    // proxy open; its other four uploads wait in the proxy for one of its own to end.
    eventually(GUARD, "the hostile uploads reach the backend", || async {
        seen.requests.load(Ordering::SeqCst) == 1 + 8
    })
    .await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 4);
    let answers = tokio::time::timeout(GUARD, calm_h2(proxy.outbound_addr, 6))
        .await
        .expect("the well-behaved requests are answered while the hostile ones are held");
    assert!(
        answers
            .iter()
            .all(|a| *a == (StatusCode::OK, "read 10".to_owned())),
        "{answers:?}"
    );
    assert!(
        held.iter().all(|(rsp, _)| !rsp.is_finished()),
        "the hostile uploads were still open meanwhile"
    );
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        4,
        "no more than the limit"
    );

    // Once the hostile client finishes its bodies, all of its requests are answered too.
    // (All at once: the four waiting in the proxy may be any of the twelve, and each goes
    // out only when one of the client's streams upstream ends.)
    let (responses, senders): (Vec<_>, Vec<_>) = held.into_iter().unzip();
    drop(senders);
    for rsp in responses {
        let rsp = tokio::time::timeout(GUARD, rsp)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(body_text(rsp).await, "read 3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_do_not_fill_the_mesh_hop_for_everyone() {
    let ca = DevCa::new("cluster.local").unwrap();
    let app = body_reader().await;
    // The peer proxy takes four streams per connection.
    let server_dir = credentials(&ca, "shop", "api");
    let b = ProxyConfig::new(app.addr.port())
        .spec(identity(&server_dir, "shop", "api"))
        .spec(json!({"limits": {"http2": {"maxConcurrentStreams": 4}}}))
        .start()
        .await;
    let a = client_proxy(&ca, "web", b.inbound_addr, "api").await;
    let mut calm = h1(a.outbound_addr).await;
    let rsp = calm.send_request(get("api", "/")).await.unwrap();
    assert_eq!(body_text(rsp).await, "read 0");

    // Four slow HTTP/1 uploads from the application, each on its own connection: three
    // bytes of ten, then nothing.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(a.outbound_addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        slow.push(s);
    }
    // Wait until all four have reached the application, so they hold their streams.
    eventually(GUARD, "the slow uploads reach the app", || async {
        app.requests() == 5
    })
    .await;
    let outbound = a.outbound_addr;
    let calls = (0..4).map(move |_| async move {
        let mut c = h1(outbound).await;
        let req = Request::post("/")
            .header("host", "api")
            .body(text("0123456789"))
            .unwrap();
        let rsp = c.send_request(req).await.unwrap();
        (rsp.status(), body_text(rsp).await)
    });
    let answers = tokio::time::timeout(GUARD, all(calls))
        .await
        .expect("meshed calls are answered while the slow uploads hold their streams");
    assert!(
        answers
            .iter()
            .all(|a| *a == (StatusCode::OK, "read 10".to_owned())),
        "{answers:?}"
    );

    for mut s in slow {
        s.write_all(b"defghij").await.unwrap();
        let rsp = tokio::time::timeout(GUARD, read_response(&mut s))
            .await
            .unwrap();
        assert_eq!((rsp.status, rsp.body.as_slice()), (200, &b"read 10"[..]));
    }
}
