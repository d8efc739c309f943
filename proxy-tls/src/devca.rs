//! A local certificate authority for development and tests: `skiff identity dev-ca` writes
//! its CA and workload credentials in the layout csi-driver-spiffe mounts in a pod, so a
//! laptop runs the same mTLS code path as a cluster.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::id::SpiffeId;

/// A certificate and its PKCS#8 private key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// A self-signed CA for one trust domain.
#[derive(Debug)]
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    trust_domain: String,
}

impl DevCa {
    /// A new CA (a fresh P-256 key) for `trust_domain`, valid for ten years.
    pub fn new(trust_domain: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!("Skiff dev CA for {trust_domain}"),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.not_after = (SystemTime::now() + Duration::from_secs(10 * 365 * 86_400)).into();
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self {
            issuer,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The CA certificate, PEM (the trust bundle's content).
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The parameters of a workload certificate for `uris` (normally one SPIFFE ID), valid
    /// from an hour ago for `lifetime`: tests change them to make invalid certificates.
    pub fn leaf_params(
        uris: &[&str],
        lifetime: Duration,
    ) -> Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| Ok(SanType::URI((*u).try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.not_after = (SystemTime::now() + lifetime).into();
        Ok(params)
    }

    /// Signs `params` with a fresh key.
    pub fn sign(&self, params: &CertificateParams) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The identity of service account `sa` in namespace `ns` of this CA's trust domain.
    pub fn id(&self, ns: &str, sa: &str) -> Result<SpiffeId, crate::id::IdError> {
        SpiffeId::workload(&self.trust_domain, ns, sa)
    }

    /// A workload certificate for `ns`/`sa`, valid for `lifetime`.
    pub fn issue(&self, ns: &str, sa: &str, lifetime: Duration) -> Result<Issued, rcgen::Error> {
        let id = SpiffeId::workload(&self.trust_domain, ns, sa).map_err(|_| {
            rcgen::Error::InvalidAsn1String(rcgen::InvalidAsn1String::Ia5String(format!(
                "{ns}/{sa}"
            )))
        })?;
        self.sign(&Self::leaf_params(&[&id.to_string()], lifetime)?)
    }

    /// Writes `ns`/`sa`'s credentials into `dir` as `tls.crt`, `tls.key` and `ca.crt`.
    pub fn write_workload(
        &self,
        dir: &Path,
        ns: &str,
        sa: &str,
        lifetime: Duration,
    ) -> std::io::Result<()> {
        let issued = self
            .issue(ns, sa, lifetime)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("tls.crt"), issued.cert_pem)?;
        // The private key is readable by its owner only.
        let key = dir.join("tls.key");
        std::fs::write(&key, issued.key_pem)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::write(dir.join("ca.crt"), self.ca_pem())?;
        Ok(())
    }
}
