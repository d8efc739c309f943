//! The injected pods as Prometheus scrapes them: linkerd-viz's own scrape job keeps the pods
//! `--linkerd-compat` makes and labels them by their workload; the scrape job of
//! `deploy/prometheus-scrape.yaml` and the PodMonitor of `docs/observability.md` do the same
//! for the pods injected without it. The docs and the file are read as they are, so neither
//! can drift from what inject writes.

use super::prometheus::{pod_monitor_job, scrape, Labels, Pod};
use super::*;

/// What linkerd-viz's scrape job for Linkerd's proxies (`linkerd-proxy`, in its chart's
/// Prometheus config, default values) decides, restated as the rules that matter here: it
/// keeps the container `linkerd-proxy`'s port `linkerd-admin` in pods whose
/// `linkerd.io/control-plane-ns` is `linkerd`, labels the target with its namespace and
/// pod, puts a Job's name in `k8s_job` (Prometheus owns `job`), and turns every other
/// `linkerd.io/proxy-<kind>: <name>` pod label into `<kind>="<name>"` and the other
/// `linkerd.io/<key>` labels into `<key>` (`control_plane_ns`).
const LINKERD_VIZ_JOB: &str = r"
job_name: linkerd-proxy
kubernetes_sd_configs:
- role: pod
relabel_configs:
- action: keep
  source_labels:
  - __meta_kubernetes_pod_container_name
  - __meta_kubernetes_pod_container_port_name
  - __meta_kubernetes_pod_label_linkerd_io_control_plane_ns
  regex: linkerd-proxy;linkerd-admin;linkerd
- {action: replace, source_labels: [__meta_kubernetes_namespace], target_label: namespace}
- {action: replace, source_labels: [__meta_kubernetes_pod_name], target_label: pod}
- {action: replace, source_labels: [__meta_kubernetes_pod_label_linkerd_io_proxy_job], target_label: k8s_job}
- {action: labeldrop, regex: __meta_kubernetes_pod_label_linkerd_io_proxy_job}
- {action: labelmap, regex: __meta_kubernetes_pod_label_linkerd_io_proxy_(.+)}
- {action: labeldrop, regex: __meta_kubernetes_pod_label_linkerd_io_proxy_(.+)}
- {action: labelmap, regex: __meta_kubernetes_pod_label_linkerd_io_(.+)}
";

/// Skiff's scrape job, as the docs give it.
const SCRAPE_FILE: &str = include_str!("../../../../../deploy/prometheus-scrape.yaml");
const OBSERVABILITY: &str = include_str!("../../../../../docs/observability.md");

fn skiff_job() -> Value {
    let file: Value = serde_yaml_ng::from_str(SCRAPE_FILE).unwrap();
    let jobs = file["scrape_configs"].as_sequence().unwrap();
    assert_eq!(jobs.len(), 1, "one job");
    jobs[0].clone()
}

/// The one target `job` scrapes in the pod Kubernetes makes of `doc`'s template, named
/// `pod` (a Deployment's pods are named after a hash).
fn the_target(job: &Value, doc: &Value, pod: &str) -> Labels {
    let pod = Pod {
        template: template(doc),
        namespace: doc["metadata"]["namespace"].as_str().unwrap(),
        name: pod,
    };
    let mut targets = scrape(job, &pod);
    assert_eq!(targets.len(), 1, "one target, the admin port: {targets:?}");
    targets.remove(0)
}

/// `(label, value)` pairs a target must carry.
fn assert_labelled(target: &Labels, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(
            target.get(*k).map(String::as_str),
            Some(*v),
            "{k} in {target:?}"
        );
    }
}

