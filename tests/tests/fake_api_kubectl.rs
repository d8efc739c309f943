//! kubectl against the fake API server: an independent client, written against real API
//! servers, that must find the kinds through discovery, list them with server-side
//! selectors, watch, and report 401 and 403 as it does for a real cluster.
//!
//! kubectl runs with an empty kubeconfig and its own HOME (no cluster, credentials or
//! discovery cache from the machine), `--server` and `--token`. Every wait on it is bounded:
//! its output is read by threads and received with a deadline, and a kubectl still running
//! at the deadline is killed.
//!
//! Without kubectl the tests cannot run, and must not pass as if they had: libtest has no way
//! to skip a test once it runs, so this file is a test target with its own harness
//! (libtest-mimic, `harness = false` in `Cargo.toml`) and reports each test as ignored, with
//! the reason on its line. The objects it stores are shared with `fake_api.rs`, through
//! `fake_api/objects.rs`.

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Trial};
use serde_json::{json, Value};
use tokio::time::Instant;

use proxy_tls::devca::DevCa;

#[path = "fake_api/objects.rs"]
mod objects;

use objects::{service, slice};
use skiff_e2e::fake_api::{FakeApi, FakeApiBuilder};

/// The longest a kubectl run may take.
const KUBECTL_WAIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trials = vec![
        trial(
            "kubectl_lists_through_discovery_with_server_side_selectors",
            kubectl_lists_through_discovery_with_server_side_selectors,
        ),
        trial(
            "kubectl_watch_prints_objects_applied_after_it_started",
            kubectl_watch_prints_objects_applied_after_it_started,
        ),
        trial(
            "kubectl_reports_unauthorized_and_forbidden",
            kubectl_reports_unauthorized_and_forbidden,
        ),
        trial(
            "kubectl_accepts_the_discovery_rbac_manifest",
            kubectl_accepts_the_discovery_rbac_manifest,
        ),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}

/// A test that needs kubectl: ignored, saying why, when it is not installed; otherwise run
/// on a tokio runtime of its own with two workers (kubectl runs on blocking threads while
/// the fake server answers it).
fn trial<F: Future<Output = ()> + 'static>(name: &'static str, test: fn() -> F) -> Trial {
    Trial::ignorable_test(name, move || {
        if !kubectl_found() {
            let why = "kubectl is not installed";
            eprintln!("SKIPPED kubectl against the fake API server ({name}): {why}");
            return Ok(Completion::ignored_with(why));
        }
        skiff_e2e::block_on_two_workers(test());
        Ok(Completion::Completed)
    })
}

fn kubectl_found() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fake API server on HTTPS: kubectl sends its token only over TLS. Its certificate
/// (from a dev CA, which issues URI names only) is not checked: kubectl runs with
/// `--insecure-skip-tls-verify`.
fn https_api() -> FakeApiBuilder {
    let ca = DevCa::new("cluster.local").unwrap();
    let issued = ca
        .issue("kube-system", "apiserver", Duration::from_secs(86_400))
        .unwrap();
    FakeApi::builder().tls(&issued.cert_pem, &issued.key_pem)
}

/// How to run kubectl against one fake server with one token.
#[derive(Clone, Debug)]
struct Kubectl {
    server: String,
    token: String,
    home: PathBuf,
}

/// A line of kubectl's output, or the end of one of its streams.
enum Output {
    Stdout(String),
    Stderr(String),
    Closed,
}

/// A kubectl that is running, and what it has printed so far.
struct Running {
    child: Child,
    lines: mpsc::Receiver<Output>,
    open_streams: usize,
    stdout: String,
    stderr: String,
}

/// How a kubectl run ended: its exit status (`None` if it had to be killed) and output.
#[derive(Debug)]
struct Finished {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

fn read_lines<R: Read + Send + 'static>(
    stream: R,
    tx: mpsc::Sender<Output>,
    wrap: fn(String) -> Output,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(wrap(line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Output::Closed);
    });
}

impl Kubectl {
    /// kubectl for `api` with `token` (the trial checked that kubectl is installed).
    fn new(api: &FakeApi, token: &str) -> Self {
        let home = skiff_e2e::temp_dir("kubectl-home");
        std::fs::write(home.join("kubeconfig"), "").unwrap();
        Self {
            server: api.url(),
            token: token.into(),
            home,
        }
    }

