//! `skiff inject`: adds Skiff to Kubernetes workloads, as `linkerd inject --manual` does.
//!
//! Every pod template in the input (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! ReplicationController, Job, CronJob, Argo Rollout, any other kind with a standard
//! `spec.template`, and the items of `kind: List` and `*List` documents) that is not opted
//! out gets Skiff as a native sidecar (an init container with `restartPolicy: Always`, so it starts before the
//! app, stops after it, and does not keep a Job alive), its config volume (a ConfigMap) and
//! its identity volume (a csi-driver-spiffe volume, or a Secret), Prometheus scrape
//! annotations, and a label naming the workload it belongs to (see `labels.rs`). Injecting twice
//! changes nothing; `--uninject` takes out exactly what injecting put in. Other documents
//! pass through.
//!
//! `--linkerd-compat` names the sidecar and its admin port as Linkerd does and adds Linkerd's
//! labels, because linkerd-viz's Prometheus picks its targets by exactly those names: with
//! them, a cluster already running linkerd-viz scrapes Skiff without a change to its config.
//!
//! By default this is explicit mode: the app sends its calls to `127.0.0.1:4140`, and callers
//! reach the pod through port 4143. With `transparent`, an init container runs
//! `skiff init-iptables` first (with `NET_ADMIN`), so the pod's traffic goes through Skiff
//! without the app knowing; the pod template's `skiff.dev/skip-*` annotations become its
//! exclusions.

use serde_yaml_ng::{Mapping, Value};

mod labels;
use labels::{namespace_name, Owner};

/// The annotation that opts a workload or pod template out (`disabled`).
pub const OPT_OUT: &str = "skiff.dev/inject";
/// The annotation marking an injected pod template.
pub const INJECTED: &str = "skiff.dev/injected";
/// The sidecar's user id: not root, and the id transparent mode exempts from redirection.
pub const PROXY_UID: u64 = 2102;

const SIDECAR: &str = "skiff";
/// The admin port's name: scrape jobs and PodMonitors pick the metrics port by it.
const ADMIN_PORT: &str = "skiff-admin";
const INIT: &str = "skiff-init";
/// The names linkerd-viz's scrape job (`linkerd-proxy`) keeps targets by, with
/// `--linkerd-compat`.
const LINKERD_SIDECAR: &str = "linkerd-proxy";
const LINKERD_ADMIN_PORT: &str = "linkerd-admin";
/// The annotation naming the sidecar when it is not `skiff`, so that injecting again and
/// `--uninject` take out the sidecar this tool added, and never a container of the same name
/// that something else (Linkerd's own injector) put there.
const SIDECAR_NAME: &str = "skiff.dev/sidecar";
/// Pod template annotations passed to `skiff init-iptables` as the flag of the same name.
const SKIP_ANNOTATIONS: [&str; 3] = [
    "skiff.dev/skip-inbound-ports",
    "skiff.dev/skip-outbound-ports",
    "skiff.dev/skip-outbound-cidrs",
];
const CONFIG_VOLUME: &str = "skiff-config";
const IDENTITY_VOLUME: &str = "skiff-identity";
/// The sidecar's own Kubernetes API credentials (a projected service-account token), for
/// `spec.discovery.kubernetes`. Mounted into the Skiff container only: where it sits, the
/// kubelet does not mount the pod's automatic token into that container.
const TOKEN_VOLUME: &str = "skiff-api-token";
/// The annotation telling other proxies which port a meshed pod's Skiff takes mutual TLS
/// on when no redirect rules send them there (explicit mode); see `docs/discovery.md`.
pub const INBOUND_PORT: &str = "skiff.dev/inbound-port";
const SCRAPE: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "4191"),
    ("prometheus.io/path", "/metrics"),
];

