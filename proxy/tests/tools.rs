//! The terminal tools and admin extras against a real `skiff run`: `skiff tap`, `skiff
//! stat` and `skiff top` as processes, the access log on stdout, `PUT /log-level`, and
//! `POST /shutdown` ending the proxy (and the tap with it).

// These tests wait on separate processes (the real binary, curl in a namespace), whose
// clocks tokio's paused clock cannot drive: real time, polled with deadlines, is right here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::{addr_in, SKIFF};

/// A backend answering `ok` to every request, one request per connection.
async fn backend() -> SocketAddr {
    backend_answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await
}

/// A backend answering every request with `response`, one request per connection.
async fn backend_answering(response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                let _ = s.write_all(response).await;
            });
        }
    });
    addr
}

/// Sends one request and returns the whole response text.
async fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Lines of a child's output, read on a thread.
/// A running `skiff run`, its output, and where it listens.
struct Started {
    proxy: Child,
    stderr: mpsc::Receiver<String>,
    stdout: mpsc::Receiver<String>,
    outbound: SocketAddr,
    admin: SocketAddr,
}

/// Runs the binary on a config whose listeners are on port 0 and whose `spec` goes on with
/// `more` (YAML lines indented two spaces, `admin` included), once it says it is ready.
fn start_proxy(name: &str, more: &str) -> Started {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("skiff.yaml");
    let text = format!(
        "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  outbound: {{listen: 127.0.0.1:0}}\n  inbound: {{listen: 127.0.0.1:0}}\n{more}"
    );
    std::fs::write(&config, text).unwrap();
    let mut proxy = Command::new(SKIFF)
        .args(["run", "--workers", "1", "--config"])
        .arg(&config)
        .env("SKIFF_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines(proxy.stderr.take().unwrap());
    let stdout = lines(proxy.stdout.take().unwrap());
    let ready = wait_line(&stderr, Duration::from_secs(10), |l| {
        l.contains("Skiff is ready")
    })
    .expect("the proxy reports its addresses");
    Started {
        proxy,
        stderr,
        stdout,
        outbound: addr_in(&ready, "outbound_addr"),
        admin: addr_in(&ready, "admin_addr"),
    }
}

fn lines(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line for which `want` holds, within `within`.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if want(&l) => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_stat_access_log_log_level_and_shutdown_work_against_a_running_proxy() {
    let web = backend().await;
    let Started {
        mut proxy,
        // Kept: its reader drains the pipe, which would otherwise fill and block the proxy.
        stderr: _stderr,
        stdout: access_log,
        outbound,
        admin,
    } = start_proxy(
        "skiff-tools",
        &format!(
            "  admin: {{listen: 127.0.0.1:0, shutdownEndpoint: true}}\n  accessLog: {{enabled: true, fields: [method, authority, path, status, route, classification]}}\n  services:\n    web:\n      endpoints: [{web}]\n"
        ),
    );
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: web\r\nAuthorization: secret\r\nConnection: close\r\n\r\n")
    };

    // `skiff tap`, filtered to one path prefix: it sees only those requests.
    let mut tap = Command::new(SKIFF)
        .args(["tap", "--admin", &admin.to_string(), "--path", "/seen"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tapped = lines(tap.stdout.take().unwrap());
    // The tap connects on its own time: send until it shows a request (bounded).
    let mut shown = None;
    for _ in 0..200 {
        http(outbound, &get("/hidden")).await;
        http(outbound, &get("/seen/1")).await;
        if let Some(l) = wait_line(&tapped, Duration::from_millis(50), |l| {
            l.starts_with("end ")
        }) {
            shown = Some(l);
            break;
        }
    }
    let end = shown.expect("the tap shows requests");
    assert!(end.contains("GET web/seen/1 :status=200"), "{end}");
    assert!(end.contains("endpoint="), "{end}");
    let rest: Vec<String> = tapped.try_iter().collect();
    assert!(
        rest.iter().all(|l| !l.contains("/hidden")),
        "filtered: {rest:?}"
    );

    // The access log: one JSON line per response, with the configured fields.
    let line = wait_line(&access_log, Duration::from_secs(5), |l| {
        l.contains("/seen/1")
    })
    .expect("an access log line");
    assert_eq!(
        line,
        r#"{"method":"GET","authority":"web","path":"/seen/1","status":200,"route":null,"classification":"success"}"#
    );

    // `skiff stat`: the table, with web's success rate.
    let stat = Command::new(SKIFF)
        .args(["stat", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(stat.status.success());
    let table = String::from_utf8_lossy(&stat.stdout);
    assert!(table.starts_with("DIRECTION"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("web.default.svc.cluster.local:80"))
        .unwrap_or_else(|| panic!("no web row:\n{table}"));
    assert!(row.contains("100.00%"), "{row}");

    // Log level at run time.
    let rsp = http(admin, "PUT /log-level HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nConnection: close\r\n\r\nskiff=debug").await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    let rsp = http(
        admin,
        "PUT /log-level HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\n[[[",
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");

    // Ctrl-C ends the tap cleanly.
    assert!(Command::new("kill")
        .args(["-INT", &tap.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(&mut tap, Duration::from_secs(10)).expect("tap exits on Ctrl-C");
    assert!(status.success(), "{status:?}");

    // POST /shutdown (enabled, loopback caller) drains and ends the proxy.
    let mut tap = Command::new(SKIFF)
        .args(["tap", "--admin", &admin.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tapped = lines(tap.stdout.take().unwrap());
    let mut connected = false;
    for _ in 0..200 {
        http(outbound, &get("/again")).await;
        if wait_line(&tapped, Duration::from_millis(50), |l| l.contains("/again")).is_some() {
            connected = true;
            break;
        }
    }
    assert!(connected, "the second tap connects");
    let rsp = http(
        admin,
        "POST /shutdown HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 202"), "{rsp}");
    let status = wait_exit(&mut proxy, Duration::from_secs(20)).expect("the proxy exits");
    assert!(status.success(), "{status:?}");
    let status = wait_exit(&mut tap, Duration::from_secs(10)).expect("tap ends with the proxy");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_counts_what_the_proxy_classified() {
    let web = backend().await;
    // A trailers-only gRPC error: HTTP says 200, the proxy's classifier says failure.
    let grpc = backend_answering(
        b"HTTP/1.1 200 OK\r\ngrpc-status: 14\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    let Started {
        mut proxy,
        // Kept: their readers drain the pipes, which would otherwise fill and block the proxy.
        stderr: _stderr,
        stdout: _stdout,
        outbound,
        admin,
    } = start_proxy(
        "skiff-top",
        &format!(
            "  admin: {{listen: 127.0.0.1:0}}\n  services:\n    web:\n      endpoints: [{web}]\n    grpc:\n      endpoints: [{grpc}]\n"
        ),
    );
    let mut top = Command::new(SKIFF)
        .args(["top", "--admin", &admin.to_string(), "--path", "/top"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let drawn = lines(top.stdout.take().unwrap());
    let request =
        |host: &str| format!("GET /top HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    // `top` draws about once a second, on an event: send until both rows are drawn (bounded).
    let (mut web_row, mut grpc_row) = (None, None);
    for _ in 0..300 {
        http(outbound, &request("web")).await;
        http(outbound, &request("grpc")).await;
        // Whatever was drawn meanwhile; the wait for the next line paces the loop.
        while let Ok(l) = drawn.recv_timeout(Duration::from_millis(20)) {
            let cells: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            match cells.get(1).map(String::as_str) {
                Some("web") => web_row = Some(cells),
                Some("grpc") => grpc_row = Some(cells),
                _ => {}
            }
        }
        if web_row.is_some() && grpc_row.is_some() {
            break;
        }
    }
    let (web_row, grpc_row) = (web_row.expect("a web row"), grpc_row.expect("a grpc row"));
    assert_eq!(
        web_row[..4],
        ["outbound", "web", "GET", "/top"],
        "{web_row:?}"
    );
    assert_eq!(web_row[5], "100.0%", "{web_row:?}");
    assert_eq!(
        grpc_row[5], "0.0%",
        "a 200 carrying grpc-status 14: {grpc_row:?}"
    );

    let _ = top.kill();
    let _ = top.wait();
    let _ = proxy.kill();
    let _ = proxy.wait();
}
