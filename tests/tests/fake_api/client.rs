//! A plain hyper client for the fake API server: one request per connection, and watch
//! streams read line by line, telling a clean end from a broken connection.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use skiff_e2e::{h1, text};

/// Sends one request; answers its status and JSON body (`Null` if the body is not JSON).
pub(crate) async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let rsp = send(addr, method, path, token, body).await;
    let status = rsp.status().as_u16();
    let bytes = tokio::time::timeout(Duration::from_secs(10), rsp.into_body().collect())
        .await
        .expect("a whole body within 10s")
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `GET path` without a token.
pub(crate) async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    call(addr, "GET", path, None, None).await
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> hyper::Response<Incoming> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("accept", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req.body(text(body)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h1(addr).await.send_request(req))
        .await
        .expect("response head within 10s")
        .unwrap()
}

/// What came next on a watch.
#[derive(Debug)]
pub(crate) enum Next {
    /// One event: `{"type": ..., "object": ...}`.
    Event(Value),
    /// The server ended the chunked body cleanly.
    End,
    /// The connection broke before the body ended.
    Broken,
}

/// An open watch response.
#[derive(Debug)]
pub(crate) struct Watch {
    /// The response status.
    pub(crate) status: u16,
    body: Incoming,
    buf: Vec<u8>,
}

impl Watch {
    /// Opens `GET path` (a watch URL).
    pub(crate) async fn open(addr: SocketAddr, path: &str) -> Self {
        let rsp = send(addr, "GET", path, None, None).await;
        assert_eq!(
            rsp.headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json")
        );
        Self {
            status: rsp.status().as_u16(),
            body: rsp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, end or break, failing the test if none comes within `within`.
    pub(crate) async fn next_within(&mut self, within: Duration) -> Next {
        tokio::time::timeout(within, self.next())
            .await
            .unwrap_or_else(|_| panic!("nothing on the watch within {within:?}"))
    }

    /// The next event, end or break.
    pub(crate) async fn next(&mut self) -> Next {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                return Next::Event(
                    serde_json::from_slice(&line).expect("an event is one JSON line"),
                );
            }
            match self.body.frame().await {
                None => {
                    assert!(self.buf.is_empty(), "a partial line before the end");
                    return Next::End;
                }
                Some(Err(_)) => return Next::Broken,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event, which must be one, within 10 seconds.
    pub(crate) async fn event(&mut self) -> Value {
        match self.next_within(Duration::from_secs(10)).await {
            Next::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Whether nothing arrives for `quiet`.
    pub(crate) async fn stays_quiet(&mut self, quiet: Duration) -> bool {
        tokio::time::timeout(quiet, self.next()).await.is_err()
    }
}

/// `(type, name, resourceVersion)` of an event, for comparing sequences.
pub(crate) fn summary(event: &Value) -> (String, String, String) {
    let object = &event["object"];
    (
        event["type"].as_str().unwrap_or_default().to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The names of a list's items, in order.
pub(crate) fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}
