//! The innermost service of both directions: sends a request to the endpoint picked for it
//! and hands back the upstream's response.
//!
//! It rewrites the request into the upstream protocol's form (HTTP/1: origin-form URI and a
//! `Host` header; HTTP/2: the authority in the URI), keeps the client's protocol (an HTTP/2
//! client gets an HTTP/2 upstream, multiplexed), strips hop-by-hop headers from responses,
//! and splices WebSocket upgrades into a byte tunnel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use proxy_core::normalize::{strip_response_headers, WebSocketUpgrade};
use proxy_core::{body, Body, BoxError, ProxyError, Reason};
use tower::Service;

use crate::discovery::endpoints::Endpoint;
use crate::upstream::pool::{Pool, Protocol};

/// Sends requests to the endpoint picked for them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Forward;

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The request is put in the upstream's form here, before the future: the future
        // then holds only what waiting needs, which keeps it small (it is allocated per
        // request, and small allocations are the cheap ones).
        let downstream = req.version();
        match prepare(req) {
            Ok(Prepared::Send(pool, req, protocol)) => Box::pin(async move {
                let rsp = pool.send(req, protocol).await?;
                Ok(finish(&pool, rsp, downstream))
            }),
            Ok(Prepared::Upgrade(pool, req)) => {
                Box::pin(async move { Ok(upgrade(&pool, req).await?) })
            }
            Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        }
    }
}

/// A request ready to go.
enum Prepared {
    /// In the upstream's form, to send on the endpoint's pool.
    Send(Arc<Pool>, Request<Body>, Protocol),
    /// A WebSocket handshake, for a connection of its own.
    Upgrade(Arc<Pool>, Request<Body>),
}

fn prepare(req: Request<Body>) -> Result<Prepared, ProxyError> {
    let pool = req
        .extensions()
        .get::<Arc<Endpoint>>()
        .map(|e| e.pool.clone())
        .ok_or_else(|| {
            ProxyError::new(
                Reason::Internal,
                "request reached the forwarder without an endpoint",
            )
        })?;
    if req.extensions().get::<WebSocketUpgrade>().is_some() {
        return Ok(Prepared::Upgrade(pool, req));
    }
    let http1_at_origin =
        req.version() < Version::HTTP_2 || req.extensions().get::<OrigHttp1>().is_some();
    // Between proxies, always HTTP/2; elsewhere, the protocol the request had at its origin.
    let protocol = if pool.is_meshed() || !http1_at_origin {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let mut req = upstream_form(req, protocol, &pool);
    if pool.is_meshed() && http1_at_origin {
        req.headers_mut()
            .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
    }
    Ok(Prepared::Send(pool, req, protocol))
}

/// The upstream's response in the client's form. A response that changes protocol on its
/// way (an HTTP/1 upstream's to an HTTP/2 client, or the other way) has its trailers
/// sanitised: fields HTTP/1 allows there, such as `Connection`, make an HTTP/2 stream
/// malformed.
fn finish(pool: &Pool, rsp: Response<Body>, downstream: Version) -> Response<Body> {
    // A peer proxy's `skiff-error` is kept: it is authenticated, and says why it refused.
    let peer_error = pool
        .is_meshed()
        .then(|| rsp.headers().get(SKIFF_ERROR).cloned())
        .flatten();
    let mut rsp = downstream_form(rsp);
    if let Some(reason) = peer_error {
        rsp.headers_mut().insert(SKIFF_ERROR, reason);
    }
    if (rsp.version() >= Version::HTTP_2) != (downstream >= Version::HTTP_2) {
        rsp = rsp.map(body::with_clean_trailers);
    }
    rsp
}

const SKIFF_ERROR: http::HeaderName = http::HeaderName::from_static("skiff-error");

/// Tells the receiving proxy that a request it gets over HTTP/2 was HTTP/1 at its origin,
/// so it reaches the application as HTTP/1 again.
pub(crate) const ORIG_PROTO: http::HeaderName = http::HeaderName::from_static("skiff-orig-proto");

/// Marks a request that crossed the mesh as HTTP/2 but started as HTTP/1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OrigHttp1;

/// On a request from a peer proxy (over verified mTLS only: from anyone else the header is
/// just stripped), turns the [`ORIG_PROTO`] header into an [`OrigHttp1`] mark.
pub(crate) fn take_orig_proto<B>(req: &mut Request<B>) {
    if let Some(v) = req.headers_mut().remove(ORIG_PROTO) {
        if v.as_bytes().starts_with(b"HTTP/1") {
            req.extensions_mut().insert(OrigHttp1);
        }
    }
}

/// Whether `req` has an HTTP/1 chunked body, which [`prime_chunked`] reads into first.
pub(crate) fn needs_priming(req: &Request<Body>) -> bool {
    req.version() <= Version::HTTP_11
        && !req.body().is_end_stream()
        && req.body().size_hint().exact().is_none()
}

/// Reads the first chunk of an HTTP/1 chunked body before contacting the upstream, so a
/// malformed chunk is refused (400) without the upstream ever seeing the request.
pub(crate) async fn prime_chunked(req: Request<Body>) -> Result<Request<Body>, ProxyError> {
    if !needs_priming(&req) {
        return Ok(req);
    }
    let (parts, b) = req.into_parts();
    let b = body::prime(b).await.map_err(|e| {
        match proxy_core::error::find_cause::<ProxyError>(e.as_ref()) {
            Some(pe) => pe.detached(),
            None => ProxyError::new(Reason::BadRequest, format!("malformed request body: {e}")),
        }
    })?;
    Ok(Request::from_parts(parts, b))
}

/// Rewrites a normalised request into the form the upstream protocol expects.
fn upstream_form(req: Request<Body>, protocol: Protocol, pool: &Pool) -> Request<Body> {
    let (mut parts, b) = req.into_parts();
    let authority = parts.extensions.get::<Authority>().cloned();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match protocol {
        Protocol::Http1 => {
            parts.uri = Uri::from(path);
            parts.version = Version::HTTP_11;
            // HTTP/1.1 requires a Host; a request that named no authority (HTTP/1.0 without
            // one) gets the endpoint's address.
            let host = authority.map_or_else(|| pool.addr().to_string(), |a| a.as_str().to_owned());
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(HOST, v);
            }
        }
        Protocol::Http2 => {
            let authority = authority.unwrap_or_else(|| {
                Authority::try_from(pool.addr().to_string())
                    .expect("a socket address is an authority")
            });
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(authority);
            uri.path_and_query = Some(path);
            parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
            parts.version = Version::HTTP_2;
        }
    }
    Request::from_parts(parts, b)
}

fn downstream_form(mut rsp: Response<Body>) -> Response<Body> {
    let switching = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_response_headers(rsp.headers_mut(), switching);
    rsp
}

/// Forwards a WebSocket handshake on a dedicated connection; when the upstream switches
/// protocols, both sides become one byte tunnel that carries half-closes through.
async fn upgrade(pool: &Pool, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let downstream = hyper::upgrade::on(&mut req);
    let req = upstream_form(req, Protocol::Http1, pool);
    let mut rsp = pool.send_upgrade(req).await?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut rsp);
        let addr = pool.addr();
        tokio::spawn(async move {
            let (down, up) = match tokio::try_join!(downstream, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "upgrade did not complete");
                    return;
                }
            };
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                Ok((sent, received)) => {
                    tracing::debug!(%addr, sent, received, "upgraded connection closed")
                }
                Err(e) => tracing::debug!(%addr, error = %e, "upgraded connection failed"),
            }
        });
    }
    Ok(downstream_form(rsp.map(body::boxed)))
}
