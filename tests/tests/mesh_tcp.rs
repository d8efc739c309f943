//! Opaque TCP over the mesh, the receiving side: a strict proxy takes opaque connections
//! over mutual TLS (ALPN `skiff.tcp/1`) and forwards their bytes to the application, after
//! checking the caller's identity against TCPRoute rules; plaintext is refused. The caller
//! here is a TLS client with a workload's credentials that speaks the protocol as a peer
//! proxy does (the client proxy's side is tested end to end in `proxy/tests/transparent.rs`,
//! which needs network namespaces).
//!
//! The application is server-speaks-first, like MySQL: it greets before reading anything,
//! so the path must not wait for the client's first byte.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proxy_tls::devca::DevCa;
use proxy_tls::{Credentials, SpiffeId};
use skiff_e2e::mesh::{credentials, identity};
use skiff_e2e::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BANNER: &[u8] = b"220 db ready\n";
const WAIT: Duration = Duration::from_secs(20);

/// A server-speaks-first echo server: greets, then echoes until the client half-closes,
/// then closes its side.
async fn greeting_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                s.write_all(BANNER).await.unwrap();
                let (mut rd, mut wr) = s.split();
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A mesh connection to `proxy` as the workload whose credentials are in `dir`, offering
/// opaque TCP, expecting the peer to be `shop/api`.
async fn mesh_tcp(
    dir: &Path,
    ca: &DevCa,
    proxy: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let creds = Credentials::load(dir, None).unwrap();
    let api: SpiffeId = ca.id("shop", "api").unwrap();
    let config: Arc<_> = creds.client_config_tcp(&api).unwrap();
    let name = rustls_pki_types::ServerName::try_from(api.server_name()).unwrap();
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(proxy_tls::ALPN_TCP));
    tls
}

/// Reads the greeting without sending a byte, then sends 1 MiB, half-closes, and checks
/// that the same mebibyte comes back before the server closes.
async fn greeted_and_echoed<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(s: S) {
    let (mut rd, mut wr) = tokio::io::split(s);
    let mut banner = vec![0u8; BANNER.len()];
    tokio::time::timeout(WAIT, rd.read_exact(&mut banner))
        .await
        .expect("the application speaks first, before the client sends anything")
        .unwrap();
    assert_eq!(banner, BANNER);
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(expected.len());
    tokio::time::timeout(WAIT, rd.read_to_end(&mut echoed))
        .await
        .expect("the half-close reaches the application, which then closes")
        .unwrap();
    writer.await.unwrap();
    assert!(echoed == expected, "{} bytes echoed", echoed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_crosses_on_mtls_and_tcproutes_admit_by_identity() {
    let ca = DevCa::new("cluster.local").unwrap();
    let db = greeting_echo().await;
    let api_dir = credentials(&ca, "shop", "api");
    let b = ProxyConfig::new(db.port())
        .spec(identity(&api_dir, "shop", "api"))
        .spec(json!({"namespace": "shop", "opaquePorts": [db.port()]}))
        .document(json!({
            "apiVersion": "specs.smi-spec.io/v1alpha4",
            "kind": "TCPRoute",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"matches": {"ports": [db.port()]}},
        }))
        .document(json!({
            "apiVersion": "access.smi-spec.io/v1alpha3",
            "kind": "TrafficTarget",
            "metadata": {"name": "web-to-db", "namespace": "shop"},
            "spec": {
                "destination": {"kind": "ServiceAccount", "name": "api"},
                "rules": [{"kind": "TCPRoute", "name": "db"}],
                "sources": [{"kind": "ServiceAccount", "name": "web"}],
            },
        }))
        .start()
        .await;

    // The admitted identity: greeted, 1 MiB each way, half-close honoured.
    let web = credentials(&ca, "shop", "web");
    greeted_and_echoed(mesh_tcp(&web, &ca, b.inbound_addr).await).await;

    // Another identity: closed before a byte of the application's.
    let intruder = credentials(&ca, "shop", "intruder");
    let mut refused = mesh_tcp(&intruder, &ca, b.inbound_addr).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, refused.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", &buf[..n]);

    // Plaintext to the strict opaque port: closed, nothing forwarded.
    let mut plain = TcpStream::connect(b.inbound_addr).await.unwrap();
    let _ = plain.write_all(b"hello\n").await;
    let n = tokio::time::timeout(WAIT, plain.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", &buf[..n]);

    let (_, metrics) = admin_get(b.admin_addr, "/metrics").await;
    let web_id = "spiffe://cluster.local/ns/shop/sa/web";
    let intruder_id = "spiffe://cluster.local/ns/shop/sa/intruder";
    let line = |family: &str, who: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(family) && l.contains(who))
            .unwrap_or_else(|| panic!("no {family} for {who} in\n{metrics}"))
            .to_owned()
    };
    assert!(line("inbound_tcp_authz_allow_total", web_id).ends_with(" 1"));
    assert!(line("inbound_tcp_authz_deny_total", intruder_id).ends_with(" 1"));
    assert!(
        metrics.contains(
            "skiff_tls_handshake_failures_total{direction=\"inbound\",reason=\"plaintext\"} 1"
        ),
        "{metrics}"
    );
}
