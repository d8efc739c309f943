//! `spec.tracing`: where spans go and how many traces are recorded. Absent, tracing is off
//! and costs nothing; present, it needs a collector.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use proxy_metrics::trace::export::Collector;
use proxy_metrics::trace::TraceSettings;
use serde::{Deserialize, Serialize};

use super::Dur;

/// The tracing section.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSpec {
    /// The collector's OTLP/HTTP traces endpoint, `http://host[:4318][/v1/traces]`.
    pub collector: CollectorUrl,
    /// The share of new traces recorded, from 0 to 1 (default 1: all). A request that
    /// arrives with a sampling decision (W3C or B3) keeps it.
    #[serde(default = "all")]
    pub sampling: Ratio,
    /// `service.name` of the spans; default: the workload's name (`SKIFF_WORKLOAD`, set
    /// by `skiff inject`), else the pod's service account, else `skiff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// More resource attributes (`deployment.environment: prod`); they win over Skiff's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource: BTreeMap<String, String>,
    /// The most finished spans waiting for export; beyond it they are dropped (counted).
    #[serde(default = "queue")]
    pub queue: Count<1_000_000>,
    /// The most spans in one export request.
    #[serde(default = "batch")]
    pub batch: Count<100_000>,
    /// How long a span waits for its batch to fill before it is sent anyway.
    #[serde(default = "flush_interval")]
    pub flush_interval: Dur,
    /// The longest one export request may take (more than zero).
    #[serde(default = "export_timeout", deserialize_with = "positive")]
    pub export_timeout: Dur,
}

/// A count from 1 to `MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "usize", into = "usize")]
pub struct Count<const MAX: usize>(NonZeroUsize);

impl<const MAX: usize> Count<MAX> {
    /// The count.
    pub fn get(self) -> usize {
        self.0.get()
    }
}

impl<const MAX: usize> TryFrom<usize> for Count<MAX> {
    type Error = String;

    fn try_from(n: usize) -> Result<Self, String> {
        match NonZeroUsize::new(n) {
            Some(n) if n.get() <= MAX => Ok(Self(n)),
            _ => Err(format!("{n} is not a count from 1 to {MAX}")),
        }
    }
}

impl<const MAX: usize> From<Count<MAX>> for usize {
    fn from(c: Count<MAX>) -> usize {
        c.get()
    }
}

fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let dur = Dur::deserialize(d)?;
    if dur.0.is_zero() {
        return Err(serde::de::Error::custom("must be more than 0s"));
    }
    Ok(dur)
}

fn all() -> Ratio {
    Ratio(1.0)
}
fn queue() -> Count<1_000_000> {
    Count(NonZeroUsize::new(2048).expect("non-zero"))
}
fn batch() -> Count<100_000> {
    Count(NonZeroUsize::new(512).expect("non-zero"))
}
fn flush_interval() -> Dur {
    Dur::secs(1)
}
fn export_timeout() -> Dur {
    Dur::secs(10)
}

/// A collector URL, checked when the config is read.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct CollectorUrl {
    text: String,
    parsed: Collector,
}

impl TryFrom<String> for CollectorUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let parsed = Collector::parse(&text)?;
        Ok(Self { text, parsed })
    }
}

impl From<CollectorUrl> for String {
    fn from(url: CollectorUrl) -> String {
        url.text
    }
}

/// A ratio from 0 to 1.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Ratio(f64);

impl TryFrom<f64> for Ratio {
    type Error = String;

    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("{v} is not a ratio from 0 to 1"))
        }
    }
}

impl From<Ratio> for f64 {
    fn from(r: Ratio) -> f64 {
        r.0
    }
}

impl TracingSpec {
    /// The tracer's settings, with the resource read from the pod's environment (the
    /// downward API variables `skiff inject` sets) over `namespace`.
    pub fn settings(&self, namespace: &str) -> TraceSettings {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        TraceSettings {
            collector: self.collector.parsed.clone(),
            sampling: self.sampling.0,
            queue: self.queue.get(),
            batch: self.batch.get(),
            flush_interval: self.flush_interval.0,
            export_timeout: self.export_timeout.0,
            resource: resource(self, namespace, env),
        }
    }
}