/// How to inject: the flags of `skiff inject` that shape what is added.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Skiff's image
    #[arg(long, value_name = "IMAGE", default_value = IMAGE)]
    pub image: String,
    /// The ConfigMap holding `skiff.yaml`
    #[arg(long, value_name = "NAME", default_value = CONFIG_MAP)]
    pub config_map: String,
    /// A Secret with tls.crt, tls.key and ca.crt, instead of a csi-driver-spiffe volume
    #[arg(long, value_name = "NAME")]
    pub identity_secret: Option<String>,
    /// Also add the init container that redirects the pod's traffic (transparent mode)
    #[arg(long)]
    pub transparent: bool,
    /// The init container's image (with --transparent)
    // Skiff's binary with `nft`: Skiff's own image holds nothing else.
    #[arg(long, value_name = "IMAGE", default_value = INIT_IMAGE)]
    pub init_image: String,
    /// Name the sidecar linkerd-proxy and its admin port linkerd-admin, and add Linkerd's pod
    /// labels, so that linkerd-viz's Prometheus scrapes it
    #[arg(long)]
    pub linkerd_compat: bool,
    /// The linkerd.io/control-plane-ns label (with --linkerd-compat): the namespace of the
    /// Linkerd install whose linkerd-viz should scrape the pods
    // It is a label value, and viz's keep rule compares it to its own namespace: anything but
    // a namespace name would make the pod unscrapeable, or the manifest invalid.
    #[arg(
        long,
        value_name = "NAMESPACE",
        default_value = LINKERD_NAMESPACE,
        requires = "linkerd_compat",
        value_parser = namespace_name
    )]
    pub linkerd_namespace: String,
}

/// The defaults, shared by the flags and [`Options::default`] (the tests' options).
const IMAGE: &str = "ghcr.io/skiff-proxy/skiff:latest";
const CONFIG_MAP: &str = "skiff-config";
const INIT_IMAGE: &str = "ghcr.io/skiff-proxy/skiff-init:latest";
const LINKERD_NAMESPACE: &str = "linkerd";

impl Default for Options {
    fn default() -> Self {
        Self {
            image: IMAGE.into(),
            config_map: CONFIG_MAP.into(),
            identity_secret: None,
            transparent: false,
            init_image: INIT_IMAGE.into(),
            linkerd_compat: false,
            linkerd_namespace: LINKERD_NAMESPACE.into(),
        }
    }
}

/// Why the input could not be read.
#[derive(Debug, thiserror::Error)]
#[error("document {document}: {message}")]
pub struct InjectError {
    /// 1-based document number.
    pub document: usize,
    /// What is wrong.
    pub message: String,
}

/// What happened to the documents.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Pod templates changed.
    pub changed: usize,
    /// Pod templates left alone: opted out, or already in the wanted state.
    pub skipped: usize,
}

/// Injects (or, with `uninject`, removes) Skiff in every pod template of `yaml`.
pub fn transform(
    yaml: &str,
    options: &Options,
    uninject: bool,
) -> Result<(String, Report), InjectError> {
    let mut out = Vec::new();
    let mut report = Report::default();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let error = |message: String| InjectError {
            document: i + 1,
            message,
        };
        let mut doc =
            serde::Deserialize::deserialize(document).map_err(|e| error(e.to_string()))?;
        if let Value::Null = doc {
            continue;
        }
        visit(&mut doc, options, uninject, &mut report).map_err(error)?;
        out.push(serde_yaml_ng::to_string(&doc).map_err(|e| error(e.to_string()))?);
    }
    Ok((out.join("---\n"), report))
}

/// Injects into the pod template of a workload document, or into each item of a list
/// (`kind: List`, as `kubectl get -o yaml` prints, or `DeploymentList` and the like), and
/// counts what changed in `report`. Other documents are left as they are.
fn visit(
    doc: &mut Value,
    options: &Options,
    uninject: bool,
    report: &mut Report,
) -> Result<(), String> {
    let Some(kind) = doc.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        return Ok(());
    };
    if kind.ends_with("List") {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_sequence_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                visit(item, options, uninject, report).map_err(|e| format!("items[{i}]: {e}"))?;
            }
            return Ok(());
        }
    }
    match workload(doc, &kind, options, uninject)? {
        Some(true) => report.changed += 1,
        Some(false) => report.skipped += 1,
        None => {}
    }
    Ok(())
}

