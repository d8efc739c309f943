//! Starting and stopping a lazy watch around requests, on tokio's paused clock, with a
//! stand-in watch that answers after a set time (the Kubernetes watch itself is tested
//! against the fake API server in the end-to-end tests).

use super::*;

/// A lazy watch whose every start answers after `answer_after`; counts its starts.
fn lazy(idle: Duration, answer_after: Duration) -> (Arc<Lazy>, Arc<AtomicUsize>) {
    let shared = Arc::new(LazyShared::new(idle));
    let current: Arc<ArcSwap<Vec<Arc<Endpoint>>>> = Arc::default();
    let starts = Arc::new(AtomicUsize::new(0));
    let (state, counted) = (shared.clone(), starts.clone());
    let start = move |generation: u64| {
        counted.fetch_add(1, Ordering::SeqCst);
        let answering = state.clone();
        let watch = tokio::spawn(async move {
            tokio::time::sleep(answer_after).await;
            answering.publish(generation, || {});
            std::future::pending::<()>().await;
        });
        tokio::spawn(state.clone().expire(watch, current.clone()))
    };
    let lazy = Lazy {
        shared,
        start: Box::new(start),
        task: Mutex::new(None),
    };
    (Arc::new(lazy), starts)
}

fn synced(lazy: &Lazy) -> bool {
    *lazy.shared.synced.borrow()
}

/// A request as the picker makes it: note the use, then wait for the first answer.
async fn request(lazy: &Lazy, within: Duration) -> bool {
    lazy.use_now();
    let _waiting = Waiting::new(&lazy.shared);
    let mut rx = lazy.shared.synced.subscribe();
    let answered = tokio::time::timeout(within, rx.wait_for(|s| *s))
        .await
        .is_ok();
    answered
}

#[tokio::test(start_paused = true)]
async fn a_first_answer_slower_than_the_idle_timeout_still_reaches_the_waiting_request() {
    let (lazy, starts) = lazy(Duration::from_secs(1), Duration::from_secs(3));
    assert!(
        request(&lazy, Duration::from_secs(5)).await,
        "the watch was not stopped under a waiting request"
    );
    assert_eq!(starts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_watch_stops_and_the_next_use_starts_a_new_one_that_is_waited_for() {
    let (lazy, starts) = lazy(Duration::from_secs(1), Duration::from_millis(100));
    assert!(request(&lazy, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!synced(&lazy), "forgotten after the idle timeout");
    assert!(request(&lazy, Duration::from_secs(5)).await);
    assert_eq!(starts.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_answer_of_a_stopped_watch_is_dropped() {
    let (lazy, _) = lazy(Duration::from_secs(1), Duration::from_secs(30));
    lazy.use_now();
    let stopped = lazy.shared.generation.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    lazy.shared
        .publish(stopped, || panic!("applied an answer of a stopped watch"));
    assert!(!synced(&lazy));
}
