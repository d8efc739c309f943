//! A real Prometheus scraping real proxies, for the tests that check Skiff's series the way
//! their users read them: through PromQL, in the queries Linkerd's dashboards and CLI and
//! Flagger's canary checks run.
//!
//! Reading `/metrics` and matching text proves the lines are there; it does not prove that
//! Prometheus parses them into the series a query selects, nor that the labels a query
//! filters and groups on are on the same series. Only a scrape and a query can.
//!
//! Each [`Target`] is a proxy's admin address with the labels `namespace`, `pod` and
//! `deployment`. In a cluster the scrape job attaches these by relabelling the pod's
//! discovery metadata (the `skiff-proxy` job of `deploy/prometheus-scrape.yaml` copies
//! `__meta_kubernetes_namespace`, `__meta_kubernetes_pod_name` and the pod's
//! `skiff.dev/proxy-deployment` label, as Linkerd's `linkerd-proxy` job does with its own),
//! and every query of Linkerd's and Flagger's selects on them. Here there is no Kubernetes
//! to discover, so they are static labels of the target; the job is otherwise the same
//! (`honor_labels`, `/metrics`).
//!
//! Prometheus runs from the `prometheus` binary on `PATH` (Debian package `prometheus`, which
//! `.ci/run` installs). Without it [`Prometheus::unavailable`] gives the reason to report the
//! test as ignored, unless `SKIFF_REQUIRE_PROMETHEUS` is set (as `.ci/run` sets it): then a
//! missing Prometheus fails the test, so CI cannot pass without having checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::{temp_dir, text};

/// Set to make a missing `prometheus` binary a failure rather than a reason to ignore.
pub const REQUIRE: &str = "SKIFF_REQUIRE_PROMETHEUS";

/// How often Prometheus scrapes: short, so that a test waits about a second for a scrape
/// that saw its traffic.
const SCRAPE_INTERVAL: &str = "1s";

/// How long to wait for Prometheus to be ready, and for a scrape: many scrape intervals, so
/// only a broken setup reaches it.
const PATIENCE: Duration = Duration::from_secs(30);

/// How often readiness and scrapes are checked while waiting.
const POLL: Duration = Duration::from_millis(50);

/// One sample of an instant vector: its labels and its value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A proxy for Prometheus to scrape, with the labels a Kubernetes scrape job would give it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The proxy's admin address, where `/metrics` is.
    pub admin: SocketAddr,
    /// Static labels of the target (`namespace`, `pod`, `deployment`).
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// The admin listener at `admin` of pod `pod` of `deployment` in `namespace`.
    pub fn new(admin: SocketAddr, namespace: &str, pod: &str, deployment: &str) -> Self {
        let labels = [
            ("namespace", namespace),
            ("pod", pod),
            ("deployment", deployment),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self { admin, labels }
    }
}

/// A running Prometheus, killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    targets: usize,
}

impl Prometheus {
    /// Why Prometheus cannot run here, if it cannot: the reason to report a test as ignored.
    /// Panics instead when [`REQUIRE`] is set.
    pub fn unavailable() -> Option<String> {
        let why = match Command::new("prometheus").arg("--version").output() {
            Ok(out) if out.status.success() => return None,
            Ok(out) => format!("prometheus --version exited with {}", out.status),
            Err(e) => format!("prometheus is not installed ({e}): apt-get install prometheus"),
        };
        assert!(
            std::env::var_os(REQUIRE).is_none(),
            "{REQUIRE} is set: {why}"
        );
        Some(why)
    }

    /// Starts Prometheus scraping `targets` every second, and waits until it is ready.
    pub async fn start(targets: &[Target]) -> Self {
        // Prometheus binds its own listener, so its port is picked here and may be taken by
        // someone else before it binds; it then exits at once, and another port is tried.
        let mut exits = Vec::new();
        for _ in 0..3 {
            match Self::try_start(targets).await {
                Ok(prometheus) => return prometheus,
                Err(exit) => exits.push(exit),
            }
        }
        panic!("prometheus did not start:\n{}", exits.join("\n---\n"));
    }