/// Finds the pod template of a workload document; returns whether it changed (`None`: not
/// a workload).
fn workload(
    doc: &mut Value,
    kind: &str,
    options: &Options,
    uninject: bool,
) -> Result<Option<bool>, String> {
    if opted_out(doc) {
        return Ok(Some(false));
    }
    let owner = Owner::of(doc, kind);
    let template = match kind {
        "Pod" => Some(doc),
        "CronJob" => doc
            .get_mut("spec")
            .and_then(|s| s.get_mut("jobTemplate"))
            .and_then(|j| j.get_mut("spec"))
            .and_then(|s| s.get_mut("template")),
        // Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, an Argo
        // Rollout, and any other kind with a standard pod template (`spec.template` holding
        // `spec.containers`). A Rollout that refers to a Deployment (`workloadRef`) has none.
        _ => doc
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .filter(|t| is_pod_template(t)),
    };
    let Some(template) = template else {
        return Ok(None);
    };
    if opted_out(template) {
        return Ok(Some(false));
    }
    let before = template.clone();
    remove(template);
    if !uninject {
        let name = sidecar_name(options);
        if has_container(template, name) {
            // Two containers of one name make the pod invalid, and a `linkerd-proxy` already
            // there is Linkerd's own proxy: this pod is meshed already.
            return Err(format!(
                "the pod template already has a container named {name}"
            ));
        }
        check_ports(template)?;
        add(template, options, &owner.labels(options), owner.workload());
    }
    Ok(Some(*template != before))
}

/// Whether `template` is a pod template: a `spec` with a list of `containers`.
fn is_pod_template(template: &Value) -> bool {
    template
        .get("spec")
        .and_then(|s| s.get("containers"))
        .is_some_and(Value::is_sequence)
}

/// Skiff's ports in the pod, and what listens there.
const SKIFF_PORTS: [(u64, &str); 3] = [(4140, "outbound"), (4143, "inbound"), (4191, "admin")];

/// Refuses a pod whose containers already declare one of Skiff's ports: the containers of a
/// pod share one network namespace, so Skiff could not bind it (or the application could
/// not). The pod can be opted out, or the application moved to another port.
fn check_ports(template: &Value) -> Result<(), String> {
    let spec = template.get("spec");
    let containers = ["containers", "initContainers"]
        .into_iter()
        .filter_map(|key| spec?.get(key)?.as_sequence())
        .flatten();
    for container in containers {
        let name = container.get("name").and_then(Value::as_str).unwrap_or("?");
        let ports = container.get("ports").and_then(Value::as_sequence);
        for port in ports.into_iter().flatten() {
            let Some(number) = port.get("containerPort").and_then(Value::as_u64) else {
                continue;
            };
            if let Some((_, listener)) = SKIFF_PORTS.iter().find(|(p, _)| *p == number) {
                return Err(format!(
                    "container {name} uses port {number}, which Skiff's {listener} listener \
                     needs in the same pod; move the application to another port, or opt \
                     the pod out with the annotation {OPT_OUT}: disabled"
                ));
            }
        }
    }
    Ok(())
}

fn sidecar_name(options: &Options) -> &'static str {
    if options.linkerd_compat {
        LINKERD_SIDECAR
    } else {
        SIDECAR
    }
}

fn has_container(template: &Value, name: &str) -> bool {
    ["containers", "initContainers"].iter().any(|key| {
        template
            .get("spec")
            .and_then(|s| s.get(key))
            .and_then(Value::as_sequence)
            .is_some_and(|list| {
                list.iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
            })
    })
}

fn opted_out(v: &Value) -> bool {
    v.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(OPT_OUT))
        .and_then(Value::as_str)
        .is_some_and(|s| s == "disabled" || s == "false")
}

/// The annotation listing the annotations injection added (so `--uninject` removes those
/// and no others).
const ADDED: &str = "skiff.dev/added-annotations";
/// The same for labels. An annotation, not a label: a label's value cannot hold a list of
/// keys (no `/`, no `,`).
const ADDED_LABELS: &str = "skiff.dev/added-labels";

fn child_map<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let entry = m
        .entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    entry.as_mapping_mut().expect("a mapping")
}

fn child_list<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Vec<Value> {
    let entry = m
        .entry(Value::from(key))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if !entry.is_sequence() {
        *entry = Value::Sequence(Vec::new());
    }
    entry.as_sequence_mut().expect("a sequence")
}

fn fragment(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("a valid built-in YAML fragment")
}

