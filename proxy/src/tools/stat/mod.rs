//! The terminal tools: `skiff stat` (the `/stats` table, like `linkerd viz stat`), `skiff
//! top` (the busiest paths, live, from the tap stream) and `skiff tap` (the tap stream, one
//! line per event). Each talks to a proxy's admin listener and ends cleanly on Ctrl-C or
//! when the proxy goes away. [`TapFilters`] are `tap`'s and `top`'s filter flags.
//!
//! They read the proxy's own types ([`proxy_metrics::stats::Report`],
//! [`proxy_metrics::tap::Event`]) rather than JSON by field name, and decide nothing the
//! proxy has decided: `top`'s success rate counts the `classification` of each end event,
//! the value the proxy's shared classifier gave `response_total` and `/stats`.

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
use proxy_metrics::stats::{Report, Row};
use proxy_metrics::tap::{EndEvent, Event};

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
    /// The proxy's answer is not what this version of the tool reads.
    #[error("unreadable answer from the admin listener at {addr}: {why}")]
    Unreadable {
        /// Where.
        addr: SocketAddr,
        /// Why.
        why: String,
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
    let unreadable = |why: String| CliError::Unreadable { addr: admin, why };
    let bytes = body
        .collect()
        .await
        .map_err(|e| unreadable(e.to_string()))?
        .to_bytes();
    let report: Report = serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
    Ok(stat_table(&report.stats))
}

fn stat_table(rows: &[Row]) -> String {
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
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let ms = |v: Option<f64>| {
        v.map_or_else(
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
    for r in rows {
        let authority = match (&r.authority, &r.target_addr) {
            (Some(a), _) => a.clone(),
            (None, Some(addr)) => format!("(app {addr})"),
            (None, None) => "(unrouted)".to_owned(),
        };
        let peer = r.client_id.as_deref().or(r.server_id.as_deref());
        let n = &r.summary;
        table.push(vec![
            r.direction.as_str().to_owned(),
            authority,
            or_dash(r.route.as_deref()),
            or_dash(peer),
            n.success_rate
                .map_or_else(|| "-".to_owned(), |v| format!("{:.2}%", v * 100.0)),
            format!("{:.1}", n.request_rate),
            ms(n.p50_response_latency),
            ms(n.p95_response_latency),
            ms(n.p99_response_latency),
            or_dash(r.tls.as_deref()),
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
    mut on_event: impl FnMut(&Event),
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
            // A line this version cannot read (an event kind added later) is skipped.
            if let Some(event) = Event::from_line(&line) {
                on_event(&event);
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

fn tap_line(e: &Event, colour: bool) -> String {
    let dir = |d: Direction| match d {
        Direction::Inbound => "in ",
        Direction::Outbound => "out",
    };
    let line = match e {
        Event::Request(r) => format!(
            "req id={} {} {} {}{} client={}",
            r.id,
            dir(r.direction),
            r.method,
            r.authority,
            r.path,
            r.client
        ),
        Event::Response(r) => format!(
            "rsp id={} {} :status={} latency={}ms route={}",
            r.id,
            dir(r.direction),
            r.status,
            r.latency_ms,
            r.route.as_deref().unwrap_or("-")
        ),
        Event::End(r) => {
            let mut l = format!(
                "end id={} {} {} {}{} :status={} duration={}ms bytes={} tries={}",
                r.id,
                dir(r.direction),
                r.method,
                r.authority,
                r.path,
                r.status,
                r.duration_ms,
                r.response_bytes,
                r.tries
            );
            let endpoint = r.endpoint.map(|e| e.to_string());
            for (k, v) in [
                ("route", &r.route),
                ("backend", &r.backend),
                ("endpoint", &endpoint),
                ("breaker", &r.breaker),
                ("authz", &r.authz),
                ("fault", &r.fault),
                ("error", &r.error),
            ] {
                if let Some(v) = v {
                    let _ = write!(l, " {k}={v}");
                }
            }
            if let Some(b) = &r.body {
                let _ = write!(l, " body={b:?}");
            }
            l
        }
    };
    match (colour, e.status()) {
        (true, Some(s)) if s >= 500 => format!("\x1b[31m{line}\x1b[0m"),
        (true, Some(s)) if s >= 400 => format!("\x1b[33m{line}\x1b[0m"),
        (true, Some(_)) => format!("\x1b[32m{line}\x1b[0m"),
        _ => line,
    }
}

/// `skiff top`: the busiest paths, redrawn every second from the tap stream.
pub async fn top(admin: SocketAddr, query: &str) -> Result<(), CliError> {
    let mut top = Top::default();
    let mut last_draw = tokio::time::Instant::now();
    let tty = std::io::stdout().is_terminal();
    follow(admin, query, |e| {
        let Event::End(e) = e else {
            return;
        };
        top.add(e);
        if last_draw.elapsed() >= Duration::from_secs(1) {
            last_draw = tokio::time::Instant::now();
            let mut out = std::io::stdout().lock();
            if tty {
                let _ = write!(out, "\x1b[2J\x1b[H");
            }
            let _ = write!(out, "{}", top.table());
            let _ = out.flush();
        }
    })
    .await
}

/// `skiff top`'s counts: end events by direction, authority, method and path.
#[derive(Debug, Default)]
struct Top {
    paths: HashMap<(Direction, String, String, String), PathCounts>,
}

#[derive(Debug, Default)]
struct PathCounts {
    count: u64,
    success: u64,
    best: f64,
    worst: f64,
}

impl Top {
    fn add(&mut self, e: &EndEvent) {
        let key = (
            e.direction,
            e.authority.clone(),
            e.method.clone(),
            e.path.clone(),
        );
        let ms = e.duration_ms;
        let row = self.paths.entry(key).or_default();
        if row.count == 0 || ms < row.best {
            row.best = ms;
        }
        row.worst = row.worst.max(ms);
        row.count += 1;
        // The proxy's classification, not a rule of our own, so `top` agrees with
        // `response_total` and `skiff stat` (a gRPC error inside a 200 is a failure there).
        if e.classification.is_success() {
            row.success += 1;
        }
    }

    /// The 20 busiest paths.
    fn table(&self) -> String {
        let mut sorted: Vec<_> = self.paths.iter().collect();
        sorted.sort_by_key(|r| std::cmp::Reverse(r.1.count));
        let header = [
            "DIRECTION",
            "AUTHORITY",
            "METHOD",
            "PATH",
            "COUNT",
            "SUCCESS",
            "BEST",
            "WORST",
        ];
        let mut table = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
        for ((d, a, m, p), r) in sorted.into_iter().take(20) {
            table.push(vec![
                d.as_str().to_owned(),
                a.clone(),
                m.clone(),
                p.clone(),
                r.count.to_string(),
                format!("{:.1}%", r.success as f64 * 100.0 / r.count as f64),
                format!("{:.1}ms", r.best),
                format!("{:.1}ms", r.worst),
            ]);
        }
        render(&table)
    }
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
mod tests;
