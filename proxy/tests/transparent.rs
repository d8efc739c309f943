//! Transparent mode end to end, in two network namespaces this test creates: a "pod" running
//! Skiff (as its own user id) behind the rules `skiff init-iptables` installs, and a "remote"
//! namespace holding the services it calls, joined by a veth pair.
//!
//! The app in the pod calls a cluster IP that only Skiff's config knows; the rules send the
//! call through Skiff outbound, which routes it by its original destination to the service's
//! endpoint, with the service's metrics. A non-HTTP connection passes through byte for byte,
//! HTTP to an unknown address is forwarded to that address, a call into the pod arrives
//! through Skiff inbound, and Skiff's own upstream connections are not redirected into
//! itself. Both backends (nft and iptables) are run; cleanup removes every rule.
//!
//! A third run has no `services` table at all: Skiff reads the Service and its EndpointSlice
//! from the fake Kubernetes API server (`skiff_e2e::fake_api`, run by this binary inside the
//! remote namespace), so the cluster IP the app calls is one that only the API knows.
//!
//! A fourth run binds the outbound and inbound listeners as dual-stack sockets (`[::]`):
//! the pod's IPv4 connections then arrive with v4-mapped addresses, and their original
//! destinations must be read all the same. Two more (nft, iptables) give both namespaces
//! IPv6 addresses too: `init-iptables` sees the pod's IPv6 address and redirects IPv6, and
//! IPv6 calls to a cluster IPv6 address, to an address no service owns and into the pod go
//! through Skiff's listeners' IPv6 twins, routed by their IPv6 original destinations.
//!
//! Needs root and `ip`, `iptables`, `nft`, `setpriv`, `curl` and `bash` (`.ci/run` installs
//! them). Without them the tests cannot run, and must not pass as if they had: libtest has no
//! way to skip a test once it runs, so this file has its own harness (libtest-mimic,
//! `harness = false` in `Cargo.toml`) and reports them as ignored, with the reason on their
//! line.

// These tests wait on separate processes (the real binary, curl in a namespace), whose
// clocks tokio's paused clock cannot drive: real time, polled with deadlines, is right here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Trial};

#[path = "transparent/ipv6.rs"]
mod ipv6;
#[path = "transparent/mesh.rs"]
mod mesh;

/// The binary under test.
const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// The environment variable that turns this test binary into a TCP echo server (run inside
/// the remote namespace by `ip netns exec`) instead of a test run.
const ECHO_HELPER: &str = "SKIFF_TEST_TCP_ECHO";

/// The environment variable that turns this test binary into the fake Kubernetes API
/// server (in the remote namespace), holding one Service and its EndpointSlice.
const FAKE_API_HELPER: &str = "SKIFF_TEST_FAKE_API";

/// Where the fake API server listens, in the remote namespace.
const API_ADDR: &str = "10.250.0.2:6443";

const POD_IP: &str = "10.250.0.1";
const REMOTE_IP: &str = "10.250.0.2";
/// The two namespaces' IPv6 addresses, in a dual-stack lab.
const POD_IP6: &str = "fd00:250::1";
const REMOTE_IP6: &str = "fd00:250::2";