#[test]
fn linkerd_viz_scrapes_compat_pods_as_its_own() {
    let job: Value = serde_yaml_ng::from_str(LINKERD_VIZ_JOB).unwrap();
    let (out, _) = transform(INPUT, &compat(), false).unwrap();
    let docs = documents(&out);
    let web = the_target(&job, of_kind(&docs, "Deployment"), "web-6d8f9c-x2k8q");
    assert_labelled(
        &web,
        &[
            ("job", "linkerd-proxy"),
            ("instance", "10.42.0.7:4191"),
            ("deployment", "web"),
            ("namespace", "shop"),
            ("pod", "web-6d8f9c-x2k8q"),
            ("control_plane_ns", "linkerd"),
        ],
    );
    let db = the_target(&job, of_kind(&docs, "StatefulSet"), "db-0");
    assert_labelled(&db, &[("statefulset", "db"), ("pod", "db-0")]);
    let nightly = the_target(&job, of_kind(&docs, "CronJob"), "nightly-2901-abcde");
    assert_labelled(&nightly, &[("cronjob", "nightly"), ("namespace", "shop")]);
    // viz's special case: a Job's name goes to `k8s_job`, never over the `job` label.
    let report = the_target(&job, of_kind(&docs, "Job"), "report-abcde");
    assert_labelled(&report, &[("job", "linkerd-proxy"), ("k8s_job", "report")]);
    let shell = the_target(&job, of_kind(&docs, "Pod"), "shell");
    assert_labelled(&shell, &[("pod", "shell"), ("namespace", "shop")]);

    // Without the flag, or for another control plane's namespace, viz keeps nothing.
    for options in [
        Options::default(),
        Options {
            linkerd_namespace: "mesh".into(),
            ..compat()
        },
    ] {
        assert!(!scrapes_web(&job, &options));
    }
}

/// Whether `job` scrapes the pod of the Deployment `web` injected with `options`.
fn scrapes_web(job: &Value, options: &Options) -> bool {
    let (out, _) = transform(INPUT, options, false).unwrap();
    let docs = documents(&out);
    let pod = Pod {
        template: template(of_kind(&docs, "Deployment")),
        namespace: "shop",
        name: "web-6d8f9c-x2k8q",
    };
    !scrape(job, &pod).is_empty()
}

#[test]
fn the_documented_scrape_job_scrapes_injected_pods() {
    let job = skiff_job();
    let docs = documents(GOLDEN);
    let web = the_target(&job, of_kind(&docs, "Deployment"), "web-6d8f9c-x2k8q");
    assert_labelled(
        &web,
        &[
            ("job", "skiff-proxy"),
            ("instance", "10.42.0.7:4191"),
            ("deployment", "web"),
            ("namespace", "shop"),
            ("pod", "web-6d8f9c-x2k8q"),
        ],
    );
    for (kind, pod, label, name) in [
        ("StatefulSet", "db-0", "statefulset", "db"),
        ("DaemonSet", "agent-x7k2p", "daemonset", "agent"),
        ("ReplicaSet", "legacy-x7k2p", "replicaset", "legacy"),
        ("CronJob", "nightly-2901-abcde", "cronjob", "nightly"),
        // As linkerd-viz does, a Job's name is `k8s_job`: `job` stays the scrape job's.
        ("Job", "report-abcde", "k8s_job", "report"),
        ("Pod", "shell", "pod", "shell"),
    ] {
        let target = the_target(&job, of_kind(&docs, kind), pod);
        assert_labelled(&target, &[(label, name), ("job", "skiff-proxy")]);
    }
    // The workload label is renamed, not copied beside the pod's other labels.
    assert!(!web.contains_key("skiff_dev_proxy_deployment"));

    // Compat pods are linkerd-viz's to scrape, not this job's.
    assert!(!scrapes_web(&job, &compat()));
}

#[test]
fn the_docs_show_the_scrape_job_of_the_file_and_a_pod_monitor_that_agrees() {
    // The file past its header comment is what the docs show.
    let body: String = SCRAPE_FILE
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        OBSERVABILITY.contains(&format!("```yaml\n{body}```")),
        "docs/observability.md must show deploy/prometheus-scrape.yaml as it is"
    );

    let monitor = OBSERVABILITY
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter_map(|block| serde_yaml_ng::from_str::<Value>(block).ok())
        .find(|v| v["kind"] == "PodMonitor")
        .expect("a PodMonitor in docs/observability.md");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let job = pod_monitor_job(&monitor);
    let docs = documents(GOLDEN);
    let web = the_target(&job, of_kind(&docs, "Deployment"), "web-6d8f9c-x2k8q");
    assert_labelled(
        &web,
        &[
            ("instance", "10.42.0.7:4191"),
            ("deployment", "web"),
            ("namespace", "shop"),
            ("pod", "web-6d8f9c-x2k8q"),
        ],
    );
    let report = the_target(&job, of_kind(&docs, "Job"), "report-abcde");
    assert_labelled(&report, &[("k8s_job", "report")]);
    assert!(report.get("job").is_some_and(|j| j != "report"));
}
