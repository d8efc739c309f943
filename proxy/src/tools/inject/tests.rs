//! Golden tests of `skiff inject`: every workload kind in `proxy/tests/inject/workloads.yaml`
//! must come out exactly as `injected.yaml`; injecting twice changes nothing; the opt-out
//! annotation is honoured; `--uninject` gives the input back. Then the labels naming each
//! pod's workload and `--linkerd-compat`; [`scrape`] checks both against the scrape jobs that
//! read them.

use super::*;

mod manifests;
mod prometheus;
mod scrape;

const INPUT: &str = include_str!("../../../tests/inject/workloads.yaml");
const GOLDEN: &str = include_str!("../../../tests/inject/injected.yaml");

#[test]
fn every_workload_kind_matches_the_golden_file() {
    let (out, report) = transform(INPUT, &Options::default(), false).unwrap();
    assert_eq!(
        out, GOLDEN,
        "regenerate with: skiff inject proxy/tests/inject/workloads.yaml"
    );
    assert_eq!(
        report,
        Report {
            changed: 7,
            skipped: 1
        }
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    let (out, report) = transform(GOLDEN, &Options::default(), false).unwrap();
    assert_eq!(out, GOLDEN);
    assert_eq!(report.changed, 0);
}

#[test]
fn uninject_gives_the_input_back() {
    let (normalised, _) = transform(INPUT, &Options::default(), true).unwrap();
    let (back, report) = transform(GOLDEN, &Options::default(), true).unwrap();
    assert_eq!(back, normalised);
    assert_eq!(report.changed, 7);
    // Annotations the workload had are kept: only those injection added go.
    assert!(back.contains("prometheus.io/scrape: 'false'"));
    assert!(!back.contains("skiff.dev/injected") && !back.contains("name: skiff"));
}

#[test]
fn the_sidecar_is_native_unprivileged_and_probed() {
    let pod: Value = serde_yaml_ng::from_str(GOLDEN.split("---\n").next().unwrap()).unwrap();
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "skiff");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["runAsUser"].as_u64(), Some(PROXY_UID));
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/ready");
    let env: Vec<&str> = sidecar["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        [
            "POD_NAMESPACE",
            "POD_NAME",
            "POD_SERVICE_ACCOUNT",
            "SKIFF_WORKLOAD"
        ]
    );
    // The workload's kind and name, which the downward API cannot give (traces' resource).
    assert_eq!(sidecar["env"][3]["value"], "pod/shell");
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    assert_eq!(volumes[1]["csi"]["driver"], "spiffe.csi.cert-manager.io");
}

#[test]
fn a_secret_can_carry_the_identity_and_the_image_is_chosen() {
    let options = Options {
        image: "registry.local/skiff:0.1".into(),
        config_map: "mesh".into(),
        identity_secret: Some("web-svid".into()),
        ..Options::default()
    };
    let (out, _) = transform(INPUT, &options, false).unwrap();
    assert!(out.contains("image: registry.local/skiff:0.1"));
    assert!(out.contains("secretName: web-svid"));
    assert!(out.contains("name: mesh"));
    assert!(!out.contains("spiffe.csi.cert-manager.io/fs-group"));
}

#[test]
fn opted_out_templates_and_other_kinds_pass_through() {
    let doc = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  template:\n    metadata:\n      annotations: {skiff.dev/inject: disabled}\n    spec:\n      containers: [{name: a, image: a}]\n";
    let (out, report) = transform(doc, &Options::default(), false).unwrap();
    assert!(!out.contains("skiff.dev/injected"));
    assert_eq!(
        report,
        Report {
            changed: 0,
            skipped: 1
        }
    );
    let (out, report) = transform(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        &Options::default(),
        false,
    )
    .unwrap();
    assert_eq!(
        out,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n"
    );
    assert_eq!(report, Report::default());
    let err = transform("kind: [", &Options::default(), false).unwrap_err();
    assert_eq!(err.document, 1);
}

