//! `skiff inject`: adds Skiff to Kubernetes workloads, as `linkerd inject --manual` does.
//!
//! Every pod template in the input (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
//! CronJob) that is not opted out gets Skiff as a native sidecar (an init container with
//! `restartPolicy: Always`, so it starts before the app, stops after it, and does not keep a
//! Job alive), its config volume (a ConfigMap) and its identity volume (a csi-driver-spiffe
//! volume, or a Secret), and Prometheus scrape annotations. Injecting twice changes nothing;
//! `--uninject` takes out exactly what injecting put in. Other documents pass through.
//!
//! By default this is explicit mode: the app sends its calls to `127.0.0.1:4140`, and callers
//! reach the pod through port 4143. With `transparent`, an init container runs
//! `skiff init-iptables` first (with `NET_ADMIN`), so the pod's traffic goes through Skiff
//! without the app knowing; the pod template's `skiff.dev/skip-*` annotations become its
//! exclusions.

use serde_yaml_ng::{Mapping, Value};

/// The annotation that opts a workload or pod template out (`disabled`).
pub const OPT_OUT: &str = "skiff.dev/inject";
/// The annotation marking an injected pod template.
pub const INJECTED: &str = "skiff.dev/injected";
/// The sidecar's user id: not root, and the id transparent mode exempts from redirection.
pub const PROXY_UID: u64 = 2102;

const SIDECAR: &str = "skiff";
const INIT: &str = "skiff-init";
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
}

/// The defaults, shared by the flags and [`Options::default`] (the tests' options).
const IMAGE: &str = "ghcr.io/skiff-proxy/skiff:latest";
const CONFIG_MAP: &str = "skiff-config";
const INIT_IMAGE: &str = "ghcr.io/skiff-proxy/skiff-init:latest";

impl Default for Options {
    fn default() -> Self {
        Self {
            image: IMAGE.into(),
            config_map: CONFIG_MAP.into(),
            identity_secret: None,
            transparent: false,
            init_image: INIT_IMAGE.into(),
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
        let mut doc = serde::Deserialize::deserialize(document).map_err(|e| InjectError {
            document: i + 1,
            message: e.to_string(),
        })?;
        if let Value::Null = doc {
            continue;
        }
        if let Some(changed) = visit(&mut doc, options, uninject) {
            if changed {
                report.changed += 1;
            } else {
                report.skipped += 1;
            }
        }
        out.push(serde_yaml_ng::to_string(&doc).map_err(|e| InjectError {
            document: i + 1,
            message: e.to_string(),
        })?);
    }
    Ok((out.join("---\n"), report))
}

/// Finds the pod template of a workload document; returns whether it changed (`None`: not
/// a workload).
fn visit(doc: &mut Value, options: &Options, uninject: bool) -> Option<bool> {
    let kind = doc.get("kind")?.as_str()?.to_owned();
    if opted_out(doc) {
        return Some(false);
    }
    let template = match kind.as_str() {
        "Pod" => doc,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.get_mut("spec")?.get_mut("template")?
        }
        "CronJob" => doc
            .get_mut("spec")?
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template")?,
        _ => return None,
    };
    if opted_out(template) {
        return Some(false);
    }
    let before = template.clone();
    if uninject {
        remove(template);
    } else {
        remove(template);
        add(template, options);
    }
    Some(*template != before)
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
/// with a read-only root filesystem, probed on the admin `/ready` and `/live`.
fn sidecar(options: &Options) -> Value {
    fragment(&format!(
        r#"
name: {SIDECAR}
image: {image}
args: [run, --config, /etc/skiff/skiff.yaml]
restartPolicy: Always
ports:
- {{name: skiff-inbound, containerPort: 4143}}
- {{name: skiff-admin, containerPort: 4191}}
env:
- name: POD_NAMESPACE
  valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
- name: POD_NAME
  valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
- name: POD_SERVICE_ACCOUNT
  valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}
resources:
  requests: {{cpu: 100m, memory: 20Mi}}
  limits: {{memory: 250Mi}}
securityContext:
  runAsUser: {PROXY_UID}
  runAsNonRoot: true
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: {{drop: [ALL]}}
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

fn add(template: &mut Value, options: &Options) {
    let Some(t) = template.as_mapping_mut() else {
        return;
    };
    let annotations = child_map(child_map(t, "metadata"), "annotations");
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
    let init = options
        .transparent
        .then(|| init_container(options, annotations));
    let spec = child_map(t, "spec");
    let containers = child_list(spec, "initContainers");
    containers.insert(0, sidecar(options));
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
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_mapping_mut) {
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_mapping_mut) {
            if let Some(Value::String(added)) = annotations.remove(ADDED) {
                for key in added.split(',') {
                    annotations.remove(key);
                }
            }
            annotations.remove(INJECTED);
            annotations.remove(INBOUND_PORT);
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
        if meta.is_empty() {
            t.remove("metadata");
        }
    }
    if let Some(spec) = t.get_mut("spec").and_then(Value::as_mapping_mut) {
        for (key, names) in [
            ("initContainers", &[INIT, SIDECAR][..]),
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
