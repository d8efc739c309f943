//! Helpers shared by the tests that run the real `skiff` binary.

use std::net::SocketAddr;

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
