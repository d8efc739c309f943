//! A real OTLP/HTTP trace receiver for the tracing tests: `tests/otlp/receiver.py`, which
//! decodes every export request with the official OpenTelemetry protobuf definitions
//! (Python's `opentelemetry-proto` package, installed by `.ci/run`) and hands the spans back
//! as JSON. The Rust side never decodes protobuf itself, so a field Skiff numbers wrongly
//! shows up here as missing or garbled.
//!
//! Without Python or the package, [`Receiver::unavailable`] gives the reason to report the
//! tests as ignored, unless `SKIFF_REQUIRE_OTLP` is set (as `.ci/run` sets it): then it fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::admin_get;

/// Set to make a missing receiver a failure rather than a reason to ignore.
pub const REQUIRE: &str = "SKIFF_REQUIRE_OTLP";

/// The running receiver; killed when dropped.
#[derive(Debug)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    _child: Child,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py")
}

impl Receiver {
    /// Why the receiver cannot run here, if it cannot. Panics instead when [`REQUIRE`] is set.
    pub fn unavailable() -> Option<String> {
        let probe = std::process::Command::new("python3")
            .args([
                "-c",
                "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
            ])
            .output();
        let why = match probe {
            Ok(out) if out.status.success() => return None,
            Ok(_) => "Python's opentelemetry-proto is not installed: python3 -m pip install opentelemetry-proto".to_owned(),
            Err(e) => format!("python3 is not installed ({e})"),
        };
        assert!(
            std::env::var_os(REQUIRE).is_none(),
            "{REQUIRE} is set: {why}"
        );
        Some(why)
    }

    /// Starts the receiver and waits until it says where it listens.
    pub async fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(script())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("the receiver prints its port");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the receiver: {line:?}"));
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
        }
    }

    /// The collector URL to put in a proxy's config.
    pub fn url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received, once at least `count` have arrived (or after `within`).
    pub async fn spans(&self, count: usize, within: Duration) -> Vec<Value> {
        let path = format!("/spans?count={count}&timeout={}", within.as_secs_f64());
        let (status, body) = admin_get(self.addr, &path).await;
        assert_eq!(status, 200, "{body}");
        match serde_json::from_str(&body) {
            Ok(Value::Array(spans)) => spans,
            other => panic!("the receiver's answer is not a list: {other:?}"),
        }
    }
}