/// `service.name`, `k8s.namespace.name`, `k8s.pod.name` and `k8s.<kind>.name` (from
/// `SKIFF_WORKLOAD=<kind>/<name>`), then the config's own attributes, which replace
/// Skiff's of the same name.
fn resource(
    spec: &TracingSpec,
    namespace: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let workload = env("SKIFF_WORKLOAD").and_then(|w| {
        let (kind, name) = w.split_once('/')?;
        Some((kind.to_ascii_lowercase(), name.to_owned()))
    });
    let service = spec
        .service_name
        .clone()
        .or_else(|| workload.as_ref().map(|(_, name)| name.clone()))
        .or_else(|| env("POD_SERVICE_ACCOUNT"))
        .unwrap_or_else(|| "skiff".to_owned());
    let mut attrs = BTreeMap::new();
    attrs.insert("service.name".to_owned(), service);
    attrs.insert(
        "k8s.namespace.name".to_owned(),
        env("POD_NAMESPACE").unwrap_or_else(|| namespace.to_owned()),
    );
    if let Some(pod) = env("POD_NAME") {
        attrs.insert("k8s.pod.name".to_owned(), pod);
    }
    if let Some((kind, name)) = workload {
        attrs.insert(format!("k8s.{kind}.name"), name);
    }
    for (k, v) in &spec.resource {
        attrs.insert(k.clone(), v.clone());
    }
    attrs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ok, rejected, HEAD};
    use super::*;

    #[test]
    fn tracing_parses_with_defaults_and_bad_values_are_refused_with_their_line() {
        let c = ok(&format!(
            "{HEAD}spec:\n  tracing:\n    collector: http://otel.monitoring:4318\n    sampling: 0.25\n"
        ));
        let t = c.proxy.tracing.expect("tracing is on");
        let s = t.settings("shop");
        assert_eq!(s.collector.host, "otel.monitoring");
        assert_eq!(
            (s.collector.port, s.collector.path.as_str()),
            (4318, "/v1/traces")
        );
        assert_eq!((s.sampling, s.queue, s.batch), (0.25, 2048, 512));
        assert!(ok(HEAD).proxy.tracing.is_none(), "off by default");

        for (bad, needle) in [
            (
                "collector: https://otel:4318",
                "https collectors are not supported",
            ),
            ("collector: otel:4318", "must start with http://"),
            (
                "collector: http://otel\n    sampling: 1.5",
                "is not a ratio from 0 to 1",
            ),
            (
                "collector: http://otel\n    color: red",
                "unknown field `color`",
            ),
            ("sampling: 0.5", "missing field `collector`"),
            (
                "collector: http://otel\n    queue: 0",
                "is not a count from 1 to 1000000",
            ),
            (
                "collector: http://otel\n    batch: 100001",
                "is not a count from 1 to 100000",
            ),
            (
                "collector: http://otel\n    exportTimeout: 0s",
                "must be more than 0s",
            ),
        ] {
            rejected(&format!("{HEAD}spec:\n  tracing:\n    {bad}\n"), needle);
        }
    }

    #[test]
    fn the_resource_names_the_workload_pod_and_namespace_and_the_config_wins() {
        let c = ok(&format!(
            "{HEAD}spec:\n  tracing:\n    collector: http://127.0.0.1:4318/custom\n    resource: {{deployment.environment: prod, k8s.pod.name: mine}}\n"
        ));
        let spec = c.proxy.tracing.expect("tracing is on");
        assert_eq!(spec.settings("x").collector.path, "/custom");
        let env = |name: &str| match name {
            "SKIFF_WORKLOAD" => Some("Deployment/web".to_owned()),
            "POD_NAME" => Some("web-5d9c".to_owned()),
            "POD_NAMESPACE" => Some("shop".to_owned()),
            _ => None,
        };
        let attrs: BTreeMap<_, _> = resource(&spec, "default", env).into_iter().collect();
        assert_eq!(attrs["service.name"], "web");
        assert_eq!(attrs["k8s.deployment.name"], "web");
        assert_eq!(attrs["k8s.namespace.name"], "shop");
        assert_eq!(attrs["k8s.pod.name"], "mine", "the config's attribute wins");
        assert_eq!(attrs["deployment.environment"], "prod");
        let bare: BTreeMap<_, _> = resource(&spec, "default", |_| None).into_iter().collect();
        assert_eq!(bare["service.name"], "skiff");
        assert_eq!(bare["k8s.namespace.name"], "default");
    }
}