/// The sidecar: a native sidecar (an init container that keeps running), unprivileged,
/// with a read-only root filesystem, probed on the admin `/ready` and `/live`. The
/// downward API gives it the pod's name, namespace and service account, and
/// `SKIFF_WORKLOAD` (`deployment/web`) names the workload, which the pod cannot read of
/// itself: traces use them as their resource.
fn sidecar(options: &Options, workload: Option<String>) -> Value {
    let admin_port = if options.linkerd_compat {
        LINKERD_ADMIN_PORT
    } else {
        ADMIN_PORT
    };
    // Quoted as JSON, a YAML subset: a name is a label value, but this keeps it a string.
    let workload_env = workload.map_or_else(String::new, |w| {
        format!(
            "\n- {{name: SKIFF_WORKLOAD, value: {}}}",
            serde_json::Value::String(w)
        )
    });
    fragment(&format!(
        r#"
name: {name}
image: {image}
args: [run, --config, /etc/skiff/skiff.yaml]
restartPolicy: Always
ports:
- {{name: skiff-inbound, containerPort: 4143}}
- {{name: {admin_port}, containerPort: 4191}}
env:
- name: POD_NAMESPACE
  valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
- name: POD_NAME
  valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
- name: POD_SERVICE_ACCOUNT
  valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}{workload_env}
resources:
  requests: {{cpu: 100m, memory: 20Mi}}
  limits: {{memory: 250Mi}}
securityContext:
  runAsUser: {PROXY_UID}
  runAsNonRoot: true
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: {{drop: [ALL]}}
  seccompProfile: {{type: RuntimeDefault}}
startupProbe:
  httpGet: {{path: /ready, port: 4191}}
  periodSeconds: 1
  failureThreshold: 120
readinessProbe:
  httpGet: {{path: /ready, port: 4191}}
livenessProbe:
  httpGet: {{path: /live, port: 4191}}
volumeMounts:
- {{name: {CONFIG_VOLUME}, mountPath: /etc/skiff, readOnly: true}}
- {{name: {IDENTITY_VOLUME}, mountPath: /var/run/secrets/spiffe.io, readOnly: true}}
- {{name: {TOKEN_VOLUME}, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}}
"#,
        name = sidecar_name(options),
        image = options.image
    ))
}

/// The init step of transparent mode: installs the redirect rules, then exits. It alone has
/// `NET_ADMIN` (and runs as root, which nft needs); the sidecar never does.
fn init_container(options: &Options, annotations: &Mapping) -> Value {
    let mut args = vec![
        "init-iptables".to_owned(),
        format!("--proxy-uid={PROXY_UID}"),
    ];
    for key in SKIP_ANNOTATIONS {
        let Some(value) = annotations.get(key).and_then(Value::as_str) else {
            continue;
        };
        // init-iptables refuses empty list items, so an empty annotation or a stray comma
        // must not keep the pod from starting.
        let value = value.replace(' ', "");
        let items: Vec<&str> = value.split(',').filter(|v| !v.is_empty()).collect();
        if !items.is_empty() {
            let flag = key.trim_start_matches("skiff.dev/");
            args.push(format!("--{flag}={}", items.join(",")));
        }
    }
    let mut init = fragment(&format!(
        r#"
name: {INIT}
image: {image}
resources:
  requests: {{cpu: 10m, memory: 10Mi}}
  limits: {{memory: 50Mi}}
securityContext:
  runAsUser: 0
  runAsNonRoot: false
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: {{add: [NET_ADMIN, NET_RAW], drop: [ALL]}}
  seccompProfile: {{type: RuntimeDefault}}
"#,
        image = options.init_image
    ));
    if let Some(m) = init.as_mapping_mut() {
        m.insert("args".into(), args.into());
    }
    init
}

fn volumes(options: &Options) -> [Value; 3] {
    let identity = match &options.identity_secret {
        Some(secret) => format!("{{name: {IDENTITY_VOLUME}, secret: {{secretName: {secret}}}}}"),
        None => format!(
            "{{name: {IDENTITY_VOLUME}, csi: {{driver: spiffe.csi.cert-manager.io, readOnly: true, \
             volumeAttributes: {{spiffe.csi.cert-manager.io/fs-group: '{PROXY_UID}'}}}}}}"
        ),
    };
    [
        fragment(&format!(
            "{{name: {CONFIG_VOLUME}, configMap: {{name: {}}}}}",
            options.config_map
        )),
        fragment(&identity),
        fragment(&format!(
            "{{name: {TOKEN_VOLUME}, projected: {{sources: [\
             {{serviceAccountToken: {{path: token, expirationSeconds: 3600}}}}, \
             {{configMap: {{name: kube-root-ca.crt, items: [{{key: ca.crt, path: ca.crt}}]}}}}, \
             {{downwardAPI: {{items: [{{path: namespace, fieldRef: {{fieldPath: metadata.namespace}}}}]}}}}]}}}}"
        )),
    ]
}

