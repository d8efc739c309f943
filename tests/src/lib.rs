//! Support for Skiff's end-to-end tests: real hyper backends on `127.0.0.1:0` that record
//! what reached them, the real proxy started on ephemeral ports, and small clients.
//!
//! Nothing here sleeps to wait for readiness: listeners are bound before their addresses
//! are handed out, and anything asynchronous is awaited with [`eventually`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use config::ProxyConfig;
// Config fragments for `ProxyConfig` are written with `json!`.
pub use serde_json::json;
pub use skiff::Running;

mod config;
pub mod dns;
pub mod fake_api;
pub mod mesh;
pub mod otlp;
pub mod prometheus;
pub mod websocket;

/// The body test handlers answer with.
pub type TestBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body of `text`.
pub fn text(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A 200 response with `body`.
pub fn ok(body: impl Into<Bytes>) -> Response<TestBody> {
    Response::new(text(body))
}

/// What a backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Request target as received.
    pub uri: Uri,
    /// Protocol version.
    pub version: Version,
    /// Headers as received.
    pub headers: HeaderMap,
}

/// A backend server and what reached it.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the backend")
    }
}

/// Starts an HTTP/1.1 + h2c backend (with upgrades) answering with `handler`.
pub async fn backend<F, Fut>(handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    backend_at("127.0.0.1:0".parse().unwrap(), handler).await
}

/// [`backend`], listening on `addr` (another loopback address, or a port already in use on
/// another one).
pub async fn backend_at<F, Fut>(addr: SocketAddr, handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.unwrap();
    let b = Backend {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        seen: Arc::default(),
    };
    let (connections, seen) = (b.connections.clone(), b.seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let (handler, seen) = (handler.clone(), seen.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    seen.lock().unwrap().push(Seen {
                        method: req.method().clone(),
                        uri: req.uri().clone(),
                        version: req.version(),
                        headers: req.headers().clone(),
                    });
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    b
}

/// A backend that reads the whole request body before answering `read <length>` (or
/// `body failed` when the body breaks off).
pub async fn body_reader() -> Backend {
    backend(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(b) => ok(format!("read {}", b.to_bytes().len())),
            Err(_) => ok("body failed"),
        }
    })
    .await
}

/// A backend answering every request with 200 and `body`.
pub async fn hello(body: &'static str) -> Backend {
    backend(move |_req| async move { ok(body) }).await
}

/// An HTTP/1.1 client connection that waits for readiness before each request, as hyper
/// requires: the end of one response body can reach the caller before the connection is
/// idle again.
#[derive(Debug)]
pub struct H1(hyper::client::conn::http1::SendRequest<TestBody>);

impl H1 {
    /// Sends `req` once the connection is ready for it.
    pub async fn send_request(
        &mut self,
        req: Request<TestBody>,
    ) -> hyper::Result<Response<Incoming>> {
        self.0.ready().await?;
        self.0.send_request(req).await
    }
}

/// An HTTP/1.1 client connection.
pub async fn h1(addr: SocketAddr) -> H1 {
    h1_over(TcpStream::connect(addr).await.unwrap()).await
}

