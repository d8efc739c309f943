//! The terminal tools: `skiff stat` (the `/stats` table, like `linkerd viz stat`), `skiff
//! top` (the busiest paths, live, from the tap stream) and `skiff tap` (the tap stream, one
//! line per event). Each talks to a proxy's admin listener and ends cleanly on Ctrl-C or
//! when the proxy goes away. [`TapFilters`] are `tap`'s and `top`'s filter flags.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::builder::PossibleValuesParser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proxy_core::Direction;
use serde_json::Value;

/// Why a tool stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The admin listener could not be reached.
    #[error("cannot reach the admin listener at {addr}: {why}")]
    Unreachable {
        /// Where.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// The proxy refused the request.
    #[error("the proxy answered {status}: {body}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its explanation.
        body: String,
    },
}

async fn get(admin: SocketAddr, path_and_query: &str) -> Result<Incoming, CliError> {
    let unreachable = |why: String| CliError::Unreachable { addr: admin, why };
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::get(path_and_query)
        .header("host", admin.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let rsp = tx
        .send_request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if rsp.status() != StatusCode::OK {
        let status = rsp.status();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(CliError::Refused {
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    Ok(rsp.into_body())
}

/// `skiff stat`: prints the `/stats` table.
pub async fn stat(admin: SocketAddr) -> Result<String, CliError> {
    let body = get(admin, "/stats").await?;
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let rows = v["stats"].as_array().cloned().unwrap_or_default();
    Ok(stat_table(&rows))
}

fn stat_table(rows: &[Value]) -> String {
    let header = [
        "DIRECTION",
        "AUTHORITY",
        "ROUTE",
        "PEER",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TLS",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
        let ms = |k: &str| {
            r[k].as_f64().map_or_else(
                || "-".to_owned(),
                |v| {
                    if v < 10.0 {
                        format!("{v:.1}ms")
                    } else {
                        format!("{v:.0}ms")
                    }
                },
            )
        };
        let authority = match r["authority"].as_str() {
            Some(a) => a.to_owned(),
            None if r["target_addr"].is_string() => format!("(app {})", s("target_addr")),
            None => "(unrouted)".to_owned(),
        };
        let peer = r["client_id"]
            .as_str()
            .or(r["server_id"].as_str())
            .unwrap_or("-");
        table.push(vec![
            s("direction"),
            authority,
            s("route"),
            peer.to_owned(),
            r["success_rate"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{:.2}%", v * 100.0)),
            r["request_rate"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
            ms("p50_response_latency"),
            ms("p95_response_latency"),
            ms("p99_response_latency"),
            s("tls"),
        ]);
    }
    render(&table)
}

fn render(table: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in table {
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(out, "{cell:<w$}  ", w = widths[c]);
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

/// Reads the tap stream at `query`, handing each event to `on_event`, until the stream
/// ends (the proxy went away) or Ctrl-C.
async fn follow(
    admin: SocketAddr,
    query: &str,
    mut on_event: impl FnMut(&Value),
) -> Result<(), CliError> {
    let mut body = get(admin, &format!("/tap?{query}")).await?;
    let mut buf = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = &mut ctrl_c => return Ok(()),
        };
        let Some(Ok(frame)) = frame else {
            return Ok(()); // the proxy went away
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                on_event(&v);
            }
        }
    }
}

/// `skiff tap`: one line per event, coloured by status when printing to a terminal.
pub async fn tap(admin: SocketAddr, query: &str) -> Result<(), CliError> {
    let colour = std::io::stdout().is_terminal();
    follow(admin, query, |e| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", tap_line(e, colour));
        let _ = out.flush();
    })
    .await
}

fn tap_line(e: &Value, colour: bool) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("");
    let id = e["id"].as_u64().unwrap_or(0);
    let dir = if s("direction") == "inbound" {
        "in "
    } else {
        "out"
    };
    let target = format!("{}{}", s("authority"), s("path"));
    let status = e["status"].as_u64();
    let line = match s("event") {
        "request" => format!(
            "req id={id} {dir} {} {target} client={}",
            s("method"),
            s("client")
        ),
        "response" => format!(
            "rsp id={id} {dir} :status={} latency={}ms route={}",
            status.unwrap_or(0),
            e["latency_ms"],
            e["route"].as_str().unwrap_or("-")
        ),
        _ => {
            let mut l = format!(
                "end id={id} {dir} {} {target} :status={} duration={}ms bytes={} tries={}",
                s("method"),
                status.unwrap_or(0),
                e["duration_ms"],
                e["response_bytes"],
                e["tries"]
            );
            for k in ["route", "backend", "endpoint", "breaker", "authz", "error"] {
                if let Some(v) = e[k].as_str() {
                    let _ = write!(l, " {k}={v}");
                }
            }
            if let Some(b) = e["body"].as_str() {
                let _ = write!(l, " body={b:?}");
            }
            l
        }
    };
    match (colour, status) {
        (true, Some(s)) if s >= 500 => format!("\x1b[31m{line}\x1b[0m"),
        (true, Some(s)) if s >= 400 => format!("\x1b[33m{line}\x1b[0m"),
        (true, Some(_)) => format!("\x1b[32m{line}\x1b[0m"),
        _ => line,
    }
}

/// `skiff top`: the busiest paths, redrawn every second from the tap stream.
pub async fn top(admin: SocketAddr, query: &str) -> Result<(), CliError> {
    #[derive(Default)]
    struct Row {
        count: u64,
        success: u64,
        best: f64,
        worst: f64,
    }
    let mut rows: HashMap<(String, String, String, String), Row> = HashMap::new();
    let mut last_draw = tokio::time::Instant::now();
    let tty = std::io::stdout().is_terminal();
    follow(admin, query, |e| {
        if e["event"] != "end" {
            return;
        }
        let key = (
            e["direction"].as_str().unwrap_or("").to_owned(),
            e["authority"].as_str().unwrap_or("").to_owned(),
            e["method"].as_str().unwrap_or("").to_owned(),
            e["path"].as_str().unwrap_or("").to_owned(),
        );
        let ms = e["duration_ms"].as_f64().unwrap_or(0.0);
        let row = rows.entry(key).or_default();
        if row.count == 0 || ms < row.best {
            row.best = ms;
        }
        row.worst = row.worst.max(ms);
        row.count += 1;
        if e["status"].as_u64().is_some_and(|s| s < 500) && e["error"].is_null() {
            row.success += 1;
        }
        if last_draw.elapsed() >= Duration::from_secs(1) {
            last_draw = tokio::time::Instant::now();
            let mut sorted: Vec<_> = rows.iter().collect();
            sorted.sort_by_key(|r| std::cmp::Reverse(r.1.count));
            let mut table = vec![[
                "DIRECTION",
                "AUTHORITY",
                "METHOD",
                "PATH",
                "COUNT",
                "SUCCESS",
                "BEST",
                "WORST",
            ]
            .iter()
            .map(|h| (*h).to_owned())
            .collect::<Vec<_>>()];
            for ((d, a, m, p), r) in sorted.into_iter().take(20) {
                table.push(vec![
                    d.clone(),
                    a.clone(),
                    m.clone(),
                    p.clone(),
                    r.count.to_string(),
                    format!("{:.1}%", r.success as f64 * 100.0 / r.count as f64),
                    format!("{:.1}ms", r.best),
                    format!("{:.1}ms", r.worst),
                ]);
            }
            let mut out = std::io::stdout().lock();
            if tty {
                let _ = write!(out, "\x1b[2J\x1b[H");
            }
            let _ = write!(out, "{}", render(&table));
            let _ = out.flush();
        }
    })
    .await
}

/// Which events `skiff tap` and `skiff top` ask for. Each flag is the `/tap` query parameter
/// of the same name (docs/observability.md); the formats the proxy checks are checked here
/// too, so a typo fails before connecting.
#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
pub struct TapFilters {
    /// Only requests of this direction
    #[arg(long, value_parser = PossibleValuesParser::new(Direction::ALL.map(Direction::as_str)))]
    pub direction: Option<String>,
    /// Only requests for this authority (any case)
    #[arg(long)]
    pub authority: Option<String>,
    /// Only requests whose path starts with this
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<String>,
    /// Only requests with this method
    #[arg(long)]
    pub method: Option<String>,
    /// Only requests on this route (its name, as in the metrics)
    #[arg(long)]
    pub route: Option<String>,
    /// Only responses of this status class
    #[arg(long, value_parser = ["1xx", "2xx", "3xx", "4xx", "5xx"])]
    pub status: Option<String>,
    /// Events a second at most (the proxy's default: 100)
    #[arg(long, value_name = "N", value_parser = positive_rate)]
    pub max_rate: Option<f64>,
    /// Bytes of each response body to show (the proxy caps it at 64 KiB)
    #[arg(long, value_name = "BYTES")]
    pub body: Option<usize>,
}

impl TapFilters {
    /// The `/tap` query string, parameters in a fixed order, values percent-encoded.
    pub fn query(&self) -> String {
        let max_rate = self.max_rate.map(|r| r.to_string());
        let body = self.body.map(|b| b.to_string());
        let params = [
            ("direction", self.direction.as_deref()),
            ("authority", self.authority.as_deref()),
            ("path", self.path.as_deref()),
            ("method", self.method.as_deref()),
            ("route", self.route.as_deref()),
            ("status", self.status.as_deref()),
            ("max_rate", max_rate.as_deref()),
            ("body", body.as_deref()),
        ];
        let query: Vec<String> = params
            .iter()
            .filter_map(|(key, value)| Some(format!("{key}={}", percent_encode(value.as_ref()?))))
            .collect();
        query.join("&")
    }
}

/// `--max-rate`: the proxy refuses 0, negatives, NaN and infinity.
fn positive_rate(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|r| *r > 0.0 && r.is_finite())
        .ok_or_else(|| "expected a number above 0".to_owned())
}

/// Percent-encodes all but the unreserved characters of RFC 3986.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
            (&["--body", "lots"], "invalid value 'lots' for '--body <BYTES>'"),
        ] {
            let e = query(flags).unwrap_err();
            assert!(e.contains(says), "{flags:?}: {e}");
        }
    }

    #[test]
    fn the_stat_table_lines_up() {
        let rows: Vec<Value> = serde_json::from_str(
            r#"[{"direction":"outbound","authority":"web:80","route":"web/api","success_rate":0.995,"request_rate":12.5,"p50_response_latency":3.2,"p95_response_latency":9.1,"p99_response_latency":20.0,"tls":"true","server_id":"spiffe://td/ns/a/sa/web"}]"#,
        )
        .unwrap();
        let t = stat_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("DIRECTION  AUTHORITY  ROUTE"), "{t}");
        assert!(
            lines[1].contains("99.50%") && lines[1].contains("12.5") && lines[1].contains("3.2ms"),
            "{t}"
        );
    }
}
