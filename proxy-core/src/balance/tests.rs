//! Unit tests for the balancer, on tokio's paused clock.

use std::time::Duration;

use tokio::time::advance;

use super::*;

struct Ep {
    name: &'static str,
    load: Load,
}

fn eps(names: &[&'static str]) -> Vec<Ep> {
    names
        .iter()
        .map(|&name| Ep {
            name,
            load: Load::default(),
        })
        .collect()
}

async fn serve(ep: &Ep, rtt: Duration) {
    let f = ep.load.start();
    advance(rtt).await;
    f.observe();
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_faster_endpoint() {
    let list = eps(&["fast", "slow"]);
    serve(&list[0], Duration::from_millis(5)).await;
    serve(&list[1], Duration::from_millis(200)).await;
    let fast = (0..1000)
        .filter(|t| {
            choose(Strategy::P2c, &list, *t, |e| &e.load, |_| true)
                .unwrap()
                .name
                == "fast"
        })
        .count();
    assert_eq!(fast, 1000, "with two endpoints P2C always compares both");

    let three = eps(&["fast", "slow", "slower"]);
    serve(&three[0], Duration::from_millis(5)).await;
    serve(&three[1], Duration::from_millis(200)).await;
    serve(&three[2], Duration::from_millis(400)).await;
    let fast = (0..3000)
        .filter(|t| {
            choose(Strategy::P2c, &three, *t, |e| &e.load, |_| true)
                .unwrap()
                .name
                == "fast"
        })
        .count();
    // The fast one wins every draw it is in: 2 of the 3 possible pairs.
    assert!(fast > 1800, "fast chosen {fast} of 3000");
}

#[tokio::test(start_paused = true)]
async fn in_flight_requests_raise_the_cost() {
    let list = eps(&["a", "b"]);
    serve(&list[0], Duration::from_millis(10)).await;
    serve(&list[1], Duration::from_millis(10)).await;
    let _busy: Vec<_> = (0..5).map(|_| list[0].load.start()).collect();
    let pick = choose(Strategy::P2c, &list, 0, |e| &e.load, |_| true).unwrap();
    assert_eq!(pick.name, "b");
    let pick = choose(Strategy::LeastRequest, &list, 0, |e| &e.load, |_| true).unwrap();
    assert_eq!(pick.name, "b");
}

#[tokio::test(start_paused = true)]
async fn a_slow_peak_fades_so_a_recovered_endpoint_returns() {
    let list = eps(&["a", "b"]);
    serve(&list[0], Duration::from_secs(2)).await;
    serve(&list[1], Duration::from_millis(50)).await;
    assert_eq!(
        choose(Strategy::P2c, &list, 0, |e| &e.load, |_| true)
            .unwrap()
            .name,
        "b"
    );
    // A minute on, the old 2s peak has faded: fresh samples decide, and the recovered
    // endpoint (now the faster) wins.
    advance(Duration::from_secs(60)).await;
    serve(&list[1], Duration::from_millis(50)).await;
    serve(&list[0], Duration::from_millis(10)).await;
    assert_eq!(
        choose(Strategy::P2c, &list, 0, |e| &e.load, |_| true)
            .unwrap()
            .name,
        "a"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_endpoints_are_skipped_by_every_strategy() {
    let list = eps(&["a", "b", "c"]);
    for s in [Strategy::P2c, Strategy::RoundRobin, Strategy::LeastRequest] {
        for t in 0..30 {
            let pick = choose(s, &list, t, |e| &e.load, |e| e.name == "c").unwrap();
            assert_eq!(pick.name, "c", "{s:?}");
        }
        assert!(choose(s, &list, 0, |e| &e.load, |_| false).is_none());
    }
    let order: Vec<&str> = (0..6)
        .map(|t| {
            choose(Strategy::RoundRobin, &list, t, |e| &e.load, |_| true)
                .unwrap()
                .name
        })
        .collect();
    assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_endpoint_is_avoided_after_one_failure() {
    let list = eps(&["dead", "a", "b"]);
    list[0].load.start().penalize();
    let dead = (0..300)
        .filter(|t| {
            choose(Strategy::P2c, &list, *t, |e| &e.load, |_| true)
                .unwrap()
                .name
                == "dead"
        })
        .count();
    assert_eq!(dead, 0, "every pair holds a healthier endpoint");
}

#[tokio::test(start_paused = true)]
async fn faster_samples_never_raise_the_average() {
    let list = eps(&["a"]);
    serve(&list[0], Duration::from_millis(10)).await;
    let before = list[0].load.cost();
    for _ in 0..1000 {
        serve(&list[0], Duration::from_micros(100)).await;
    }
    let after = list[0].load.cost();
    assert!(
        after < before,
        "the average rose from {before} to {after} ns on faster samples"
    );
}

#[test]
fn least_request_asks_admit_only_in_rank_order() {
    let list = eps(&["busy", "idle", "busier"]);
    let _a = list[0].load.start();
    let _b = (list[2].load.start(), list[2].load.start());
    let mut asked = Vec::new();
    let pick = choose(
        Strategy::LeastRequest,
        &list,
        0,
        |e| &e.load,
        |e| {
            asked.push(e.name);
            true
        },
    );
    assert_eq!(pick.unwrap().name, "idle");
    assert_eq!(asked, ["idle"], "only the winner is admitted");
}
