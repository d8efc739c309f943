//! The X.509-SVID rules a leaf certificate must meet before its SPIFFE ID is believed.
//!
//! Path validation (signatures, validity dates, the trust bundle) is rustls' and webpki's
//! job; they do not know SPIFFE, and accept certificates that break its rules: several URI
//! SANs (which one is the identity?), a CA certificate presented as a leaf, a leaf that may
//! sign other certificates. These checks close that gap, on both sides of every handshake
//! and on our own credentials before they are used.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::id::SpiffeId;

/// Why a leaf certificate is not a valid X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The certificate does not parse.
    #[error("the certificate does not parse: {0}")]
    Malformed(String),
    /// No URI SAN, or more than one.
    #[error("an SVID has exactly one URI SAN; this certificate has {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error(transparent)]
    Id(#[from] crate::id::IdError),
    /// The leaf says it is a CA.
    #[error("a leaf SVID must not be a CA (basicConstraints cA=true)")]
    IsCa,
    /// The leaf may sign certificates or CRLs.
    #[error("a leaf SVID must not have the keyCertSign or cRLSign key usage")]
    SigningUsage,
    /// The extended key usage lacks clientAuth or serverAuth.
    #[error("a mesh SVID's extended key usage must include both clientAuth and serverAuth")]
    ExtendedUsage,
}

/// What a valid leaf says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Svid {
    /// Its identity.
    pub id: SpiffeId,
    /// When it stops being valid.
    pub not_after: SystemTime,
}

/// Checks the SVID rules on a DER leaf certificate and returns its identity.
pub fn check_leaf(der: &[u8]) -> Result<Svid, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let malformed = |e: x509_parser::error::X509Error| SvidError::Malformed(e.to_string());
    let uris: Vec<&str> = match cert.subject_alternative_name().map_err(malformed)? {
        None => Vec::new(),
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
    };
    let [uri] = uris[..] else {
        return Err(SvidError::UriSanCount(uris.len()));
    };
    let id: SpiffeId = uri.parse()?;
    if cert
        .basic_constraints()
        .map_err(malformed)?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(SvidError::IsCa);
    }
    if cert
        .key_usage()
        .map_err(malformed)?
        .is_some_and(|ku| ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(SvidError::SigningUsage);
    }
    if let Some(eku) = cert.extended_key_usage().map_err(malformed)? {
        let eku = eku.value;
        if !(eku.any || (eku.client_auth && eku.server_auth)) {
            return Err(SvidError::ExtendedUsage);
        }
    }
    let secs = cert.validity().not_after.timestamp().max(0).unsigned_abs();
    Ok(Svid {
        id,
        not_after: UNIX_EPOCH + Duration::from_secs(secs),
    })
}
