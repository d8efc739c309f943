//! Protocols through the real proxy: HTTP/1.1, h2c, gRPC, WebSocket and opaque TCP, on both
//! listeners, with upstream connection reuse.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Frame;
use skiff_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_through_outbound_and_inbound() {
    let web = hello("web").await;
    let app = hello("app").await;
    let proxy = ProxyConfig::new(app.addr.port())
        .service("web", &[web.addr])
        .start()
        .await;

    let mut out = h1(proxy.outbound_addr).await;
    let rsp = out.send_request(get("web", "/a?b=c")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(body_text(rsp).await, "web");
    let seen = web.last();
    assert_eq!(seen.uri, "/a?b=c");
    assert_eq!(seen.headers["host"], "web");

    let mut inb = h1(proxy.inbound_addr).await;
    let rsp = inb.send_request(get("app.example", "/x")).await.unwrap();
    assert_eq!(body_text(rsp).await, "app");
    assert_eq!(app.last().headers["host"], "app.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_one_upstream_connection() {
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .start()
        .await;
    // Several client connections, one after another: the upstream connection is pooled.
    for _ in 0..4 {
        let mut c = h1(proxy.outbound_addr).await;
        for _ in 0..10 {
            let rsp = c
                .send_request(get("web.default.svc.cluster.local", "/"))
                .await
                .unwrap();
            assert_eq!(body_text(rsp).await, "web");
        }
    }
    assert_eq!(web.requests(), 40);
    assert_eq!(
        web.connections(),
        1,
        "40 requests reuse one upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_multiplexed_on_both_listeners() {
    let web = hello("web").await;
    let app = hello("app").await;
    let proxy = ProxyConfig::new(app.addr.port())
        .service("web", &[web.addr])
        .start()
        .await;

    for (addr, backend, body) in [
        (proxy.outbound_addr, &web, "web"),
        (proxy.inbound_addr, &app, "app"),
    ] {
        let client = h2(addr).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::get(format!("http://web/{i}"))
                    .body(text(""))
                    .unwrap();
                let rsp = c.send_request(req).await.unwrap();
                assert_eq!(rsp.version(), Version::HTTP_2);
                body_text(rsp).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), body);
        }
        assert_eq!(backend.last().version, Version::HTTP_2);
        assert_eq!(
            backend.connections(),
            1,
            "h2 upstream streams share one connection"
        );
    }
}

/// gRPC over h2c, unary and server-streaming: messages arrive one at a time (the proxy does
/// not buffer), and trailers with `grpc-status` reach the client unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming_keep_trailers() {
    // The streaming handler hands its frame sender to the test, which drives the stream.
    let (feed_tx, mut feed_rx) =
        tokio::sync::mpsc::channel::<tokio::sync::mpsc::Sender<Frame<Bytes>>>(1);
    let grpc = backend(move |req: Request<hyper::body::Incoming>| {
        let feed_tx = feed_tx.clone();
        async move {
            let te = req
                .headers()
                .get("te")
                .map(|v| v.to_str().unwrap().to_owned());
            let (tx, body) = channel_body();
            let mut rsp = Response::new(body);
            rsp.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            rsp.headers_mut()
                .insert("x-te", te.unwrap_or_default().parse().unwrap());
            if req.uri().path() == "/svc/Unary" {
                tokio::spawn(async move {
                    tx.send(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi")))
                        .await
                        .unwrap();
                    let mut t = http::HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    tx.send(Frame::trailers(t)).await.unwrap();
                });
            } else {
                feed_tx.send(tx).await.unwrap();
            }
            rsp
        }
    })
    .await;
    let proxy = ProxyConfig::new(grpc.addr.port())
        .service("grpc", &[grpc.addr])
        .start()
        .await;

    for addr in [proxy.outbound_addr, proxy.inbound_addr] {
        let mut client = h2(addr).await;
        let req = Request::post("http://grpc/svc/Unary")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(text(&b"\0\0\0\0\x02yo"[..]))
            .unwrap();
        let rsp = client.send_request(req).await.unwrap();
        assert_eq!(
            rsp.headers()["x-te"],
            "trailers",
            "te: trailers reaches the server"
        );
        let collected = rsp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    }

    let mut client = h2(proxy.outbound_addr).await;
    let req = Request::post("http://grpc/svc/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(text(""))
        .unwrap();
    let mut body = client.send_request(req).await.unwrap().into_body();
    let stream = feed_rx.recv().await.unwrap();
    for i in 0..3u8 {
        let msg = Bytes::from(vec![0, 0, 0, 0, 1, b'0' + i]);
        stream.send(Frame::data(msg.clone())).await.unwrap();
        // Each message reaches the client before the next one is even sent.
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), msg);
    }
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", "7".parse().unwrap());
    t.insert("grpc-message", "denied".parse().unwrap());
    stream.send(Frame::trailers(t)).await.unwrap();
    drop(stream);
    let trailers = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_trailers()
        .unwrap();
    assert_eq!(trailers["grpc-status"], "7");
    assert_eq!(trailers["grpc-message"], "denied");
    assert!(body.frame().await.is_none());
}

