//! One endpoint's connections (see the module docs of [`super`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use proxy_core::error::find_cause;
use proxy_core::io::WriteStall;
use proxy_core::{Body, ProxyError, Reason};
use proxy_metrics::tcp::{counted, ByteSink, Counted, LazyConnHandles};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::multiplex::{drive, DownstreamConn, Next, Probe, Shared};
use super::{watch, MeshPeer, Settings};
use crate::buffers;

/// The protocol spoken to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, one request per connection at a time.
    Http1,
    /// HTTP/2, multiplexed.
    Http2,
}

/// The protocol offered in the mesh TLS handshake.
#[derive(Clone, Copy, Debug)]
enum Alpn {
    /// HTTP/2: every request between proxies.
    H2,
    /// HTTP/1.1: a connection for one upgrade.
    Http1,
    /// Opaque TCP: the application's bytes as they are.
    Tcp,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// The connections to one endpoint.
pub struct Pool {
    addr: SocketAddr,
    settings: Arc<ArcSwap<Settings>>,
    idle: Mutex<Vec<Idle>>,
    // The multiplexed connections, and a lock held while one is dialled: requests that find
    // no room wait for it and then share it, instead of each opening its own.
    h2: Shared,
    dialing: tokio::sync::Mutex<()>,
    mesh: Option<Arc<MeshPeer>>,
    // Where its connections are counted (the series made with the first connection).
    tcp: Option<LazyConnHandles>,
    // Whether its series leave the scrape with it (an endpoint of a service).
    forget_on_drop: bool,
}

/// A connection to an upstream, its bytes and lifetime counted, cut if the upstream stops
/// reading.
type Upstream = Counted<WriteStall<TcpStream>>;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The endpoint is gone from every service (or the proxy is stopping): its
        // connection series go with it. Passthrough pools live one request; their series
        // stay.
        if let (Some(tcp), true) = (&self.tcp, self.forget_on_drop) {
            tcp.forget();
        }
    }
}

impl Pool {
    pub(super) fn new(
        addr: SocketAddr,
        settings: Arc<ArcSwap<Settings>>,
        mesh: Option<Arc<MeshPeer>>,
        tcp: Option<LazyConnHandles>,
        forget_on_drop: bool,
    ) -> Self {
        Self {
            addr,
            settings,
            idle: Mutex::default(),
            h2: Shared::default(),
            dialing: tokio::sync::Mutex::default(),
            mesh,
            tcp,
            forget_on_drop,
        }
    }

    /// Whether requests go over mesh mTLS (and so over HTTP/2, but for upgrades).
    pub fn is_meshed(&self) -> bool {
        self.mesh.is_some()
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The identity the endpoint must prove, when meshed.
    pub fn peer_id(&self) -> Option<&proxy_tls::SpiffeId> {
        self.mesh.as_ref().map(|m| &m.id)
    }

    /// Sends `req` (already in the upstream's form) and returns the response headers.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        protocol: Protocol,
    ) -> Result<Response<Body>, ProxyError> {
        match protocol {
            Protocol::Http1 if self.mesh.is_none() => self.send_http1(req).await,
            // Boxed, as every path but the pooled HTTP/1 one: their futures are large, and
            // would otherwise be part of (and copied with) every request's.
            _ => Box::pin(self.send_http2(req)).await,
        }
    }

    /// Sends a WebSocket upgrade on a connection of its own, which the upgrade then consumes.
    /// To a meshed endpoint the connection is mutual TLS offering only HTTP/1.1 (the upgrade
    /// cannot ride the HTTP/2 connection between proxies), so the peer proxy serves it as
    /// HTTP/1.1 with the caller's verified identity.
    pub async fn send_upgrade(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        let tcp = self.connect().await?;
        match &self.mesh {
            None => self.send_upgrade_over(tcp, req).await,
            Some(peer) => {
                let tls = self.tls(tcp, peer, Alpn::Http1).await?;
                self.send_upgrade_over(tls, req).await
            }
        }
    }

    /// Opens an opaque TCP connection to this meshed endpoint: mutual TLS offering
    /// `skiff.tcp/1`, after which the peer proxy forwards the bytes to its application.
    pub async fn open_tcp(&self) -> Result<tokio_rustls::client::TlsStream<Upstream>, ProxyError> {
        let Some(peer) = &self.mesh else {
            return Err(ProxyError::new(
                Reason::Internal,
                format!("{} is not a meshed endpoint", self.addr),
            ));
        };
        let tcp = self.connect().await?;
        self.tls(tcp, peer, Alpn::Tcp).await
    }

