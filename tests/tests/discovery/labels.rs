//! The destination labels discovery gives an endpoint's series, from its Pod: `dst_pod`, its
//! owner as the user knows it (a ReplicaSet's Deployment, a Job's CronJob) and its service
//! account, beside the service's `dst_service` and `dst_namespace`.

use std::time::Duration;

use serde_json::json;
use skiff_e2e::fake_api::FakeApi;
use skiff_e2e::*;

use super::{call, pods, proxy, service, slice, TOKEN};

/// A Pod of namespace shop running as `sa`, controlled by `owner` (kind, name).
fn pod(name: &str, sa: &str, owner: (&str, &str), labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1,
                                 "uid": format!("uid-{}", owner.1), "controller": true}]
        },
        "spec": {"serviceAccountName": sa, "containers": []}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_labelled_with_their_pod_its_workload_and_service_account() {
    let api = FakeApi::builder()
        .token(TOKEN)
        .resource("batch/v1", "jobs", "Job", true)
        .start()
        .await;
    let backends = pods(&["a", "b", "c"]).await;
    let addrs: Vec<_> = backends.iter().map(|(_, a)| *a).collect();
    api.apply(service("web", 80, "10.96.0.10"));
    let mut s = slice("web", "web-1", &addrs);
    for (i, name) in ["web-7d4f9-x2k8q", "report-28930-7hx2p", "db-0"]
        .iter()
        .enumerate()
    {
        s["endpoints"][i]["targetRef"] = json!({"kind": "Pod", "name": name, "namespace": "shop"});
    }
    api.apply(s);
    api.apply(pod(
        "web-7d4f9-x2k8q",
        "web",
        ("ReplicaSet", "web-7d4f9"),
        json!({"pod-template-hash": "7d4f9"}),
    ));
    api.apply(pod(
        "report-28930-7hx2p",
        "report",
        ("Job", "report-28930"),
        json!({}),
    ));
    api.apply(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "report-28930", "namespace": "shop",
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                                          "name": "report", "uid": "uid-report",
                                          "controller": true}]},
        "spec": {"template": {"spec": {"containers": []}}}
    }));
    api.apply(pod("db-0", "db", ("StatefulSet", "db"), json!({})));
    let proxy = proxy(&api, "labels").await;
    let out = proxy.outbound_addr;

    // Once the service is known with its endpoints (the Pods and the Job are read first),
    // until every endpoint has answered once.
    eventually(Duration::from_secs(10), "web answers", || async {
        call(out, "web").await.0 == 200
    })
    .await;
    let mut seen = std::collections::HashSet::new();
    let mut sent = 1;
    while seen.len() < 3 {
        assert!(
            sent < 300,
            "three endpoints answer within 300 requests: {seen:?}"
        );
        let (status, body) = call(out, "web").await;
        assert_eq!(status, 200, "{body}");
        seen.insert(body);
        sent += 1;
    }
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    let count = |parts: &[&str]| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("request_total{") && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let service = [r#"dst_service="web""#, r#"dst_namespace="shop""#];
    assert_eq!(count(&service), f64::from(sent), "{metrics}");
    for (pod, owner, sa) in [
        ("web-7d4f9-x2k8q", r#"dst_deployment="web""#, "web"),
        ("report-28930-7hx2p", r#"dst_cronjob="report""#, "report"),
        ("db-0", r#"dst_statefulset="db""#, "db"),
    ] {
        let pod = format!(r#"dst_pod="{pod}""#);
        let sa = format!(r#"dst_serviceaccount="{sa}""#);
        let n = count(&[&service[..], &[pod.as_str(), owner, sa.as_str()]].concat());
        assert!(n >= 1.0, "{pod} {owner} {sa}:\n{metrics}");
    }
    drop(backends);
}