/// Namespaces and processes, removed on drop (also when an assertion fails).
struct Lab {
    pod: String,
    remote: String,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.pod, &self.remote] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn spawn(&mut self, ns: &str, args: &[&str], envs: &[(&str, &str)]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn in namespace");
        self.children.push(child);
    }

    /// `curl` from inside `ns`: the status line, headers and body as one string.
    fn curl(&self, ns: &str, url: &str) -> String {
        let out = self.exec(ns, &["curl", "-s", "-i", "--max-time", "10", url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `url` from `ns` until it answers 200.
    fn wait_ok(&self, ns: &str, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.curl(ns, url).starts_with("HTTP/1.1 200") {
            assert!(Instant::now() < deadline, "{url} never answered in {ns}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `skiff init-iptables --backend BACKEND ...` in namespace `ns`; returns its output.
fn init_iptables(ns: &str, backend: &str, more: &[&str]) -> String {
    let mut args = vec![
        "netns",
        "exec",
        ns,
        SKIFF,
        "init-iptables",
        "--backend",
        backend,
    ];
    args.extend_from_slice(more);
    ok("ip", &args)
}

fn missing_tools() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(1).map(str::to_owned)
        });
    if uid.as_deref() != Some("0") {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables", "nft", "setpriv", "curl", "bash"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Where `web` (10.96.0.10:80) and `gone` (10.96.0.11:80) come from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    /// The config file's `services` table.
    File,
    /// The Kubernetes API: the config has no services.
    Api,
}

/// How the lab differs from the plain one: Skiff's listener addresses, the families the
/// namespaces have, and whether the remote end is a meshed workload.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// The default addresses, `127.0.0.1:4140` and `0.0.0.0:4143`, in an IPv4 lab.
    V4,
    /// Dual-stack sockets, `[::]:4140` and `[::]:4143`: IPv4 connections arrive on them
    /// with v4-mapped addresses, and their original destination must still be read.
    DualStack,
    /// The default addresses in a lab whose namespaces also have IPv6 addresses: the
    /// listeners' IPv6 twins (`[::1]:4140`, `[::]:4143`) take what `init-iptables`, seeing
    /// the pod's IPv6 address, now redirects in IPv6.
    DualStackPod,
    /// The pod's Skiff has a mesh identity (inbound permissive, so the plain checks still
    /// pass), and the remote namespace runs a meshed workload of its own: a second Skiff in
    /// front of a server-speaks-first database, reached through a cluster IP on an opaque
    /// port. See `mesh.rs`.
    MeshedTcp,
}

fn config(source: Source, variant: Variant, dir: &std::path::Path) -> String {
    let (outbound, inbound) = match variant {
        Variant::V4 | Variant::DualStackPod | Variant::MeshedTcp => {
            ("127.0.0.1:4140", "0.0.0.0:4143")
        }
        Variant::DualStack => ("'[::]:4140'", "'[::]:4143'"),
    };
    let meshed = variant == Variant::MeshedTcp;
    let (mtls, mesh_spec) = if meshed {
        ("    mtls: permissive\n", mesh::pod_spec(dir))
    } else {
        ("", String::new())
    };
    let head = format!(
        "apiVersion: skiff.dev/v1alpha1
kind: Proxy
spec:
  outbound:
    listen: {outbound}
  inbound:
    listen: {inbound}
    appPort: 8081
{mtls}  admin:
    listen: 127.0.0.1:4191
{mesh_spec}"
    );
    match source {
        Source::File => format!(
            "{head}  services:
    web:
      clusterIP: 10.96.0.10
      endpoints: [{REMOTE_IP}:8080]
    gone:
      clusterIP: 10.96.0.11
      endpoints: [{REMOTE_IP}:1]
    web6:
      clusterIP: fd00:96::10
      endpoints: ['[{REMOTE_IP6}]:8080']
{}",
            if meshed {
                mesh::pod_service()
            } else {
                String::new()
            }
        ),
        Source::Api => {
            let kubeconfig = dir.join("kubeconfig");
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: 'http://{API_ADDR}'}}\n\
                 users:\n- name: skiff\n  user: {{token: t}}\ncontexts:\n- name: fake\n  \
                 context: {{cluster: fake, user: skiff, namespace: default}}\ncurrent-context: fake\n"
            );
            std::fs::write(&kubeconfig, text).unwrap();
            std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644)).unwrap();
            format!(
                "{head}  discovery:\n    kubernetes: {{kubeconfig: {}}}\n",
                kubeconfig.display()
            )
        }
    }
}

/// With `SKIFF_TEST_FAKE_API=ip:port`, this binary serves the fake Kubernetes API there
/// (in the remote namespace) until killed, holding Services `web` and `gone` and their
/// EndpointSlices, as the file's services table would give them.
fn fake_api(addr: &str) -> ! {
    use serde_json::json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let api = skiff_e2e::fake_api::FakeApi::builder()
            .token("t")
            .addr(addr.parse().unwrap())
            .start()
            .await;
        for (name, ip, port) in [("web", "10.96.0.10", 8080), ("gone", "10.96.0.11", 1)] {
            api.apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip],
                         "ports": [{"name": "http", "port": 80, "targetPort": port}]}
            }));
            api.apply(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [REMOTE_IP], "conditions": {"ready": true}}]
            }));
        }
        std::future::pending::<()>().await;
    });
    unreachable!("the fake API server serves until killed")
}

