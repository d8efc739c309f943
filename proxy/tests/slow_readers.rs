//! The real binary under 200 slow readers: clients that ask for a large response, read its
//! first KiB and then stop reading. The memory Skiff holds for them stays bounded (its
//! buffers fill and back-pressure stops the backend, rather than buffers growing), a
//! well-behaved client is served meanwhile, and the memory is given back once they close.
//!
//! The bounds are loose on purpose (this is not a benchmark; `benches/load/slow_readers.py`
//! measures): before the fix the same run held about 1 MB per reader and kept it after they
//! closed.

// The binary is a separate process whose memory and clock tokio's paused clock cannot
// drive: real time, polled with deadlines, is right here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

mod common;

use common::{addr_in, run_skiff};

const READERS: usize = 200;
const BODY: usize = 8 * 1024 * 1024;

/// A backend answering every request with `BODY` bytes, written as fast as it may.
async fn big_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    for _ in 0..BODY / chunk.len() {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The resident memory of `pid`, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// The running binary, killed when the test ends, failed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `skiff run` with two workers in front of `backend` as service `big`; its outbound
/// address.
fn start(backend: SocketAddr) -> (Running, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("skiff-bin-{}-slow-readers", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("skiff.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: skiff.dev/v1alpha1\nkind: Proxy\nspec:\n  outbound: {{listen: 127.0.0.1:0, passthrough: false}}\n  inbound: {{listen: 127.0.0.1:0}}\n  admin: {{listen: 127.0.0.1:0}}\n  shutdown: {{gracePeriod: 1s}}\n  services:\n    big:\n      endpoints: [{backend}]\n"
        ),
    )
    .unwrap();
    let (child, ready) = run_skiff(&config, 2);
    (Running(child), addr_in(&ready, "outbound_addr"))
}

/// A client with a 4 KiB receive buffer that asks for the big body and reads 1 KiB of it.
async fn slow_reader(proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(proxy).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: big\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the response starts")
        .unwrap();
    assert!(n > 0);
    s
}

/// A well-behaved client reads a whole big body through the proxy.
async fn read_whole(proxy: SocketAddr) -> usize {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: big\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all))
        .await
        .expect("the well-behaved client is served")
        .unwrap();
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    all.len() - head_end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_hold_bounded_memory_that_is_given_back() {
    let backend = big_backend().await;
    let (child, proxy) = start(backend);
    let pid = child.0.id();
    assert_eq!(read_whole(proxy).await, BODY, "a warm-up request");
    let before = rss_mb(pid);

    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(slow_reader(proxy).await);
    }
    assert_eq!(
        read_whole(proxy).await,
        BODY,
        "served beside the slow readers"
    );
    // Sample for a few seconds: buffers fill as far as back-pressure lets them.
    let mut peak = rss_mb(pid);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_mb(pid));
    }
    let per_reader_kb = (peak - before) * 1024.0 / READERS as f64;
    assert!(
        per_reader_kb < 500.0,
        "{per_reader_kb:.0} KB held per slow reader (RSS {before:.1} -> {peak:.1} MB)"
    );

    drop(readers);
    // Given back within a period of the trimmer (10 s), with margin.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = rss_mb(pid);
    while now > before + 15.0 {
        assert!(
            Instant::now() < deadline,
            "memory not given back: RSS {before:.1} -> {peak:.1} -> {now:.1} MB"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = rss_mb(pid);
    }
}
