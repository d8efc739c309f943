//! Certificate verifiers for mesh handshakes: webpki's path validation against the trust
//! bundle, then the SVID rules, then (client side) the expected identity. DNS names play no
//! part: a proxy knows which workload it means to reach, not which hostname it has.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::id::SpiffeId;
use crate::svid::check_leaf;

fn svid_error(e: crate::svid::SvidError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Why a peer's certificate named the wrong workload.
#[derive(Debug, thiserror::Error)]
#[error("the peer is {found}, not the expected {expected}")]
pub struct WrongIdentity {
    /// Who was expected.
    pub expected: SpiffeId,
    /// Who answered.
    pub found: SpiffeId,
}

/// Why a client certificate was refused although a trusted CA signed it.
#[derive(Debug, thiserror::Error)]
#[error("the peer {found} is in a trust domain this proxy does not accept ({accepted})")]
pub struct ForeignTrustDomain {
    /// Who the client is.
    pub found: SpiffeId,
    /// The trust domains accepted, comma-separated.
    pub accepted: String,
}

/// Verifies client certificates on the inbound mesh listener: a chain to the bundle, the
/// SVID rules, and a trust domain this proxy accepts (its own, and those it federates
/// with). A CA in the bundle may sign for other trust domains too (a shared root, say);
/// their workloads are not ours to admit unless federation says so.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domains: Vec<String>,
}

impl ClientVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        trust_domains: Vec<String>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let inner =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Self {
            inner,
            trust_domains,
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let svid = check_leaf(end_entity).map_err(svid_error)?;
        if !self
            .trust_domains
            .iter()
            .any(|d| d == svid.id.trust_domain())
        {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(ForeignTrustDomain {
                    found: svid.id,
                    accepted: self.trust_domains.join(", "),
                })),
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies the server certificate of a peer proxy against the identity expected of it.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) expected: SpiffeId,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let svid = check_leaf(end_entity).map_err(svid_error)?;
        if svid.id != self.expected {
            let wrong = WrongIdentity {
                expected: self.expected.clone(),
                found: svid.id,
            };
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(wrong)),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
