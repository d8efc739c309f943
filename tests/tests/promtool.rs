//! `/metrics` as Prometheus's own checker sees it: a scrape of a proxy that has served,
//! refused and failed requests, taken in the text format a Prometheus 2.x scraper gets,
//! passes `promtool check metrics` (Debian package `prometheus`, which `.ci/run` installs),
//! and its latency buckets are written as Linkerd's are (`le="100"`). The only lint promtool
//! raises is about three of Linkerd's own names (`_ms` units, a `_count` gauge), kept for
//! Linkerd's tools.
//!
//! Without promtool the check cannot run, and must not pass as if it had: this file has its
//! own harness (libtest-mimic) and reports the check as ignored, saying why.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use libtest_mimic::{Arguments, Completion, Trial};
use skiff_e2e::*;

/// The Accept header Prometheus 2.x scrapes with.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "a_scrape_in_the_text_format_passes_promtool",
        || {
            if Command::new("promtool").arg("--version").output().is_err() {
                let why = "promtool is not installed: apt-get install prometheus";
                eprintln!("SKIPPED the promtool check: {why}");
                return Ok(Completion::ignored_with(why));
            }
            block_on_two_workers(a_scrape_in_the_text_format_passes_promtool());
            Ok(Completion::Completed)
        },
    )];
    libtest_mimic::run(&args, trials).exit_code()
}

async fn a_scrape_in_the_text_format_passes_promtool() {
    let app = hello("web").await;
    let dead = dead_addr();
    let proxy = ProxyConfig::new(1)
        .service("web", &[app.addr])
        .service("gone", &[dead.addr])
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    for host in ["web", "web", "gone", "nowhere"] {
        let rsp = c.send_request(get(host, "/")).await.unwrap();
        body_text(rsp).await;
    }
    let rsp = h1(proxy.admin_addr)
        .await
        .send_request({
            let mut req = get("localhost", "/metrics");
            req.headers_mut()
                .insert("accept", PROMETHEUS_ACCEPT.parse().unwrap());
            req
        })
        .await
        .unwrap();
    assert_eq!(
        rsp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let scrape = body_text(rsp).await;
    assert!(!scrape.contains("# EOF"), "text format, not OpenMetrics");
    assert!(scrape.contains("# TYPE request_total counter"), "{scrape}");
    for process in [
        "process_virtual_memory_bytes",
        "process_max_fds",
        "process_open_fds",
    ] {
        assert!(
            scrape.contains(&format!("\n{process} ")),
            "{process}:\n{scrape}"
        );
    }
    assert!(
        scrape.contains(r#"le="100""#) && !scrape.contains(r#"le="100.0""#),
        "bucket bounds as Linkerd writes them:\n{scrape}"
    );
    let checked = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // promtool's naming lint objects to four of Linkerd's names, which its dashboards,
    // alerts and `linkerd viz` query, so they stay. Anything else fails.
    const LINKERDS_NAMES: [&str; 4] = [
        "response_latency_ms metric names should not contain abbreviated units",
        "route_response_latency_ms metric names should not contain abbreviated units",
        "tcp_connection_duration_ms metric names should not contain abbreviated units",
        r#"identity_cert_refresh_count non-histogram and non-summary metrics should not have "_count" suffix"#,
    ];
    let other: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !LINKERDS_NAMES.contains(l))
        .collect();
    assert!(other.is_empty(), "promtool check metrics:\n{said}");
}