    async fn try_start(targets: &[Target]) -> Result<Self, String> {
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(targets)).unwrap();
        let addr = free_port();
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("prometheus runs");
        let mut this = Self {
            child,
            addr,
            dir,
            targets: targets.len(),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = this.child.try_wait().unwrap() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("prometheus exited with {status}:\n{said}"));
            }
            if let Ok((StatusCode::OK, _)) = get(addr, "/-/ready").await {
                return Ok(this);
            }
            if tokio::time::Instant::now() >= deadline {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("prometheus not ready after {PATIENCE:?}:\n{said}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Evaluates `promql` now, through `/api/v1/query`: the samples of the instant vector it
    /// returns (a scalar is one sample without labels).
    pub async fn query(&self, promql: &str) -> Vec<Sample> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = get(self.addr, &path)
            .await
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let answer: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {promql}: {e}: {body}"));
        assert!(
            status == StatusCode::OK && answer["status"] == "success",
            "query {promql}: {status} {body}"
        );
        let data = &answer["data"];
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap_or_else(|| panic!("query {promql}: {body}"))
                .iter()
                .map(|sample| {
                    let labels = sample["metric"]
                        .as_object()
                        .unwrap_or_else(|| panic!("query {promql}: {body}"))
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    (labels, value(&sample["value"], promql))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), value(&data["result"], promql))],
            other => panic!("query {promql}: an instant vector, not {other:?}: {body}"),
        }
    }

    /// Waits until every target has been scraped by a scrape that started after `after`, so
    /// that the values read next include everything the proxies counted before it. Fails
    /// the test if a target is down or no such scrape comes within 30 seconds.
    pub async fn scraped_after(&self, after: SystemTime) {
        // A scrape's timestamp is when it started, but Prometheus may move it by up to 2 ms
        // onto the scrape schedule; the margin keeps a scrape that started just before
        // `after` from passing for one that started after it.
        let after = after.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() + 0.05;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let stamps = self.query("timestamp(up)").await;
            if stamps.len() == self.targets && stamps.iter().all(|(_, t)| *t > after) {
                let down: Vec<_> = self
                    .query("up == 0")
                    .await
                    .into_iter()
                    .map(|(labels, _)| labels)
                    .collect();
                assert!(
                    down.is_empty(),
                    "targets down: {down:?}\n{}",
                    self.why().await
                );
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no scrape of all {} targets after {after} within {PATIENCE:?}: {stamps:?}\n{}",
                self.targets,
                self.why().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Prometheus's own account of its targets (health, last error), for failure messages.
    async fn why(&self) -> String {
        match get(self.addr, "/api/v1/targets").await {
            Ok((_, body)) => body,
            Err(e) => e,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The config: one job scraping every target's `/metrics`, each with its own labels.
fn config_yaml(targets: &[Target]) -> String {
    let static_configs: Vec<Value> = targets
        .iter()
        .map(|t| json!({"targets": [t.admin.to_string()], "labels": t.labels}))
        .collect();
    let config = json!({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [{
            "job_name": "skiff-proxy",
            "metrics_path": "/metrics",
            "honor_labels": true,
            "static_configs": static_configs,
        }],
    });
    serde_yaml_ng::to_string(&config).expect("a JSON tree serialises as YAML")
}

/// A loopback port free now, for Prometheus to bind.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A sample's value, `[timestamp, "value"]`, as a number (`NaN` and `+Inf` included).
fn value(pair: &Value, promql: &str) -> f64 {
    pair[1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("query {promql}: a value, not {pair}"))
}

/// `s` escaped for a query string: everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GETs `path` from Prometheus on a new connection, within 10 seconds. An error is a
/// refused connection (not listening yet) or a broken exchange.
async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), String> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", addr.to_string())
            .body(text(""))
            .unwrap();
        let rsp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err(format!("GET {path}: no answer within 10s")))
}