fn add(
    template: &mut Value,
    options: &Options,
    labels: &[(String, String)],
    workload: Option<String>,
) {
    let Some(t) = template.as_mapping_mut() else {
        return;
    };
    let meta = child_map(t, "metadata");
    // Labels the template already has are the user's, whatever their value: kept, and not
    // noted, so `--uninject` leaves them.
    let mut added_labels = Vec::new();
    if !labels.is_empty() {
        let existing = child_map(meta, "labels");
        for (k, v) in labels {
            if !existing.contains_key(k.as_str()) {
                existing.insert(k.as_str().into(), v.as_str().into());
                added_labels.push(k.as_str());
            }
        }
    }
    let annotations = child_map(meta, "annotations");
    let mut added = Vec::new();
    for (k, v) in SCRAPE {
        if !annotations.contains_key(k) {
            annotations.insert(k.into(), v.into());
            added.push(k);
        }
    }
    annotations.insert(INJECTED.into(), "true".into());
    if !options.transparent {
        // Nothing redirects other proxies' connections to this pod's Skiff: they must
        // call its inbound port themselves.
        annotations.insert(INBOUND_PORT.into(), "4143".into());
    }
    if !added.is_empty() {
        annotations.insert(ADDED.into(), added.join(",").into());
    }
    if !added_labels.is_empty() {
        annotations.insert(ADDED_LABELS.into(), added_labels.join(",").into());
    }
    if options.linkerd_compat {
        annotations.insert(SIDECAR_NAME.into(), LINKERD_SIDECAR.into());
    }
    let init = options
        .transparent
        .then(|| init_container(options, annotations));
    let spec = child_map(t, "spec");
    let containers = child_list(spec, "initContainers");
    containers.insert(0, sidecar(options, workload));
    // The rules go in before anything else in the pod starts, the sidecar included.
    if let Some(init) = init {
        containers.insert(0, init);
    }
    child_list(spec, "volumes").extend(volumes(options));
}

fn remove(template: &mut Value) {
    let Some(t) = template.as_mapping_mut() else {
        return;
    };
    let named = |v: &Value, names: &[&str]| {
        v.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| names.contains(&n))
    };
    // The sidecar this tool added: `skiff`, or the name an annotation records.
    let mut sidecar = SIDECAR.to_owned();
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_mapping_mut) {
        let mut added_labels = None;
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_mapping_mut) {
            if let Some(Value::String(added)) = annotations.remove(ADDED) {
                for key in added.split(',') {
                    annotations.remove(key);
                }
            }
            if let Some(Value::String(added)) = annotations.remove(ADDED_LABELS) {
                added_labels = Some(added);
            }
            // Only a name inject gives: the annotation is no way to delete other containers.
            if let Some(Value::String(name)) = annotations.remove(SIDECAR_NAME) {
                if name == LINKERD_SIDECAR {
                    sidecar = name;
                }
            }
            annotations.remove(INJECTED);
            annotations.remove(INBOUND_PORT);
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
        if let (Some(added), Some(labels)) = (
            added_labels,
            meta.get_mut("labels").and_then(Value::as_mapping_mut),
        ) {
            for key in added.split(',') {
                labels.remove(key);
            }
            if labels.is_empty() {
                meta.remove("labels");
            }
        }
        if meta.is_empty() {
            t.remove("metadata");
        }
    }
    if let Some(spec) = t.get_mut("spec").and_then(Value::as_mapping_mut) {
        for (key, names) in [
            ("initContainers", &[INIT, SIDECAR, &sidecar][..]),
            (
                "volumes",
                &[CONFIG_VOLUME, IDENTITY_VOLUME, TOKEN_VOLUME][..],
            ),
        ] {
            if let Some(list) = spec.get_mut(key).and_then(Value::as_sequence_mut) {
                list.retain(|v| !named(v, names));
                if list.is_empty() {
                    spec.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
