//! Gateway API HTTPRoute filters: what a route does to a request besides choosing where it
//! goes. A rule's filters apply once per request, just below the router (a redirect answers
//! there, a rewrite and header changes are made once, before retries); a backend's filters
//! apply to each try sent to that backend, just below the split that drew it.
//!
//! | filter | effect |
//! |---|---|
//! | `RequestHeaderModifier` | set, add and remove request headers |
//! | `ResponseHeaderModifier` | set, add and remove response headers |
//! | `RequestRedirect` | answer with a redirect (scheme, host, port, path, status) |
//! | `URLRewrite` | change the host and path sent upstream |
//! | `RequestMirror` | send a copy to another backend, fire and forget ([`Mirror`]) |
//!
//! Filters are parsed and checked when the config loads; what reaches this layer cannot
//! fail, so it has no error of its own.

mod mirror;
#[cfg(test)]
mod tests;

pub use mirror::{Mirror, MirrorSink, MAX_MIRRORED_BODY};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue, HOST, LOCATION};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderMap, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::{self, Body};
use crate::context::RouteContext;
use crate::BoxError;

/// Header changes: `set` replaces, `add` appends, `remove` deletes (applied in that order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderModifier {
    /// Headers given this value, replacing any.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Values appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// Applies the changes to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// A new path: the whole path, or the part a rule's `PathPrefix` matched.
#[derive(Clone, Debug, PartialEq)]
pub enum PathModifier {
    /// `ReplaceFullPath`: the path (the query string is kept).
    Full(String),
    /// `ReplacePrefixMatch`: the longest of `prefixes` (the rule's `PathPrefix` matches)
    /// that the path starts with is replaced by `with`.
    Prefix {
        /// The rule's prefixes.
        prefixes: Vec<String>,
        /// Their replacement.
        with: String,
    },
}

impl PathModifier {
    /// `path` changed.
    pub fn apply(&self, path: &str) -> String {
        match self {
            Self::Full(full) => full.clone(),
            Self::Prefix { prefixes, with } => {
                let matched = prefixes
                    .iter()
                    .map(|p| p.strip_suffix('/').unwrap_or(p))
                    .filter(|p| crate::route::prefix_matches(p, path))
                    .max_by_key(|p| p.len());
                let Some(matched) = matched else {
                    return path.to_owned();
                };
                let rest = &path[matched.len()..];
                // `/foo` + `/bar` with `/` gives `/bar`; with `/xyz`, `/xyz/bar`.
                let with = with.strip_suffix('/').unwrap_or(with);
                match (with.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{with}{rest}"),
                }
            }
        }
    }
}

/// `RequestRedirect`: the request is answered with a redirect to its own URL, changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    /// `http` or `https`; default: the request's.
    pub scheme: Option<Scheme>,
    /// The host; default: the request's.
    pub hostname: Option<String>,
    /// The port; default: the scheme's well-known port when `scheme` is set, else the
    /// request's. Left out of `Location` when it is the scheme's well-known port.
    pub port: Option<u16>,
    /// The path; default: the request's.
    pub path: Option<PathModifier>,
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
}

impl Redirect {
    /// The `Location` for a request to `uri` with `host` (its `Host` or authority).
    pub fn location(&self, uri: &Uri, host: Option<&Authority>) -> String {
        let scheme = self
            .scheme
            .clone()
            .or_else(|| uri.scheme().cloned())
            .unwrap_or(Scheme::HTTP);
        let hostname = self
            .hostname
            .clone()
            .or_else(|| host.map(|h| h.host().to_owned()))
            .unwrap_or_default();
        let well_known = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let port = match (self.port, &self.scheme) {
            (Some(port), _) => port,
            (None, Some(_)) => well_known,
            (None, None) => host.and_then(Authority::port_u16).unwrap_or(well_known),
        };
        let path = match &self.path {
            Some(modifier) => modifier.apply(uri.path()),
            None => uri.path().to_owned(),
        };
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        if port == well_known {
            format!("{scheme}://{hostname}{path}{query}")
        } else {
            format!("{scheme}://{hostname}:{port}{path}{query}")
        }
    }
}

/// `URLRewrite`: the host and path sent upstream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    /// The new `Host` (and authority); the port is kept.
    pub hostname: Option<String>,
    /// The new path.
    pub path: Option<PathModifier>,
}

