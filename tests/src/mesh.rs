//! Meshed proxies for the tests that need two of them (mTLS, authorization): workload
//! credentials from a dev CA, the `spec.identity` fragment that points a proxy at them, and
//! a client-side proxy that calls service `api` over mTLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy_tls::devca::DevCa;
use serde_json::{json, Value};

use crate::{temp_dir, ProxyConfig, Running};

/// How long test certificates are valid: longer than any test.
pub const DAY: Duration = Duration::from_secs(86_400);

/// Credentials for `ns/sa` from `ca`, in a fresh directory.
pub fn credentials(ca: &DevCa, ns: &str, sa: &str) -> PathBuf {
    let dir = temp_dir(&format!("{ns}-{sa}"));
    ca.write_workload(&dir, ns, sa, DAY).unwrap();
    dir
}

/// The `spec` fragment that makes a proxy `ns/sa` with the credentials in `dir`, re-read
/// every 20 ms so that rotation tests need not wait.
pub fn identity(dir: &Path, ns: &str, sa: &str) -> Value {
    json!({
        "identity": {
            "dir": dir.display().to_string(),
            "namespace": ns,
            "serviceAccount": sa,
            "reloadInterval": "20ms",
        }
    })
}

/// The server side: a proxy in front of `app` as shop/api, with its credentials' directory.
pub async fn server_proxy(ca: &DevCa, app: SocketAddr) -> (Running, PathBuf) {
    let dir = credentials(ca, "shop", "api");
    let proxy = ProxyConfig::new(app.port())
        .spec(identity(&dir, "shop", "api"))
        .start()
        .await;
    (proxy, dir)
}

/// The client side: a proxy as `shop/sa` whose service `api`, at `b`, must prove it is
/// `shop/expect`.
pub async fn client_proxy(ca: &DevCa, sa: &str, b: SocketAddr, expect: &str) -> Running {
    let dir = credentials(ca, "shop", sa);
    client_config(&dir, sa, b, expect, json!({})).start().await
}

/// The config of [`client_proxy`], with its credentials in `dir` and `settings` merged into
/// service `api`'s, for tests that change more of it.
pub fn client_config(
    dir: &Path,
    sa: &str,
    b: SocketAddr,
    expect: &str,
    settings: Value,
) -> ProxyConfig {
    let mut api = json!({ "identity": format!("spiffe://cluster.local/ns/shop/sa/{expect}") });
    if let (Some(api), Value::Object(more)) = (api.as_object_mut(), settings) {
        api.extend(more);
    }
    ProxyConfig::new(1)
        .spec(identity(dir, "shop", sa))
        .service_with("api", &[b], api)
}