#[test]
fn transparent_mode_adds_the_redirect_step_first_with_the_pod_exclusions() {
    let deployment = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata:
      annotations:
        skiff.dev/skip-inbound-ports: ', '
        skiff.dev/skip-outbound-ports: '3306, 5432,'
        skiff.dev/skip-outbound-cidrs: 10.96.0.1/32
    spec:
      initContainers:
      - {name: migrate, image: migrate}
      containers:
      - {name: app, image: app}
";
    let options = Options {
        transparent: true,
        ..Options::default()
    };
    let (out, report) = transform(deployment, &options, false).unwrap();
    assert_eq!(report.changed, 1);
    let doc: Value = serde_yaml_ng::from_str(&out).unwrap();
    let inits = doc["spec"]["template"]["spec"]["initContainers"]
        .as_sequence()
        .unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["skiff-init", "skiff", "migrate"]);
    let init = &inits[0];
    assert_eq!(init["image"], "ghcr.io/skiff-proxy/skiff-init:latest");
    let args: Vec<&str> = init["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // The empty list and the trailing comma leave no empty item: init-iptables refuses them.
    assert_eq!(
        args,
        [
            "init-iptables",
            "--proxy-uid=2102",
            "--skip-outbound-ports=3306,5432",
            "--skip-outbound-cidrs=10.96.0.1/32"
        ]
    );
    assert!(
        init.get("restartPolicy").is_none(),
        "runs to completion first"
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["add"][0],
        "NET_ADMIN"
    );
    // The proxy's uid in the rules is the sidecar's.
    assert_eq!(inits[1]["securityContext"]["runAsUser"], 2102);

    // Idempotent, and `--uninject` takes out both containers.
    let (again, report) = transform(&out, &options, false).unwrap();
    assert_eq!((again.as_str(), report.changed), (out.as_str(), 0));
    let (back, _) = transform(&out, &options, true).unwrap();
    assert!(!back.contains("skiff-init") && !back.contains("name: skiff\n"));
    assert!(back.contains("name: migrate"));
}

/// The documents of `yaml`, parsed.
fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect()
}

/// The pod template of a workload document.
fn template(doc: &Value) -> &Value {
    match doc["kind"].as_str().unwrap() {
        "Pod" => doc,
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => &doc["spec"]["template"],
    }
}

/// The pod template's labels, as `key=value`.
fn labels(doc: &Value) -> Vec<String> {
    let labels = &template(doc)["metadata"]["labels"];
    labels
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{}={}", k.as_str().unwrap(), v.as_str().unwrap()))
        .collect()
}

/// The injected document of `kind`.
fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap()
}

fn compat() -> Options {
    Options {
        linkerd_compat: true,
        ..Options::default()
    }
}

