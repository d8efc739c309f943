//! The HTTP side: the accept loop, URL routing, authentication and authorization, injected
//! failures, and the request log.
//!
//! Every request goes through the same steps a real API server takes, in its order: an
//! injected failure (standing in for a server error anywhere), then authentication (401),
//! then authorization (403), then the handler. Each step answers with a `Status` object, the
//! body clients decode errors from.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::discovery::Registry;
use super::route::{route, verb, Query, Route};
use super::store::Store;
use super::{rest, watch as watches, RequestRecord, WatchRecord};

/// Errors a response body can end with (an aborted watch).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response's body.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// Locks `mutex`, recovering from a panic elsewhere: the data is plain and stays usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the server was started with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The bearer token requests must carry, if any.
    pub(crate) token: Option<String>,
    /// The user named in 403 messages.
    pub(crate) user: String,
    /// How often watches that allow bookmarks get one, if at all.
    pub(crate) bookmark_interval: Option<Duration>,
    /// The longest a watch lasts, and how long one without `timeoutSeconds` lasts.
    pub(crate) max_watch_timeout: Duration,
    /// TLS, when the server serves HTTPS.
    pub(crate) tls: Option<Arc<ServerConfig>>,
}

/// A TLS config serving `cert_pem` (the chain, leaf first) with `key_pem`, offering HTTP/2
/// and HTTP/1.1 by ALPN as an API server does.
pub(crate) fn tls_config(cert_pem: &str, key_pem: &str) -> Result<ServerConfig, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An injected failure: the next `remaining` requests whose path starts with `prefix`.
#[derive(Clone, Debug)]
struct Fault {
    remaining: usize,
    prefix: String,
}

/// A resource refused to some verbs (every verb if `verbs` is empty).
#[derive(Clone, Debug)]
struct Denial {
    resource: String,
    verbs: Vec<String>,
}

/// The signals the test sends to open watches.
#[derive(Debug)]
pub(crate) struct Control {
    /// Bumped to end every open watch abruptly.
    pub(crate) dropping: watch::Sender<u64>,
    /// While true, open watches send nothing.
    pub(crate) stalled: watch::Sender<bool>,
    /// Bumped to have every watch that allows bookmarks send one.
    pub(crate) bookmarks: watch::Sender<u64>,
}

/// One open or finished watch, as the request handler and the test see it.
#[derive(Debug)]
pub(crate) struct WatchStats {
    pub(crate) record: Mutex<WatchRecord>,
}

/// State shared by the handle, the accept loop, every connection and every watch.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) registry: Registry,
    pub(crate) store: Mutex<Store>,
    /// The store's resourceVersion, sent after every write so watches wake up.
    pub(crate) changes: watch::Sender<u64>,
    pub(crate) control: Control,
    /// How many watches are open now.
    pub(crate) open_watches: watch::Sender<usize>,
    pub(crate) watches: Mutex<Vec<Arc<WatchStats>>>,
    pub(crate) server_address: String,
    faults: Mutex<Vec<Fault>>,
    denials: Mutex<Vec<Denial>>,
    log: Mutex<Vec<RequestRecord>>,
}

