//! Helpers shared by the tests that run the real `skiff` binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The binary under test.
pub(crate) const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// Parses `outbound_addr=...` (or another `key=`) out of the "Skiff is ready" log line.
pub(crate) fn addr_in(line: &str, key: &str) -> SocketAddr {
    let start = line.find(&format!("{key}=")).unwrap() + key.len() + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Starts `skiff run --workers <workers> --config <config>` and waits for its "Skiff is
/// ready" line, which it returns with the child; the rest of its log is read and dropped,
/// so the child never blocks on a full pipe.
#[allow(dead_code)] // not every test file that includes this module starts the binary
pub(crate) fn run_skiff(config: &Path, workers: usize) -> (Child, String) {
    let mut child = Command::new(SKIFF)
        .args(["run", "--workers", &workers.to_string(), "--config"])
        .arg(config)
        .env("SKIFF_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("Skiff is ready"))
        .expect("the proxy reports its addresses");
    std::thread::spawn(move || lines.for_each(drop));
    (child, ready)
}
