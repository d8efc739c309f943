//! Skiff's TLS side: mesh mutual TLS between proxies, with workload identities that are
//! SPIFFE IDs carried in X.509-SVIDs.
//!
//! - [`id`]: SPIFFE IDs, parsed by the SPIFFE rules.
//! - [`svid`]: the X.509-SVID rules webpki does not check (one URI SAN, not a CA, no signing
//!   key usages, both TLS usages).
//! - [`creds`]: credential files (`tls.crt`, `tls.key`, `ca.crt`), checked before use, and the
//!   rustls configs built from them: TLS 1.3 only, a client certificate required, the peer's
//!   identity checked against the one expected rather than a DNS name.
//! - [`devca`]: a local CA that issues workload certificates, for development and tests.
//!
//! Protocol detection also asks here whether a connection starts with a ClientHello.

pub mod creds;
pub mod devca;
pub mod id;
pub mod svid;
mod verify;

pub use creds::{CredError, Credentials, Identity, Reloaded};
pub use id::SpiffeId;
pub use verify::{ForeignTrustDomain, WrongIdentity};

/// ALPN protocol between proxies: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol between proxies for a connection carrying an HTTP/1.1 upgrade.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN protocol between proxies for opaque TCP: after the handshake the connection carries
/// the application's bytes as they are. The peer proxy sends them to the port the
/// connection was redirected from (transparent mode), else to its application's port.
pub const ALPN_TCP: &[u8] = b"skiff.tcp/1";

/// The identity in a peer's certificate chain (as rustls hands it over after a handshake
/// that verified it).
pub fn peer_id(chain: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = chain?.first()?;
    svid::check_leaf(leaf).ok().map(|s| s.id)
}

/// A short reason for a failed handshake, for a metric label: `unknown-ca`, `expired`,
/// `not-yet-valid`, `wrong-identity`, `invalid-svid`, `no-client-cert`, `protocol-version`,
/// `wrong-server-name`, or `other`.
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription, CertificateError, Error};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return "other";
    };
    match tls {
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown-ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not-yet-valid"
            }
            CertificateError::Other(o) if o.0.is::<WrongIdentity>() => "wrong-identity",
            CertificateError::Other(o) if o.0.is::<ForeignTrustDomain>() => "foreign-trust-domain",
            CertificateError::Other(o) if o.0.is::<svid::SvidError>() => "invalid-svid",
            _ => "other",
        },
        Error::NoCertificatesPresented => "no-client-cert",
        Error::PeerIncompatible(_) | Error::AlertReceived(AlertDescription::ProtocolVersion) => {
            "protocol-version"
        }
        Error::General(m) if m.contains("no server certificate") => "wrong-server-name",
        _ => "other",
    }
}

/// Whether `buf` starts like a TLS ClientHello: a handshake record (type 22) with a TLS
/// major version of 3. Returns `None` while fewer than three bytes have arrived.
pub fn looks_like_client_hello(buf: &[u8]) -> Option<bool> {
    match buf {
        [] => None,
        [0x16] | [0x16, 0x03] => None,
        [0x16, 0x03, _, ..] => Some(true),
        _ => Some(false),
    }
}

#[cfg(test)]
mod tests;
