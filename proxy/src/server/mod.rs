//! Accepting and serving connections: the connection limit, protocol detection, then an
//! HTTP/1 or HTTP/2 server connection running the direction's stack, or an opaque TCP
//! forward. Every connection watches the drain signal and finishes gracefully on it.

pub(crate) mod bind;
pub(crate) mod conn_service;
pub(crate) mod detect;
pub(crate) mod drain;
pub(crate) mod head_timeout;
pub(crate) mod tcp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::util::BoxCloneService;

use crate::buffers;
use crate::config::MtlsMode;
use crate::config::ProxySpec;
use crate::identity::Mesh;
use crate::routing::{OriginalDst, State};
use crate::server::conn_service::ConnService;
use crate::server::detect::{detect, Prefixed, Protocol};
use crate::server::drain::Drain;
use crate::server::head_timeout::{idle_for, Busy, HeadTimeoutIo, InRequest};
use proxy_core::authz::{AuthzObserver, Decision, Verdict};
use proxy_core::io::WriteStall;
use proxy_core::limit::Client;
use proxy_core::normalize::HeaderLimits;
use proxy_core::{Body, Direction};
use proxy_metrics::tcp::ByteSink;

/// An accepted connection, its bytes counted, cut if the client stops reading.
type Accepted = proxy_metrics::tcp::Counted<WriteStall<TcpStream>>;

/// A direction's HTTP service, type-erased: what a server connection runs.
pub(crate) type HttpService = BoxCloneService<Request<Incoming>, Response<Body>, Infallible>;

/// The stack of `direction` for one connection.
fn stack(
    state: &State,
    direction: Direction,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
) -> HttpService {
    let client = Client::Addr(peer.ip());
    match direction {
        Direction::Outbound => crate::outbound::stack(state, client, peer, orig_dst),
        Direction::Inbound => crate::inbound::stack(state, client, peer, orig_dst),
    }
}

/// Marks each request of a connection with who sent it (for per-client limits and
/// authorization), which connection it came on (to share upstream HTTP/2 streams fairly)
/// and where the connection was going (for routing). A peer proxy's note
/// that the request began as HTTP/1 is read here, before normalisation strips every
/// `skiff-*` header.
pub(crate) fn mark_connection(
    client: Client,
    orig_dst: Option<SocketAddr>,
) -> impl Fn(Request<Incoming>) -> Request<Incoming> + Clone {
    let meshed = matches!(client, Client::Identity(_));
    let conn = crate::upstream::pool::DownstreamConn::next();
    move |mut req| {
        req.extensions_mut().insert(conn);
        if meshed {
            crate::upstream::forward::take_orig_proto(&mut req);
        }
        req.extensions_mut().insert(client.clone());
        if let Some(dst) = orig_dst {
            req.extensions_mut().insert(OriginalDst(dst));
        }
        req
    }
}

/// The header and body limits Normalize enforces, from the running config.
pub(crate) fn normalize_limits(spec: &ProxySpec) -> HeaderLimits {
    HeaderLimits {
        max_header_count: spec.limits.max_header_count.get(),
        max_header_bytes: spec.limits.max_header_bytes.get(),
        body_idle_timeout: spec.limits.body_idle_timeout.0,
    }
}

