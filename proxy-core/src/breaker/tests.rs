//! Unit tests for the breaker state machine, on tokio's paused clock.

use std::time::Duration;

use tokio::time::{advance, Instant};

use super::state::{FailureRate, Machine, Settings, State};

fn settings() -> Settings {
    Settings {
        consecutive_failures: 3,
        failure_rate: None,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(10),
    }
}

fn open_until(m: &Machine) -> Instant {
    match m.state() {
        State::Open { until } => until,
        other => panic!("expected Open, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn walks_closed_open_half_open_closed() {
    let mut m = Machine::new(settings());
    assert_eq!(m.state(), State::Closed);
    assert!(m
        .record(false, m.generation(), Instant::now(), || 0.0)
        .is_none());
    assert!(m
        .record(false, m.generation(), Instant::now(), || 0.0)
        .is_none());
    let t = m
        .record(false, m.generation(), Instant::now(), || 0.0)
        .expect("tripped");
    assert!(t.reason.contains("3 consecutive failures"), "{}", t.reason);
    assert_eq!(open_until(&m), Instant::now() + Duration::from_secs(1));

    assert!(m.admit(Instant::now()).0.is_none(), "ejected");
    advance(Duration::from_secs(1)).await;
    let (ok, t) = m.admit(Instant::now());
    assert!(ok.is_some(), "one probe after the ejection");
    assert_eq!(t.unwrap().to, State::HalfOpen { probing: true });
    assert!(
        m.admit(Instant::now()).0.is_none(),
        "only one probe at a time"
    );

    let t = m
        .record(true, m.generation(), Instant::now(), || 0.0)
        .expect("closed");
    assert_eq!(t.to, State::Closed);
    assert!(m.admit(Instant::now()).0.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_again_for_longer() {
    let mut m = Machine::new(settings());
    for _ in 0..3 {
        m.record(false, m.generation(), Instant::now(), || 0.0);
    }
    let mut expected = Duration::from_secs(1);
    for _ in 0..5 {
        let until = open_until(&m);
        assert_eq!(until - Instant::now(), expected);
        advance(expected).await;
        assert!(m.admit(Instant::now()).0.is_some());
        m.record(false, m.generation(), Instant::now(), || 0.0)
            .expect("re-opened");
        expected = (expected * 2).min(Duration::from_secs(10));
    }
    assert_eq!(
        open_until(&m) - Instant::now(),
        Duration::from_secs(10),
        "capped"
    );
}

#[tokio::test(start_paused = true)]
async fn successes_reset_the_consecutive_count() {
    let mut m = Machine::new(settings());
    for _ in 0..10 {
        m.record(false, m.generation(), Instant::now(), || 0.0);
        m.record(false, m.generation(), Instant::now(), || 0.0);
        m.record(true, m.generation(), Instant::now(), || 0.0);
    }
    assert_eq!(m.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_over_the_window_trips() {
    let mut s = settings();
    s.consecutive_failures = 100;
    s.failure_rate = Some(FailureRate {
        threshold: 0.5,
        min_requests: 10,
        window: Duration::from_secs(10),
    });
    let mut m = Machine::new(s);
    // Alternating outcomes: 50% never exceeds the threshold.
    for _ in 0..10 {
        m.record(true, m.generation(), Instant::now(), || 0.0);
        m.record(false, m.generation(), Instant::now(), || 0.0);
        advance(Duration::from_millis(200)).await;
    }
    assert_eq!(m.state(), State::Closed);
    // Old outcomes slide out of the window; a burst of failures then trips it.
    advance(Duration::from_secs(20)).await;
    let mut tripped = None;
    for _ in 0..10 {
        m.record(true, m.generation(), Instant::now(), || 0.0);
        for _ in 0..2 {
            tripped = tripped.or(m.record(false, m.generation(), Instant::now(), || 0.0));
        }
    }
    let t = tripped.expect("tripped by rate");
    assert!(t.reason.contains("failed within"), "{}", t.reason);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_the_slot() {
    let mut m = Machine::new(settings());
    for _ in 0..3 {
        m.record(false, m.generation(), Instant::now(), || 0.0);
    }
    advance(Duration::from_secs(1)).await;
    let probe = m.admit(Instant::now()).0.expect("probe");
    m.release(probe);
    assert!(
        m.admit(Instant::now()).0.is_some(),
        "another request may probe"
    );
}

#[tokio::test(start_paused = true)]
async fn outcomes_from_before_a_trip_do_not_decide_the_probe() {
    let mut m = Machine::new(settings());
    // A slow request admitted while Closed...
    let stale = m.admit(Instant::now()).0.unwrap();
    for _ in 0..3 {
        m.record(false, m.generation(), Instant::now(), || 0.0);
    }
    advance(Duration::from_secs(1)).await;
    let probe = m.admit(Instant::now()).0.expect("probe");
    // ...finishes during the probe: it must not close (or re-open) the circuit.
    assert!(m.record(true, stale, Instant::now(), || 0.0).is_none());
    assert!(m.record(false, stale, Instant::now(), || 0.0).is_none());
    assert_eq!(m.state(), State::HalfOpen { probing: true });
    assert_eq!(
        m.record(true, probe, Instant::now(), || 0.0).unwrap().to,
        State::Closed
    );
}
