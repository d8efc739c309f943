//! The meshed run of `transparent.rs`: opaque TCP from the pod's application to a meshed
//! service crosses to the remote workload's Skiff over mutual TLS (ALPN `skiff.tcp/1`).
//!
//! The remote namespace runs a second Skiff as `default/db`, in explicit mode (its inbound
//! listener on the remote address, no redirection), in front of a server-speaks-first
//! database stand-in on its loopback. The pod's Skiff is `default/web` and knows service
//! `db` by a cluster IP on an opaque port, with `db`'s identity. The pod's application
//! connects to that cluster IP, is greeted before it sends a byte, pipes 1 MiB each way
//! and half-closes; the remote Skiff's TrafficTarget admits web by a TCPRoute on the port,
//! and it counts the connection under web's identity.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{ok, Lab, REMOTE_IP, SKIFF};

/// Turns this binary into the database stand-in (`ip:port`): greets, then echoes until
/// the client half-closes, then closes.
const GREETING_HELPER: &str = "SKIFF_TEST_GREETING_SERVER";
/// Turns this binary into the application's client (`ip:port`): reads the greeting
/// without sending anything, pipes 1 MiB and half-closes, checks the echo, prints `ok`.
const CLIENT_HELPER: &str = "SKIFF_TEST_GREETED_CLIENT";

const GREETING: &[u8] = b"220 db ready\n";
const DB_VIP: &str = "10.96.0.12";
const DB_PORT: u16 = 3306;

/// Runs a helper instead of the tests when this binary was started as one.
pub(super) fn helpers() {
    if let Ok(addr) = std::env::var(GREETING_HELPER) {
        greeting_server(&addr);
    }
    if let Ok(addr) = std::env::var(CLIENT_HELPER) {
        greeted_client(&addr);
    }
}

fn greeting_server(addr: &str) -> ! {
    super::serve_echo(addr, GREETING)
}

fn greeted_client(addr: &str) -> ! {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut greeting = vec![0; GREETING.len()];
    s.read_exact(&mut greeting).expect("greeted first");
    assert_eq!(greeting, GREETING);
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut writer = s.try_clone().unwrap();
    let sent = payload.clone();
    let t = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed)
        .expect("echo, then a clean close");
    t.join().unwrap();
    assert!(echoed == payload, "{} bytes echoed", echoed.len());
    println!("ok {}", echoed.len());
    std::process::exit(0);
}

/// The pod Skiff's extra `spec` lines: its identity (credentials written by
/// [`start_remote`] under `dir`) and the opaque port.
pub(super) fn pod_spec(dir: &Path) -> String {
    let ids = dir.join("ids/default/web");
    format!(
        "  identity: {{dir: {}, namespace: default, serviceAccount: web}}\n  opaquePorts: [{DB_PORT}]\n",
        ids.display()
    )
}

/// Service `db` in the pod's `services`: a cluster IP on the opaque port, its endpoint the
/// remote Skiff's inbound listener, and its identity.
pub(super) fn pod_service() -> String {
    format!(
        "    db:\n      clusterIP: {DB_VIP}\n      port: {DB_PORT}\n      endpoints: [{REMOTE_IP}:4143]\n      identity: spiffe://cluster.local/ns/default/sa/db\n"
    )
}

/// Writes both workloads' credentials and starts the remote database and its Skiff.
pub(super) fn start_remote(lab: &mut Lab, remote: &str) {
    let ids = lab.dir.join("ids");
    ok(
        SKIFF,
        &[
            "identity",
            "dev-ca",
            "--dir",
            ids.to_str().unwrap(),
            "--workload",
            "default/web",
            "--workload",
            "default/db",
        ],
    );
    // The pod's Skiff runs as its own user: it must read its credentials.
    ok("chmod", &["-R", "a+rX", ids.to_str().unwrap()]);
    let me = std::env::current_exe().unwrap();
    let db = format!("127.0.0.1:{DB_PORT}");
    lab.spawn(remote, &[me.to_str().unwrap()], &[(GREETING_HELPER, &db)]);
    let config = lab.dir.join("remote.yaml");
    let text = format!(
        "apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  outbound: {{listen: '127.0.0.1:14140'}}
  inbound: {{listen: '{REMOTE_IP}:4143', appPort: {DB_PORT}}}
  admin: {{listen: '127.0.0.1:14191'}}
  opaquePorts: [{DB_PORT}]
  identity: {{dir: {}, namespace: default, serviceAccount: db}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {{name: db, namespace: default}}
spec: {{matches: {{ports: [{DB_PORT}]}}}}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {{name: web-to-db, namespace: default}}
spec:
  destination: {{kind: ServiceAccount, name: db}}
  rules: [{{kind: TCPRoute, name: db}}]
  sources: [{{kind: ServiceAccount, name: web}}]
",
        ids.join("default/db").display()
    );
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    lab.spawn(
        remote,
        &[SKIFF, "run", "--config", config.to_str().unwrap()],
        &[],
    );
    lab.wait_ok(remote, "http://127.0.0.1:14191/ready");
}

/// The pod's application reaches the database through both proxies, over mTLS.
pub(super) fn opaque_tcp_crosses_encrypted(lab: &Lab) {
    let me = std::env::current_exe().unwrap();
    let target = format!("{DB_VIP}:{DB_PORT}");
    let env = format!("{CLIENT_HELPER}={target}");
    let out = lab.exec(&lab.pod, &["env", &env, me.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok 1048576"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The remote Skiff took it as mesh mTLS from web, not plaintext, and its TrafficTarget's
    // TCPRoute admitted web's identity.
    let metrics = lab.curl(&lab.remote, "http://127.0.0.1:14191/metrics");
    let web = "spiffe://cluster.local/ns/default/sa/web";
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("inbound_tcp_authz_allow_total{")
                && l.contains(web)
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tcp_open_total{") && l.contains(web) && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("skiff_protocol_detect_total")
                && l.contains("\"tls\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
}
