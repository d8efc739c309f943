//! One endpoint's connections (see the module docs of [`super`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use proxy_core::error::find_cause;
use proxy_core::{Body, ProxyError, Reason};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{MeshPeer, Settings};

/// The protocol spoken to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, one request per connection at a time.
    Http1,
    /// HTTP/2, multiplexed.
    Http2,
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
    // An async mutex: the first request to find no connection dials while the others wait
    // and then share it, instead of each opening its own.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
    mesh: Option<Arc<MeshPeer>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(super) fn new(
        addr: SocketAddr,
        settings: Arc<ArcSwap<Settings>>,
        mesh: Option<Arc<MeshPeer>>,
    ) -> Self {
        Self {
            addr,
            settings,
            idle: Mutex::default(),
            h2: tokio::sync::Mutex::default(),
            mesh,
        }
    }

    /// Whether requests go over mesh mTLS (and so always over HTTP/2).
    pub fn is_meshed(&self) -> bool {
        self.mesh.is_some()
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `req` (already in the upstream's form) and returns the response headers.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        protocol: Protocol,
    ) -> Result<Response<Incoming>, ProxyError> {
        match protocol {
            Protocol::Http1 if self.mesh.is_none() => self.send_http1(req).await,
            _ => self.send_http2(req).await,
        }
    }

    /// Sends a WebSocket upgrade on a connection of its own, which the upgrade then consumes.
    pub async fn send_upgrade(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        let io = self.connect().await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(conn.with_upgrades());
        sender
            .send_request(req)
            .await
            .map_err(|e| self.exchange_error(e))
    }

    async fn send_http1(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut req = req;
        // A pooled connection may have been closed by the server since it went idle; hyper
        // hands the request back when it was never written, so it can go out on a new one.
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(rsp) => {
                    self.checkin_when_ready(sender);
                    return Ok(rsp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(self.exchange_error(e.into_error())),
                },
            }
        }
        // Boxed, as every connection set-up below: a pending connect or handshake makes a
        // large future, which would otherwise be part of (and copied with) every request's.
        let mut sender = Box::pin(self.connect_http1()).await?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| self.exchange_error(e))?;
        self.checkin_when_ready(sender);
        Ok(rsp)
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = self.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<Body>, ProxyError> {
        let tcp = self.connect().await?;
        match &self.mesh {
            None => self.h2_handshake(tcp).await,
            Some(peer) => self.h2_handshake(self.tls(tcp, peer).await?).await,
        }
    }

    async fn send_http2(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = {
            let mut shared = self.h2.lock().await;
            match shared.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let sender = Box::pin(self.connect_http2()).await?;
                    *shared = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await.map_err(|e| self.exchange_error(e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.exchange_error(e))
    }

    async fn h2_handshake<I>(&self, io: I) -> Result<http2::SendRequest<Body>, ProxyError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// The mesh TLS handshake, with the credentials in use now.
    async fn tls(
        &self,
        tcp: TcpStream,
        peer: &MeshPeer,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
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
        let config = creds
            .client_config(&peer.id)
            .map_err(|e| fail(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(peer.id.server_name())
            .map_err(|e| fail(e.to_string()))?;
        let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(peer.handshake_timeout, connect).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                let reason = proxy_tls::failure_reason(&e);
                peer.metrics.handshake_failure("outbound", reason);
                Err(fail(format!("handshake failed ({reason}): {e}")))
            }
            Err(_) => {
                peer.metrics.handshake_failure("outbound", "timeout");
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

    /// Returns the connection to the idle list once the response body has been read (hyper
    /// reports it ready again), or drops it if the connection closes instead.
    fn checkin_when_ready(self: &Arc<Self>, mut sender: http1::SendRequest<Body>) {
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < pool.settings.load().max_idle {
                idle.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        });
    }

    async fn connect(&self) -> Result<TcpStream, ProxyError> {
        let timeout = self.settings.load().connect_timeout;
        match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => Err(ProxyError::new(
                Reason::UpstreamConnect,
                format!("connecting to {} failed: {e}", self.addr),
            )
            .with_source(e)),
            Err(_) => Err(ProxyError::new(
                Reason::UpstreamConnect,
                format!("connecting to {} timed out after {timeout:?}", self.addr),
            )),
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
        let reason = if e.is_timeout() {
            Reason::UpstreamTimeout
        } else {
            Reason::UpstreamReset
        };
        ProxyError::new(reason, format!("exchange with {} failed: {e}", self.addr)).with_source(e)
    }
}
