//! Bad input through the real proxy. Each case asserts the status and `skiff-error` reason,
//! that nothing reached the backend when the proxy refused, and that a keep-alive
//! connection opened beforehand keeps working.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::json;
use skiff_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    reason: Option<&'static str>,
    reaches_backend: bool,
}

fn case(
    name: &'static str,
    request: &str,
    status: u16,
    reason: Option<&'static str>,
    reaches: bool,
) -> Case {
    Case {
        name,
        request: request.as_bytes().to_vec(),
        status,
        reason,
        reaches_backend: reaches,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_answers_and_never_reach_the_backend() {
    let web = body_reader().await;
    let closed_reserved = dead_addr();
    let closed = closed_reserved.addr;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .service("down", &[closed])
        .start()
        .await;
    let mut good = h1(proxy.outbound_addr).await;

    let many_headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: web\r\n{many_headers}\r\n");
    let cases = [
        case("no Host", "GET / HTTP/1.1\r\n\r\n", 400, Some("bad-request"), false),
        case("two Hosts", "GET / HTTP/1.1\r\nHost: web\r\nHost: web\r\n\r\n", 400, Some("bad-request"), false),
        // hyper applies RFC 9112 section 6.1 before we see the request: chunked wins, the
        // Content-Length is dropped, and the connection closes after the response. The
        // upstream gets one framing only, so nothing can be smuggled.
        case(
            "CL and TE together",
            "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n",
            200,
            None,
            true,
        ),
        case(
            "invalid chunk size",
            "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
            Some("bad-request"),
            false,
        ),
        case("200 headers", &many, 431, Some("headers-too-large"), false),
        case("unknown service", "GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n", 404, Some("no-route"), false),
        case("backend refuses", "GET / HTTP/1.1\r\nHost: down\r\n\r\n", 502, Some("upstream-connect"), false),
        case("CONNECT", "CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n", 400, Some("bad-request"), false),
        case("GET *", "GET * HTTP/1.1\r\nHost: web\r\n\r\n", 400, Some("bad-request"), false),
        case(
            "absolute-form URI wins over Host",
            "GET http://web/abs HTTP/1.1\r\nHost: evil\r\n\r\n",
            200,
            None,
            true,
        ),
        case(
            "Connection-named header",
            "GET / HTTP/1.1\r\nHost: web\r\nConnection: X-Foo\r\nX-Foo: secret\r\nKeep-Alive: 5\r\n\r\n",
            200,
            None,
            true,
        ),
        case(
            "Upgrade: h2c",
            "GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            200,
            None,
            true,
        ),
        case(
            "forged skiff header",
            "GET / HTTP/1.1\r\nHost: web\r\nskiff-error: forged\r\n\r\n",
            200,
            None,
            true,
        ),
    ];

    for c in cases {
        let before = web.requests();
        let rsp = raw(proxy.outbound_addr, &c.request).await;
        assert_eq!(rsp.status, c.status, "{}: {rsp:?}", c.name);
        assert_eq!(rsp.header("skiff-error"), c.reason, "{}", c.name);
        let reached = web.requests() - before;
        assert_eq!(
            reached,
            usize::from(c.reaches_backend),
            "{}: requests reaching the backend",
            c.name
        );

        if c.reaches_backend {
            let seen = web.last();
            assert_eq!(seen.headers["host"], "web", "{}", c.name);
            for stripped in [
                "x-foo",
                "connection",
                "keep-alive",
                "upgrade",
                "http2-settings",
                "skiff-error",
            ] {
                assert!(
                    seen.headers.get(stripped).is_none(),
                    "{}: {stripped} was forwarded",
                    c.name
                );
            }
            assert_eq!(
                seen.uri,
                if c.name.starts_with("absolute") {
                    "/abs"
                } else {
                    "/"
                }
            );
        }
        if c.name == "CL and TE together" {
            assert_eq!(rsp.header("connection"), Some("close"));
            assert_eq!(String::from_utf8_lossy(&rsp.body), "read 0");
            assert!(web.last().headers.get("content-length").is_none());
        }

        // The connection opened before the bad request is unaffected.
        let before = web.requests();
        let rsp = good.send_request(get("web", "/good")).await.unwrap();
        assert_eq!(
            rsp.status(),
            StatusCode::OK,
            "good connection after {}",
            c.name
        );
        assert_eq!(body_text(rsp).await, "read 0");
        assert_eq!(web.requests(), before + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_authority_that_disagrees_with_host_is_refused() {
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .start()
        .await;
    let mut c = h2(proxy.outbound_addr).await;
    let req = Request::get("http://web/")
        .header("host", "evil")
        .body(text(""))
        .unwrap();
    let rsp = c.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(rsp.headers()["skiff-error"], "bad-request");
    // Other streams on the same connection are unaffected.
    let rsp = c
        .send_request(Request::get("http://web/").body(text("")).unwrap())
        .await
        .unwrap();
    assert_eq!(body_text(rsp).await, "web");
    assert_eq!(web.requests(), 1);
}

/// A client that trickles its headers is cut off by the header read timeout; one that stalls
/// mid-body gets 408 `request-timeout`. A good connection opened alongside keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let web = body_reader().await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .spec(json!({"limits": {"headerReadTimeout": "300ms", "bodyIdleTimeout": "300ms"}}))
        .start()
        .await;
    let mut good = h1(proxy.outbound_addr).await;

    // Slowloris: headers never finish.
    let mut slow = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-a: 1\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the slow connection")
        .ok();
    assert_eq!(
        web.requests(),
        0,
        "the slow request never reached the backend"
    );

    // Slow body: the body stops after 3 of 10 bytes.
    let mut stall = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    stall
        .write_all(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let rsp = read_response(&mut stall).await;
    assert_eq!(rsp.status, 408);
    assert_eq!(rsp.header("skiff-error"), Some("request-timeout"));

    let rsp = good.send_request(get("web", "/")).await.unwrap();
    assert_eq!(body_text(rsp).await, "read 0");

    // The header timeout counts from a head's first byte: a keep-alive connection idle for
    // longer than it between requests is not cut (the app's pool keeps it warm).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rsp = good.send_request(get("web", "/again")).await.unwrap();
    assert_eq!(body_text(rsp).await, "read 0");
}

/// A proxy in front of `web` that serves two connections at once on each listener, and
/// waits long for a first byte (so a silent connection holds its slot).
async fn two_connections_each(web: &Backend) -> Running {
    ProxyConfig::new(1)
        .service("web", &[web.addr])
        .spec(json!({"limits": {"maxConnections": 2, "detectTimeout": "30s"}}))
        .start()
        .await
}

/// At the connection limit, accepting pauses: a third client waits in the backlog and is
/// served as soon as one of the two held connections closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_pauses_accepting() {
    let web = hello("web").await;
    let proxy = two_connections_each(&web).await;
    let held_a = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    let _held_b = TcpStream::connect(proxy.outbound_addr).await.unwrap();

    let mut third = TcpStream::connect(proxy.outbound_addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the third connection is not served while two are held"
    );
    assert_eq!(web.requests(), 0);

    drop(held_a);
    let rsp = read_response(&mut third).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(web.requests(), 1);
}

/// The admin listener on `[::]` sees an IPv4 caller as an IPv4-mapped address: from
/// 127.0.0.1 it is still this host, and may tap (a route refused to remote callers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_on_all_ipv6_addresses_knows_ipv4_loopback_callers() {
    let proxy = ProxyConfig::new(1)
        .admin(json!({"listen": "[::]:0"}))
        .start()
        .await;
    let admin = SocketAddr::from(([127, 0, 0, 1], proxy.admin_addr.port()));
    // A tap stream does not end: read its status line only.
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /tap HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "the status line arrives"
        );
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // A well-behaved scrape alongside.
    assert_eq!(admin_get(admin, "/metrics").await.0, 200);
}

/// Each listener has its own connection limit: callers holding every inbound connection
/// leave the application's outbound calls untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_flood_leaves_the_applications_outbound_calls_alone() {
    let web = hello("web").await;
    let proxy = two_connections_each(&web).await;
    // Silent inbound connections: the inbound listener's whole limit, and one waiting.
    let mut flood = Vec::new();
    for _ in 0..3 {
        flood.push(TcpStream::connect(proxy.inbound_addr).await.unwrap());
    }
    // Bounded: with one limit for both listeners this call would wait for the flood.
    let call = async {
        let mut c = h1(proxy.outbound_addr).await;
        c.send_request(get("web", "/")).await.unwrap().status()
    };
    let status = tokio::time::timeout(Duration::from_secs(10), call).await;
    assert_eq!(
        status.ok(),
        Some(StatusCode::OK),
        "the outbound call is served"
    );
    assert_eq!(web.requests(), 1);
    drop(flood);
}

/// An h2c connection to `addr`, and a task that ends when the connection does.
async fn h2_watched(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<TestBody>,
    tokio::task::JoinHandle<()>,
) {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (tx, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    (tx, tokio::spawn(async move { drop(conn.await) }))
}

/// An HTTP/2 connection with no stream open for `limits.idleTimeout` is closed (GOAWAY),
/// so idle clients cannot hold connection slots; one with a stream streaming across
/// several idle periods is not, and is closed once it too has been idle that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_and_busy_ones_kept() {
    let (web, mut bodies) = streaming_backend("web").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .spec(json!({"limits": {"idleTimeout": "300ms"}}))
        .start()
        .await;
    let (mut busy, busy_conn) = h2_watched(proxy.outbound_addr).await;
    let rsp = busy
        .send_request(Request::get("http://web/long").body(text("")).unwrap())
        .await
        .unwrap();
    let feed = bodies.recv().await.unwrap();

    // A connection that opens no stream is closed after the idle period.
    let (_idle, idle_conn) = h2_watched(proxy.outbound_addr).await;
    tokio::time::timeout(Duration::from_secs(10), idle_conn)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    // Meanwhile (a full idle period and more), the busy one kept its stream.
    assert!(!busy_conn.is_finished());
    feed.send(hyper::body::Frame::data(bytes::Bytes::from_static(b"done")))
        .await
        .unwrap();
    drop(feed);
    assert_eq!(body_text(rsp).await, "done");
    tokio::time::timeout(Duration::from_secs(10), busy_conn)
        .await
        .expect("once idle, it is closed too")
        .unwrap();
}
