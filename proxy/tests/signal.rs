//! The real binary: `skiff check` exit codes and messages, and SIGTERM draining a running
//! `skiff run` (in-flight request completes, new connections refused, exit 0).

// These tests wait on separate processes (the real binary, curl in a namespace), whose
// clocks tokio's paused clock cannot drive: real time, polled with deadlines, is right here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::{addr_in, run_skiff, SKIFF};

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-bin-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("skiff.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_reports_every_bad_document_with_line_and_field() {
    let good = temp_file("good", "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\n");
    let out = Command::new(SKIFF)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = temp_file(
        "bad",
        "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  limits:\n    connectTimeout: soon\n---\napiVersion: v1\nkind: Mystery\n",
    );
    let out = Command::new(SKIFF)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    assert!(err.contains(&format!("{file}:5:")), "{err}");
    assert!(
        err.contains("spec.limits.connectTimeout: invalid duration"),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:6: kind: Mystery")), "{err}");
}

#[test]
fn check_warns_of_ignored_fields_and_refused_routes_and_passes() {
    let text = "apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  services:
    web: {endpoints: [127.0.0.1:1]}
    api: {endpoints: [127.0.0.1:2]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-route}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - backendRefs: [{name: web}]
    futureField: {enabled: true}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-route}
spec:
  parentRefs: [{kind: Service, name: api}]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {group: example.com, kind: Thing, name: t}
";
    let path = temp_file("warnings", text);
    let out = Command::new(SKIFF)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ok (2 services, 2 warnings)"), "{stdout}");
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "warning: {file}:15: spec.rules.0.futureField: HTTPRoute has no field futureField; ignored"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("warning: {file}:16: route refused, the rest of the file applies: spec.rules[0].filters[0]: type ExtensionRef is not supported by Skiff")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    // A backend that sends half its response, then waits for the test's go-ahead.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            .await
            .unwrap();
        go_rx.await.unwrap();
        s.write_all(b"world").await.unwrap();
    });

    let config = temp_file(
        "sigterm",
        &format!(
            "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  outbound: {{listen: 127.0.0.1:0}}\n  inbound: {{listen: 127.0.0.1:0}}\n  admin: {{listen: 127.0.0.1:0}}\n  shutdown: {{gracePeriod: 20s}}\n  services:\n    slow:\n      endpoints: [{backend_addr}]\n"
        ),
    );
    let (mut child, ready) = run_skiff(&config, 1);
    let outbound = addr_in(&ready, "outbound_addr");

    let mut client = TcpStream::connect(outbound).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 0];
    while !String::from_utf8_lossy(&head).contains("hello") {
        let mut b = [0u8; 256];
        let n = client.read(&mut b).await.unwrap();
        assert!(n > 0);
        head.extend_from_slice(&b[..n]);
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(outbound).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the listener kept accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining the request in flight"
    );

    go_tx.send(()).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    head.extend_from_slice(&rest);
    assert!(String::from_utf8_lossy(&head).ends_with("helloworld"));

    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(code.success(), "exit status {code:?}");
}
