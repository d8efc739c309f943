//! A DNS server for tests, on a loopback port (UDP, and TCP on the same port number): it
//! answers A queries for any name with the addresses and TTL the test sets (NXDOMAIN when
//! there are none), AAAA queries with no records, and counts the queries it gets. Told to
//! truncate, it answers over UDP with the TC bit and nothing else, as a server does when an
//! answer is too big, so that clients ask again over TCP.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// A UDP socket and a TCP listener on one loopback port number. The UDP port the kernel
/// picks may be taken for TCP (by a connection of another test): then another pair is
/// tried, a bounded number of times.
async fn pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(listener) = TcpListener::bind(socket.local_addr().unwrap()).await {
            return (socket, listener);
        }
    }
    panic!("no loopback port free for both UDP and TCP in 50 tries");
}

/// The running server.
#[derive(Clone, Debug)]
pub struct DnsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    answer: Arc<Mutex<(Vec<Ipv4Addr>, u32)>>,
    queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    truncate: Arc<AtomicBool>,
}

impl DnsServer {
    /// Starts answering with `addrs` and `ttl` (seconds).
    pub async fn start(addrs: &[Ipv4Addr], ttl: u32) -> Self {
        let (socket, listener) = pair().await;
        let server = Self {
            addr: socket.local_addr().unwrap(),
            answer: Arc::new(Mutex::new((addrs.to_vec(), ttl))),
            queries: Arc::default(),
            tcp_queries: Arc::default(),
            truncate: Arc::default(),
        };
        server.serve_tcp(listener);
        let (answer, queries) = (server.answer.clone(), server.queries.clone());
        let truncate = server.truncate.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                queries.fetch_add(1, Ordering::SeqCst);
                let current = answer.lock().unwrap().clone();
                let Some(mut reply) = reply(&buf[..n], &current.0, current.1) else {
                    continue;
                };
                if truncate.load(Ordering::SeqCst) {
                    // The header only, counts zeroed, TC set.
                    reply.truncate(12);
                    reply[2] |= 0x02;
                    reply[4..12].fill(0);
                }
                let _ = socket.send_to(&reply, from).await;
            }
        });
        server
    }

    /// Answers on TCP at the same port number: two-byte length, then the message.
    fn serve_tcp(&self, listener: TcpListener) {
        let (answer, queries) = (self.answer.clone(), self.tcp_queries.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (answer, queries) = (answer.clone(), queries.clone());
                tokio::spawn(async move {
                    let Ok(len) = stream.read_u16().await else {
                        return;
                    };
                    let mut query = vec![0; usize::from(len)];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    queries.fetch_add(1, Ordering::SeqCst);
                    let current = answer.lock().unwrap().clone();
                    if let Some(reply) = reply(&query, &current.0, current.1) {
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        let _ = stream.write_all(&framed).await;
                    }
                });
            }
        });
    }

    /// Makes UDP answers truncated (or whole again).
    pub fn truncate(&self, on: bool) {
        self.truncate.store(on, Ordering::SeqCst);
    }

    /// Queries received over TCP so far.
    pub fn tcp_queries(&self) -> usize {
        self.tcp_queries.load(Ordering::SeqCst)
    }

    /// Changes the answer.
    pub fn set(&self, addrs: &[Ipv4Addr], ttl: u32) {
        *self.answer.lock().unwrap() = (addrs.to_vec(), ttl);
    }

    /// Queries received so far (A and AAAA).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The response to `query`, or `None` when it cannot be read.
fn reply(query: &[u8], addrs: &[Ipv4Addr], ttl: u32) -> Option<Vec<u8>> {
    // The question's name ends at its zero label; type and class follow.
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    let question = query.get(12..end + 4)?;
    let records: &[Ipv4Addr] = if qtype == 1 { addrs } else { &[] };
    // NXDOMAIN when the name has no addresses at all.
    let rcode = if addrs.is_empty() { 3 } else { 0 };
    let mut out = query[..2].to_vec();
    out.extend_from_slice(&(0x8180u16 | rcode).to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in records {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