    fn spawn(&self, args: &[&str]) -> Running {
        let mut child = Command::new("kubectl")
            .args(["--server", &self.server, "--token", &self.token])
            .arg("--insecure-skip-tls-verify")
            .args(args)
            .env("HOME", &self.home)
            .env("KUBECONFIG", self.home.join("kubeconfig"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl starts");
        let (tx, lines) = mpsc::channel();
        read_lines(child.stdout.take().unwrap(), tx.clone(), Output::Stdout);
        read_lines(child.stderr.take().unwrap(), tx, Output::Stderr);
        Running {
            child,
            lines,
            open_streams: 2,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    /// Runs kubectl to its end (killed after [`KUBECTL_WAIT`]), off the async workers.
    async fn run(&self, args: &[&str]) -> Finished {
        let kubectl = self.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl.spawn(&args).finish(KUBECTL_WAIT)
        })
        .await
        .unwrap()
    }
}

impl Running {
    /// Takes in one line of output; false at the deadline or once both streams closed.
    fn pump(&mut self, deadline: Instant) -> bool {
        if self.open_streams == 0 {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(Output::Stdout(line)) => self.stdout.push_str(&line),
            Ok(Output::Stderr(line)) => self.stderr.push_str(&line),
            Ok(Output::Closed) => self.open_streams -= 1,
            Err(_) => return false,
        }
        true
    }

    /// Reads output until `done` says the stdout so far is enough, or `within` passes.
    fn wait_for_stdout(&mut self, within: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !done(&self.stdout) {
            if !self.pump(deadline) {
                return done(&self.stdout);
            }
        }
        true
    }

    /// Reads output until kubectl ends, killing it if it is still running after `within`.
    fn finish(mut self, within: Duration) -> Finished {
        let deadline = Instant::now() + within;
        while self.pump(deadline) {}
        let status = if self.open_streams == 0 {
            Some(self.child.wait().unwrap())
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            None
        };
        // What the reader threads still hold after the kill.
        while let Ok(line) = self.lines.try_recv() {
            match line {
                Output::Stdout(line) => self.stdout.push_str(&line),
                Output::Stderr(line) => self.stderr.push_str(&line),
                Output::Closed => {}
            }
        }
        Finished {
            status,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// The JSON documents kubectl printed, one after another (`-o json` with `--watch`), up to
/// the first incomplete one.
fn documents(stdout: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .collect()
}

fn item_names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect()
}

fn list_of(out: &Finished) -> Value {
    assert!(out.success(), "kubectl failed: {out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

async fn kubectl_lists_through_discovery_with_server_side_selectors() {
    let api = https_api().token("sesame").start().await;
    let kubectl = Kubectl::new(&api, "sesame");
    api.apply(service("shop", "web"));
    api.apply(service("shop", "api"));
    api.apply(service("other", "db"));
    api.apply(slice("web-1", "web"));
    api.apply(slice("web-2", "web"));
    api.apply(slice("api-1", "api"));
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web-route", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "web", "kind": "Service", "group": ""}]},
    }));

    let all = list_of(&kubectl.run(&["get", "services", "-A", "-o", "json"]).await);
    assert_eq!(item_names(&all), ["db", "api", "web"]);
    assert_eq!(all["items"][0]["metadata"]["namespace"], "other");

    let slices = list_of(
        &kubectl
            .run(&[
                "get",
                "endpointslices.discovery.k8s.io",
                "-n",
                "shop",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "json",
            ])
            .await,
    );
    assert_eq!(item_names(&slices), ["web-1", "web-2"]);
    // The selection was the server's: kubectl sent the selector.
    assert!(
        api.requests().iter().any(|r| r.verb == Some("list")
            && r.resource.as_deref() == Some("endpointslices.discovery.k8s.io")
            && r.query
                .contains("labelSelector=kubernetes.io%2Fservice-name%3Dweb")),
        "{:?}",
        api.requests()
    );

    let routes = list_of(
        &kubectl
            .run(&[
                "get",
                "httproutes.gateway.networking.k8s.io",
                "-n",
                "shop",
                "-o",
                "json",
            ])
            .await,
    );
    assert_eq!(item_names(&routes), ["web-route"]);
    assert_eq!(
        routes["items"][0]["apiVersion"],
        "gateway.networking.k8s.io/v1"
    );

    // One object by name, through the short name discovery gives.
    let one = kubectl
        .run(&["get", "svc", "web", "-n", "shop", "-o", "json"])
        .await;
    assert!(one.success(), "{one:?}");
    let web: Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(
        web["metadata"]["uid"],
        api.get("v1", "Service", "shop", "web").unwrap()["metadata"]["uid"]
    );
}

async fn kubectl_watch_prints_objects_applied_after_it_started() {
    let api = https_api().token("sesame").start().await;
    let kubectl = Kubectl::new(&api, "sesame");
    api.apply(service("shop", "before"));
    let mut running = kubectl.spawn(&["get", "services", "-n", "shop", "--watch", "-o", "json"]);
    api.wait_for_watches(1, KUBECTL_WAIT).await;
    api.apply(service("shop", "during"));
    api.delete("v1", "Service", "shop", "before");
    api.apply(service("other", "elsewhere"));

    let out = tokio::task::spawn_blocking(move || {
        let seen = running.wait_for_stdout(KUBECTL_WAIT, |stdout| documents(stdout).len() >= 3);
        (seen, running.finish(Duration::ZERO))
    })
    .await
    .unwrap();
    let (seen, finished) = out;
    assert!(seen, "kubectl printed: {finished:?}");
    let printed: Vec<(String, String)> = documents(&finished.stdout)
        .iter()
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_owned(),
                d["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    let rv = |n: u64| n.to_string();
    // The list, then the watch's events in order (kubectl prints a deleted object too).
    assert_eq!(
        printed[..3],
        [
            ("before".into(), rv(1)),
            ("during".into(), rv(2)),
            ("before".into(), rv(3))
        ]
    );
    let watch = &api.watches()[0];
    assert_eq!(
        (watch.resource.as_str(), watch.namespace.as_deref()),
        ("services", Some("shop"))
    );
    assert!(watch.query.contains("resourceVersion=1"), "{watch:?}");
}

async fn kubectl_reports_unauthorized_and_forbidden() {
    let api = https_api()
        .token("sesame")
        .user("system:serviceaccount:shop:web")
        .start()
        .await;
    let wrong = Kubectl::new(&api, "wrong");
    api.apply(service("shop", "web"));
    let out = wrong
        .run(&["get", "services", "-n", "shop", "-o", "json"])
        .await;
    assert!(out.status.is_some() && !out.success(), "{out:?}");
    // Discovery fails first; kubectl 1.32 words a 401 there as it does for a real server.
    assert!(
        out.stderr
            .contains("error: You must be logged in to the server"),
        "{out:?}"
    );
    assert!(api.requests().iter().all(|r| r.status == 401));

    api.deny("services", &["list"]);
    let right = Kubectl::new(&api, "sesame");
    let out = right
        .run(&["get", "services", "-n", "shop", "-o", "json"])
        .await;
    assert!(out.status.is_some() && !out.success(), "{out:?}");
    assert!(
        out.stderr.contains(
            "Error from server (Forbidden): services is forbidden: User \
             \"system:serviceaccount:shop:web\" cannot list resource \"services\" in API \
             group \"\" in the namespace \"shop\""
        ),
        "{out:?}"
    );
    // Getting one object is another verb, still allowed.
    let out = right
        .run(&["get", "services", "web", "-n", "shop", "-o", "json"])
        .await;
    assert!(out.success(), "{out:?}");
}

async fn kubectl_accepts_the_discovery_rbac_manifest() {
    let api = https_api()
        .token("sesame")
        .resource(
            "rbac.authorization.k8s.io/v1",
            "clusterroles",
            "ClusterRole",
            false,
        )
        .resource(
            "rbac.authorization.k8s.io/v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
        )
        .start()
        .await;
    let kubectl = Kubectl::new(&api, "sesame");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/discovery-rbac.yaml");
    let out = kubectl
        .run(&[
            "apply",
            "--dry-run=client",
            "--validate=false",
            "-f",
            manifest,
        ])
        .await;
    assert!(out.success(), "kubectl failed: {out:?}");
    for created in [
        "clusterrole.rbac.authorization.k8s.io/skiff-discovery created (dry run)",
        "clusterrolebinding.rbac.authorization.k8s.io/skiff-discovery-skiff-demo created (dry run)",
    ] {
        assert!(out.stdout.contains(created), "{out:?}");
    }
}