/// Accepts connections until the drain starts. `limit` bounds this listener's open
/// connections: at the limit, accepting pauses (the kernel backlog holds new clients).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    state: Arc<State>,
    limit: Arc<Semaphore>,
    mut drain: Drain,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(?direction, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = drain.signaled() => return,
        };
        // The permit is taken after accepting, so a permit is never held for a client not
        // yet come; at most one accepted connection waits here.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = drain.signaled() => return,
        };
        let _ = stream.set_nodelay(true);
        // An IPv4 caller on a dual-stack socket is known by its IPv4 address, as on an
        // IPv4 socket (for metrics, limits, authorization and logs alike).
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let state = state.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            serve(stream, peer, direction, &state, drain).await;
            drop(permit);
        });
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    direction: Direction,
    state: &State,
    drain: Drain,
) {
    let conns = state.conns(direction);
    let spec = state.spec.load_full();
    let orig_dst = original_dst(&stream);
    let opaque_target = opaque_target(direction, orig_dst, state);
    // The connection's labels are known once it is known to be meshed or not (after the
    // mTLS handshake); its bytes are counted from the first.
    let sink = ByteSink::default();
    let stream = WriteStall::new(stream, Some(spec.limits.write_stall_timeout.0));
    let stream = proxy_metrics::tcp::counted(stream, sink.clone());
    let plaintext = || {
        sink.set(&conns.plain);
        conns.plain.opened(&sink)
    };

    let configured_opaque = opaque_target.filter(|t| spec.opaque_ports.contains(&t.port()));
    // Inbound with a mesh identity, an opaque port's connection may be a peer proxy's mTLS
    // (opaque TCP between proxies): detection tells, below.
    let meshed_inbound = direction == Direction::Inbound && state.mesh.is_some();
    if let Some(target) = configured_opaque.filter(|_| !meshed_inbound) {
        let _open = plaintext();
        conns.detect.opaque_configured.inc();
        if let Some(mesh) = strict_mesh(state, direction) {
            // Opaque TCP over the mesh is not carried in mTLS yet: strict mode cannot admit
            // a caller it cannot identify.
            tracing::info!(%peer, port = target.port(), "refusing plaintext TCP to an opaque port (mTLS is strict)");
            mesh.metrics
                .handshake_failure(Direction::Inbound, "plaintext");
            return;
        }
        if !tcp_allowed(state, direction, peer, target) {
            return;
        }
        let io = Prefixed::new(Default::default(), stream);
        forward_opaque(state, direction, io, target, &spec).await;
        return;
    }
    let (protocol, io) = match detect(stream, spec.limits.detect_timeout.0).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection failed during detection");
            return;
        }
    };
    let svc = || stack(state, direction, peer, orig_dst);
    let mesh = state
        .mesh
        .as_ref()
        .filter(|_| direction == Direction::Inbound);
    if let Some(mesh) = mesh {
        if protocol == Protocol::Tls {
            conns.detect.tls.inc();
            let conn = MeshConn {
                peer,
                orig_dst,
                opaque_target,
            };
            serve_mesh(io, conn, mesh, state, drain, sink).await;
            return;
        }
        if mesh.mtls == MtlsMode::Strict {
            tracing::info!(%peer, ?protocol, "refusing a plaintext inbound connection (mTLS is strict)");
            mesh.metrics
                .handshake_failure(Direction::Inbound, "plaintext");
            return;
        }
    }
    let _open = plaintext();
    if let Some(target) = configured_opaque {
        // Inbound and permissive: a plaintext caller on an opaque port, whatever it sent.
        conns.detect.opaque_configured.inc();
        if tcp_allowed(state, direction, peer, target) {
            crate::server::tcp::forward(io, target, &spec.limits).await;
        }
        return;
    }
    match protocol {
        Protocol::Http1 => {
            conns.detect.http1.inc();
            serve_http1(io, svc(), &spec, drain).await;
        }
        Protocol::Http2 => {
            conns.detect.http2.inc();
            serve_http2(io, svc(), &spec, drain).await;
        }
        Protocol::Tls | Protocol::Opaque | Protocol::OpaqueTimeout => {
            let counter = match protocol {
                Protocol::Tls => &conns.detect.tls,
                Protocol::OpaqueTimeout => &conns.detect.opaque_timeout,
                _ => &conns.detect.opaque,
            };
            counter.inc();
            match opaque_target {
                Some(target) if tcp_allowed(state, direction, peer, target) => {
                    forward_opaque(state, direction, io, target, &spec).await
                }
                Some(_) => {} // refused and logged by the authorization check
                None => tracing::info!(
                    %peer,
                    ?protocol,
                    "closing a non-HTTP outbound connection: it has no original destination"
                ),
            }
        }
    }
}

type Svc = ConnService<InRequest>;

