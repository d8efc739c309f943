//! What Prometheus makes of an injected pod: the targets its Kubernetes discovery (`role:
//! pod`) finds, passed through a scrape job's `relabel_configs`. The scrape tests use it to
//! check injected pods against real scrape jobs (linkerd-viz's, Skiff's own in
//! `deploy/prometheus-scrape.yaml`), so that a renamed port or label fails here rather
//! than as an empty dashboard. It follows Prometheus' `discovery/kubernetes/pod.go` and
//! `model/relabel/relabel.go`, for the actions those jobs use.

use std::collections::BTreeMap;

use regex::Regex;
use serde_yaml_ng::Value;

/// A target's labels.
pub(super) type Labels = BTreeMap<String, String>;

/// The pod the tests pretend Kubernetes made of a template.
pub(super) struct Pod<'a> {
    /// The pod template, as `skiff inject` wrote it (`metadata` and `spec`).
    pub(super) template: &'a Value,
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
}

const POD_IP: &str = "10.42.0.7";

/// A label or annotation name as Prometheus puts it in a meta label
/// (`linkerd.io/proxy-deployment` becomes `linkerd_io_proxy_deployment`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The targets discovery finds in a running pod: one per port of every container, init
/// containers included (where native sidecars are), each with the pod's meta labels.
fn discover(job_name: &str, pod: &Pod<'_>) -> Vec<Labels> {
    let mut common = Labels::new();
    let mut set = |k: &str, v: &str| common.insert(k.to_owned(), v.to_owned());
    set("job", job_name);
    set("__scheme__", "http");
    set("__metrics_path__", "/metrics");
    set("__meta_kubernetes_namespace", pod.namespace);
    set("__meta_kubernetes_pod_name", pod.name);
    set("__meta_kubernetes_pod_ip", POD_IP);
    set("__meta_kubernetes_pod_phase", "Running");
    set("__meta_kubernetes_pod_ready", "true");
    let meta = &pod.template["metadata"];
    for (field, kind) in [("labels", "label"), ("annotations", "annotation")] {
        for (k, v) in meta[field].as_mapping().into_iter().flatten() {
            let k = sanitize(k.as_str().expect("a string key"));
            let v = v.as_str().expect("a string value");
            set(&format!("__meta_kubernetes_pod_{kind}_{k}"), v);
            set(&format!("__meta_kubernetes_pod_{kind}present_{k}"), "true");
        }
    }
    let spec = &pod.template["spec"];
    let mut targets = Vec::new();
    for (key, init) in [("containers", "false"), ("initContainers", "true")] {
        for c in spec[key].as_sequence().into_iter().flatten() {
            for port in c["ports"].as_sequence().into_iter().flatten() {
                let number = port["containerPort"].as_u64().expect("a port number");
                let mut t = common.clone();
                let mut set = |k: &str, v: &str| t.insert(k.to_owned(), v.to_owned());
                set("__address__", &format!("{POD_IP}:{number}"));
                set(
                    "__meta_kubernetes_pod_container_name",
                    c["name"].as_str().unwrap(),
                );
                set(
                    "__meta_kubernetes_pod_container_image",
                    c["image"].as_str().unwrap(),
                );
                set("__meta_kubernetes_pod_container_init", init);
                set(
                    "__meta_kubernetes_pod_container_port_name",
                    port["name"].as_str().unwrap_or(""),
                );
                set(
                    "__meta_kubernetes_pod_container_port_number",
                    &number.to_string(),
                );
                set("__meta_kubernetes_pod_container_port_protocol", "TCP");
                targets.push(t);
            }
        }
    }
    targets
}

