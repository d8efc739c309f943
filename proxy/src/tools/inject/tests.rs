//! Golden tests of `skiff inject`: every workload kind in `proxy/tests/inject/workloads.yaml`
//! must come out exactly as `injected.yaml`; injecting twice changes nothing; the opt-out
//! annotation is honoured; `--uninject` gives the input back.

use super::*;

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
    assert_eq!(env, ["POD_NAMESPACE", "POD_NAME", "POD_SERVICE_ACCOUNT"]);
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
