//! A workload's credentials, and the rustls configs built from them.
//!
//! [`Credentials`] are loaded from the files csi-driver-spiffe (or any issuer writing the
//! same layout) mounts: `tls.crt` (leaf first, then intermediates), `tls.key` (PKCS#8) and
//! `ca.crt` (the trust bundle, possibly several CAs during a rotation). They are checked
//! before use: the leaf is a valid SVID, chains to the bundle, is within its validity
//! period, matches the key, and names the identity this proxy expects to have.
//!
//! [`Identity`] is the live handle: it reloads the files when they change and installs new
//! credentials atomically. A set that fails any check is refused and the old one stays;
//! handshakes already done keep their connections, new handshakes use the new configs (and
//! their fresh session caches, so a resumed session cannot outlive a trust change).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

use crate::id::SpiffeId;
use crate::svid::{check_leaf, SvidError};
use crate::verify::{ClientVerifier, ServerVerifier};

/// Why a credential set was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    /// A file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the kind it should.
    #[error("{0}")]
    Pem(String),
    /// The leaf breaks the SVID rules.
    #[error("tls.crt: {0}")]
    Svid(#[from] SvidError),
    /// The leaf is not the identity this proxy should have.
    #[error("tls.crt is {found}, but this proxy is {expected}")]
    WrongIdentity {
        /// Who this proxy is.
        expected: SpiffeId,
        /// Who the certificate says.
        found: SpiffeId,
    },
    /// The chain does not verify against the bundle (or is expired, not yet valid).
    #[error("tls.crt does not verify against ca.crt: {0}")]
    Chain(rustls::Error),
    /// The key does not belong to the certificate, or is unusable.
    #[error("tls.key: {0}")]
    Key(rustls::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A client config's key: the peer it must be, and the ALPN protocol it offers.
type ClientKey = (SpiffeId, &'static [u8]);

/// A checked credential set and the TLS configs made from it.
#[derive(Debug)]
pub struct Credentials {
    /// Whose credentials these are.
    pub id: SpiffeId,
    /// When the leaf expires.
    pub not_after: SystemTime,
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
    // By peer, and the one protocol offered (HTTP/2; HTTP/1.1 for an upgrade; opaque TCP).
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
}

impl Credentials {
    /// Loads and checks the credential files in `dir`.
    pub fn load(dir: &Path, expected: Option<&SpiffeId>) -> Result<Self, CredError> {
        let files = Files::read(dir)?;
        Self::from_pem(&files.chain, &files.key, &files.bundle, expected)
    }

    /// Checks PEM credentials: the chain (leaf first), the PKCS#8 key, the trust bundle.
    /// Inbound, callers from the leaf's own trust domain are accepted.
    pub fn from_pem(
        chain: &[u8],
        key: &[u8],
        bundle: &[u8],
        expected: Option<&SpiffeId>,
    ) -> Result<Self, CredError> {
        Self::from_pem_federated(chain, key, bundle, expected, &[])
    }

    /// [`Credentials::from_pem`], also accepting callers from the `federated` trust domains.
    pub fn from_pem_federated(
        chain: &[u8],
        key: &[u8],
        bundle: &[u8],
        expected: Option<&SpiffeId>,
        federated: &[String],
    ) -> Result<Self, CredError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<_, _>>()
            .map_err(|e| CredError::Pem(format!("tls.crt: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(CredError::Pem("tls.crt holds no certificate".into()));
        };
        let key = PrivatePkcs8KeyDer::from_pem_slice(key)
            .map_err(|e| CredError::Pem(format!("tls.key: not a PKCS#8 private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(bundle) {
            let ca = ca.map_err(|e| CredError::Pem(format!("ca.crt: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| CredError::Pem(format!("ca.crt: {e}")))?;
        }
        if roots.is_empty() {
            return Err(CredError::Pem("ca.crt holds no certificate".into()));
        }
        let svid = check_leaf(leaf)?;
        if let Some(expected) = expected.filter(|e| **e != svid.id) {
            return Err(CredError::WrongIdentity {
                expected: expected.clone(),
                found: svid.id,
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        // Our own chain must verify as a peer would verify it, so a broken set is refused
        // here rather than by every peer.
        let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(CredError::Chain)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(CredError::Chain)?;
        let key = CertifiedKey::from_der(chain, key.into(), &provider).map_err(CredError::Key)?;
        let key = Arc::new(key);
        let mut trust_domains = vec![svid.id.trust_domain().to_owned()];
        trust_domains.extend(federated.iter().cloned());
        let server = server_config(&svid.id, &key, &roots, &provider, trust_domains)?;
        Ok(Self {
            id: svid.id,
            not_after: svid.not_after,
            key,
            roots,
            provider,
            server,
            clients: Mutex::default(),
        })
    }

    /// The config for the inbound mesh listener.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The config for connections to a peer that must be `peer`, offering HTTP/2 (ALPN `h2`).
    pub fn client_config(&self, peer: &SpiffeId) -> Result<Arc<ClientConfig>, CredError> {
        self.client_config_for(peer, crate::ALPN_H2)
    }

    /// The same, offering HTTP/1.1 (ALPN `http/1.1`): for a connection that carries one
    /// HTTP/1.1 upgrade (WebSocket) to the peer, which HTTP/2 between proxies cannot.
    pub fn client_config_http1(&self, peer: &SpiffeId) -> Result<Arc<ClientConfig>, CredError> {
        self.client_config_for(peer, crate::ALPN_HTTP1)
    }

    /// The same, offering opaque TCP (ALPN [`crate::ALPN_TCP`]).
    pub fn client_config_tcp(&self, peer: &SpiffeId) -> Result<Arc<ClientConfig>, CredError> {
        self.client_config_for(peer, crate::ALPN_TCP)
    }

    fn client_config_for(
        &self,
        peer: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<Arc<ClientConfig>, CredError> {
        let key = (peer.clone(), alpn);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = clients.get(&key) {
            return Ok(config.clone());
        }
        let verifier = ServerVerifier {
            roots: self.roots.clone(),
            expected: peer.clone(),
            provider: self.provider.clone(),
        };
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CredError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(OwnCert(self.key.clone())));
        config.alpn_protocols = vec![alpn.to_vec()];
        let config = Arc::new(config);
        clients.insert(key, config.clone());
        Ok(config)
    }
}

fn server_config(
    id: &SpiffeId,
    key: &Arc<CertifiedKey>,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    trust_domains: Vec<String>,
) -> Result<Arc<ServerConfig>, CredError> {
    let verifier = ClientVerifier::new(roots.clone(), provider.clone(), trust_domains)
        .map_err(|e| CredError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CredError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(OwnServerCert {
            key: key.clone(),
            server_name: id.server_name(),
        }));
    config.alpn_protocols = vec![
        crate::ALPN_H2.to_vec(),
        crate::ALPN_HTTP1.to_vec(),
        crate::ALPN_TCP.to_vec(),
    ];
    Ok(Arc::new(config))
}

/// Presents our certificate to clients that ask for us (or name nobody), and refuses a
/// ClientHello naming another server: it was meant for another workload.
#[derive(Debug)]
struct OwnServerCert {
    key: Arc<CertifiedKey>,
    server_name: String,
}

impl ResolvesServerCert for OwnServerCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) if !name.eq_ignore_ascii_case(&self.server_name) => {
                tracing::debug!(sni = name, "refusing a handshake for another identity");
                None
            }
            _ => Some(self.key.clone()),
        }
    }
}

/// Presents our certificate to servers.
#[derive(Debug)]
struct OwnCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The three credential files, as read.
#[derive(Clone, PartialEq, Eq)]
struct Files {
    chain: Vec<u8>,
    key: Vec<u8>,
    bundle: Vec<u8>,
}

// Not derived: the key must never reach a log.
impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Files { .. }")
    }
}

impl Files {
    fn read(dir: &Path) -> Result<Self, CredError> {
        let read = |name: &str| {
            let file = dir.join(name);
            std::fs::read(&file).map_err(|source| CredError::Read { file, source })
        };
        Ok(Self {
            chain: read("tls.crt")?,
            key: read("tls.key")?,
            bundle: read("ca.crt")?,
        })
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are as they were; nothing changed.
    Unchanged,
    /// New credentials are in use.
    Installed(SpiffeId),
}

/// A workload's live credentials.
#[derive(Debug)]
pub struct Identity {
    dir: PathBuf,
    expected: Option<SpiffeId>,
    // Trust domains whose callers are accepted besides our own.
    federated: Vec<String>,
    current: ArcSwapOption<Credentials>,
    last_seen: Mutex<Option<Files>>,
}

impl Identity {
    /// Credentials from `dir`, which must name `expected` when given. Nothing is loaded until
    /// [`Identity::reload`].
    pub fn new(dir: PathBuf, expected: Option<SpiffeId>) -> Self {
        Self {
            dir,
            expected,
            federated: Vec::new(),
            current: ArcSwapOption::empty(),
            last_seen: Mutex::default(),
        }
    }

    /// Also accepts inbound callers from the `federated` trust domains.
    pub fn federated_with(mut self, federated: Vec<String>) -> Self {
        self.federated = federated;
        self
    }

    /// The credentials in use, if any set has loaded yet.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the files and, if they changed and pass every check, installs them. A refused
    /// set is reported once; the credentials in use stay.
    pub fn reload(&self) -> Result<Reloaded, CredError> {
        let files = Files::read(&self.dir)?;
        {
            let mut last = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref() == Some(&files) {
                return Ok(Reloaded::Unchanged);
            }
            *last = Some(files.clone());
        }
        let creds = Credentials::from_pem_federated(
            &files.chain,
            &files.key,
            &files.bundle,
            self.expected.as_ref(),
            &self.federated,
        )?;
        let id = creds.id.clone();
        self.current.store(Some(Arc::new(creds)));
        Ok(Reloaded::Installed(id))
    }
}
