//! Fault injection through the real proxy: a service's abort rule answers its share of
//! requests with the configured status and `skiff-error: fault-injected`, never sending them
//! on; a route's delay rule (in `routePolicies`) slows its share by the configured time.
//! Shares are asserted on counts, within three standard deviations.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use http::StatusCode;
use serde_json::Value;
use skiff_e2e::*;

/// The value of the first series of `family` whose line contains every one of `labels`.
async fn metric(admin: SocketAddr, family: &str, labels: &[&str]) -> f64 {
    let (_, m) = admin_get(admin, "/metrics").await;
    m.lines()
        .filter(|l| l.starts_with(family) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_rule_answers_its_share_with_the_status_and_reason() {
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service_with(
            "web",
            &[web.addr],
            json!({"fault": {"abort": {"percent": 10, "status": 503}}}),
        )
        .start()
        .await;
    let mut c = h1(proxy.outbound_addr).await;
    let mut aborted: u32 = 0;
    for _ in 0..1000 {
        let rsp = c.send_request(get("web", "/")).await.unwrap();
        match rsp.status() {
            StatusCode::OK => assert_eq!(body_text(rsp).await, "web"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(rsp.headers()["skiff-error"], "fault-injected");
                body_text(rsp).await;
                aborted += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // 10% of 1,000 is 100, with a standard deviation of about 9.5: 10% +- 3 points.
    assert!((70..=130).contains(&aborted), "{aborted} aborted");
    assert_eq!(
        web.requests(),
        1000 - aborted as usize,
        "aborted requests never reach the backend"
    );
    let injected = metric(
        proxy.admin_addr,
        "skiff_faults_injected_total",
        &[r#"kind="abort""#],
    )
    .await;
    assert_eq!(injected, f64::from(aborted));
    let counted = metric(
        proxy.admin_addr,
        "response_total",
        &[r#"error="fault-injected""#],
    )
    .await;
    assert_eq!(
        counted,
        f64::from(aborted),
        "labelled as injected in response_total"
    );
}

fn httproute(rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"kind": "Service", "name": "web"}], "rules": rules},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_delay_rule_slows_its_share_by_the_delay() {
    const DELAY: Duration = Duration::from_millis(500);
    let web = hello("web").await;
    let proxy = ProxyConfig::new(1)
        .service("web", &[web.addr])
        .spec(json!({"routePolicies": {
            "web/slow": {"fault": {"delay": {"percent": 50, "duration": "500ms"}}},
        }}))
        .document(httproute(json!([
            {"name": "slow", "matches": [{"path": {"value": "/slow"}}]},
            {"name": "plain", "matches": [{"path": {"value": "/plain"}}]},
        ])))
        .start()
        .await;
    // 100 requests at once, each on its own connection, timed from the client.
    let out = proxy.outbound_addr;
    let calls: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = h1(out).await;
                let start = Instant::now();
                let rsp = c.send_request(get("web", "/slow")).await.unwrap();
                let status = rsp.status();
                body_text(rsp).await;
                (status, start.elapsed())
            })
        })
        .collect();
    let mut slow: u32 = 0;
    for call in calls {
        let (status, took) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "a delayed request still succeeds");
        if took >= DELAY {
            slow += 1;
        }
    }
    let injected = metric(
        proxy.admin_addr,
        "skiff_faults_injected_total",
        &[r#"kind="delay""#],
    )
    .await;
    // 50% of 100, standard deviation 5: 50 +- 15.
    assert!((35.0..=65.0).contains(&injected), "{injected} delayed");
    assert_eq!(
        f64::from(slow),
        injected,
        "exactly the delayed ones took the delay"
    );
    // The other route has no fault.
    let mut c = h1(out).await;
    let start = Instant::now();
    for _ in 0..20 {
        let rsp = c.send_request(get("web", "/plain")).await.unwrap();
        body_text(rsp).await;
    }
    assert!(
        start.elapsed() < DELAY,
        "no request on the plain route was delayed"
    );
}