impl Shared {
    /// Fresh state for a server at `addr`.
    pub(crate) fn new(
        settings: Settings,
        registry: Registry,
        history: usize,
        addr: SocketAddr,
    ) -> Self {
        Self {
            settings,
            registry,
            store: Mutex::new(Store::new(history)),
            changes: watch::Sender::new(0),
            control: Control {
                dropping: watch::Sender::new(0),
                stalled: watch::Sender::new(false),
                bookmarks: watch::Sender::new(0),
            },
            open_watches: watch::Sender::new(0),
            watches: Mutex::new(Vec::new()),
            server_address: addr.to_string(),
            faults: Mutex::new(Vec::new()),
            denials: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Wakes watches after a write.
    pub(crate) fn changed(&self) {
        let rv = lock(&self.store).resource_version();
        self.changes.send_replace(rv);
    }

    pub(crate) fn fail_next(&self, n: usize, prefix: &str) {
        lock(&self.faults).push(Fault {
            remaining: n,
            prefix: prefix.into(),
        });
    }

    /// Whether an injected failure takes this request.
    fn take_fault(&self, path: &str) -> bool {
        let mut faults = lock(&self.faults);
        let Some(at) = faults
            .iter()
            .position(|f| f.remaining > 0 && path.starts_with(&f.prefix))
        else {
            return false;
        };
        faults[at].remaining -= 1;
        if faults[at].remaining == 0 {
            faults.remove(at);
        }
        true
    }

    pub(crate) fn deny(&self, resource: &str, verbs: &[&str]) {
        lock(&self.denials).push(Denial {
            resource: resource.into(),
            verbs: verbs.iter().map(|v| (*v).into()).collect(),
        });
    }

    pub(crate) fn allow_all(&self) {
        lock(&self.denials).clear();
    }

    fn denied(&self, resource: &str, verb: &str) -> bool {
        lock(&self.denials).iter().any(|d| {
            d.resource == resource && (d.verbs.is_empty() || d.verbs.iter().any(|v| v == verb))
        })
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).clone()
    }
}

/// A running accept loop; dropping it (or [`Server::stop`]) closes the listener.
#[derive(Debug)]
pub(crate) struct Server {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// Closes the listener and every connection, and waits until they are closed.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// Serves on a bound `listener` until the returned [`Server`] stops or is dropped.
pub(crate) fn serve(shared: Arc<Shared>, listener: TcpListener) -> Server {
    let (shutdown, mut stop) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                // Told to stop, or the handle is gone.
                _ = &mut stop => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let shared = shared.clone();
                    connections.spawn(async move {
                        match shared.settings.tls.clone() {
                            None => serve_connection(shared, stream).await,
                            Some(config) => {
                                if let Ok(stream) = TlsAcceptor::from(config).accept(stream).await {
                                    serve_connection(shared, stream).await;
                                }
                            }
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        // Aborting the connection tasks closes their sockets: clients see the server go.
        connections.shutdown().await;
    });
    Server { shutdown, task }
}

/// Serves one connection's requests (HTTP/1.1 or HTTP/2).
async fn serve_connection<I>(shared: Arc<Shared>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut rsp = Response::new(full(serde_json::to_vec(body).unwrap_or_default()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}

/// A whole body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A `Status` object with `code`, `reason` and `message`, and `details` when given.
pub(crate) fn status_object(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

/// A failed response with a `Status` body.
pub(crate) fn status(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_object(code, reason, message, details),
    )
}

/// The 404 for a URL that names nothing.
fn not_found() -> Response<Body> {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

/// The 403 a real API server gives, word for word.
fn forbidden(
    shared: &Shared,
    resource: usize,
    verb: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Response<Body> {
    let rt = shared.registry.get(resource);
    let qualified = rt.qualified();
    let scope = match namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".into(),
    };
    let why = format!(
        "User {:?} cannot {verb} resource {:?} in API group {:?} {scope}",
        shared.settings.user, rt.plural, rt.group
    );
    let message = match name {
        Some(name) => format!("{qualified} {name:?} is forbidden: {why}"),
        None => format!("{qualified} is forbidden: {why}"),
    };
    let mut details = json!({"kind": rt.plural});
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    if let Some(name) = name {
        details["name"] = json!(name);
    }
    status(403, "Forbidden", &message, Some(details))
}

/// Whether the request carries the configured bearer token.
fn authenticated(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(token) = &shared.settings.token else {
        return true;
    };
    let Some(header) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    header.split_once(' ').is_some_and(|(scheme, given)| {
        scheme.eq_ignore_ascii_case("bearer") && given.trim() == token
    })
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let query = Query::parse(&raw_query);
    let route = route(&shared.registry, &shared.server_address, &path);
    let (verb, resource, namespace) = match &route {
        Route::Resource {
            resource,
            namespace,
            name,
        } => {
            let watch = query.flag("watch").ok().flatten().unwrap_or(false);
            (
                verb(&method, name.is_some(), watch),
                Some(shared.registry.get(*resource).qualified()),
                namespace.clone(),
            )
        }
        _ => (None, None, None),
    };
    let rsp = respond(&shared, req, route, verb, query, &raw_query).await;
    lock(&shared.log).push(RequestRecord {
        method: method.to_string(),
        path,
        query: raw_query,
        verb,
        resource,
        namespace,
        status: rsp.status().as_u16(),
    });
    rsp
}

async fn respond(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    route: Route,
    verb: Option<&'static str>,
    query: Query,
    raw_query: &str,
) -> Response<Body> {
    if shared.take_fault(req.uri().path()) {
        return status(
            500,
            "InternalError",
            "Internal error occurred: injected failure",
            Some(json!({})),
        );
    }
    if !authenticated(shared, &req) {
        return status(401, "Unauthorized", "Unauthorized", None);
    }
    let (resource, namespace, name) = match route {
        Route::Document(doc) if req.method() == Method::GET => {
            return json_response(StatusCode::OK, &doc);
        }
        Route::Document(_) => {
            return status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                None,
            );
        }
        Route::NotFound => return not_found(),
        Route::Resource {
            resource,
            namespace,
            name,
        } => (resource, namespace, name),
    };
    let Some(verb) = verb else {
        return status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        );
    };
    let qualified = shared.registry.get(resource).qualified();
    if shared.denied(&qualified, verb) {
        return forbidden(
            shared,
            resource,
            verb,
            namespace.as_deref(),
            name.as_deref(),
        );
    }
    let target = rest::Target {
        resource,
        namespace,
        name,
    };
    match verb {
        "watch" => watches::watch(shared, target, &query, raw_query),
        "get" => rest::get(shared, &target),
        "list" => rest::list(shared, &target, &query),
        "create" | "update" => {
            let body = http_body_util::Limited::new(req.into_body(), 4 << 20);
            let Ok(body) = body.collect().await else {
                return status(
                    400,
                    "BadRequest",
                    "the request body could not be read",
                    None,
                );
            };
            let Ok(object) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
                return status(
                    400,
                    "BadRequest",
                    "the request body is not a JSON object",
                    None,
                );
            };
            rest::write(shared, &target, verb, object)
        }
        "delete" => rest::delete(shared, &target),
        _ => status(
            405,
            "MethodNotAllowed",
            &format!("{verb} is not supported by this fake API server"),
            None,
        ),
    }
}
