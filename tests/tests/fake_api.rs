//! The fake Kubernetes API server (`skiff_e2e::fake_api`) against the list/watch contract,
//! over real sockets: a plain hyper client checks discovery, lists and pagination, expiry
//! (410), selectors, authentication and authorization, HTTP writes, injected failures and
//! what the server records; watches are checked in `fake_api/watches.rs`. kubectl, an
//! independent client, checks that the protocol is the one real clients speak in
//! `fake_api_kubectl.rs`, a test target of its own so that without kubectl its tests are
//! reported as ignored.

use std::time::Duration;

use serde_json::{json, Value};

#[path = "fake_api/client.rs"]
mod client;
#[path = "fake_api/objects.rs"]
mod objects;
#[path = "fake_api/watches.rs"]
mod watches;

use client::{call, get_json, names, summary, Next, Watch};
use objects::{service, slice};
use skiff_e2e::fake_api::FakeApi;

const SERVICES: &str = "/api/v1/namespaces/shop/services";
const WAIT: Duration = Duration::from_secs(10);

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn discovery_describes_every_group() {
    let api = FakeApi::start().await;
    let (status, versions) = get_json(api.addr, "/api").await;
    assert_eq!((status, &versions["versions"]), (200, &json!(["v1"])));
    let (_, core) = get_json(api.addr, "/api/v1").await;
    let services = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "services")
        .unwrap();
    assert_eq!(services["kind"], "Service");
    assert_eq!(services["namespaced"], true);
    assert_eq!(
        services["verbs"],
        json!(["get", "list", "watch", "create", "update", "patch", "delete"])
    );
    let (_, groups) = get_json(api.addr, "/apis").await;
    assert_eq!(groups["kind"], "APIGroupList");
    assert_eq!(groups["groups"].as_array().unwrap().len(), 6);
    let (_, gateway) = get_json(api.addr, "/apis/gateway.networking.k8s.io/v1beta1").await;
    assert_eq!(gateway["groupVersion"], "gateway.networking.k8s.io/v1beta1");
    assert_eq!(gateway["resources"][0]["kind"], "HTTPRoute");
    let (_, version) = get_json(api.addr, "/version").await;
    assert_eq!(version["major"], "1");
    let (status, missing) = get_json(api.addr, "/apis/apps/v1").await;
    assert_eq!((status, &missing["reason"]), (404, &json!("NotFound")));
    let (status, _) = get_json(api.addr, "/api/v1/namespaces/shop/deployments").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn lists_page_through_one_snapshot() {
    let api = FakeApi::start().await;
    for name in ["e", "a", "d", "b", "c"] {
        api.apply(service("shop", name));
    }
    api.apply(service("other", "z"));
    api.apply(service("alpha", "y"));

    let (status, page) = get_json(api.addr, &format!("{SERVICES}?limit=2")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&page["kind"], &page["apiVersion"]),
        (&json!("ServiceList"), &json!("v1"))
    );
    assert_eq!(names(&page), ["a", "b"]);
    let snapshot = page["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(snapshot, api.resource_version().to_string());
    assert_eq!(page["metadata"]["remainingItemCount"], 3);

    // Writes after the first page do not show in the next ones: the list is one snapshot.
    api.apply(service("shop", "aa"));
    api.delete("v1", "Service", "shop", "d");
    let mut token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    let mut rest = Vec::new();
    for _ in 0..5 {
        let (status, page) =
            get_json(api.addr, &format!("{SERVICES}?limit=2&continue={token}")).await;
        assert_eq!(status, 200);
        assert_eq!(page["metadata"]["resourceVersion"], snapshot.as_str());
        rest.extend(names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(next) => token = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(rest, ["c", "d", "e"]);

    // Across namespaces: by namespace, then name; a new list sees the writes.
    let (_, all) = get_json(api.addr, "/api/v1/services").await;
    assert_eq!(names(&all), ["y", "z", "a", "aa", "b", "c", "e"]);
    assert!(all["metadata"].get("continue").is_none());

    // A continue token with another resourceVersion is refused, as the API server does.
    let (status, body) = get_json(
        api.addr,
        &format!("{SERVICES}?limit=2&continue={token}&resourceVersion=3"),
    )
    .await;
    assert_eq!((status, &body["reason"]), (400, &json!("BadRequest")));
    let (status, _) = get_json(api.addr, &format!("{SERVICES}?continue=nonsense")).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn lists_honour_resource_version_semantics_and_expire() {
    let api = FakeApi::builder().history(3).start().await;
    let first = api.apply(service("shop", "a"));
    api.apply(service("shop", "b"));
    let (_, page) = get_json(api.addr, &format!("{SERVICES}?limit=1")).await;
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();

    // Exact: the state at that resourceVersion; NotOlderThan and 0: the latest.
    let (status, exact) = get_json(
        api.addr,
        &format!(
            "{SERVICES}?resourceVersion={}&resourceVersionMatch=Exact",
            rv(&first)
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(names(&exact), ["a"]);
    assert_eq!(exact["metadata"]["resourceVersion"], rv(&first).to_string());
    for query in [
        "resourceVersion=0",
        "resourceVersion=1&resourceVersionMatch=NotOlderThan",
    ] {
        let (_, latest) = get_json(api.addr, &format!("{SERVICES}?{query}")).await;
        assert_eq!(names(&latest), ["a", "b"], "{query}");
    }
    let (status, body) = get_json(api.addr, &format!("{SERVICES}?resourceVersion=99")).await;
    assert_eq!((status, &body["reason"]), (504, &json!("Timeout")));
    let (status, body) =
        get_json(api.addr, &format!("{SERVICES}?resourceVersionMatch=Exact")).await;
    assert_eq!((status, &body["reason"]), (422, &json!("Invalid")));

    // Four more writes push the list's resourceVersion out of the history of three.
    for name in ["c", "d", "e", "f"] {
        api.apply(service("shop", name));
    }
    let (status, body) = get_json(api.addr, &format!("{SERVICES}?limit=1&continue={token}")).await;
    assert_eq!(status, 410);
    assert_eq!(
        (&body["kind"], &body["reason"], &body["code"]),
        (&json!("Status"), &json!("Expired"), &json!(410))
    );
    // The token in the answer continues, inconsistently, from the latest state.
    let inconsistent = body["metadata"]["continue"].as_str().unwrap();
    let (status, rest) = get_json(api.addr, &format!("{SERVICES}?continue={inconsistent}")).await;
    assert_eq!(status, 200);
    assert_eq!(names(&rest), ["b", "c", "d", "e", "f"]);
    let (status, body) = get_json(
        api.addr,
        &format!(
            "{SERVICES}?resourceVersion={}&resourceVersionMatch=Exact",
            rv(&first)
        ),
    )
    .await;
    assert_eq!((status, &body["reason"]), (410, &json!("Expired")));
}

#[tokio::test]
async fn selectors_narrow_lists_and_watches() {
    let api = FakeApi::start().await;
    api.apply(slice("web-1", "web"));
    api.apply(slice("web-2", "web"));
    api.apply(slice("api-1", "api"));
    let slices = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices";
    let by_service = "labelSelector=kubernetes.io%2Fservice-name%3Dweb";
    let (_, list) = get_json(api.addr, &format!("{slices}?{by_service}")).await;
    assert_eq!(names(&list), ["web-1", "web-2"]);
    assert_eq!(list["kind"], "EndpointSliceList");
    let (_, list) = get_json(
        api.addr,
        &format!("{slices}?labelSelector=kubernetes.io/service-name!=web"),
    )
    .await;
    assert_eq!(names(&list), ["api-1"]);
    let (_, list) = get_json(
        api.addr,
        &format!("{slices}?fieldSelector=metadata.name%3Dweb-2"),
    )
    .await;
    assert_eq!(names(&list), ["web-2"]);
    let (_, list) = get_json(
        api.addr,
        "/apis/discovery.k8s.io/v1/endpointslices?fieldSelector=metadata.namespace!=shop",
    )
    .await;
    assert_eq!(names(&list), Vec::<String>::new());
    let (status, body) = get_json(api.addr, &format!("{slices}?fieldSelector=spec.x=1")).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("field label not supported: spec.x"))
    );
    let (status, _) = get_json(api.addr, &format!("{slices}?labelSelector=%3Dweb")).await;
    assert_eq!(status, 400);

    // An object that stops matching is DELETED for the watch, one that starts is ADDED.
    let mut watch = Watch::open(
        api.addr,
        &format!(
            "{slices}?watch=true&{by_service}&resourceVersion={}",
            api.resource_version()
        ),
    )
    .await;
    api.apply(slice("web-2", "api"));
    let gone = watch.event().await;
    assert_eq!(
        summary(&gone),
        (
            "DELETED".into(),
            "web-2".into(),
            api.resource_version().to_string()
        )
    );
    assert_eq!(
        gone["object"]["metadata"]["labels"]["kubernetes.io/service-name"],
        "web"
    );
    api.apply(slice("api-2", "api"));
    api.apply(slice("web-2", "web"));
    assert_eq!(summary(&watch.event().await).0, "ADDED");
    let mut modified = slice("web-2", "web");
    modified["endpoints"][0]["addresses"] = json!(["10.0.0.2"]);
    api.apply(modified);
    assert_eq!(summary(&watch.event().await).0, "MODIFIED");

    // A field selector on a watch, and the watch of an object's URL.
    let mut by_name = Watch::open(
        api.addr,
        &format!("{slices}?watch=true&fieldSelector=metadata.name=api-1"),
    )
    .await;
    assert_eq!(summary(&by_name.event().await).1, "api-1");
    let mut one = Watch::open(api.addr, &format!("{slices}/web-1?watch=true")).await;
    assert_eq!(summary(&one.event().await).1, "web-1");
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "web-1");
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "api-1");
    assert_eq!(summary(&one.event().await).0, "DELETED");
    assert_eq!(summary(&by_name.event().await).0, "DELETED");
}

#[tokio::test]
async fn tokens_and_denials_answer_the_api_servers_statuses() {
    let api = FakeApi::builder()
        .token("sesame")
        .user("system:serviceaccount:shop:web")
        .start()
        .await;
    api.apply(service("shop", "web"));
    for token in [None, Some("wrong")] {
        let (status, body) = call(api.addr, "GET", SERVICES, token, None).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
        );
    }
    let (status, _) = call(api.addr, "GET", "/api", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = call(api.addr, "GET", SERVICES, Some("sesame"), None).await;
    assert_eq!(status, 200);

    api.deny("services", &["list", "watch", "get"]);
    api.deny("httproutes.gateway.networking.k8s.io", &[]);
    // Resource, verb, scope as the API server words them.
    let who = "User \"system:serviceaccount:shop:web\" cannot";
    let core = "resource \"services\" in API group \"\"";
    let in_shop = "in the namespace \"shop\"";
    let cases = [
        (
            "/api/v1/services",
            format!("services is forbidden: {who} list {core} at the cluster scope"),
        ),
        (
            SERVICES,
            format!("services is forbidden: {who} list {core} {in_shop}"),
        ),
        (
            "/api/v1/namespaces/shop/services?watch=true",
            format!("services is forbidden: {who} watch {core} {in_shop}"),
        ),
        (
            "/api/v1/namespaces/shop/services/web",
            format!("services \"web\" is forbidden: {who} get {core} {in_shop}"),
        ),
        (
            "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes",
            format!(
                "httproutes.gateway.networking.k8s.io is forbidden: {who} list resource \
                 \"httproutes\" in API group \"gateway.networking.k8s.io\" {in_shop}"
            ),
        ),
    ];
    for (path, message) in cases {
        let (status, body) = call(api.addr, "GET", path, Some("sesame"), None).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(
            (&body["reason"], &body["code"]),
            (&json!("Forbidden"), &json!(403))
        );
        assert_eq!(body["message"], message.as_str(), "{path}");
    }
    // Other resources, and the policy group's httproutes, are not denied.
    let (status, _) = call(
        api.addr,
        "GET",
        "/api/v1/namespaces/shop/pods",
        Some("sesame"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        api.addr,
        "GET",
        "/apis/policy.linkerd.io/v1beta3/httproutes",
        Some("sesame"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    api.allow_all();
    let (status, _) = call(api.addr, "GET", SERVICES, Some("sesame"), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_and_comes_back_with_its_objects() {
    let api = FakeApi::start().await;
    api.apply(service("shop", "a"));
    let before = api.resource_version();
    let mut watch = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion={before}"),
    )
    .await;
    api.stop().await;
    assert!(matches!(watch.next_within(WAIT).await, Next::Broken));
    let refused = tokio::net::TcpStream::connect(api.addr).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    api.apply(service("shop", "b"));

    api.start_again().await;
    let (_, list) = get_json(api.addr, SERVICES).await;
    assert_eq!(names(&list), ["a", "b"]);
    // The history survived: a watch resumes where it broke off.
    let mut resumed = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion={before}"),
    )
    .await;
    assert_eq!(summary(&resumed.event().await).1, "b");
}

#[tokio::test]
async fn injected_failures_take_the_next_matching_requests() {
    let api = FakeApi::start().await;
    api.fail_next(2, Some("/api/v1/namespaces/shop"));
    let (status, body) = get_json(api.addr, "/api/v1/services").await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (status, body) = get_json(api.addr, SERVICES).await;
        assert_eq!((status, &body["reason"]), (500, &json!("InternalError")));
    }
    let (status, _) = get_json(api.addr, SERVICES).await;
    assert_eq!(status, 200);
    api.fail_next(1, None);
    let (status, _) = get_json(api.addr, "/api").await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn http_writes_follow_the_api_servers_answers() {
    let api = FakeApi::start().await;
    let web = service("shop", "web");
    let (status, created) = call(api.addr, "POST", SERVICES, None, Some(&web)).await;
    assert_eq!(status, 201);
    assert_eq!(created["metadata"]["resourceVersion"], "1");
    let (status, body) = call(api.addr, "POST", SERVICES, None, Some(&web)).await;
    assert_eq!((status, &body["reason"]), (409, &json!("AlreadyExists")));
    let (status, body) = call(
        api.addr,
        "POST",
        "/api/v1/namespaces/other/services",
        None,
        Some(&web),
    )
    .await;
    assert_eq!((status, &body["reason"]), (400, &json!("BadRequest")));

    let url = format!("{SERVICES}/web");
    let mut update = created.clone();
    update["spec"]["ports"][0]["port"] = json!(81);
    let (status, updated) = call(api.addr, "PUT", &url, None, Some(&update)).await;
    assert_eq!((status, rv(&updated)), (200, 2));
    // The same resourceVersion again is stale now.
    let (status, body) = call(api.addr, "PUT", &url, None, Some(&update)).await;
    assert_eq!((status, &body["reason"]), (409, &json!("Conflict")));

    let (status, got) = get_json(api.addr, &url).await;
    assert_eq!(
        (status, &got["spec"]["ports"][0]["port"]),
        (200, &json!(81))
    );
    let (status, deleted) = call(api.addr, "DELETE", &url, None, None).await;
    assert_eq!((status, rv(&deleted)), (200, 3));
    let (status, body) = get_json(api.addr, &url).await;
    assert_eq!(status, 404);
    assert_eq!(body["message"], "services \"web\" not found");
    assert_eq!(body["details"], json!({"name": "web", "kind": "services"}));

    // Cluster-scoped: namespaces.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
    let (status, _) = call(api.addr, "POST", "/api/v1/namespaces", None, Some(&ns)).await;
    assert_eq!(status, 201);
    let (status, got) = get_json(api.addr, "/api/v1/namespaces/shop").await;
    assert_eq!((status, &got["kind"]), (200, &json!("Namespace")));
}

#[tokio::test]
async fn requests_and_watches_are_counted() {
    let api = FakeApi::start().await;
    api.apply(service("shop", "a"));
    get_json(api.addr, SERVICES).await;
    get_json(api.addr, "/api/v1/services").await;
    get_json(api.addr, &format!("{SERVICES}/a")).await;
    get_json(api.addr, "/apis/gateway.networking.k8s.io/v1/httproutes").await;
    let mut watch = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&labelSelector=app%3Da"),
    )
    .await;
    watch.event().await;
    api.apply(service("shop", "b"));
    let mut a = service("shop", "a");
    a["spec"]["ports"][0]["port"] = json!(1);
    api.apply(a);
    watch.event().await;

    assert_eq!(api.count("list", "services"), 2);
    assert_eq!(api.count("get", "services"), 1);
    assert_eq!(api.count("watch", "services"), 1);
    assert_eq!(api.count("list", "httproutes.gateway.networking.k8s.io"), 1);
    assert_eq!(api.open_watches(), 1);
    let watches = api.watches();
    assert_eq!(watches.len(), 1);
    assert_eq!(watches[0].resource, "services");
    assert_eq!(watches[0].namespace.as_deref(), Some("shop"));
    assert_eq!(watches[0].query, "watch=true&labelSelector=app%3Da");
    assert_eq!((watches[0].events, watches[0].open), (2, true));
    let log = api.requests();
    let last = log.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str(), last.verb),
        ("GET", SERVICES, Some("watch"))
    );
    assert_eq!(last.status, 200);
    // The client going away closes the watch on the server.
    drop(watch);
    skiff_e2e::eventually(WAIT, "the watch is closed", || async {
        api.open_watches() == 0
    })
    .await;
    assert!(!api.watches()[0].open);
}