/// A WebSocket upgrade through the outbound listener: 1 MiB each way through the tunnel,
/// then a clean close propagated from the client's half-close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pipes_a_mebibyte_each_way_then_closes() {
    let ws = skiff_e2e::websocket::echo_backend().await;
    let proxy = ProxyConfig::new(1).service("ws", &[ws.addr]).start().await;
    skiff_e2e::websocket::echo_a_mebibyte(proxy.outbound_addr, "ws").await;
    assert_eq!(ws.last().headers["upgrade"], "websocket");
}

/// A server-speaks-first protocol (the client sends nothing until it hears a greeting)
/// works through the inbound listener: detection gives up after its timeout and forwards
/// bytes; with the port declared opaque, detection is skipped altogether.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_tcp_works_through_the_proxy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(b"220 greetings\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap();
                s.write_all(&buf[..n]).await.unwrap();
            });
        }
    });

    for spec in [
        json!({"limits": {"detectTimeout": "200ms"}}),
        json!({"opaquePorts": [port]}),
    ] {
        let proxy = ProxyConfig::new(port).spec(spec).start().await;
        let mut c = TcpStream::connect(proxy.inbound_addr).await.unwrap();
        let mut greeting = [0u8; 15];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut greeting))
            .await
            .expect("greeting arrives")
            .unwrap();
        assert_eq!(&greeting, b"220 greetings\r\n");
        c.write_all(b"\x01binary\x02").await.unwrap();
        let mut echo = [0u8; 8];
        c.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"\x01binary\x02");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_metrics_readiness_and_config() {
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    let rsp = c.send_request(get("web", "/")).await.unwrap();
    assert_eq!(body_text(rsp).await, "web");

    assert_eq!(admin_get(proxy.admin_addr, "/ready").await.0, 200);
    assert_eq!(admin_get(proxy.admin_addr, "/live").await.0, 200);
    let (status, config) = admin_get(proxy.admin_addr, "/config").await;
    assert_eq!(status, 200);
    assert!(config.contains("\"web\""), "{config}");

    let authority = r#"authority="web.default.svc.cluster.local:80""#;
    let admin = proxy.admin_addr;
    // The response is recorded when its body ends, just after the client read it.
    eventually(
        Duration::from_secs(5),
        "response_total recorded",
        || async move {
            let (_, m) = admin_get(admin, "/metrics").await;
            m.lines().any(|l| {
                l.starts_with("response_total{")
                    && l.contains(authority)
                    && l.contains(r#"classification="success""#)
                    && l.contains(r#"status_code="200""#)
                    && l.ends_with(" 1")
            })
        },
    )
    .await;
    let (_, m) = admin_get(admin, "/metrics").await;
    for family in [
        "request_total{",
        "response_latency_ms_bucket{",
        "tcp_open_total{",
        "tcp_open_connections{",
        "skiff_protocol_detect_total{",
    ] {
        assert!(m.contains(family), "{family} missing from:\n{m}");
    }
    assert!(m
        .lines()
        .any(|l| l.starts_with("request_total{") && l.contains(authority) && l.ends_with(" 1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_authorities_pass_through_only_when_enabled() {
    let other = hello("other").await;
    let host = other.addr.to_string();

    let strict = ProxyConfig::new(1).start().await;
    let rsp = raw(
        strict.outbound_addr,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(rsp.status, 404);
    assert_eq!(rsp.header("skiff-error"), Some("no-route"));
    assert_eq!(other.requests(), 0);

    let open = ProxyConfig::new(1)
        .outbound(json!({"passthrough": true}))
        .start()
        .await;
    let mut c = h1(open.outbound_addr).await;
    let rsp = c.send_request(get(&host, "/p")).await.unwrap();
    assert_eq!(body_text(rsp).await, "other");
    assert_eq!(other.last().headers["host"], host.as_str());
}

/// Every listener on an IPv4 loopback address also listens on `[::1]`, same port: IPv6
/// callers reach the outbound and inbound listeners and the admin endpoints, and are known
/// by their IPv6 address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_loopback_listeners_also_answer_on_ipv6_loopback() {
    let app = hello("app").await;
    let web = hello("web").await;
    let proxy = ProxyConfig::new(app.addr.port())
        .service("web", &[web.addr])
        .inbound(json!({"listen": "127.0.0.1:0"}))
        .start()
        .await;
    let v6 = |addr: SocketAddr| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()));

    let rsp = h1(v6(proxy.outbound_addr))
        .await
        .send_request(get("web", "/"))
        .await
        .unwrap();
    assert_eq!(body_text(rsp).await, "web");
    let rsp = h1(v6(proxy.inbound_addr))
        .await
        .send_request(get("app", "/"))
        .await
        .unwrap();
    assert_eq!(body_text(rsp).await, "app");
    let (status, metrics) = admin_get(v6(proxy.admin_addr), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tcp_open_total{direction=\"outbound\",peer=\"src\""),
        "{metrics}"
    );
    // The admin listener's loopback-only endpoints take IPv6 loopback as loopback.
    let (status, _) = admin_get(v6(proxy.admin_addr), "/ready").await;
    assert_eq!(status, 200);
}
