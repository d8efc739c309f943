use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use tower::{service_fn, Layer, ServiceExt};

use super::*;
use crate::context::for_tests;

fn prefix(prefixes: &[&str], with: &str) -> PathModifier {
    PathModifier::Prefix {
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        with: with.into(),
    }
}

#[test]
fn prefix_replacement_follows_gateway_api_examples() {
    // (rule prefix, replacement, request path, path sent)
    for (matched, with, path, want) in [
        ("/foo", "/xyz", "/foo/bar", "/xyz/bar"),
        ("/foo", "/xyz", "/foo", "/xyz"),
        ("/foo", "/xyz/", "/foo/bar", "/xyz/bar"),
        ("/foo/", "/xyz", "/foo/bar", "/xyz/bar"),
        ("/foo", "/", "/foo/bar", "/bar"),
        ("/foo", "/", "/foo", "/"),
        ("/foo/", "/", "/foo/", "/"),
        ("/", "/api", "/x", "/api/x"),
    ] {
        assert_eq!(
            prefix(&[matched], with).apply(path),
            want,
            "{matched} -> {with} on {path}"
        );
    }
    // The longest of the rule's prefixes that matches is the one replaced.
    assert_eq!(prefix(&["/a", "/a/b"], "/z").apply("/a/b/c"), "/z/c");
    assert_eq!(PathModifier::Full("/new".into()).apply("/old/x"), "/new");
}

#[test]
fn redirects_default_to_the_request_and_leave_well_known_ports_out() {
    let uri: Uri = "/p?q=1".parse().unwrap();
    let host: Authority = "web.shop:8080".parse().unwrap();
    let redirect = |f: fn(&mut Redirect)| {
        let mut r = Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status: StatusCode::FOUND,
        };
        f(&mut r);
        r.location(&uri, Some(&host))
    };
    assert_eq!(redirect(|_| {}), "http://web.shop:8080/p?q=1");
    assert_eq!(
        redirect(|r| r.scheme = Some(Scheme::HTTPS)),
        "https://web.shop/p?q=1",
        "a new scheme takes its well-known port"
    );
    assert_eq!(
        redirect(|r| r.hostname = Some("example.org".into())),
        "http://example.org:8080/p?q=1"
    );
    assert_eq!(redirect(|r| r.port = Some(80)), "http://web.shop/p?q=1");
    assert_eq!(
        redirect(|r| r.path = Some(PathModifier::Full("/new".into()))),
        "http://web.shop:8080/new?q=1"
    );
}

#[test]
fn header_changes_set_then_add_then_remove() {
    let m = HeaderModifier {
        set: vec![(
            HeaderName::from_static("a"),
            HeaderValue::from_static("set"),
        )],
        add: vec![(
            HeaderName::from_static("b"),
            HeaderValue::from_static("added"),
        )],
        remove: vec![HeaderName::from_static("c")],
    };
    let mut headers = HeaderMap::new();
    headers.insert("a", HeaderValue::from_static("old"));
    headers.insert("b", HeaderValue::from_static("kept"));
    headers.insert("c", HeaderValue::from_static("gone"));
    m.apply(&mut headers);
    assert_eq!(headers["a"], "set");
    let b: Vec<_> = headers.get_all("b").iter().collect();
    assert_eq!(b, ["kept", "added"]);
    assert!(!headers.contains_key("c"));
}

/// An upstream answering with the path and `Host` it got, and one response header.
fn echo(
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|req: Request<Body>| async move {
        let host = req
            .headers()
            .get(HOST)
            .map(|h| h.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let seen = format!("{} {host} x={:?}", req.uri(), req.headers().get("x-added"));
        let mut rsp = Response::new(body::full(seen));
        rsp.headers_mut()
            .insert("x-upstream", HeaderValue::from_static("1"));
        Ok::<_, BoxError>(rsp)
    })
}