/// One `relabel_configs` list applied to a target; `None` when a rule drops it.
pub(super) fn relabel(mut labels: Labels, rules: &[Value]) -> Option<Labels> {
    for rule in rules {
        let text = |k: &str| rule.get(k).and_then(Value::as_str);
        // Prometheus anchors every relabelling regex at both ends.
        let re = Regex::new(&format!("^(?:{})$", text("regex").unwrap_or("(.*)")))
            .expect("a valid regex");
        let replacement = text("replacement").unwrap_or("$1");
        let separator = text("separator").unwrap_or(";");
        let value = rule["source_labels"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|l| {
                let l = l.as_str().expect("a label name");
                labels.get(l).map_or("", String::as_str)
            })
            .collect::<Vec<_>>()
            .join(separator);
        match text("action")
            .unwrap_or("replace")
            .to_ascii_lowercase()
            .as_str()
        {
            "keep" if !re.is_match(&value) => return None,
            "drop" if re.is_match(&value) => return None,
            "keep" | "drop" => {}
            "replace" => {
                let Some(caps) = re.captures(&value) else {
                    continue;
                };
                let mut target = String::new();
                caps.expand(text("target_label").expect("a target_label"), &mut target);
                let mut new = String::new();
                caps.expand(replacement, &mut new);
                // An empty result removes the label.
                if new.is_empty() {
                    labels.remove(&target);
                } else {
                    labels.insert(target, new);
                }
            }
            "labelmap" => {
                let mapped: Vec<(String, String)> = labels
                    .iter()
                    .filter(|(k, _)| re.is_match(k))
                    .map(|(k, v)| (re.replace_all(k, replacement).into_owned(), v.clone()))
                    .collect();
                labels.extend(mapped);
            }
            "labeldrop" => labels.retain(|k, _| !re.is_match(k)),
            "labelkeep" => labels.retain(|k, _| re.is_match(k)),
            other => panic!("the relabel action {other} is not modelled"),
        }
    }
    Some(labels)
}

/// The targets `job` (a `scrape_configs` entry) scrapes in `pod`, with the labels they end
/// up with: `instance` from the address unless set, then no `__` label and no empty one.
pub(super) fn scrape(job: &Value, pod: &Pod<'_>) -> Vec<Labels> {
    let rules = job["relabel_configs"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    let job_name = job["job_name"].as_str().expect("a job_name");
    discover(job_name, pod)
        .into_iter()
        .filter_map(|t| relabel(t, &rules))
        .map(|mut t| {
            if !t.contains_key("instance") {
                let address = t["__address__"].clone();
                t.insert("instance".to_owned(), address);
            }
            t.retain(|k, v| !k.starts_with("__") && !v.is_empty());
            t
        })
        .collect()
}

/// A Prometheus Operator PodMonitor's first endpoint as the scrape job the operator makes
/// of it: the endpoint's port kept by name, pods that have finished dropped, the
/// `namespace`, `pod` and `container` labels set, then the PodMonitor's own relabelings
/// (written in camelCase there).
pub(super) fn pod_monitor_job(monitor: &Value) -> Value {
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    let port = endpoint["port"].as_str().expect("an endpoint port name");
    let mut rules: Vec<Value> = serde_yaml_ng::from_str(&format!(
        "
- {{source_labels: [__meta_kubernetes_pod_container_port_name], regex: {port}, action: keep}}
- {{source_labels: [__meta_kubernetes_pod_phase], regex: (Failed|Succeeded), action: drop}}
- {{source_labels: [__meta_kubernetes_namespace], target_label: namespace}}
- {{source_labels: [__meta_kubernetes_pod_container_name], target_label: container}}
- {{source_labels: [__meta_kubernetes_pod_name], target_label: pod}}
"
    ))
    .expect("valid rules");
    for r in endpoint["relabelings"].as_sequence().into_iter().flatten() {
        let mut rule = serde_yaml_ng::Mapping::new();
        for (k, v) in r.as_mapping().expect("a relabeling") {
            let k = match k.as_str().expect("a key") {
                "sourceLabels" => "source_labels",
                "targetLabel" => "target_label",
                other => other,
            };
            rule.insert(k.into(), v.clone());
        }
        rules.push(Value::Mapping(rule));
    }
    let name = monitor["metadata"]["name"].as_str().expect("a name");
    let mut job = serde_yaml_ng::Mapping::new();
    job.insert("job_name".into(), format!("podMonitor/{name}").into());
    job.insert("relabel_configs".into(), rules.into());
    Value::Mapping(job)
}
