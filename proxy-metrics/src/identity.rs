//! Identity series: credential reloads, the certificate's expiry, handshake failures by
//! reason, and authorization decisions.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Labels;

/// The identity families.
#[derive(Debug)]
pub struct IdentityFamilies {
    reloads: Family<Labels, Counter>,
    expiry: Gauge,
    // Linkerd's names for the same facts, for its dashboards and alerts.
    linkerd_expiry: Gauge,
    linkerd_refreshes: Gauge,
    handshake_failures: Family<Labels, Counter>,
    authz: Family<Labels, Counter>,
    /// Linkerd's authorization families.
    pub linkerd_authz: crate::authz::AuthzFamilies,
}

impl IdentityFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            reloads: Family::default(),
            expiry: Gauge::default(),
            linkerd_expiry: Gauge::default(),
            linkerd_refreshes: Gauge::default(),
            handshake_failures: Family::default(),
            authz: Family::default(),
            linkerd_authz: crate::authz::AuthzFamilies::register(registry),
        };
        registry.register(
            "skiff_identity_reloads",
            "Credential loads, by result (ok, error)",
            this.reloads.clone(),
        );
        registry.register(
            "skiff_identity_cert_expiry_timestamp_seconds",
            "When the certificate in use expires, in seconds since the Unix epoch",
            this.expiry.clone(),
        );
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the certificate in use expires, in seconds since the Unix epoch (Linkerd's name)",
            this.linkerd_expiry.clone(),
        );
        // A gauge that only grows, so that the sample keeps Linkerd's name exactly (a
        // counter's would gain `_total`).
        registry.register(
            "identity_cert_refresh_count",
            "Certificates loaded successfully (Linkerd's name)",
            this.linkerd_refreshes.clone(),
        );
        registry.register(
            "skiff_tls_handshake_failures",
            "Failed mesh TLS handshakes, by direction and reason",
            this.handshake_failures.clone(),
        );
        registry.register(
            "skiff_authz",
            "Authorization decisions on inbound requests and connections, by decision and route",
            this.authz.clone(),
        );
        this
    }

    /// Counts a credential load; on success, records the new certificate's expiry.
    pub fn reload(&self, expiry_unix_secs: Option<u64>) {
        let result = if expiry_unix_secs.is_some() {
            "ok"
        } else {
            "error"
        };
        self.reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
        if let Some(secs) = expiry_unix_secs {
            let secs = i64::try_from(secs).unwrap_or(i64::MAX);
            self.expiry.set(secs);
            self.linkerd_expiry.set(secs);
            self.linkerd_refreshes.inc();
        }
    }

    /// Counts a failed handshake.
    pub fn handshake_failure(&self, direction: proxy_core::Direction, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&vec![
                ("direction", direction.as_str().to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// Counts an authorization decision (`allow`, `deny`, or `audit-deny` when denials are
    /// only logged).
    pub fn authz(&self, decision: &'static str, route: &str) {
        self.authz
            .get_or_create(&vec![
                ("decision", decision.to_owned()),
                ("route", route.to_owned()),
            ])
            .inc();
    }
}

impl proxy_core::authz::AuthzObserver for IdentityFamilies {
    fn decided(&self, v: &proxy_core::authz::Verdict<'_>) {
        // Skiff's own family counts what rules decided; a call no rule covered and the
        // default let through is Linkerd's alone.
        if v.rule.is_some() || v.decision != "allow" {
            self.authz(v.decision, v.route.unwrap_or_default());
        }
        self.linkerd_authz.decided(v);
    }
}