impl Rewrite {
    fn apply<B>(&self, req: &mut Request<B>) {
        if let Some(path) = &self.path {
            let new = path.apply(req.uri().path());
            let with_query = match req.uri().query() {
                Some(q) => format!("{new}?{q}"),
                None => new,
            };
            if let Ok(pq) = PathAndQuery::try_from(with_query) {
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        if let Some(hostname) = &self.hostname {
            let port = authority_of(req).and_then(|a| a.port_u16());
            let authority = match port {
                Some(port) => format!("{hostname}:{port}"),
                None => hostname.clone(),
            };
            let Ok(authority) = Authority::try_from(authority.as_str()) else {
                return;
            };
            // Wherever the request carries its authority: the normalised extension (what
            // the upstream side writes back), and the URI or `Host` when still there.
            if req.headers().contains_key(HOST) {
                if let Ok(value) = HeaderValue::try_from(authority.as_str()) {
                    req.headers_mut().insert(HOST, value);
                }
            }
            if req.uri().authority().is_some() {
                let mut parts = req.uri().clone().into_parts();
                parts.authority = Some(authority.clone());
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            req.extensions_mut().insert(authority);
        }
    }
}

/// The request's authority: the normalised extension, else its URI's, else `Host`.
fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    req.extensions()
        .get::<Authority>()
        .cloned()
        .or_else(|| req.uri().authority().cloned())
        .or_else(|| host_header(req.headers()))
}

fn host_header(headers: &HeaderMap) -> Option<Authority> {
    headers.get(HOST)?.to_str().ok()?.parse().ok()
}

/// The filters of one rule, or of one backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// `RequestHeaderModifier`.
    pub request_headers: Option<HeaderModifier>,
    /// `ResponseHeaderModifier`.
    pub response_headers: Option<HeaderModifier>,
    /// `RequestRedirect` (a rule's only; never with `rewrite`).
    pub redirect: Option<Redirect>,
    /// `URLRewrite`.
    pub rewrite: Option<Rewrite>,
    /// `RequestMirror`s (a rule's only).
    pub mirrors: Vec<Mirror>,
}

impl Filters {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A backend's filters, stored in a try's extensions by the split that drew the backend.
#[derive(Clone, Debug)]
pub struct BackendFilters(pub Arc<Filters>);

/// Which filters a [`Filter`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// The rule's, from the [`RouteContext`].
    Rule,
    /// The drawn backend's, from [`BackendFilters`].
    Backend,
}

/// Applies a rule's or a backend's filters to requests and their responses.
#[derive(Clone, Debug)]
pub struct Filter<S> {
    inner: S,
    level: Level,
}

/// Applies [`Filter`].
#[derive(Clone, Copy, Debug)]
pub struct FilterLayer {
    level: Level,
}

impl FilterLayer {
    /// The matched rule's filters (below the router, above retries).
    pub fn rule() -> Self {
        Self { level: Level::Rule }
    }

    /// The drawn backend's filters (below the split).
    pub fn backend() -> Self {
        Self {
            level: Level::Backend,
        }
    }
}

impl<S> Layer<S> for FilterLayer {
    type Service = Filter<S>;

    fn layer(&self, inner: S) -> Filter<S> {
        Filter {
            inner,
            level: self.level,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Filter`]: a redirect answered at once, or the inner future, whose
    /// response gets the response header changes, when there are some.
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on variant fields
    #[project = ResponseFutureProj]
    #[derive(Debug)]
    pub enum ResponseFuture<F> {
        /// Answered here (a redirect).
        Answered { response: Option<Response<Body>> },
        /// Passed on.
        Forwarded { #[pin] future: F, response_headers: Option<HeaderModifier> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Answered { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            ResponseFutureProj::Forwarded {
                future,
                response_headers,
            } => {
                let mut rsp = std::task::ready!(future.poll(cx))?;
                if let Some(headers) = response_headers.take() {
                    headers.apply(rsp.headers_mut());
                }
                Poll::Ready(Ok(rsp))
            }
        }
    }
}

impl<S> Service<Request<Body>> for Filter<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let filters = match self.level {
            Level::Rule => RouteContext::of(req.extensions(), "filter")
                .ok()
                .and_then(|ctx| ctx.filters.clone()),
            Level::Backend => req
                .extensions()
                .get::<BackendFilters>()
                .map(|f| f.0.clone()),
        };
        let Some(filters) = filters else {
            return ResponseFuture::Forwarded {
                future: self.inner.call(req),
                response_headers: None,
            };
        };
        if let Some(redirect) = &filters.redirect {
            let location = redirect.location(req.uri(), authority_of(&req).as_ref());
            let mut rsp = Response::new(body::empty());
            *rsp.status_mut() = redirect.status;
            if let Ok(value) = HeaderValue::try_from(location) {
                rsp.headers_mut().insert(LOCATION, value);
            }
            if let Some(headers) = &filters.response_headers {
                headers.apply(rsp.headers_mut());
            }
            return ResponseFuture::Answered {
                response: Some(rsp),
            };
        }
        if let Some(rewrite) = &filters.rewrite {
            rewrite.apply(&mut req);
        }
        if let Some(headers) = &filters.request_headers {
            headers.apply(req.headers_mut());
        }
        // Copies are of the request as it goes upstream, after the rule's changes.
        if !filters.mirrors.is_empty() {
            mirror::start(&mut req, &filters.mirrors);
        }
        ResponseFuture::Forwarded {
            future: self.inner.call(req),
            response_headers: filters.response_headers.clone(),
        }
    }
}
