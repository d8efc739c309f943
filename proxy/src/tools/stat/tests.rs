//! Unit tests for the terminal tools: flags to queries, and the tables and lines drawn from
//! the proxy's typed `/stats` and tap events.

use proxy_core::classify::Classification;

use super::*;

/// The filters as `skiff tap` reads them.
#[derive(Debug, clap::Parser)]
struct Tap {
    #[command(flatten)]
    filters: TapFilters,
}

fn query(flags: &[&str]) -> Result<String, String> {
    let args = std::iter::once("tap").chain(flags.iter().copied());
    clap::Parser::try_parse_from(args)
        .map(|t: Tap| t.filters.query())
        .map_err(|e| e.to_string())
}

#[test]
fn flags_become_a_query() {
    assert_eq!(
        query(&["--status", "5xx", "--path=/api v1"]).unwrap(),
        "path=%2Fapi%20v1&status=5xx"
    );
    assert_eq!(
        query(&[
            "--direction=inbound",
            "--authority",
            "web:80",
            "--method",
            "GET",
            "--route",
            "web/api",
            "--max-rate",
            "2.5",
            "--body",
            "64",
        ])
        .unwrap(),
        "direction=inbound&authority=web%3A80&method=GET&route=web%2Fapi&max_rate=2.5&body=64"
    );
    assert_eq!(query(&[]).unwrap(), "");
}

#[test]
fn bad_filters_fail_before_connecting() {
    for (flags, says) in [
        (&["--colour"][..], "unexpected argument '--colour'"),
        (
            &["--stauts", "5xx"],
            "a similar argument exists: '--status'",
        ),
        (
            &["--status", "6xx"],
            "[possible values: 1xx, 2xx, 3xx, 4xx, 5xx]",
        ),
        (
            &["--direction", "up"],
            "[possible values: outbound, inbound]",
        ),
        (&["--max-rate", "0"], "expected a number above 0"),
        (
            &["--body", "lots"],
            "invalid value 'lots' for '--body <BYTES>'",
        ),
    ] {
        let e = query(flags).unwrap_err();
        assert!(e.contains(says), "{flags:?}: {e}");
    }
}

/// The `/stats` document as docs/observability.md shows it, plus a row of requests refused
/// before routing (no authority, no target).
const DOCUMENTED_STATS: &str = r#"{"latency_unit": "ms", "stats": [
  {"direction": "outbound", "authority": "echo-mesh.demo.svc.cluster.local:80",
   "target_addr": "echo-mesh:80", "tls": "true",
   "server_id": "spiffe://cluster.local/ns/demo/sa/server", "window_seconds": 25.401,
   "success_count": 4, "failure_count": 0, "request_rate": 0.157, "success_rate": 1.0,
   "p50_response_latency": 1.0, "p95_response_latency": 2.8, "p99_response_latency": 2.96},
  {"direction": "inbound", "target_addr": "127.0.0.1:18081", "tls": "disabled",
   "window_seconds": 25.401, "success_count": 1, "failure_count": 0, "request_rate": 0.039,
   "success_rate": 1.0, "p50_response_latency": 0.5, "p95_response_latency": 0.95,
   "p99_response_latency": 0.99},
  {"direction": "outbound", "tls": "disabled", "window_seconds": 30.0, "success_count": 0,
   "failure_count": 2, "request_rate": 0.067, "success_rate": 0.0,
   "p50_response_latency": 0.5, "p95_response_latency": 0.95, "p99_response_latency": 0.99}
]}"#;

#[test]
fn the_stat_table_lines_up() {
    let report: Report = serde_json::from_str(DOCUMENTED_STATS).unwrap();
    let t = stat_table(&report.stats);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("DIRECTION  AUTHORITY"), "{t}");
    let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        cells(lines[1]),
        [
            "outbound",
            "echo-mesh.demo.svc.cluster.local:80",
            "-",
            "spiffe://cluster.local/ns/demo/sa/server",
            "100.00%",
            "0.2",
            "1.0ms",
            "2.8ms",
            "3.0ms",
            "true"
        ]
    );
    assert!(
        lines[2].starts_with("inbound    (app 127.0.0.1:18081)"),
        "{t}"
    );
    assert!(lines[3].starts_with("outbound   (unrouted)"), "{t}");
    assert!(lines[3].contains("0.00%"), "{t}");
}

fn end(status: u16, classification: Classification, duration_ms: f64) -> EndEvent {
    EndEvent {
        ts: 1795329979.439,
        id: 1,
        direction: Direction::Outbound,
        method: "GET".into(),
        authority: "web".into(),
        path: "/".into(),
        client: "127.0.0.1".into(),
        route: None,
        status,
        duration_ms,
        response_bytes: 2,
        grpc_status: None,
        error: None,
        classification,
        tries: 1,
        backend: None,
        endpoint: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        breaker: None,
        fault: None,
        authz: None,
        trace_id: None,
        body: None,
    }
}

#[test]
fn top_counts_the_proxys_classification_not_the_status() {
    let mut top = Top::default();
    // A 200 carrying a gRPC error is a failure to the proxy; a 404 from the app a success.
    top.add(&end(200, Classification::Failure, 2.0));
    top.add(&end(404, Classification::Success, 1.0));
    top.add(&end(200, Classification::Success, 4.0));
    top.add(&end(503, Classification::Failure, 3.0));
    let t = top.table();
    let row = t.lines().nth(1).unwrap_or_default();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["outbound", "web", "GET", "/", "4", "50.0%", "1.0ms", "4.0ms"],
        "{t}"
    );
}

#[test]
fn tap_lines_read_the_typed_events() {
    let mut e = end(502, Classification::Failure, 0.522);
    e.error = Some("upstream-connect".into());
    assert_eq!(
        tap_line(&Event::End(e), false),
        "end id=1 out GET web/ :status=502 duration=0.522ms bytes=2 tries=1 \
         endpoint=127.0.0.1:8080 error=upstream-connect"
    );
    let line = Event::End(end(200, Classification::Success, 0.8)).to_line();
    let read = Event::from_line(&line).expect("the proxy's line reads back");
    assert!(tap_line(&read, true).starts_with("\x1b[32mend id=1 out GET web/ :status=200"));
}