/// Sets up the namespaces, backends, rules and Skiff for `backend`, with its services from
/// `source`.
fn lab(backend: &str, source: Source, variant: Variant) -> Lab {
    let tag = format!(
        "{}-{backend}-{}{}",
        std::process::id(),
        source as u8,
        variant as u8
    );
    let dir = std::env::temp_dir().join(format!("skiff-transparent-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    // Skiff runs as uid 2102: it must be able to read its config.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config_path = dir.join("skiff.yaml");
    std::fs::write(&config_path, config(source, variant, &dir)).unwrap();
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut lab = Lab {
        pod: format!("skiff-pod-{tag}"),
        remote: format!("skiff-rem-{tag}"),
        children: Vec::new(),
        dir,
    };
    let (pod, remote) = (lab.pod.clone(), lab.remote.clone());
    ok("ip", &["netns", "add", &pod]);
    ok("ip", &["netns", "add", &remote]);
    ok(
        "ip",
        &[
            "-n", &pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &remote,
        ],
    );
    for (ns, ip) in [(&pod, POD_IP), (&remote, REMOTE_IP)] {
        ok(
            "ip",
            &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        ok("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        ok("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }
    // Cluster IPs are virtual: the route only lets the app's connect() leave the pod.
    ok(
        "ip",
        &["-n", &pod, "route", "add", "default", "via", REMOTE_IP],
    );
    if variant == Variant::MeshedTcp {
        mesh::start_remote(&mut lab, &remote);
    }
    if variant == Variant::DualStackPod {
        // No duplicate address detection: the addresses are usable at once.
        for (ns, ip) in [(&pod, POD_IP6), (&remote, REMOTE_IP6)] {
            let ip = format!("{ip}/64");
            ok(
                "ip",
                &["-n", ns, "addr", "add", &ip, "dev", "eth0", "nodad"],
            );
        }
        ok(
            "ip",
            &[
                "-n", &pod, "-6", "route", "add", "default", "via", REMOTE_IP6,
            ],
        );
        let web6 = format!("[{REMOTE_IP6}]:8080");
        lab.spawn(&remote, &[SKIFF, "bench-backend", "--listen", &web6], &[]);
    }

    let web = format!("{REMOTE_IP}:8080");
    lab.spawn(&remote, &[SKIFF, "bench-backend", "--listen", &web], &[]);
    let me = std::env::current_exe().unwrap();
    let echo = format!("{REMOTE_IP}:9000");
    lab.spawn(&remote, &[me.to_str().unwrap()], &[(ECHO_HELPER, &echo)]);
    if source == Source::Api {
        lab.spawn(
            &remote,
            &[me.to_str().unwrap()],
            &[(FAKE_API_HELPER, API_ADDR)],
        );
    }
    lab.spawn(
        &pod,
        &[SKIFF, "bench-backend", "--listen", "127.0.0.1:8081"],
        &[],
    );

    let script = init_iptables(&pod, backend, &[]);
    assert!(script.is_empty(), "init-iptables printed {script:?}");
    let config = config_path.to_str().unwrap().to_owned();
    lab.spawn(
        &pod,
        &[
            "setpriv",
            "--reuid=2102",
            "--regid=2102",
            "--clear-groups",
            SKIFF,
            "run",
            "--config",
            &config,
        ],
        &[],
    );
    lab.wait_ok(&pod, "http://127.0.0.1:4191/ready");
    lab.wait_ok(&remote, &format!("http://{web}/"));
    lab
}

/// One metric's value from a Prometheus text page (summed over every series whose line has
/// each of `labels`).
fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() -> ExitCode {
    if let Ok(addr) = std::env::var(ECHO_HELPER) {
        tcp_echo(&addr);
    }
    mesh::helpers();
    if let Ok(addr) = std::env::var(FAKE_API_HELPER) {
        fake_api(&addr);
    }
    let args = Arguments::from_args();
    let trials = [
        (
            "transparent_mode_with_nft",
            "nft",
            Source::File,
            Variant::V4,
        ),
        (
            "transparent_mode_with_iptables",
            "iptables",
            Source::File,
            Variant::V4,
        ),
        (
            "transparent_mode_with_cluster_ips_only_the_api_knows",
            "nft",
            Source::Api,
            Variant::V4,
        ),
        (
            "transparent_mode_on_dual_stack_listeners",
            "nft",
            Source::File,
            Variant::DualStack,
        ),
        (
            "transparent_mode_in_a_dual_stack_pod",
            "nft",
            Source::File,
            Variant::DualStackPod,
        ),
        (
            "transparent_mode_in_a_dual_stack_pod_with_iptables",
            "iptables",
            Source::File,
            Variant::DualStackPod,
        ),
        (
            "transparent_mode_carries_opaque_tcp_to_a_meshed_service_over_mtls",
            "nft",
            Source::File,
            Variant::MeshedTcp,
        ),
    ]
    .into_iter()
    .map(|(name, backend, source, variant)| {
        Trial::ignorable_test(name, move || {
            if let Some(why) = missing_tools() {
                eprintln!("SKIPPED {name}: {why}");
                return Ok(Completion::ignored_with(why));
            }
            transparent_mode(backend, source, variant);
            Ok(Completion::Completed)
        })
    })
    .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn transparent_mode(backend: &str, source: Source, variant: Variant) {
    let lab = lab(backend, source, variant);
    let pod = lab.pod.clone();

    // A cluster IP known to Skiff's config: routed to the service's endpoint.
    for _ in 0..3 {
        let answer = lab.curl(&pod, "http://10.96.0.10/");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello from the demo app\n"), "{answer}");
    }
    // The service's policy answers when its endpoint is down: Skiff's reason, not a hang.
    let answer = lab.curl(&pod, "http://10.96.0.11/");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("skiff-error: upstream-connect"), "{answer}");
    // An address no service owns: forwarded to it as it is.
    let answer = lab.curl(&pod, &format!("http://{REMOTE_IP}:8080/"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Not HTTP: passed through opaque, both ways.
    let echoed = lab.exec(
        &pod,
        &[
            "timeout",
            "10",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{REMOTE_IP}/9000; printf 'ping\\n' >&3; head -c 5 <&3"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "ping\n");

    // Into the pod: the remote calls the pod's IP on the app's port; Skiff inbound answers.
    let answer = lab.curl(&lab.remote, &format!("http://{POD_IP}:8081/"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let metrics = lab.curl(&pod, "http://127.0.0.1:4191/metrics");
    // The app opened 6 outbound connections (3 + 1 + 1 HTTP, 1 opaque). Had Skiff's own
    // connections to the endpoints been redirected, it would have accepted them too.
    let outbound = r#"direction="outbound""#;
    for (name, labels, want) in [
        ("request_total", &[outbound, r#"target_addr="web"#][..], 3.0),
        (
            "request_total",
            &[outbound, r#"target_addr="passthrough""#],
            1.0,
        ),
        ("request_total", &[r#"direction="inbound""#], 1.0),
        (
            "skiff_protocol_detect_total",
            &[outbound, r#"protocol="opaque""#],
            1.0,
        ),
        ("tcp_open_total", &[outbound, r#"peer="src""#], 6.0),
    ] {
        assert_eq!(
            sum(&metrics, name, labels),
            want,
            "{name} {labels:?}\n{metrics}"
        );
    }

    if variant == Variant::DualStackPod {
        ipv6::traffic(&lab, &metrics);
    }
    if variant == Variant::MeshedTcp {
        mesh::opaque_tcp_crosses_encrypted(&lab);
    }

    // Cleanup leaves nothing behind.
    init_iptables(&pod, backend, &["--cleanup"]);
    let rules = ok("ip", &["netns", "exec", &pod, "nft", "list", "ruleset"]);
    assert!(
        !rules.contains("skiff") && !rules.contains("SKIFF"),
        "{rules}"
    );
}

/// With `SKIFF_TEST_TCP_ECHO=ip:port`, this binary serves TCP echo there (in the remote
/// namespace) until killed.
fn tcp_echo(addr: &str) -> ! {
    serve_echo(addr, b"")
}

/// Serves `addr` until killed, a thread per connection: sends `greeting` first (for a
/// server-speaks-first protocol), echoes what it reads, and half-closes after the client does.
fn serve_echo(addr: &str, greeting: &'static [u8]) -> ! {
    let listener = std::net::TcpListener::bind(addr).expect("echo helper bind");
    loop {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        std::thread::spawn(move || {
            if stream.write_all(greeting).is_err() {
                return;
            }
            let mut buf = [0; 16 * 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
        });
    }
}
