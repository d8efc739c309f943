//! The resolver's rules: resolv.conf search domains and ndots, /etc/hosts, address
//! literals, TTL bounds and negative answers. The responder here answers over UDP on
//! loopback with messages encoded by hickory's own codec; it answers only A queries for the
//! names it is given (AAAA gets an empty answer) and does not do TCP (truncation is covered
//! end to end in `tests/tests/dns.rs`).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

use super::*;
use crate::config::Dur;

const POD_RESOLV_CONF: &str = "\
# written by the kubelet
nameserver 10.96.0.10
search prod.svc.cluster.local svc.cluster.local cluster.local
options ndots:5 timeout:1
";

/// A DNS server on loopback: `names` (fully qualified, with the final dot) have A records
/// with TTL `ttl`; every other name is NXDOMAIN. It records the A questions it was asked.
struct Responder {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Responder {
    async fn start(names: &[(&str, Ipv4Addr)], ttl: u32) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let names: HashMap<String, Ipv4Addr> =
            names.iter().map(|(n, ip)| ((*n).to_owned(), *ip)).collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries().first().cloned() else {
                    continue;
                };
                let name = q.name().to_ascii();
                let mut answer = Message::new();
                answer
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_available(true)
                    .add_query(q.clone());
                match names.get(&name) {
                    Some(ip) => {
                        if q.query_type() == RecordType::A {
                            log.lock().unwrap().push(name);
                            let a = RData::A(A(*ip));
                            answer.add_answer(Record::from_rdata(q.name().clone(), ttl, a));
                        }
                    }
                    None => {
                        if q.query_type() == RecordType::A {
                            log.lock().unwrap().push(name);
                        }
                        answer.set_response_code(ResponseCode::NXDomain);
                    }
                }
                let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
            }
        });
        Self { addr, asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn spec(server: SocketAddr) -> DnsSpec {
    DnsSpec {
        nameservers: vec![server],
        min_ttl: Dur::secs(5),
        max_ttl: Dur::secs(60),
        ..DnsSpec::default()
    }
}

#[tokio::test]
async fn short_names_go_through_the_search_domains_in_order() {
    let dns = Responder::start(
        &[("web-headless.svc.cluster.local.", [10, 0, 0, 7].into())],
        30,
    )
    .await;
    let r = Resolver::with_resolv_conf(&spec(dns.addr), POD_RESOLV_CONF);
    let answer = r.lookup("web-headless").await.unwrap();
    assert_eq!(answer.addrs, [IpAddr::from([10, 0, 0, 7])]);
    assert_eq!(answer.ttl, Duration::from_secs(30));
    // Fewer dots than ndots: the search domains first, in order, until one answers.
    assert_eq!(
        dns.asked(),
        [
            "web-headless.prod.svc.cluster.local.",
            "web-headless.svc.cluster.local."
        ]
    );
}

#[tokio::test]
async fn names_with_enough_dots_and_absolute_names_are_asked_as_written_first() {
    let dns = Responder::start(&[("a.b.c.d.e.f.", [10, 0, 0, 8].into())], 30).await;
    let r = Resolver::with_resolv_conf(&spec(dns.addr), POD_RESOLV_CONF);
    assert_eq!(r.lookup("a.b.c.d.e.f").await.unwrap().addrs.len(), 1);
    assert_eq!(
        dns.asked()[0],
        "a.b.c.d.e.f.",
        "five dots, ndots 5: as written first"
    );
    let dns = Responder::start(&[("web.prod.", [10, 0, 0, 9].into())], 30).await;
    let r = Resolver::with_resolv_conf(&spec(dns.addr), POD_RESOLV_CONF);
    assert_eq!(r.lookup("web.prod.").await.unwrap().addrs.len(), 1);
    assert_eq!(
        dns.asked(),
        ["web.prod."],
        "an absolute name is not searched"
    );
}

#[tokio::test]
async fn a_name_that_does_not_exist_has_no_addresses_and_is_asked_again_soon() {
    let dns = Responder::start(&[], 30).await;
    let r = Resolver::with_resolv_conf(&spec(dns.addr), "");
    let answer = r.lookup("gone.test.").await.unwrap();
    assert!(answer.addrs.is_empty());
    assert_eq!(answer.ttl, Duration::from_secs(5), "minTtl");
}

#[tokio::test]
async fn answers_are_bounded_by_min_and_max_ttl() {
    let dns = Responder::start(
        &[
            ("zero.test.", [10, 0, 0, 1].into()),
            ("day.test.", [10, 0, 0, 2].into()),
        ],
        0,
    )
    .await;
    let r = Resolver::with_resolv_conf(&spec(dns.addr), "");
    assert_eq!(
        r.lookup("zero.test.").await.unwrap().ttl,
        Duration::from_secs(5)
    );
    let dns = Responder::start(&[("day.test.", [10, 0, 0, 2].into())], 86_400).await;
    let r = Resolver::with_resolv_conf(&spec(dns.addr), "");
    assert_eq!(
        r.lookup("day.test.").await.unwrap().ttl,
        Duration::from_secs(60)
    );
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_an_error_not_an_empty_answer() {
    // Bound, never answering: the query times out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let spec = DnsSpec {
        timeout: Dur(Duration::from_millis(200)),
        ..spec(silent.local_addr().unwrap())
    };
    let r = Resolver::with_resolv_conf(&spec, "");
    let err = r.lookup("web.test.").await.unwrap_err();
    assert!(err.to_string().contains("web.test."), "{err}");
}

#[tokio::test]
async fn literals_and_hosts_entries_need_no_server() {
    // Nothing listens on port 9: a query would fail.
    let r = Resolver::with_resolv_conf(&spec("127.0.0.1:9".parse().unwrap()), "");
    let a = r.lookup("10.1.2.3").await.unwrap();
    assert_eq!(a.addrs, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(a.ttl, Duration::from_secs(60));
    let v6 = r.lookup("[::1]").await.unwrap();
    assert_eq!(v6.addrs, ["::1".parse::<IpAddr>().unwrap()]);
    let local = r.lookup("localhost").await.unwrap();
    assert!(local.addrs.iter().all(IpAddr::is_loopback) && !local.addrs.is_empty());
}
