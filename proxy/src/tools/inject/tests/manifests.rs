//! Manifests as users have them: lists from `kubectl get -o yaml`, typed lists, kinds with
//! a standard pod template, a port that clashes with Skiff's, and the injected pod checked
//! against the Pod Security Standards' `restricted` profile.

use super::*;

/// `kubectl get deploy,svc,pod -o yaml` prints one `kind: List`.
const KUBECTL_LIST: &str = r"
apiVersion: v1
kind: List
metadata: {resourceVersion: ''}
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: shop}
  spec:
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec:
        containers: [{name: web, image: web:1, ports: [{containerPort: 8080}]}]
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: debug, namespace: shop}
  spec:
    containers: [{name: sh, image: busybox}]
";

const DEPLOYMENT_LIST: &str = r"
apiVersion: apps/v1
kind: DeploymentList
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: a}
  spec:
    template: {spec: {containers: [{name: a, image: a:1}]}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: b}
  spec:
    template: {spec: {containers: [{name: b, image: b:1}]}}
";

/// The names of the init containers and containers of each injected pod template found
/// in `doc` (the items of a list, or the document itself).
fn injected_templates(doc: &Value) -> Vec<&Value> {
    let items: Vec<&Value> = match doc.get("items").and_then(Value::as_sequence) {
        Some(items) => items.iter().collect(),
        None => vec![doc],
    };
    items
        .into_iter()
        .filter_map(|item| match item["kind"].as_str() {
            Some("Pod") => Some(item),
            _ => item.get("spec")?.get("template"),
        })
        .filter(|t| t["metadata"]["annotations"][INJECTED] == "true")
        .collect()
}

#[test]
fn every_workload_in_a_kubectl_list_is_injected() {
    let (out, report) = transform(KUBECTL_LIST, &Options::default(), false).unwrap();
    assert_eq!(
        report,
        Report {
            changed: 2,
            skipped: 0
        }
    );
    let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(doc["kind"], "List", "the list stays a list");
    assert_eq!(
        injected_templates(&doc).len(),
        2,
        "the Deployment and the Pod"
    );
    assert_eq!(doc["items"][1]["kind"], "Service");
    assert!(doc["items"][1]
        .get("spec")
        .unwrap()
        .get("template")
        .is_none());
    // Injecting again changes nothing; uninjecting takes it all out.
    let (again, report) = transform(&out, &Options::default(), false).unwrap();
    assert_eq!((again.as_str(), report.changed), (out.as_str(), 0));
    let (back, report) = transform(&out, &Options::default(), true).unwrap();
    assert_eq!(report.changed, 2);
    assert!(!back.contains(INJECTED));
}

#[test]
fn typed_lists_and_any_kind_with_a_pod_template_are_injected() {
    let (out, report) = transform(DEPLOYMENT_LIST, &Options::default(), false).unwrap();
    assert_eq!(report.changed, 2);
    let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(injected_templates(&doc).len(), 2);

    // A kind this tool has never heard of, with a standard pod template (an Argo Rollout, a
    // Knative Service or an operator's custom workload), is injected; a `spec.template` that
    // is not a pod template is left alone.
    let custom = r"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: checkout}
spec:
  replicas: 3
  strategy: {canary: {steps: [{setWeight: 20}, {pause: {}}]}}
  selector: {matchLabels: {app: checkout}}
  template:
    metadata: {labels: {app: checkout}}
    spec:
      containers: [{name: checkout, image: checkout:2}]
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello}
spec:
  template:
    spec:
      containers: [{image: hello:1}]
---
apiVersion: example.com/v1
kind: Report
metadata: {name: weekly}
spec:
  template: {title: Weekly, sections: [intro]}
";
    let (out, report) = transform(custom, &Options::default(), false).unwrap();
    assert_eq!(report.changed, 2);
    let docs: Vec<Value> = out
        .split("---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    assert_eq!(injected_templates(&docs[0]).len(), 1, "the Rollout");
    let sidecar = &docs[0]["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "skiff");
    assert_eq!(
        sidecar["env"][3]["value"], "rollout/checkout",
        "{sidecar:?}"
    );
    assert_eq!(
        docs[0]["spec"]["strategy"]["canary"]["steps"][0]["setWeight"], 20,
        "the rest of the Rollout is kept"
    );
    assert_eq!(injected_templates(&docs[1]).len(), 1, "the Knative Service");
    assert_eq!(docs[2]["spec"]["template"]["title"], "Weekly");
    assert!(!out.split("---\n").nth(2).unwrap().contains(INJECTED));
}

#[test]
fn an_application_on_one_of_skiffs_ports_is_refused_with_its_container() {
    let clash = r"
apiVersion: apps/v1
kind: Deployment
metadata: {name: metrics}
spec:
  template:
    spec:
      containers: [{name: exporter, image: exporter:1, ports: [{containerPort: 4191}]}]
";
    let e = transform(clash, &Options::default(), false).unwrap_err();
    assert_eq!(e.document, 1);
    assert!(
        e.message.contains("container exporter uses port 4191"),
        "{e}"
    );
    assert!(e.message.contains("admin listener"), "{e}");
    // In a list, the item is named; and an opted-out pod is left alone.
    let listed = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}",
        clash.trim().replace('\n', "\n  ")
    );
    let e = transform(&listed, &Options::default(), false).unwrap_err();
    assert!(e.message.starts_with("items[0]: "), "{e}");
    let opted_out = clash.replace(
        "metadata: {name: metrics}",
        "metadata: {name: metrics, annotations: {skiff.dev/inject: disabled}}",
    );
    assert!(transform(&opted_out, &Options::default(), false).is_ok());
}

