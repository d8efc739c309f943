//! Watches through HTTP: exactly the events after a resourceVersion, in order, then live
//! ones; bookmarks; 410 for a resourceVersion the history no longer reaches; the
//! server-side timeout; and the faults a client must survive (a dropped or stalled stream, a
//! restart on a fresh history).

use std::time::Duration;

use serde_json::json;
use skiff_e2e::fake_api::{FakeApi, FRESH_HISTORY_JUMP};

use super::client::{get_json, names, summary, Next, Watch};
use super::{rv, service, SERVICES, WAIT};

#[tokio::test]
async fn a_watch_gets_exactly_the_later_events_in_order() {
    let api = FakeApi::start().await;
    api.apply(service("shop", "a"));
    api.apply(service("shop", "b"));
    let (_, list) = get_json(api.addr, SERVICES).await;
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut changed = service("shop", "a");
    changed["spec"]["ports"][0]["port"] = json!(8080);
    api.apply(changed);
    api.delete("v1", "Service", "shop", "b");
    api.apply(service("other", "elsewhere"));
    api.apply(service("shop", "c"));

    let mut watch = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion={from}"),
    )
    .await;
    assert_eq!(watch.status, 200);
    let s = |t: &str, n: &str, rv: u64| (t.to_owned(), n.to_owned(), rv.to_string());
    assert_eq!(summary(&watch.event().await), s("MODIFIED", "a", 3));
    assert_eq!(summary(&watch.event().await), s("DELETED", "b", 4));
    assert_eq!(summary(&watch.event().await), s("ADDED", "c", 6));
    // Then live events.
    api.apply(service("shop", "d"));
    let live = watch.event().await;
    assert_eq!(summary(&live), s("ADDED", "d", 7));
    assert_eq!(
        (&live["object"]["kind"], &live["object"]["apiVersion"]),
        (&json!("Service"), &json!("v1"))
    );

    // Without a resourceVersion: the current objects as ADDED, then changes.
    let mut fresh = Watch::open(api.addr, &format!("{SERVICES}?watch=1")).await;
    let mut initial = Vec::new();
    for _ in 0..3 {
        initial.push(summary(&fresh.event().await));
    }
    assert_eq!(
        initial,
        [s("ADDED", "a", 3), s("ADDED", "c", 6), s("ADDED", "d", 7)]
    );
    api.delete("v1", "Service", "shop", "a");
    assert_eq!(summary(&fresh.event().await), s("DELETED", "a", 8));

    // sendInitialEvents: the current objects, then a bookmark that ends them.
    let stream = "?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan\
                  &allowWatchBookmarks=true";
    let mut streaming = Watch::open(api.addr, &format!("{SERVICES}{stream}")).await;
    assert_eq!(summary(&streaming.event().await), s("ADDED", "c", 6));
    assert_eq!(summary(&streaming.event().await), s("ADDED", "d", 7));
    let end = streaming.event().await;
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(end["object"]["metadata"]["resourceVersion"], "8");
    let (status, body) = get_json(
        api.addr,
        &format!("{SERVICES}?watch=true&sendInitialEvents=true"),
    )
    .await;
    assert_eq!((status, &body["reason"]), (422, &json!("Invalid")));
}

#[tokio::test]
async fn bookmarks_arrive_periodically_and_when_asked() {
    let api = FakeApi::builder()
        .bookmark_interval(Some(Duration::from_millis(100)))
        .start()
        .await;
    api.apply(service("shop", "a"));
    let from = api.resource_version();
    let mut watch = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion={from}&allowWatchBookmarks=true"),
    )
    .await;
    let bookmark = watch.event().await;
    assert_eq!(
        bookmark,
        json!({"type": "BOOKMARK", "object": {
            "kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": from.to_string()},
        }})
    );
    // A bookmark never runs ahead of an event the watch has not sent.
    api.apply(service("shop", "b"));
    let mut seen_b = false;
    for _ in 0..50 {
        let event = watch.event().await;
        if event["type"] != "BOOKMARK" {
            assert_eq!(summary(&event).1, "b");
            seen_b = true;
            continue;
        }
        let at = rv(&event["object"]);
        if at == from {
            assert!(!seen_b, "a bookmark went back to {at} after event b");
            continue;
        }
        assert!(seen_b, "a bookmark at {at} before event b");
        assert_eq!(at, from + 1);
        break;
    }
    assert!(seen_b);

    let quiet = FakeApi::builder().bookmark_interval(None).start().await;
    let mut watch = Watch::open(
        quiet.addr,
        &format!("{SERVICES}?watch=true&allowWatchBookmarks=true"),
    )
    .await;
    quiet.wait_for_watches(1, WAIT).await;
    quiet.bookmark_now();
    assert_eq!(watch.event().await["type"], "BOOKMARK");
    assert_eq!(quiet.watches()[0].bookmarks, 1);
}

