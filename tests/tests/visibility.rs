//! Metrics, cardinality and tap through the real proxy: counters equal to what was sent,
//! latency in the right bucket, a scrape a Prometheus parser reads, capped label values
//! that expire, and tap clients that see exactly what they asked for without slowing
//! anything when they stop reading.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use prometheus_parse::{Scrape, Value};
use skiff_e2e::*;

/// The scrape, parsed by a Prometheus text parser.
async fn scrape(admin: SocketAddr) -> Scrape {
    let (status, text) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the scrape parses")
}

fn value(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The sum of `metric` over samples whose labels include every pair of `want`.
fn total(s: &Scrape, metric: &str, want: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| want.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| value(&x.value))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_equal_what_was_sent() {
    let good = hello("fine").await;
    let bad = backend(|_req| async {
        let mut rsp = ok("broken");
        *rsp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        rsp
    })
    .await;
    let slow = backend(|_req| async {
        // A deliberately slow answer: 150 ms lands in the (100, 200] bucket.
        tokio::time::sleep(Duration::from_millis(150)).await;
        ok("slow")
    })
    .await;
    let dead_reserved = dead_addr();
    let dead = dead_reserved.addr;
    let proxy = ProxyConfig::new(1)
        .service("good", &[good.addr])
        .service("bad", &[bad.addr])
        .service("slow", &[slow.addr])
        .service("down", &[dead])
        .start()
        .await;
    let (n, m, k) = (20, 5, 3);
    let mut c = h1(proxy.outbound_addr).await;
    for (host, count) in [("good", n), ("bad", m), ("down", k), ("slow", 1)] {
        for _ in 0..count {
            let rsp = c.send_request(get(host, "/")).await.unwrap();
            let _ = rsp.into_body().collect().await;
        }
    }
    let admin = proxy.admin_addr;
    eventually(
        Duration::from_secs(5),
        "the last response is recorded",
        || async move {
            let s = scrape(admin).await;
            total(
                &s,
                "response_total",
                &[("authority", "slow.default.svc.cluster.local:80")],
            ) == 1.0
        },
    )
    .await;
    let s = scrape(admin).await;
    let auth = |name: &str| format!("{name}.default.svc.cluster.local:80");
    let (good_a, bad_a, down_a, slow_a) = (auth("good"), auth("bad"), auth("down"), auth("slow"));
    assert_eq!(
        total(&s, "request_total", &[("authority", &good_a)]),
        f64::from(n)
    );
    assert_eq!(
        total(&s, "request_total", &[("authority", &bad_a)]),
        f64::from(m)
    );
    assert_eq!(
        total(&s, "request_total", &[("authority", &down_a)]),
        f64::from(k)
    );
    let success = [
        ("authority", good_a.as_str()),
        ("status_code", "200"),
        ("classification", "success"),
        ("error", ""),
    ];
    assert_eq!(total(&s, "response_total", &success), f64::from(n));
    let failure = [
        ("authority", bad_a.as_str()),
        ("status_code", "500"),
        ("classification", "failure"),
    ];
    assert_eq!(total(&s, "response_total", &failure), f64::from(m));
    let refused = [
        ("authority", down_a.as_str()),
        ("status_code", "502"),
        ("error", "upstream-connect"),
    ];
    assert_eq!(total(&s, "response_total", &refused), f64::from(k));

    // The histogram: every response counted, the slow one in (100, 200].
    let hist = |authority: &str| {
        s.samples
            .iter()
            .find(|x| {
                x.metric == "response_latency_ms" && x.labels.get("authority") == Some(authority)
            })
            .map(|x| match &x.value {
                Value::Histogram(b) => b.clone(),
                other => panic!("{other:?}"),
            })
            .unwrap_or_else(|| panic!("no histogram for {authority}"))
    };
    let good_hist = hist(&good_a);
    assert_eq!(
        good_hist.last().unwrap().count,
        f64::from(n),
        "+Inf counts every response"
    );
    let slow_hist = hist(&slow_a);
    let at = |le: f64| slow_hist.iter().find(|b| b.less_than == le).unwrap().count;
    assert_eq!((at(100.0), at(200.0)), (0.0, 1.0), "{slow_hist:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_authorities_fold_into_the_cap_and_idle_series_expire() {
    let passthrough = |expiry: &str| {
        ProxyConfig::new(1)
            .spec(json!({"metrics": {"maxLabelValues": 50, "idleExpiry": expiry}}))
            .outbound(json!({"passthrough": true}))
    };
    let proxy = passthrough("1h").start().await;
    // 10,000 distinct authorities: closed loopback ports, each refused at once (502).
    let mut tasks = Vec::new();
    for t in 0..4u16 {
        let out = proxy.outbound_addr;
        tasks.push(tokio::spawn(async move {
            let mut c = h1(out).await;
            for i in 0..2500u16 {
                let authority = format!("127.0.0.1:{}", 20000 + t * 2500 + i);
                let rsp = c.send_request(get(&authority, "/")).await.unwrap();
                let _ = rsp.into_body().collect().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = scrape(proxy.admin_addr).await;
    let values: HashSet<&str> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == "request_total" && x.labels.get("target_addr") == Some("passthrough")
        })
        .filter_map(|x| x.labels.get("authority"))
        .collect();
    assert!(
        values.len() <= 51,
        "at most the cap plus other: {}",
        values.len()
    );
    assert!(values.contains("other"));
    let counted = total(&s, "request_total", &[("target_addr", "passthrough")]);
    assert_eq!(counted, 10_000.0, "folded, not lost");

    // With a short expiry, a value's series go once it is idle.
    let proxy = passthrough("300ms").start().await;
    let mut c = h1(proxy.outbound_addr).await;
    for port in 20_000..20_060 {
        let rsp = c
            .send_request(get(&format!("127.0.0.1:{port}"), "/"))
            .await
            .unwrap();
        let _ = rsp.into_body().collect().await;
    }
    let admin = proxy.admin_addr;
    eventually(
        Duration::from_secs(10),
        "idle series expire",
        || async move {
            let (_, text) = admin_get(admin, "/metrics").await;
            !text.contains(r#"target_addr="passthrough""#)
        },
    )
    .await;
}

/// Reads a tap stream's JSON lines.
struct TapClient {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    _conn: H1,
}

impl TapClient {
    async fn open(admin: SocketAddr, query: &str) -> Self {
        let mut conn = h1(admin).await;
        let req = Request::get(format!("/tap?{query}"))
            .header("host", "admin")
            .body(text(""))
            .unwrap();
        let rsp = conn.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        Self {
            body: rsp.into_body(),
            buf: Vec::new(),
            _conn: conn,
        }
    }

    /// The next event, within a bound.
    async fn next(&mut self) -> serde_json::Value {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10s")
                .unwrap()
                .unwrap();
            if let Some(d) = frame.data_ref() {
                self.buf.extend_from_slice(d);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_clients_see_what_they_asked_for_with_secrets_hidden() {
    let web = hello("web").await;
    let api = hello("api").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .service("api", &[api.addr])
        .admin(json!({"tap": {"redactHeaders": ["x-api-key"], "redactBody": ["w.b"]}}))
        .start()
        .await;
    let admin = proxy.admin_addr;
    let mut web_tap = TapClient::open(admin, "authority=web&max_rate=1000&body=16").await;
    let mut api_tap = TapClient::open(admin, "authority=api&max_rate=1000").await;

    let mut c = h1(proxy.outbound_addr).await;
    for (host, path) in [("web", "/a"), ("api", "/b"), ("web", "/c")] {
        let req = Request::get(path)
            .header("host", host)
            .header("authorization", "Bearer secret")
            .header("cookie", "session=1")
            .header("x-api-key", "k")
            .header("x-visible", "yes")
            .body(text(""))
            .unwrap();
        let rsp = c.send_request(req).await.unwrap();
        let _ = rsp.into_body().collect().await;
    }
    let mut seen: HashMap<&str, Vec<serde_json::Value>> = HashMap::new();
    for _ in 0..6 {
        seen.entry("web").or_default().push(web_tap.next().await);
    }
    for _ in 0..3 {
        seen.entry("api").or_default().push(api_tap.next().await);
    }
    let kinds: Vec<(String, String)> = seen["web"]
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("request", "/a"),
            ("response", "/a"),
            ("end", "/a"),
            ("request", "/c"),
            ("response", "/c"),
            ("end", "/c")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(seen["api"]
        .iter()
        .all(|e| e["authority"] == "api" && e["path"] == "/b"));
    let request = &seen["web"][0];
    for secret in ["authorization", "cookie", "x-api-key"] {
        assert_eq!(request["headers"][secret], "[redacted]", "{secret}");
    }
    assert_eq!(request["headers"]["x-visible"], "yes");
    let end = &seen["web"][2];
    assert_eq!(end["status"], 200);
    assert_eq!(
        end["body"], "[redacted]",
        "the body sample is redacted by pattern"
    );
    assert_eq!(end["endpoint"], web.addr.to_string());
    assert_eq!(end["tries"], 1);
    assert_eq!(end["classification"], "success");
}

/// A backend answering `status`, with a `grpc-status` header when given (a trailers-only
/// gRPC answer, read the same over HTTP/1).
async fn answering(status: StatusCode, grpc_status: Option<&'static str>) -> Backend {
    backend(move |_req| async move {
        let mut rsp = ok("answer");
        *rsp.status_mut() = status;
        if let Some(g) = grpc_status {
            rsp.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static(g));
        }
        rsp
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_stats_and_metrics_classify_each_response_alike() {
    let fine = answering(StatusCode::OK, None).await;
    let missing = answering(StatusCode::NOT_FOUND, None).await;
    let broken = answering(StatusCode::INTERNAL_SERVER_ERROR, None).await;
    let unavailable = answering(StatusCode::OK, Some("14")).await;
    let dead = dead_addr();
    let proxy = ProxyConfig::new(1)
        .service("fine", &[fine.addr])
        .service("missing", &[missing.addr])
        .service("broken", &[broken.addr])
        .service("unavailable", &[unavailable.addr])
        .service("down", &[dead.addr])
        .start()
        .await;
    let admin = proxy.admin_addr;
    let mut tap = TapClient::open(admin, "max_rate=1000").await;
    // The rule's cases: an app's 4xx is a success, a 5xx a failure, a gRPC error inside a
    // 200 a failure, and an answer Skiff made itself (502 upstream-connect) a failure.
    let hosts = [
        ("fine", "success"),
        ("missing", "success"),
        ("broken", "failure"),
        ("unavailable", "failure"),
        ("down", "failure"),
    ];
    let mut c = h1(proxy.outbound_addr).await;
    for (host, _) in hosts {
        let rsp = c.send_request(get(host, "/")).await.unwrap();
        let _ = rsp.into_body().collect().await;
    }
    let mut tapped: HashMap<String, String> = HashMap::new();
    while tapped.len() < hosts.len() {
        let e = tap.next().await;
        if e["event"] == "end" {
            let class = e["classification"]
                .as_str()
                .expect("end events say")
                .to_owned();
            tapped.insert(e["authority"].as_str().unwrap().to_owned(), class);
        }
    }
    // The end event is written after the response is counted, so both are there now.
    let s = scrape(admin).await;
    let (_, stats) = admin_get(admin, "/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    for (host, want) in hosts {
        assert_eq!(tapped[host], want, "{host}: tap");
        let authority = format!("{host}.default.svc.cluster.local:80");
        let under = |class: &str| {
            total(
                &s,
                "response_total",
                &[("authority", &authority), ("classification", class)],
            )
        };
        assert_eq!(under(want), 1.0, "{host}: response_total");
        assert_eq!(
            under("success") + under("failure"),
            1.0,
            "{host}: counted once"
        );
        let row = stats["stats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["authority"] == authority.as_str())
            .unwrap_or_else(|| panic!("{host}: no /stats row in {stats}"));
        assert_eq!(row[format!("{want}_count")], 1, "{host}: /stats {row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_client_that_stops_reading_costs_dropped_events_not_requests() {
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .start()
        .await;
    // Subscribed, never read.
    let _stalled = TapClient::open(proxy.admin_addr, "max_rate=100000").await;
    let mut c = h1(proxy.outbound_addr).await;
    // Large events (a 4 KiB header in each request event) fill the socket buffers too.
    let pad = "x".repeat(4096);
    for _ in 0..3000 {
        let req = Request::get("/")
            .header("host", "web")
            .header("x-pad", &pad)
            .body(text(""))
            .unwrap();
        let rsp = c.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let _ = rsp.into_body().collect().await;
    }
    let s = scrape(proxy.admin_addr).await;
    let dropped = total(&s, "skiff_tap_dropped_events_total", &[]);
    assert!(
        dropped > 0.0,
        "the stalled client's overflow is dropped and counted"
    );
    assert!(dropped < 9000.0, "its bounded queue held some: {dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_bytes_and_durations_are_counted_and_family_filters_follow_a_reload() {
    let web = hello("web").await;
    let dir = temp_dir("metrics-reload");
    let path = dir.join("skiff.yaml");
    let cfg = |exclude: &[&str]| {
        ProxyConfig::new(1)
            .service("web", &[web.addr])
            .spec(json!({"reloadInterval": "20ms", "metrics": {"exclude": exclude}}))
            .yaml()
    };
    std::fs::write(&path, cfg(&[])).unwrap();
    let proxy = skiff::start(skiff::config::load_file(&path).unwrap())
        .await
        .unwrap();
    {
        let mut c = h1(proxy.outbound_addr).await;
        let rsp = c.send_request(get("web", "/")).await.unwrap();
        let _ = rsp.into_body().collect().await;
    } // the connection closes here
    let admin = proxy.admin_addr;
    eventually(Duration::from_secs(5), "the closed connection is recorded", || async move {
        let s = scrape(admin).await;
        let out = [("direction", "outbound")];
        total(&s, "tcp_read_bytes_total", &out) > 0.0
            && total(&s, "tcp_write_bytes_total", &out) > 0.0
            && s.samples.iter().any(|x| {
                x.metric == "tcp_connection_duration_ms"
                    && x.labels.get("direction") == Some("outbound")
                    && matches!(&x.value, Value::Histogram(b) if b.last().is_some_and(|b| b.count >= 1.0))
            })
    })
    .await;
    std::fs::write(&path, cfg(&["request", "tcp_read_bytes"])).unwrap();
    eventually(
        Duration::from_secs(10),
        "excluded families leave the scrape",
        || async move {
            let (_, text) = admin_get(admin, "/metrics").await;
            // By family name: `route_request_total` is another family, and stays.
            let has = |family: &str| text.lines().any(|l| l.starts_with(family));
            !has("request_total")
                && !has("tcp_read_bytes_total")
                && has("response_total")
                && has("route_request_total")
        },
    )
    .await;
}

/// Connections Skiff opens are counted as Linkerd counts them (`peer="dst"`): exactly the
/// bytes the upstream read and wrote, under the service's authority and destination labels,
/// and a refused connect as a close with its `errno`, never an open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_upstreams_count_exact_bytes_and_refused_connects_their_errno() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw upstream: reads one request head, answers, closes; says how much it read.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = listener.local_addr().unwrap();
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request head arrives whole");
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(ANSWER).await.unwrap();
        s.shutdown().await.unwrap();
        head.len()
    });
    let dead = dead_addr();
    let proxy = ProxyConfig::new(1)
        .service_with(
            "raw",
            &[raw_addr],
            json!({"metricLabels": {"deployment": "raw", "serviceaccount": "raw-sa"}}),
        )
        .service("down", &[dead.addr])
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    let rsp = c.send_request(get("raw", "/")).await.unwrap();
    assert_eq!(body_text(rsp).await, "ok");
    let rsp = c.send_request(get("down", "/")).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    let read_by_upstream = upstream.await.unwrap() as f64;

    let admin = proxy.admin_addr;
    let raw = [
        ("peer", "dst"),
        ("direction", "outbound"),
        ("authority", "raw.default.svc.cluster.local:80"),
        ("dst_service", "raw"),
        ("dst_namespace", "default"),
        ("dst_deployment", "raw"),
        ("dst_serviceaccount", "raw-sa"),
        ("tls", "disabled"),
    ];
    let target = raw_addr.to_string();
    eventually(
        Duration::from_secs(5),
        "the upstream's close is recorded",
        || {
            let target = target.clone();
            async move {
                let s = scrape(admin).await;
                let mut raw = raw.to_vec();
                raw.push(("target_addr", &target));
                total(
                    &s,
                    "tcp_close_total",
                    &[&raw[..], &[("classification", "success")]].concat(),
                ) == 1.0
            }
        },
    )
    .await;
    let s = scrape(admin).await;
    let mut raw = raw.to_vec();
    raw.push(("target_addr", &target));
    assert_eq!(total(&s, "tcp_open_total", &raw), 1.0);
    assert_eq!(total(&s, "tcp_open_connections", &raw), 0.0);
    assert_eq!(total(&s, "tcp_write_bytes_total", &raw), read_by_upstream);
    assert_eq!(total(&s, "tcp_read_bytes_total", &raw), ANSWER.len() as f64);
    let down = [
        ("peer", "dst"),
        ("authority", "down.default.svc.cluster.local:80"),
    ];
    let refused = [
        &down[..],
        &[("classification", "failure"), ("errno", "ECONNREFUSED")],
    ]
    .concat();
    assert_eq!(total(&s, "tcp_close_total", &refused), 1.0);
    assert_eq!(total(&s, "tcp_open_total", &down), 0.0);
}