async fn text(rsp: Response<Body>) -> String {
    use http_body_util::BodyExt;
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn request(filters: Filters) -> Request<Body> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri("/foo/bar?q=1")
        .header(HOST, "web.shop:8080")
        .body(body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(for_tests(|c| c.filters = Some(Arc::new(filters))));
    req
}

#[tokio::test]
async fn a_rule_rewrites_and_changes_headers_both_ways() {
    let filters = Filters {
        request_headers: Some(HeaderModifier {
            add: vec![(
                HeaderName::from_static("x-added"),
                HeaderValue::from_static("yes"),
            )],
            ..HeaderModifier::default()
        }),
        response_headers: Some(HeaderModifier {
            remove: vec![HeaderName::from_static("x-upstream")],
            set: vec![(
                HeaderName::from_static("x-route"),
                HeaderValue::from_static("r"),
            )],
            ..HeaderModifier::default()
        }),
        rewrite: Some(Rewrite {
            hostname: Some("api.internal".into()),
            path: Some(prefix(&["/foo"], "/v2")),
        }),
        redirect: None,
        mirrors: Vec::new(),
    };
    let rsp = FilterLayer::rule()
        .layer(echo())
        .oneshot(request(filters))
        .await
        .unwrap();
    assert_eq!(rsp.headers()["x-route"], "r");
    assert!(!rsp.headers().contains_key("x-upstream"));
    assert_eq!(
        text(rsp).await,
        r#"/v2/bar?q=1 api.internal:8080 x=Some("yes")"#
    );
}

#[tokio::test]
async fn a_redirect_answers_without_calling_upstream() {
    let filters = Filters {
        redirect: Some(Redirect {
            scheme: Some(Scheme::HTTPS),
            hostname: None,
            port: None,
            path: Some(prefix(&["/foo"], "/new")),
            status: StatusCode::PERMANENT_REDIRECT,
        }),
        ..Filters::default()
    };
    let never = service_fn(|_req: Request<Body>| async {
        panic!("a redirect must not reach the upstream");
        #[allow(unreachable_code)]
        Ok::<Response<Body>, BoxError>(Response::new(body::empty()))
    });
    let rsp = FilterLayer::rule()
        .layer(never)
        .oneshot(request(filters))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(rsp.headers()[LOCATION], "https://web.shop/new/bar?q=1");
}

#[tokio::test]
async fn backend_filters_come_from_the_drawn_backend_and_only_apply_with_it() {
    let mut req = Request::get("/x")
        .header(HOST, "web")
        .body(body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(BackendFilters(Arc::new(Filters {
            request_headers: Some(HeaderModifier {
                set: vec![(
                    HeaderName::from_static("x-added"),
                    HeaderValue::from_static("backend"),
                )],
                ..HeaderModifier::default()
            }),
            ..Filters::default()
        })));
    let rsp = FilterLayer::backend()
        .layer(echo())
        .oneshot(req)
        .await
        .unwrap();
    assert!(text(rsp).await.ends_with(r#"x=Some("backend")"#));
    let plain = Request::get("/x")
        .header(HOST, "web")
        .body(body::empty())
        .unwrap();
    let rsp = FilterLayer::backend()
        .layer(echo())
        .oneshot(plain)
        .await
        .unwrap();
    assert!(text(rsp).await.ends_with("x=None"));
}

/// A sink keeping what it is sent.
#[derive(Debug, Default)]
struct Recorder {
    sent: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    skipped: std::sync::atomic::AtomicUsize,
}

impl MirrorSink for Recorder {
    fn send(&self, req: Request<Body>) {
        use http_body_util::BodyExt;
        let uri = req.uri().to_string();
        // Full bodies are ready at once: read them in place.
        let bytes = ready_now(req.into_body().collect())
            .expect("a full body does not fail")
            .to_bytes()
            .to_vec();
        self.sent.lock().unwrap().push((uri, bytes));
    }

    fn skipped(&self) {
        self.skipped
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Polls a future that is ready at once (a full body's collection).
fn ready_now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a full body is ready at once"),
    }
}

fn mirrored(sink: &Arc<Recorder>, numerator: u32) -> Filters {
    Filters {
        mirrors: vec![Mirror {
            name: "shadow".into(),
            sink: Some(sink.clone() as Arc<dyn MirrorSink>),
            numerator,
            denominator: 100,
        }],
        ..Filters::default()
    }
}

/// An upstream that reads the body as hyper's client does (stopping once the body says it
/// has ended, without waiting for its `None`) and answers its length.
fn reader(
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|req: Request<Body>| async move {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        let mut n = 0;
        while !body.is_end_stream() {
            match body.frame().await {
                Some(frame) => n += frame?.data_ref().map_or(0, Bytes::len),
                None => break,
            }
        }
        Ok::<_, BoxError>(Response::new(body::full(n.to_string())))
    })
}

#[tokio::test]
async fn a_mirror_gets_a_copy_once_the_primary_has_the_body() {
    let sink = Arc::new(Recorder::default());
    // No body: the copy leaves at once.
    let rsp = FilterLayer::rule()
        .layer(reader())
        .oneshot(request(mirrored(&sink, 100)))
        .await
        .unwrap();
    assert_eq!(text(rsp).await, "0");
    assert_eq!(
        sink.sent.lock().unwrap()[0],
        ("/foo/bar?q=1".to_owned(), vec![])
    );
    // A body: copied as the primary reads it, sent at its end.
    let mut req = request(mirrored(&sink, 100));
    *req.body_mut() = body::full("payload");
    let rsp = FilterLayer::rule()
        .layer(reader())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(text(rsp).await, "7");
    assert_eq!(sink.sent.lock().unwrap()[1].1, b"payload");
    // Over the bound: the primary gets all of it, the mirror nothing.
    let mut req = request(mirrored(&sink, 100));
    *req.body_mut() = body::full(vec![b'x'; MAX_MIRRORED_BODY + 1]);
    let rsp = FilterLayer::rule()
        .layer(reader())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(text(rsp).await, (MAX_MIRRORED_BODY + 1).to_string());
    assert_eq!(sink.sent.lock().unwrap().len(), 2);
    assert_eq!(sink.skipped.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_mirror_takes_its_share_of_requests() {
    for (numerator, range) in [(0, 0..=0), (100, 1000..=1000), (30, 240..=360)] {
        let sink = Arc::new(Recorder::default());
        for _ in 0..1000 {
            FilterLayer::rule()
                .layer(reader())
                .oneshot(request(mirrored(&sink, numerator)))
                .await
                .unwrap();
        }
        let sent = sink.sent.lock().unwrap().len();
        assert!(range.contains(&sent), "{numerator}%: {sent} of 1000");
    }
}
