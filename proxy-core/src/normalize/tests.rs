//! Unit tests for [`super::normalize`].

use http::uri::Authority;
use http::{header, Request, Version};
use http_body_util::Empty;

use super::*;
use crate::error::Reason;

fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut b = Request::builder().version(version).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).unwrap()
}

fn reason(r: Request<Empty<Bytes>>) -> Reason {
    normalize(r, &HeaderLimits::default())
        .expect_err("rejected")
        .reason()
}

fn authority_of(r: Request<Empty<Bytes>>) -> Option<String> {
    let out = normalize(r, &HeaderLimits::default()).expect("accepted");
    assert!(out.headers().get(header::HOST).is_none(), "Host is removed");
    out.extensions()
        .get::<Authority>()
        .map(|a| a.as_str().to_owned())
}

#[test]
fn http11_needs_exactly_one_host() {
    assert_eq!(reason(req(Version::HTTP_11, "/", &[])), Reason::BadRequest);
    let two = req(Version::HTTP_11, "/", &[("host", "a"), ("host", "b")]);
    assert_eq!(reason(two), Reason::BadRequest);
    let one = req(Version::HTTP_11, "/", &[("host", "web:8080")]);
    assert_eq!(authority_of(one).as_deref(), Some("web:8080"));
}

#[test]
fn http10_without_host_has_no_authority() {
    assert_eq!(authority_of(req(Version::HTTP_10, "/", &[])), None);
}

#[test]
fn absolute_form_wins_over_host() {
    let r = req(Version::HTTP_11, "http://web:80/x", &[("host", "evil")]);
    assert_eq!(authority_of(r).as_deref(), Some("web:80"));
}

#[test]
fn h2_authority_must_agree_with_host() {
    let r = req(Version::HTTP_2, "http://web/x", &[("host", "evil")]);
    assert_eq!(reason(r), Reason::BadRequest);
    let r = req(Version::HTTP_2, "http://web/x", &[("host", "WEB")]);
    assert_eq!(authority_of(r).as_deref(), Some("web"));
}

#[test]
fn userinfo_and_garbage_hosts_are_refused() {
    let r = req(Version::HTTP_11, "/", &[("host", "u@web")]);
    assert_eq!(reason(r), Reason::BadRequest);
    let r = req(Version::HTTP_11, "/", &[("host", "a b")]);
    assert_eq!(reason(r), Reason::BadRequest);
}

#[test]
fn connect_is_refused() {
    let r = Request::builder()
        .method("CONNECT")
        .uri("web:443")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(reason(r), Reason::BadRequest);
}

#[test]
fn the_asterisk_target_is_for_options_alone() {
    let with = |method: &str| {
        Request::builder()
            .method(method)
            .uri("*")
            .header("host", "web")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(reason(with("GET")), Reason::BadRequest);
    assert_eq!(reason(with("POST")), Reason::BadRequest);
    assert!(normalize(with("OPTIONS"), &HeaderLimits::default()).is_ok());
}

#[test]
fn hop_by_hop_and_connection_named_headers_are_stripped() {
    let r = req(
        Version::HTTP_11,
        "/",
        &[
            ("host", "web"),
            ("connection", "keep-alive, X-Foo"),
            ("x-foo", "secret"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("te", "gzip"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ],
    );
    let out = normalize(r, &HeaderLimits::default()).unwrap();
    let names: Vec<&str> = out.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept"]);
    assert!(out.extensions().get::<WebSocketUpgrade>().is_none());
}

#[test]
fn te_trailers_survives_for_grpc() {
    let r = req(Version::HTTP_2, "http://web/x", &[("te", "trailers")]);
    let out = normalize(r, &HeaderLimits::default()).unwrap();
    assert_eq!(out.headers()[header::TE], "trailers");
}

#[test]
fn skiff_headers_from_clients_are_stripped() {
    let r = req(
        Version::HTTP_11,
        "/",
        &[
            ("host", "web"),
            ("skiff-error", "forged"),
            ("Skiff-Id", "x"),
        ],
    );
    let out = normalize(r, &HeaderLimits::default()).unwrap();
    assert!(out.headers().is_empty());
}

#[test]
fn websocket_upgrade_is_kept_and_marked() {
    let r = req(
        Version::HTTP_11,
        "/ws",
        &[
            ("host", "web"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ],
    );
    let out = normalize(r, &HeaderLimits::default()).unwrap();
    assert_eq!(out.headers()[header::UPGRADE], "websocket");
    assert_eq!(out.headers()[header::CONNECTION], "upgrade");
    assert!(out.extensions().get::<WebSocketUpgrade>().is_some());
}

#[test]
fn header_limits_answer_431() {
    let many: Vec<(String, String)> = (0..101).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = req(Version::HTTP_11, "/", &refs);
    assert_eq!(reason(r), Reason::HeadersTooLarge);

    let big = "v".repeat(40 * 1024);
    let r = req(Version::HTTP_11, "/", &[("host", "web"), ("x-big", &big)]);
    assert_eq!(reason(r), Reason::HeadersTooLarge);
}

#[test]
fn response_hop_by_hop_is_stripped_but_upgrade_completes() {
    let mut h = http::HeaderMap::new();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("keep-alive", "x".parse().unwrap());
    h.insert("skiff-error", "forged-by-upstream".parse().unwrap());
    strip_response_headers(&mut h, true);
    assert!(h.get("skiff-error").is_none());
    assert_eq!(h["upgrade"], "websocket");
    assert!(h.get("keep-alive").is_none());
    strip_response_headers(&mut h, false);
    assert!(h.get("upgrade").is_none());
}
