//! External check of the mesh listener with testssl.sh (Debian package `testssl.sh`, which
//! `.ci/run` installs): the inbound mTLS port offers TLS 1.3 only, with AEAD suites only.
//!
//! Without the tool on the machine the check cannot run, and must not pass as if it had:
//! libtest has no way to skip a test once it runs, so this file has its own harness
//! (libtest-mimic, `harness = false` in `Cargo.toml`) and reports the check as ignored, with
//! the reason on its line. With the tool, the check must hold.

use std::process::ExitCode;
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Trial};
use proxy_tls::devca::DevCa;
use skiff_e2e::*;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "the_mesh_port_offers_only_tls_1_3_with_aead_suites",
        || {
            if let Some(why) = testssl_missing() {
                eprintln!("SKIPPED the mesh port check: {why}");
                return Ok(Completion::ignored_with(why));
            }
            block_on_two_workers(the_mesh_port_offers_only_tls_1_3_with_aead_suites());
            Ok(Completion::Completed)
        },
    )];
    libtest_mimic::run(&args, trials).exit_code()
}

/// Why testssl cannot run here, if it cannot.
fn testssl_missing() -> Option<&'static str> {
    let found = std::process::Command::new("testssl")
        .arg("--version")
        .output()
        .is_ok();
    (!found).then_some("testssl is not installed: apt-get install testssl.sh")
}

async fn the_mesh_port_offers_only_tls_1_3_with_aead_suites() {
    let ca = DevCa::new("cluster.local").unwrap();
    let dir = temp_dir("testssl");
    ca.write_workload(&dir, "shop", "api", Duration::from_secs(86_400))
        .unwrap();
    let app = hello("api").await;
    let proxy = ProxyConfig::new(app.addr.port())
        .spec(json!({"identity": {
            "dir": dir.display().to_string(),
            "namespace": "shop",
            "serviceAccount": "api",
        }}))
        .start()
        .await;
    let target = proxy.inbound_addr.to_string();
    // `--warnings off`: testssl's first probe is a plain `openssl s_client`, which a port
    // that requires a client certificate may refuse before the probe counts it as
    // connected; testssl would then stop to ask whether to go on.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args([
                "120",
                "testssl",
                "--quiet",
                "--warnings",
                "off",
                "--color",
                "0",
                "-p",
                "-E",
                &target,
            ])
            .output()
            .expect("testssl runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}");
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
            .to_owned()
    };
    for old in ["SSLv2 ", "SSLv3 ", "TLS 1 ", "TLS 1.1 ", "TLS 1.2 "] {
        assert!(line(old).contains("not offered"), "{}", line(old));
    }
    assert!(
        line("TLS 1.3 ").contains("offered (OK)"),
        "{}",
        line("TLS 1.3 ")
    );
    let suites: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("x13"))
        .collect();
    assert!(!suites.is_empty(), "no TLS 1.3 suites listed:\n{text}");
    for s in suites {
        assert!(
            s.contains("AESGCM") || s.contains("ChaCha20"),
            "a non-AEAD suite: {s}"
        );
    }
}