/// An HTTP/1.1 client over an established connection.
pub async fn h1_over(stream: TcpStream) -> H1 {
    let io = TokioIo::new(stream);
    let (tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    H1(tx)
}

/// An h2c (prior knowledge) client connection.
pub async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// A GET with the given Host.
pub fn get(host: &str, path: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", host)
        .body(text(""))
        .unwrap()
}

/// Reads a whole body as text.
pub async fn body_text(rsp: Response<Incoming>) -> String {
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body (by Content-Length).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` bytes on a new connection and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

/// Reads one HTTP/1 response (head, then a Content-Length body), within 10 seconds.
pub async fn read_response(s: &mut TcpStream) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(10), read_response_inner(s))
        .await
        .expect("a response within 10s")
}

async fn read_response_inner(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Polls `check` until it returns true, failing the test after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // A check that hangs fails the test at the deadline rather than hanging it.
        if let Ok(true) = tokio::time::timeout_at(deadline, check()).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fetches an admin path as text, with its status.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let rsp = raw(
        admin,
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    (rsp.status, String::from_utf8_lossy(&rsp.body).into_owned())
}

/// A body fed frame by frame from the returned sender; it ends when the sender is dropped.
pub fn channel_body() -> (
    tokio::sync::mpsc::Sender<hyper::body::Frame<Bytes>>,
    TestBody,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (tx, ChannelBody { rx }.boxed_unsync())
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<hyper::body::Frame<Bytes>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "skiff-test-{}-{name}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A backend whose responses stream: headers go out at once, and the test feeds the body
/// through the senders it receives from the returned channel, one per request.
pub async fn streaming_backend(
    label: &'static str,
) -> (
    Backend,
    tokio::sync::mpsc::Receiver<tokio::sync::mpsc::Sender<hyper::body::Frame<Bytes>>>,
) {
    let (feed_tx, feed_rx) = tokio::sync::mpsc::channel(16);
    let b = backend(move |_req| {
        let feed_tx = feed_tx.clone();
        async move {
            let (tx, body) = channel_body();
            feed_tx.send(tx).await.unwrap();
            let mut rsp = Response::new(body);
            rsp.headers_mut()
                .insert("x-backend", label.parse().unwrap());
            rsp
        }
    })
    .await;
    (b, feed_rx)
}

/// A request left streaming across a config change: its headers have come back from the
/// streaming backend labelled `label`, its body has sent `first;`, and [`LongRequest::finish`]
/// sends `second` and checks the whole body arrived intact.
pub struct LongRequest {
    response: Response<Incoming>,
    feed: tokio::sync::mpsc::Sender<hyper::body::Frame<Bytes>>,
    _connection: H1,
}

impl LongRequest {
    /// Starts `GET /long` for `host` through `outbound`, answered by the streaming backend
    /// whose body senders arrive on `bodies`.
    pub async fn start(
        outbound: SocketAddr,
        host: &str,
        label: &str,
        bodies: &mut tokio::sync::mpsc::Receiver<
            tokio::sync::mpsc::Sender<hyper::body::Frame<Bytes>>,
        >,
    ) -> Self {
        let mut connection = h1(outbound).await;
        let response = connection.send_request(get(host, "/long")).await.unwrap();
        assert_eq!(response.headers()["x-backend"], label);
        let feed = bodies.recv().await.unwrap();
        feed.send(hyper::body::Frame::data(Bytes::from_static(b"first;")))
            .await
            .unwrap();
        Self {
            response,
            feed,
            _connection: connection,
        }
    }

    /// Ends the body and checks the client got all of it.
    pub async fn finish(self) {
        self.feed
            .send(hyper::body::Frame::data(Bytes::from_static(b"second")))
            .await
            .unwrap();
        drop(self.feed);
        let body = self
            .response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            &body[..],
            b"first;second",
            "the long request completed intact"
        );
    }
}

impl std::fmt::Debug for LongRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongRequest").finish_non_exhaustive()
    }
}

/// An address nothing listens on, so connections to it are refused, for as long as this
/// value lives. The port is bound but not listening: no other test can be handed it, as
/// could happen to a port freed by dropping a listener.
#[derive(Debug)]
pub struct DeadAddr {
    /// The address.
    pub addr: SocketAddr,
    _reserved: tokio::net::TcpSocket,
}

/// Reserves a [`DeadAddr`] on 127.0.0.1.
pub fn dead_addr() -> DeadAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    DeadAddr {
        addr: socket.local_addr().unwrap(),
        _reserved: socket,
    }
}

/// Runs `test` on a tokio runtime of its own with two workers, as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` would, for the tests that
/// run under a libtest-mimic harness (so that a missing tool can mark them ignored).
pub fn block_on_two_workers(test: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(test);
}
