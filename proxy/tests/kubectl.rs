//! `skiff inject` output read by kubectl itself: `kubectl apply --dry-run=client` turns every
//! document into an object of a kind the cluster knows, or fails. kubectl needs an API server
//! for that (to map each kind to its resource), so the test runs a small one on loopback that
//! answers discovery for the built-in kinds and "not found" for every object. Schema
//! validation would need the server's OpenAPI documents, which are not available offline, so
//! it is off (`--validate=false`); the golden tests check the structure.
//!
//! Without kubectl the test cannot run, and must not pass as if it had: libtest has no way to
//! skip a test once it runs, so this file has its own harness (libtest-mimic,
//! `harness = false` in `Cargo.toml`) and reports the test as ignored, with the reason on its
//! line.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};

use libtest_mimic::{Arguments, Completion, Trial};

/// The binary under test.
const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test(
        "kubectl_accepts_injected_workloads_of_every_kind",
        || {
            if !kubectl_found() {
                let why = "kubectl is not installed";
                eprintln!("SKIPPED kubectl dry run: {why}");
                return Ok(Completion::ignored_with(why));
            }
            kubectl_accepts_injected_workloads_of_every_kind();
            Ok(Completion::Completed)
        },
    )];
    libtest_mimic::run(&args, trials).exit_code()
}

/// A resource: its plural name, its kind, whether it lives in a namespace.
type Resource = (&'static str, &'static str, bool);

/// Resources of the built-in groups that workloads and deploy/ use, by group/version path.
const DISCOVERY: &[(&str, &[Resource])] = &[
    (
        "/api/v1",
        &[
            ("pods", "Pod", true),
            ("services", "Service", true),
            ("serviceaccounts", "ServiceAccount", true),
            ("configmaps", "ConfigMap", true),
            ("secrets", "Secret", true),
            ("namespaces", "Namespace", false),
        ],
    ),
    (
        "/apis/apps/v1",
        &[
            ("deployments", "Deployment", true),
            ("statefulsets", "StatefulSet", true),
            ("daemonsets", "DaemonSet", true),
            ("replicasets", "ReplicaSet", true),
        ],
    ),
    (
        "/apis/batch/v1",
        &[("jobs", "Job", true), ("cronjobs", "CronJob", true)],
    ),
];

fn body_for(path: &str) -> (u16, String) {
    let path = path.split('?').next().unwrap_or_default();
    if path == "/api" {
        return (
            200,
            r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}"#.into(),
        );
    }
    if path == "/apis" {
        let groups: Vec<String> = ["apps", "batch"]
            .iter()
            .map(|g| {
                format!(
                    r#"{{"name":"{g}","versions":[{{"groupVersion":"{g}/v1","version":"v1"}}],"preferredVersion":{{"groupVersion":"{g}/v1","version":"v1"}}}}"#
                )
            })
            .collect();
        return (
            200,
            format!(
                r#"{{"kind":"APIGroupList","apiVersion":"v1","groups":[{}]}}"#,
                groups.join(",")
            ),
        );
    }
    if let Some((prefix, resources)) = DISCOVERY.iter().find(|(p, _)| *p == path) {
        let group_version = prefix
            .trim_start_matches("/api/")
            .trim_start_matches("/apis/");
        let list: Vec<String> = resources
            .iter()
            .map(|(name, kind, namespaced)| {
                format!(
                    r#"{{"name":"{name}","singularName":"","namespaced":{namespaced},"kind":"{kind}","verbs":["create","delete","get","list","patch","update"]}}"#
                )
            })
            .collect();
        return (
            200,
            format!(
                r#"{{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"{group_version}","resources":[{}]}}"#,
                list.join(",")
            ),
        );
    }
    (
        404,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#.into(),
    )
}

/// Answers one connection's requests (keep-alive) until the client closes it.
fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        // The rest of the head; discovery and lookups are GETs without bodies.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let (status, body) = body_for(&path);
        let reason = if status == 200 { "OK" } else { "Not Found" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body.as_bytes()).is_err()
        {
            return;
        }
    }
}

fn kubectl_found() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `kubectl apply --dry-run=client` on `yaml`; returns what it printed per object.
fn dry_run(server: &str, yaml: &str) -> Vec<String> {
    let home = std::env::temp_dir().join(format!("skiff-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let mut child = Command::new("kubectl")
        .args([
            "apply",
            "--dry-run=client",
            "--validate=false",
            "-o",
            "name",
            "--server",
            server,
            "-f",
            "-",
        ])
        // No kubeconfig or cache from the machine.
        .env("HOME", &home)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&home);
    assert!(
        out.status.success(),
        "kubectl refused the injected YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn inject(input: &[u8], flags: &[&str]) -> String {
    let mut child = Command::new(SKIFF)
        .arg("inject")
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl_accepts_injected_workloads_of_every_kind() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });

    let workloads = std::fs::read("tests/inject/workloads.yaml").unwrap();
    for flags in [
        &[][..],
        &["--transparent"][..],
        &["--identity-secret", "web-svid"][..],
    ] {
        let injected = inject(&workloads, flags);
        let objects = dry_run(&server, &injected);
        assert_eq!(objects.len(), 9, "{flags:?}: {objects:?}");
        for kind in [
            "pod/",
            "deployment.apps/",
            "statefulset.apps/",
            "daemonset.apps/",
            "replicaset.apps/",
            "job.batch/",
            "cronjob.batch/",
        ] {
            assert!(
                objects.iter().any(|o| o.starts_with(kind)),
                "{flags:?}: no {kind} in {objects:?}"
            );
        }
    }
    // The example application of deploy/, as its README injects it.
    let app = std::fs::read("../deploy/example/app.yaml").unwrap();
    let objects = dry_run(&server, &inject(&app, &[]));
    assert!(
        objects
            .iter()
            .filter(|o| o.starts_with("deployment.apps/"))
            .count()
            >= 3,
        "{objects:?}"
    );
}