/// The `restricted` profile of the Kubernetes Pod Security Standards, as far as a pod spec
/// shows it (kubernetes.io/docs/concepts/security/pod-security-standards): every failure,
/// as "<container>: <rule>".
fn restricted_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    // Host namespaces, host ports and hostPath volumes are forbidden at every level but
    // privileged.
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[key] == true {
            out.push(format!("pod: {key}"));
        }
    }
    // Volume types: only these.
    const VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec["volumes"].as_sequence().into_iter().flatten() {
        let m = volume.as_mapping().unwrap();
        let kinds: Vec<&str> = m
            .keys()
            .filter_map(Value::as_str)
            .filter(|k| *k != "name")
            .collect();
        if !kinds.iter().all(|k| VOLUMES.contains(k)) {
            out.push(format!("volume {:?}: type {kinds:?}", volume["name"]));
        }
    }
    let pod_sc = &spec["securityContext"];
    let containers = ["initContainers", "containers"]
        .into_iter()
        .filter_map(|k| spec[k].as_sequence())
        .flatten();
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        let either = |key: &str| {
            let own = &sc[key];
            if own.is_null() {
                &pod_sc[key]
            } else {
                own
            }
        };
        if sc["privileged"] == true {
            out.push(format!("{name}: privileged"));
        }
        for port in c["ports"].as_sequence().into_iter().flatten() {
            if port["hostPort"].as_u64().is_some_and(|p| p != 0) {
                out.push(format!("{name}: hostPort"));
            }
        }
        if sc["allowPrivilegeEscalation"] != false {
            out.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        if either("runAsNonRoot").as_bool() != Some(true) {
            out.push(format!("{name}: runAsNonRoot must be true"));
        }
        if either("runAsUser").as_u64() == Some(0) {
            out.push(format!("{name}: runAsUser 0"));
        }
        let seccomp = either("seccompProfile")["type"].as_str();
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            out.push(format!(
                "{name}: seccompProfile must be RuntimeDefault or Localhost"
            ));
        }
        let caps = &sc["capabilities"];
        if !caps["drop"]
            .as_sequence()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"))
        {
            out.push(format!("{name}: capabilities must drop ALL"));
        }
        for added in caps["add"].as_sequence().into_iter().flatten() {
            if added != "NET_BIND_SERVICE" {
                out.push(format!("{name}: adds capability {added:?}"));
            }
        }
    }
    out
}

/// An application that is itself `restricted`, so that what is found is the sidecar's.
const RESTRICTED_APP: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  securityContext:
    runAsNonRoot: true
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: web
    image: web:1
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
";

#[test]
fn an_injected_pod_passes_pod_security_restricted() {
    let before: Value = serde_yaml_ng::from_str(RESTRICTED_APP).unwrap();
    assert_eq!(restricted_violations(&before), Vec::<String>::new());
    let (out, _) = transform(RESTRICTED_APP, &Options::default(), false).unwrap();
    let pod: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(restricted_violations(&pod), Vec::<String>::new(), "{out}");

    // The checker is not blind: without its own seccomp profile (pod default removed),
    // the sidecar still passes, since it sets one; the app does not.
    let mut bare = pod;
    bare["spec"]["securityContext"] = Value::Null;
    let found = restricted_violations(&bare);
    assert!(found.iter().all(|v| v.starts_with("web: ")), "{found:?}");
    assert!(!found.is_empty());
}

#[test]
fn transparent_mode_needs_the_privileged_profile_for_its_init_step() {
    let options = Options {
        transparent: true,
        ..Options::default()
    };
    let (out, _) = transform(RESTRICTED_APP, &options, false).unwrap();
    let pod: Value = serde_yaml_ng::from_str(&out).unwrap();
    // As documented: the redirect step needs NET_ADMIN and root; the sidecar itself passes.
    let found = restricted_violations(&pod);
    assert!(!found.is_empty());
    assert!(
        found.iter().all(|v| v.starts_with("skiff-init: ")),
        "{found:?}"
    );
    assert_eq!(
        pod["spec"]["initContainers"][0]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
}