#[tokio::test]
async fn a_too_old_resource_version_gets_one_410_error_event() {
    let api = FakeApi::builder().history(2).start().await;
    for name in ["a", "b", "c", "d", "e"] {
        api.apply(service("shop", name));
    }
    let mut watch = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion=1"),
    )
    .await;
    assert_eq!(watch.status, 200);
    let error = watch.event().await;
    assert_eq!(error["type"], "ERROR");
    let status = &error["object"];
    assert_eq!(
        (&status["kind"], &status["code"], &status["reason"]),
        (&json!("Status"), &json!(410), &json!("Expired"))
    );
    assert_eq!(status["message"], "too old resource version: 1 (4)");
    assert!(matches!(watch.next_within(WAIT).await, Next::End));
    // The oldest version still kept works.
    let mut watch = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion=3"),
    )
    .await;
    assert_eq!(summary(&watch.event().await).1, "d");
}

#[tokio::test]
async fn the_server_side_timeout_ends_the_stream_cleanly() {
    let api = FakeApi::builder()
        .max_watch_timeout(Duration::from_millis(300))
        .start()
        .await;
    let mut asked = Watch::open(api.addr, &format!("{SERVICES}?watch=true&timeoutSeconds=1")).await;
    let mut capped = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&timeoutSeconds=100"),
    )
    .await;
    assert!(matches!(capped.next_within(WAIT).await, Next::End));
    assert!(matches!(asked.next_within(WAIT).await, Next::End));
    assert_eq!(api.open_watches(), 0);
}

#[tokio::test]
async fn dropped_watches_break_and_stalled_ones_send_nothing_until_released() {
    let api = FakeApi::start().await;
    let mut watch = Watch::open(api.addr, &format!("{SERVICES}?watch=true")).await;
    api.wait_for_watches(1, WAIT).await;
    api.drop_watches();
    assert!(matches!(watch.next_within(WAIT).await, Next::Broken));

    let mut watch = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion=0"),
    )
    .await;
    api.wait_for_watches(1, WAIT).await;
    api.stall_watches();
    api.apply(service("shop", "a"));
    assert!(
        watch.stays_quiet(Duration::from_millis(300)).await,
        "a stalled watch sent something"
    );
    assert!(api.watches().last().unwrap().open);
    api.release_watches();
    assert_eq!(summary(&watch.event().await).1, "a");
    // A stalled watch can still be dropped.
    api.stall_watches();
    api.drop_watches();
    assert!(matches!(watch.next_within(WAIT).await, Next::Broken));
}

#[tokio::test]
async fn a_restart_on_a_fresh_history_expires_old_resource_versions() {
    let api = FakeApi::start().await;
    api.apply(service("shop", "a"));
    let before = api.resource_version();
    let mut watch = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion={before}"),
    )
    .await;
    api.wait_for_watches(1, WAIT).await;
    let after = api.restart_with_fresh_history();
    assert_eq!(after, before + FRESH_HISTORY_JUMP);
    assert!(matches!(watch.next_within(WAIT).await, Next::Broken));

    // Resuming where it was: 410, so the client must list again.
    let mut resumed = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion={before}"),
    )
    .await;
    assert_eq!(resumed.event().await["object"]["code"], 410);
    let (_, list) = get_json(api.addr, SERVICES).await;
    assert_eq!(list["metadata"]["resourceVersion"], after.to_string());
    assert_eq!(names(&list), ["a"]);
    let mut relisted = Watch::open(
        api.addr,
        &format!("{SERVICES}?watch=true&resourceVersion={after}"),
    )
    .await;
    api.apply(service("shop", "b"));
    assert_eq!(
        summary(&relisted.event().await),
        ("ADDED".into(), "b".into(), (after + 1).to_string())
    );
}
