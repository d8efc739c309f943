//! Unit tests for tap: filters, a hub whose slow clients lose events rather than slow the
//! proxy, and the events' wire format.

use std::net::SocketAddr;

use proxy_core::classify::Classification;
use proxy_core::Direction;
use serde_json::{json, Value};

use super::*;

fn fields<'a>(path: &'a str, status: Option<u16>) -> Fields<'a> {
    Fields {
        direction: "outbound",
        authority: "web",
        path,
        method: "GET",
        route: Some("web/api"),
        status,
    }
}

#[test]
fn filters_parse_and_match() {
    let f = Filter::from_query("direction=outbound&authority=WEB&path=%2Fapi&method=get&route=web%2Fapi&status=2xx&max_rate=5&body=10").unwrap();
    assert!(f.matches(&fields("/api/x", Some(204))));
    assert!(!f.matches(&fields("/other", Some(200))));
    assert!(!f.matches(&fields("/api/x", Some(503))));
    assert!(
        !f.matches(&fields("/api/x", None)),
        "a status filter waits for the status"
    );
    assert_eq!(f.body_bytes, 10);
    assert!(Filter::from_query("status=9xx").is_err());
    assert!(Filter::from_query("colour=red").is_err());
    assert!(Filter::from_query("").unwrap().matches(&fields("/", None)));
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_events_and_holds_nothing_more() {
    let hub = Arc::new(TapHub::new(Counter::default()));
    assert!(!hub.active());
    let filter = Filter::from_query("max_rate=100000").unwrap();
    let mut slow = hub.subscribe(filter);
    let mut fast = hub.subscribe(Filter::from_query("path=/a&max_rate=100000").unwrap());
    assert!(hub.active());
    for i in 0..(QUEUE + 100) {
        let path = if i % 2 == 0 { "/a" } else { "/b" };
        hub.publish(&fields(path, None), |_| Bytes::from(format!("{i}\n")));
        // The fast client keeps up.
        if i % 2 == 0 {
            assert_eq!(fast.events.recv().await.unwrap(), format!("{i}\n"));
        }
    }
    assert_eq!(
        hub.dropped.get(),
        100,
        "the slow client's overflow is dropped and counted"
    );
    assert_eq!(slow.events.recv().await.unwrap(), "0\n");
    drop((slow, fast));
    assert!(!hub.active());
}

fn end() -> EndEvent {
    EndEvent {
        ts: 1795329979.439,
        id: 7,
        direction: Direction::Inbound,
        method: "GET".into(),
        authority: "echo-mesh".into(),
        path: "/hop".into(),
        client: "spiffe://cluster.local/ns/demo/sa/client".into(),
        route: None,
        status: 200,
        duration_ms: 0.412,
        response_bytes: 70,
        grpc_status: None,
        error: None,
        classification: Classification::Success,
        tries: 1,
        backend: None,
        endpoint: Some(SocketAddr::from(([127, 0, 0, 1], 18082))),
        breaker: None,
        fault: None,
        authz: Some("allow echo-routes/reads".into()),
        trace_id: None,
        body: None,
    }
}

/// The wire format as docs/observability.md shows it, field by field: the types must
/// write exactly these names and values, and read them back.
#[test]
fn events_keep_the_documented_wire_format() {
    let request = Event::Request(RequestEvent {
        id: 1,
        direction: Direction::Outbound,
        method: "GET".into(),
        authority: "hello".into(),
        path: "/".into(),
        client: "127.0.0.1".into(),
        headers: [("accept".to_owned(), "*/*".to_owned())].into(),
    });
    let response = Event::Response(ResponseEvent {
        id: 1,
        direction: Direction::Outbound,
        method: "GET".into(),
        authority: "hello".into(),
        path: "/".into(),
        route: None,
        status: 200,
        latency_ms: 0.594,
        headers: Headers::new(),
    });
    let mut sampled = end();
    sampled.body = Some("GET /hop".into());
    for (event, want) in [
        (
            request,
            json!({"event": "request", "id": 1, "direction": "outbound", "method": "GET",
                   "authority": "hello", "path": "/", "client": "127.0.0.1",
                   "headers": {"accept": "*/*"}}),
        ),
        (
            response,
            json!({"event": "response", "id": 1, "direction": "outbound", "method": "GET",
                   "authority": "hello", "path": "/", "route": null, "status": 200,
                   "latency_ms": 0.594, "headers": {}}),
        ),
        (
            Event::End(end()),
            json!({"event": "end", "ts": 1795329979.439, "id": 7, "direction": "inbound",
                   "method": "GET", "authority": "echo-mesh", "path": "/hop",
                   "client": "spiffe://cluster.local/ns/demo/sa/client", "route": null,
                   "status": 200, "duration_ms": 0.412, "response_bytes": 70,
                   "grpc_status": null, "error": null, "classification": "success",
                   "tries": 1, "backend": null, "endpoint": "127.0.0.1:18082",
                   "breaker": null, "authz": "allow echo-routes/reads", "trace_id": null}),
        ),
        (
            Event::End(sampled),
            json!({"event": "end", "ts": 1795329979.439, "id": 7, "direction": "inbound",
                   "method": "GET", "authority": "echo-mesh", "path": "/hop",
                   "client": "spiffe://cluster.local/ns/demo/sa/client", "route": null,
                   "status": 200, "duration_ms": 0.412, "response_bytes": 70,
                   "grpc_status": null, "error": null, "classification": "success",
                   "tries": 1, "backend": null, "endpoint": "127.0.0.1:18082",
                   "breaker": null, "authz": "allow echo-routes/reads", "trace_id": null,
                   "body": "GET /hop"}),
        ),
    ] {
        let line = event.to_line();
        assert!(line.ends_with(b"\n") && !line[..line.len() - 1].contains(&b'\n'));
        let written: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(written, want);
        assert_eq!(Event::from_line(&line), Some(event));
    }
}

#[test]
fn readers_skip_what_they_do_not_know_and_tolerate_additions() {
    assert_eq!(Event::from_line(b"\n"), None);
    assert_eq!(Event::from_line(br#"{"event":"later","id":1}"#), None);
    let mut newer = serde_json::to_value(Event::End(end())).unwrap();
    newer["added_later"] = json!(true);
    let line = serde_json::to_vec(&newer).unwrap();
    assert_eq!(Event::from_line(&line), Some(Event::End(end())));
}
