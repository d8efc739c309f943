//! The sharing rules, on real HTTP/2 connections over in-memory pipes.

use std::convert::Infallible;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;

/// A client connection to an in-memory HTTP/2 server allowing `max_streams`, with the
/// peer's limit as the client has learnt it.
async fn connection(max_streams: u32) -> (http2::SendRequest<Body>, Probe) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let svc = service_fn(|_req| async {
            Ok::<_, Infallible>(http::Response::new(proxy_core::body::empty()))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(max_streams)
            .serve_connection(TokioIo::new(server), svc)
            .await;
    });
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client))
        .await
        .unwrap();
    let (run, limit) = drive(conn);
    tokio::spawn(run);
    // One exchange, so the server's SETTINGS have been read.
    sender.ready().await.unwrap();
    sender
        .send_request(http::Request::new(proxy_core::body::empty()))
        .await
        .unwrap();
    (sender, limit)
}

const IDLE: Duration = Duration::from_secs(90);

fn sharing() -> Sharing {
    Sharing {
        connections: 2,
        streams_per_connection: 100,
        client_share: 50,
    }
}

fn sent(next: Next) -> Slot {
    match next {
        Next::Send(_, slot) => slot,
        Next::Dial => panic!("asked to dial"),
        Next::Wait => panic!("asked to wait"),
    }
}

#[tokio::test]
async fn the_peers_stream_limit_is_learnt() {
    let (_sender, limit) = connection(4).await;
    assert_eq!(limit.get(), 4);
}

#[tokio::test]
async fn a_full_connection_makes_the_next_request_dial_then_queue() {
    let shared = Shared::default();
    assert!(matches!(shared.next(None, &sharing(), IDLE), Next::Dial));
    let (sender, limit) = connection(4).await;
    let mut slots = vec![shared.add(sender, limit, None).1];
    // Requests without a downstream connection (internal ones) have no share to respect.
    for _ in 0..3 {
        slots.push(sent(shared.next(None, &sharing(), IDLE)));
    }
    assert!(
        matches!(shared.next(None, &sharing(), IDLE), Next::Dial),
        "four streams fill a connection whose peer allows four"
    );
    let (sender, limit) = connection(4).await;
    slots.push(shared.add(sender, limit, None).1);
    for _ in 0..3 {
        slots.push(sent(shared.next(None, &sharing(), IDLE)));
    }
    assert_eq!(shared.len(), 2);
    // At the connection limit, the next queues rather than dials.
    slots.push(sent(shared.next(None, &sharing(), IDLE)));
    drop(slots);
    assert_eq!(shared.len(), 2);
}

#[tokio::test]
async fn one_client_holds_at_most_its_share_and_then_waits() {
    let shared = Shared::default();
    let (hog, calm) = (DownstreamConn::next(), DownstreamConn::next());
    let (sender, limit) = connection(4).await;
    let mut held = vec![shared.add(sender, limit, Some(hog)).1];
    held.push(sent(shared.next(Some(hog), &sharing(), IDLE)));
    // Half of four streams taken: the hog's next request needs another connection.
    assert!(matches!(
        shared.next(Some(hog), &sharing(), IDLE),
        Next::Dial
    ));
    let (sender, limit) = connection(4).await;
    held.push(shared.add(sender, limit, Some(hog)).1);
    held.push(sent(shared.next(Some(hog), &sharing(), IDLE)));
    // At its share on both connections, at the connection limit: it waits.
    let freed = shared.freed();
    let waiting = freed.notified();
    assert!(matches!(
        shared.next(Some(hog), &sharing(), IDLE),
        Next::Wait
    ));
    // Another client still finds room on both.
    let a = sent(shared.next(Some(calm), &sharing(), IDLE));
    let b = sent(shared.next(Some(calm), &sharing(), IDLE));
    drop((a, b));
    // One of the hog's own streams ends: it is woken and may send.
    held.pop();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting client is woken");
    held.push(sent(shared.next(Some(hog), &sharing(), IDLE)));
}

#[tokio::test(start_paused = true)]
async fn idle_connections_beyond_the_first_are_closed() {
    let shared = Shared::default();
    let (sender, limit) = connection(1).await;
    let first = shared.add(sender, limit, None).1;
    assert!(matches!(shared.next(None, &sharing(), IDLE), Next::Dial));
    let (sender, limit) = connection(1).await;
    let second = shared.add(sender, limit, None).1;
    drop((first, second));
    tokio::time::advance(IDLE).await;
    let slot = sent(shared.next(None, &sharing(), IDLE));
    assert_eq!(shared.len(), 1, "the first stays, the second idle one went");
    drop(slot);
}