    async fn send_upgrade_over<I>(
        &self,
        io: I,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(conn.with_upgrades());
        sender
            .send_request(req)
            .await
            .map_err(|e| self.exchange_error(e))
    }

    /// Sends on an idle connection (or a new one); the connection goes back to the idle
    /// list when the response body ends.
    async fn send_http1(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let mut req = req;
        // A pooled connection may have been closed by the server since it went idle; hyper
        // hands the request back when it was never written, so it can go out on a new one.
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(rsp) => return Ok(self.check_in_after(rsp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(self.exchange_error(e.into_error())),
                },
            }
        }
        Box::pin(self.send_on_new_http1(req)).await
    }

    async fn send_on_new_http1(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let mut sender = self.connect_http1().await?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| self.exchange_error(e))?;
        Ok(self.check_in_after(rsp, sender))
    }

    /// Ties `sender` to the response body, to be checked in when the body ends.
    fn check_in_after(
        self: &Arc<Self>,
        rsp: Response<Incoming>,
        sender: http1::SendRequest<Body>,
    ) -> Response<Body> {
        let back = CheckIn {
            sender: Some(sender),
            pool: self.clone(),
        };
        rsp.map(|inner| {
            proxy_core::body::boxed(Pooled {
                inner,
                back: Some(back),
            })
        })
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = self.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(buffers::H1_UPSTREAM_BUF)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn connect_http2(&self) -> Result<(http2::SendRequest<Body>, Probe), ProxyError> {
        let tcp = self.connect().await?;
        match &self.mesh {
            None => self.h2_handshake(tcp).await,
            Some(peer) => {
                self.h2_handshake(self.tls(tcp, peer, Alpn::H2).await?)
                    .await
            }
        }
    }

    /// Sends on a shared HTTP/2 connection with room for the request's client (see
    /// [`super::multiplex`]), opening one if needed. The stream's slot is held by both bodies.
    async fn send_http2(&self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let client = req.extensions().get::<DownstreamConn>().copied();
        let mut dialing = None;
        let (mut sender, slot) = loop {
            let settings = self.settings.load();
            let freed = self.h2.freed();
            let waiting = freed.notified();
            match self
                .h2
                .next(client, &settings.sharing, settings.idle_timeout)
            {
                Next::Send(sender, slot) => break (sender, slot),
                Next::Wait => {
                    dialing = None;
                    waiting.await;
                }
                // One dial at a time: take the lock, then ask again (a connection may have
                // been added meanwhile).
                Next::Dial if dialing.is_none() => dialing = Some(self.dialing.lock().await),
                Next::Dial => {
                    let (sender, limit) = self.connect_http2().await?;
                    break self.h2.add(sender, limit, client);
                }
            }
        };
        drop(dialing);
        sender.ready().await.map_err(|e| self.exchange_error(e))?;
        let slot = Arc::new(slot);
        let (parts, body) = req.into_parts();
        let (body, fault) = watch::watch(body, slot.clone());
        let rsp = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| fault.take().unwrap_or_else(|| self.exchange_error(e)))?;
        Ok(rsp.map(|b| proxy_core::body::hold_until_end(proxy_core::body::boxed(b), slot)))
    }

    async fn h2_handshake<I>(&self, io: I) -> Result<(http2::SendRequest<Body>, Probe), ProxyError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_max_send_streams(self.h2.limit_hint())
            .initial_stream_window_size(buffers::H2_STREAM_WINDOW)
            .initial_connection_window_size(buffers::H2_CONN_WINDOW)
            .max_send_buf_size(buffers::H2_SEND_BUF)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(e))?;
        let (run, probe) = drive(conn);
        tokio::spawn(run);
        Ok((sender, probe))
    }

    /// The mesh TLS handshake, with the credentials in use now, offering `alpn`.
    async fn tls(
        &self,
        tcp: Upstream,
        peer: &MeshPeer,
        alpn: Alpn,
    ) -> Result<tokio_rustls::client::TlsStream<Upstream>, ProxyError> {
        let fail = |what: String| {
            ProxyError::new(
                Reason::UpstreamConnect,
                format!("mTLS to {} ({}): {what}", self.addr, peer.id),
            )
        };
        let creds = peer
            .identity
            .current()
            .ok_or_else(|| fail("this proxy has no valid credentials yet".into()))?;
        let config = match alpn {
            Alpn::H2 => creds.client_config(&peer.id),
            Alpn::Http1 => creds.client_config_http1(&peer.id),
            Alpn::Tcp => creds.client_config_tcp(&peer.id),
        }
        .map_err(|e| fail(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(peer.id.server_name())
            .map_err(|e| fail(e.to_string()))?;
        let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(peer.handshake_timeout, connect).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                let reason = proxy_tls::failure_reason(&e);
                peer.metrics
                    .handshake_failure(proxy_core::Direction::Outbound, reason);
                Err(fail(format!("handshake failed ({reason}): {e}")))
            }
            Err(_) => {
                peer.metrics
                    .handshake_failure(proxy_core::Direction::Outbound, "timeout");
                Err(fail(format!(
                    "handshake timed out after {:?}",
                    peer.handshake_timeout
                )))
            }
        }
    }

    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let idle_timeout = self.settings.load().idle_timeout;
        // Most recently used first: it is the most likely to still be open.
        while let Some(c) = idle.pop() {
            if c.sender.is_ready() && now.duration_since(c.since) < idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    /// Returns a connection to the idle list (unless it is full).
    fn put_idle(&self, sender: http1::SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.settings.load().max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    pub(super) async fn connect(&self) -> Result<Upstream, ProxyError> {
        let settings = self.settings.load();
        let timeout = settings.connect_timeout;
        let failed = |e: &std::io::Error| {
            if let Some(tcp) = &self.tcp {
                tcp.get().connect_failed(e);
            }
        };
        match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let stream = WriteStall::new(stream, Some(settings.write_stall));
                Ok(match &self.tcp {
                    Some(tcp) => tcp.get().count(stream),
                    None => counted(stream, ByteSink::default()),
                })
            }
            Ok(Err(e)) => {
                failed(&e);
                Err(ProxyError::new(
                    Reason::UpstreamConnect,
                    format!("connecting to {} failed: {e}", self.addr),
                )
                .with_source(e))
            }
            Err(_) => {
                failed(&std::io::ErrorKind::TimedOut.into());
                Err(ProxyError::new(
                    Reason::UpstreamConnect,
                    format!("connecting to {} timed out after {timeout:?}", self.addr),
                ))
            }
        }
    }

    fn connect_error(&self, e: hyper::Error) -> ProxyError {
        ProxyError::new(
            Reason::UpstreamConnect,
            format!("handshake with {} failed: {e}", self.addr),
        )
        .with_source(e)
    }

    /// Maps a failure after the request started going out. A failure of the client's own
    /// body keeps the client's blame (400 or 408), not the upstream's.
    fn exchange_error(&self, e: hyper::Error) -> ProxyError {
        if let Some(downstream) = find_cause::<ProxyError>(&e) {
            return downstream.detached();
        }
        // A timeout of hyper's, or the upstream reading nothing for `writeStallTimeout`.
        let stalled = find_cause::<std::io::Error>(&e)
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        let reason = if e.is_timeout() || stalled {
            Reason::UpstreamTimeout
        } else {
            Reason::UpstreamReset
        };
        ProxyError::new(reason, format!("exchange with {} failed: {e}", self.addr)).with_source(e)
    }
}

pin_project_lite::pin_project! {
    /// A response body read from a pooled HTTP/1 connection.
    struct Pooled {
        #[pin]
        inner: Incoming,
        back: Option<CheckIn>,
    }
}

impl http_body::Body for Pooled {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.back.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Puts a connection back when its response is over (this is dropped with the body, or at
/// its end). hyper has usually made it ready by then; if not (the body was not read to the
/// end), a task waits for it.
struct CheckIn {
    sender: Option<http1::SendRequest<Body>>,
    pool: Arc<Pool>,
}

impl Drop for CheckIn {
    fn drop(&mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        if sender.is_ready() {
            self.pool.put_idle(sender);
            return;
        }
        if sender.is_closed() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put_idle(sender);
            }
        });
    }
}