/// A server connection that can be asked to finish gracefully.
trait Graceful: std::future::Future<Output = hyper::Result<()>> {
    fn shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I: Io> Graceful for http1::UpgradeableConnection<TokioIo<HeadTimeoutIo<I>>, Svc> {
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I: Io> Graceful for http2::Connection<TokioIo<I>, Svc, TokioExecutor> {
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// What a server connection can run over: TCP (after detection), or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

impl<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for I {}

async fn serve_http1<I: Io>(
    io: I,
    svc: HttpService,
    spec: &crate::config::ProxySpec,
    drain: Drain,
) {
    let limits = &spec.limits;
    // hyper's own caps sit above ours so that Normalize, which explains itself with a
    // `skiff-error` header, is what refuses ordinary oversize requests.
    let max_headers = limits.max_header_count.get().saturating_mul(4).max(100);
    let max_buf = limits
        .max_header_bytes
        .get()
        .saturating_mul(2)
        .saturating_add(16 * 1024);
    let in_request = Arc::new(Busy::default());
    let idle = Some(limits.idle_timeout.0).filter(|d| !d.is_zero());
    let io = HeadTimeoutIo::new(io, limits.header_read_timeout.0, idle, in_request.clone());
    let svc = InRequest::new(svc, in_request);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Ours (HeadTimeoutIo) starts at a head's first byte; hyper's would also cut idle
        // keep-alive connections.
        .header_read_timeout(None)
        .max_headers(max_headers)
        .max_buf_size(max_buf.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), ConnService::new(svc))
        .with_upgrades();
    // Its idle limit is in HeadTimeoutIo, which sees the reads.
    run_until_drained(conn, drain, std::future::pending()).await;
}

async fn serve_http2<I: Io>(
    io: I,
    svc: HttpService,
    spec: &crate::config::ProxySpec,
    drain: Drain,
) {
    let h2 = &spec.limits.http2;
    let busy = Arc::new(Busy::default());
    let svc = InRequest::new(svc, busy.clone());
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(buffers::H2_STREAM_WINDOW)
        .initial_connection_window_size(buffers::H2_CONN_WINDOW)
        .max_send_buf_size(buffers::H2_SEND_BUF)
        .max_header_list_size(h2.max_header_list_size)
        .max_pending_accept_reset_streams(h2.max_pending_reset_streams)
        .serve_connection(TokioIo::new(io), ConnService::new(svc));
    let idle = spec.limits.idle_timeout.0;
    let idle = async {
        if idle.is_zero() {
            std::future::pending::<()>().await;
        }
        idle_for(&busy, idle).await;
        tracing::debug!(?idle, "closing an idle HTTP/2 connection");
    };
    run_until_drained(conn, drain, idle).await;
}

/// Forwards an opaque connection to `target`; outbound, a meshed service's cluster IP is
/// reached over mutual TLS to one of its endpoints instead, so that it crosses the mesh
/// encrypted and its peer can check who is calling.
async fn forward_opaque<I: Io>(
    state: &State,
    direction: Direction,
    io: I,
    target: SocketAddr,
    spec: &crate::config::ProxySpec,
) {
    if direction == Direction::Outbound {
        match state.outbound.resolver.meshed_endpoint(target).await {
            Some(Ok(endpoint)) => {
                return crate::server::tcp::forward_meshed(io, &endpoint.pool, &spec.limits).await
            }
            Some(Err(e)) => {
                tracing::warn!(%target, error = %e, "opaque connection to a meshed service closed");
                return;
            }
            None => {}
        }
    }
    crate::server::tcp::forward(io, target, &spec.limits).await;
}

/// What an inbound mesh connection came with.
struct MeshConn {
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
    // Where its bytes go if it is opaque TCP: the app, on the redirected port.
    opaque_target: Option<SocketAddr>,
}

/// Terminates mesh mTLS on an inbound connection, then, by ALPN, serves HTTP/2 or HTTP/1
/// with the caller's verified identity attached to each request, or forwards opaque TCP to
/// the application once the caller's identity is allowed to reach its port.
async fn serve_mesh(
    io: Prefixed<Accepted>,
    conn: MeshConn,
    mesh: &Mesh,
    state: &State,
    drain: Drain,
    sink: ByteSink,
) {
    let MeshConn {
        peer,
        orig_dst,
        opaque_target,
    } = conn;
    let Some(creds) = mesh.identity.current() else {
        tracing::warn!(%peer, "refusing a mesh connection: no valid credentials yet");
        return;
    };
    let accept = tokio_rustls::TlsAcceptor::from(creds.server_config()).accept(io);
    let tls = match tokio::time::timeout(mesh.handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = proxy_tls::failure_reason(&e);
            mesh.metrics.handshake_failure(Direction::Inbound, reason);
            tracing::info!(%peer, reason, error = %e, "mesh handshake refused");
            return;
        }
        Err(_) => {
            mesh.metrics
                .handshake_failure(Direction::Inbound, "timeout");
            tracing::info!(%peer, "mesh handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let Some(id) = proxy_tls::peer_id(conn.peer_certificates()) else {
        tracing::warn!(%peer, "mesh connection without a peer identity");
        return;
    };
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let client = Client::Identity(id.to_string().into());
    let handles = state.conns(Direction::Inbound).meshed(&id.to_string());
    sink.set(&handles);
    let _open = handles.opened(&sink);
    let spec = state.spec.load_full();
    if alpn.as_deref() == Some(proxy_tls::ALPN_TCP) {
        if let Some(target) = opaque_target {
            if tcp_allowed_for(state, &client, peer, target) {
                crate::server::tcp::forward(tls, target, &spec.limits).await;
            }
        }
        return;
    }
    let h2 = alpn.as_deref() == Some(proxy_tls::ALPN_H2);
    let svc = crate::inbound::stack(state, client, peer, orig_dst);
    if h2 {
        serve_http2(tls, svc, &spec, drain).await;
    } else {
        serve_http1(tls, svc, &spec, drain).await;
    }
}

/// Serves `conn`; when the drain starts, or `idle` completes, asks it to finish in-flight
/// requests and close (HTTP/1: no more keep-alive; HTTP/2: GOAWAY).
async fn run_until_drained<C: Graceful>(
    conn: C,
    mut drain: Drain,
    idle: impl std::future::Future<Output = ()>,
) {
    let mut conn = pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = drain.signaled() => {
            conn.as_mut().shutdown();
            conn.await
        }
        () = idle => {
            conn.as_mut().shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The mesh, when this is an inbound connection and mTLS is strict.
fn strict_mesh(state: &State, direction: Direction) -> Option<&Arc<Mesh>> {
    state
        .mesh
        .as_ref()
        .filter(|m| direction == Direction::Inbound && m.mtls == MtlsMode::Strict)
}

/// Whether an opaque connection may go on: inbound, a TrafficTarget with TCPRoute rules
/// must allow it. A plaintext caller has no identity, so once any TrafficTarget names this
/// workload its plaintext TCP callers are closed (audit mode: logged, counted, let through).
fn tcp_allowed(state: &State, direction: Direction, peer: SocketAddr, target: SocketAddr) -> bool {
    if direction == Direction::Outbound {
        return true;
    }
    tcp_allowed_for(state, &Client::Addr(peer.ip()), peer, target)
}

/// Whether `client`'s opaque connection to `target` may go on under the TrafficTargets'
/// TCPRoute rules; the decision is counted and, when denied, logged.
fn tcp_allowed_for(state: &State, client: &Client, peer: SocketAddr, target: SocketAddr) -> bool {
    let policy = state.authz.load();
    let client = client.clone();
    let decision = policy.check_tcp(Some(&client), target.port());
    state
        .metrics
        .identity
        .decided(&Verdict::of(&policy, &decision, Some(&client), true));
    match decision {
        Decision::Unrestricted | Decision::Allowed { .. } => true,
        Decision::Denied if policy.audits() => {
            tracing::warn!(%peer, ?client, port = target.port(), "authorization would close this TCP connection (audit mode)");
            true
        }
        Decision::Denied => {
            tracing::info!(%peer, ?client, port = target.port(), "authorization denied a TCP connection");
            false
        }
    }
}

/// The address a redirected connection was originally sent to (iptables REDIRECT), or
/// `None` when the connection came straight to the listener.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    // An IPv4 connection accepted on a dual-stack socket (`[::]`) has a v4-mapped local
    // address, and its original destination is in the IPv4 connection tracking: the
    // IPv4 option answers for it on an IPv6 socket, the IPv6 one does not. Compared in
    // its IPv4 form, a connection that was not redirected is still recognised as such.
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    let sock = SockRef::from(stream);
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    dst.ok()?.as_socket().filter(|d| *d != local)
}

/// Where an opaque connection goes. Inbound: the app (on the original port when redirected).
/// Outbound: the original destination, if there is one.
fn opaque_target(
    direction: Direction,
    orig_dst: Option<SocketAddr>,
    state: &State,
) -> Option<SocketAddr> {
    match direction {
        Direction::Inbound => {
            let app = state.inbound.resolver.app_addr();
            Some(orig_dst.map_or(app, |d| SocketAddr::new(app.ip(), d.port())))
        }
        Direction::Outbound => orig_dst,
    }
}