#[test]
fn each_pod_template_is_labelled_with_its_workload() {
    let docs = documents(GOLDEN);
    for (kind, want) in [
        (
            "Deployment",
            &["app=web", "skiff.dev/proxy-deployment=web"][..],
        ),
        ("StatefulSet", &["app=db", "skiff.dev/proxy-statefulset=db"]),
        (
            "DaemonSet",
            &["app=agent", "skiff.dev/proxy-daemonset=agent"],
        ),
        (
            "ReplicaSet",
            &["app=legacy", "skiff.dev/proxy-replicaset=legacy"],
        ),
        ("Job", &["skiff.dev/proxy-job=report"]),
        // The jobTemplate's pod template: the Jobs the CronJob makes run those pods.
        ("CronJob", &["skiff.dev/proxy-cronjob=nightly"]),
        ("Pod", &["skiff.dev/proxy-pod=shell"]),
    ] {
        assert_eq!(labels(of_kind(&docs, kind)), want, "{kind}");
    }
    let deployment = template(of_kind(&docs, "Deployment"));
    assert_eq!(
        deployment["metadata"]["annotations"][ADDED_LABELS],
        "skiff.dev/proxy-deployment"
    );
    // The admin port keeps the name scrape jobs and PodMonitors pick it by.
    let sidecar = &deployment["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "skiff");
    assert_eq!(sidecar["ports"][1]["name"], "skiff-admin");
    assert_eq!(sidecar["ports"][1]["containerPort"], 4191);
    // The opted-out Deployment gets nothing.
    let opted_out = docs.iter().find(|d| d["metadata"]["name"] == "opted-out");
    assert_eq!(labels(opted_out.unwrap()), ["app=opted-out"]);
}

#[test]
fn other_workload_kinds_are_labelled_too() {
    let yaml = "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: canary, namespace: shop}
spec:
  template:
    spec:
      containers: [{name: app, image: app:1}]
---
apiVersion: v1
kind: ReplicationController
metadata: {name: old, namespace: shop}
spec:
  template:
    spec:
      containers: [{name: app, image: app:1}]
---
apiVersion: example.com/v1
kind: Rollout
metadata: {name: not-argo}
spec:
  template:
    spec:
      containers: [{name: app, image: app:1}]
";
    let (out, report) = transform(yaml, &compat(), false).unwrap();
    // Any kind with a standard pod template is a workload, Argo's or not.
    assert_eq!(report.changed, 3);
    let docs = documents(&out);
    // Linkerd's injector has no label for a Rollout: neither has the compat mode.
    assert_eq!(
        labels(&docs[0]),
        [
            "skiff.dev/proxy-rollout=canary",
            "linkerd.io/control-plane-ns=linkerd",
            "linkerd.io/workload-ns=shop"
        ]
    );
    assert_eq!(
        labels(&docs[1]),
        [
            "skiff.dev/proxy-replicationcontroller=old",
            "linkerd.io/control-plane-ns=linkerd",
            "linkerd.io/proxy-replicationcontroller=old",
            "linkerd.io/workload-ns=shop"
        ]
    );
    assert_eq!(labels(&docs[2])[0], "skiff.dev/proxy-rollout=not-argo");
}

#[test]
fn labels_the_template_has_are_kept_and_stay_after_uninject() {
    let name = "a".repeat(64);
    let yaml = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  template:
    metadata:
      labels: {{app: web, skiff.dev/proxy-deployment: frontend}}
    spec:
      containers: [{{name: web, image: web:1}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  template:
    spec:
      containers: [{{name: web, image: web:1}}]
"
    );
    let (out, _) = transform(&yaml, &Options::default(), false).unwrap();
    let docs = documents(&out);
    assert_eq!(
        labels(&docs[0]),
        ["app=web", "skiff.dev/proxy-deployment=frontend"]
    );
    assert!(template(&docs[0])["metadata"]["annotations"]
        .get(ADDED_LABELS)
        .is_none());
    // A name longer than a label value may be gets no label: a label the API server
    // refuses would fail the whole manifest.
    assert!(labels(&docs[1]).is_empty());
    let (back, _) = transform(&out, &Options::default(), true).unwrap();
    assert!(
        back.contains("skiff.dev/proxy-deployment: frontend"),
        "{back}"
    );
}

#[test]
fn linkerd_compat_names_the_sidecar_and_adds_linkerd_labels() {
    let options = Options {
        linkerd_namespace: "mesh".into(),
        ..compat()
    };
    let (out, report) = transform(INPUT, &options, false).unwrap();
    assert_eq!(report.changed, 7);
    let docs = documents(&out);
    // The labels Linkerd's injector writes (pkg/inject/inject.go): no `proxy-pod` for a
    // bare Pod.
    for (kind, want) in [
        (
            "Deployment",
            &[
                "app=web",
                "skiff.dev/proxy-deployment=web",
                "linkerd.io/control-plane-ns=mesh",
                "linkerd.io/proxy-deployment=web",
                "linkerd.io/workload-ns=shop",
            ][..],
        ),
        (
            "StatefulSet",
            &[
                "app=db",
                "skiff.dev/proxy-statefulset=db",
                "linkerd.io/control-plane-ns=mesh",
                "linkerd.io/proxy-statefulset=db",
                "linkerd.io/workload-ns=shop",
            ],
        ),
        (
            "CronJob",
            &[
                "skiff.dev/proxy-cronjob=nightly",
                "linkerd.io/control-plane-ns=mesh",
                "linkerd.io/proxy-cronjob=nightly",
                "linkerd.io/workload-ns=shop",
            ],
        ),
        (
            "Pod",
            &[
                "skiff.dev/proxy-pod=shell",
                "linkerd.io/control-plane-ns=mesh",
                "linkerd.io/workload-ns=shop",
            ],
        ),
    ] {
        assert_eq!(labels(of_kind(&docs, kind)), want, "{kind}");
    }
    for doc in docs.iter().filter(|d| d["kind"] != "Service") {
        let t = template(doc);
        if t["metadata"]["annotations"].get(INJECTED).is_none() {
            continue;
        }
        let sidecar = &t["spec"]["initContainers"][0];
        assert_eq!(sidecar["name"], "linkerd-proxy");
        assert_eq!(sidecar["restartPolicy"], "Always");
        let ports: Vec<&str> = sidecar["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(ports, ["skiff-inbound", "linkerd-admin"]);
        assert_eq!(t["metadata"]["annotations"][SIDECAR_NAME], "linkerd-proxy");
    }
}

#[test]
fn linkerd_compat_output_reinjects_and_uninjects_cleanly() {
    let (normalised, _) = transform(INPUT, &Options::default(), true).unwrap();
    let (plain, _) = transform(INPUT, &Options::default(), false).unwrap();
    for options in [
        compat(),
        Options {
            transparent: true,
            ..compat()
        },
    ] {
        let (out, _) = transform(INPUT, &options, false).unwrap();
        // Injecting twice changes nothing.
        let (again, report) = transform(&out, &options, false).unwrap();
        assert_eq!((again.as_str(), report.changed), (out.as_str(), 0));
        // Injecting without the flag replaces the compat sidecar and labels.
        let (switched, _) = transform(&out, &Options::default(), false).unwrap();
        assert_eq!(switched, plain);
        // And `--uninject` needs no flag to find the sidecar by its other name.
        let (back, report) = transform(&out, &Options::default(), true).unwrap();
        assert_eq!(report.changed, 7);
        assert_eq!(back, normalised);
        assert!(!back.contains("linkerd"), "{back}");
    }
    // The other way round too.
    let (switched, _) = transform(&plain, &compat(), false).unwrap();
    assert_eq!(switched, transform(INPUT, &compat(), false).unwrap().0);
}

#[test]
fn a_pod_linkerd_already_meshes_is_refused_and_its_proxy_never_removed() {
    let meshed = "apiVersion: v1
kind: Pod
metadata:
  name: meshed
  labels: {linkerd.io/control-plane-ns: linkerd}
spec:
  initContainers:
  - {name: linkerd-proxy, image: cr.l5d.io/linkerd/proxy, restartPolicy: Always}
  containers: [{name: app, image: app:1}]
";
    let err = transform(meshed, &compat(), false).unwrap_err();
    assert_eq!(err.document, 1);
    assert!(err.message.contains("named linkerd-proxy"), "{err}");
    // Without the flag the names do not clash; injecting again or uninjecting leaves
    // Linkerd's proxy where it is.
    let (out, _) = transform(meshed, &Options::default(), false).unwrap();
    let (again, report) = transform(&out, &Options::default(), false).unwrap();
    assert_eq!((again.as_str(), report.changed), (out.as_str(), 0));
    let (back, _) = transform(&out, &Options::default(), true).unwrap();
    assert!(back.contains("name: linkerd-proxy"), "{back}");
    assert_eq!(
        back,
        transform(meshed, &Options::default(), true).unwrap().0
    );
}

#[test]
fn the_linkerd_flags_parse_and_are_checked() {
    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        options: Options,
    }
    let parse = |args: &[&str]| {
        use clap::Parser;
        Flags::try_parse_from(std::iter::once("inject").chain(args.iter().copied()))
            .map(|f| f.options)
    };
    let plain = parse(&[]).unwrap();
    assert!(!plain.linkerd_compat);
    assert_eq!(plain.linkerd_namespace, "linkerd");
    let o = parse(&["--linkerd-compat", "--linkerd-namespace", "mesh"]).unwrap();
    assert!(o.linkerd_compat);
    assert_eq!(o.linkerd_namespace, "mesh");
    // The namespace without the flag would do nothing: refused, as are non-names.
    let e = parse(&["--linkerd-namespace", "mesh"]).unwrap_err();
    assert!(e.to_string().contains("--linkerd-compat"), "{e}");
    for bad in ["Mesh", "-mesh", "mesh_1", ""] {
        assert!(
            parse(&["--linkerd-compat", "--linkerd-namespace", bad]).is_err(),
            "{bad}"
        );
    }
}
