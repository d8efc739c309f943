//! Linkerd's retry and timeout annotations on routes (`retry.linkerd.io/*`,
//! `timeout.linkerd.io/*`), honoured so that a Linkerd user's routes keep their behaviour.
//!
//! | annotation | value | becomes |
//! |---|---|---|
//! | `retry.linkerd.io/http` | `5xx`, `gateway-error`, `NNN`, `NNN-MMM`, comma-separated | the statuses retried |
//! | `retry.linkerd.io/grpc` | `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`, comma-separated | the gRPC statuses retried |
//! | `retry.linkerd.io/limit` | a whole number | retries after the first try |
//! | `retry.linkerd.io/timeout` | a duration | each try's deadline |
//! | `timeout.linkerd.io/request` | a duration | the whole request's deadline |
//! | `timeout.linkerd.io/response` | a duration | each try's deadline (unless `retry.linkerd.io/timeout`) |
//! | `timeout.linkerd.io/idle` | a duration | the longest pause in a response stream |
//!
//! As in Linkerd: any retry annotation turns retries on, with a limit of 1 and `5xx` unless
//! said otherwise (with only `retry.linkerd.io/grpc`, gRPC statuses only), replacing the
//! route's own `retry`; a timeout annotation wins over the rule's `timeouts` field by field.
//! Durations are one number and one unit (`ms`, `s`, `m`, `h`, `d`), or `0` for none. Other
//! annotations are ignored; a value that does not parse refuses the route, saying which.

use std::collections::BTreeMap;

use super::super::{Dur, RetrySpec, StatusCode, TimeoutsSpec};

/// What a route's annotations say about its retries and timeouts.
#[derive(Clone, Debug, Default, PartialEq)]
pub(in crate::config) struct LinkerdPolicy {
    /// Retries, when any retry annotation is there.
    pub(in crate::config) retry: Option<RetrySpec>,
    /// Timeouts, each when its annotation is there.
    pub(in crate::config) timeouts: TimeoutsSpec,
}

impl LinkerdPolicy {
    /// `rule`'s timeouts with these in front, field by field.
    pub(in crate::config) fn timeouts_over(
        &self,
        rule: Option<TimeoutsSpec>,
    ) -> Option<TimeoutsSpec> {
        let rule = rule.unwrap_or_default();
        let merged = TimeoutsSpec {
            request: self.timeouts.request.or(rule.request),
            backend_request: self.timeouts.backend_request.or(rule.backend_request),
            stream_idle: self.timeouts.stream_idle.or(rule.stream_idle),
        };
        (merged != TimeoutsSpec::default()).then_some(merged)
    }
}

/// Reads the annotations Linkerd defines.
pub(in crate::config) fn linkerd(
    annotations: &BTreeMap<String, String>,
) -> Result<LinkerdPolicy, String> {
    let get = |name: &str| annotations.get(name).map(String::as_str);
    let duration = |name: &str| -> Result<Option<Dur>, String> {
        get(name)
            .map(|v| {
                parse_duration(v).ok_or_else(|| {
                    format!(
                        "metadata.annotations.{name}: {v:?} is not a duration such as 300ms or 10s"
                    )
                })
            })
            .transpose()
    };
    let codes = get("retry.linkerd.io/http")
        .map(|v| {
            parse_codes(v).map_err(|e| format!("metadata.annotations.retry.linkerd.io/http: {e}"))
        })
        .transpose()?;
    let limit = get("retry.linkerd.io/limit")
        .map(|v| {
            v.trim().parse::<u16>().map_err(|_| {
                format!("metadata.annotations.retry.linkerd.io/limit: {v:?} is not a whole number")
            })
        })
        .transpose()?;
    let grpc = get("retry.linkerd.io/grpc")
        .map(|v| {
            parse_grpc(v).map_err(|e| format!("metadata.annotations.retry.linkerd.io/grpc: {e}"))
        })
        .transpose()?;
    let try_timeout = duration("retry.linkerd.io/timeout")?;
    let any_retry = codes.is_some() || grpc.is_some() || limit.is_some() || try_timeout.is_some();
    let retry = any_retry.then(|| RetrySpec {
        // Linkerd: 1 unless said, and "0" counts as unsaid.
        attempts: u32::from(limit.filter(|l| *l > 0).unwrap_or(1)),
        codes: match (&codes, &grpc) {
            (Some(codes), _) => codes.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => (500..=599).map(StatusCode).collect(),
        },
        grpc_codes: grpc.unwrap_or_default(),
        ..RetrySpec::default()
    });
    let response = duration("timeout.linkerd.io/response")?;
    let timeouts = TimeoutsSpec {
        request: duration("timeout.linkerd.io/request")?,
        backend_request: try_timeout.or(response),
        stream_idle: duration("timeout.linkerd.io/idle")?,
    };
    timeouts.check()?;
    Ok(LinkerdPolicy { retry, timeouts })
}

/// `5xx`, `gateway-error` (502-504), `NNN` and `NNN-MMM`, comma-separated.
fn parse_codes(value: &str) -> Result<Vec<StatusCode>, String> {
    let mut codes = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        let range = match item.to_ascii_lowercase().as_str() {
            "5xx" => 500..=599,
            "gateway-error" => 502..=504,
            _ => {
                let (from, to) = item.split_once('-').unwrap_or((item, item));
                let code = |s: &str| s.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
                match (code(from), code(to)) {
                    (Some(from), Some(to)) if from <= to => from..=to,
                    _ => {
                        return Err(format!(
                            "{item:?} is not a status, a range of them, 5xx or gateway-error"
                        ))
                    }
                }
            }
        };
        codes.extend(range.map(StatusCode));
    }
    codes.sort_unstable_by_key(|c| c.0);
    codes.dedup();
    Ok(codes)
}

/// gRPC status names, comma-separated, as their codes.
fn parse_grpc(value: &str) -> Result<Vec<u32>, String> {
    value
        .split(',')
        .map(|item| match item.trim().to_ascii_lowercase().as_str() {
            "cancelled" => Ok(1),
            "deadline-exceeded" => Ok(4),
            "resource-exhausted" => Ok(8),
            "internal" => Ok(13),
            "unavailable" => Ok(14),
            _ => Err(format!(
                "{item:?} is not cancelled, deadline-exceeded, internal, resource-exhausted or unavailable"
            )),
        })
        .collect()
}

/// One number and one unit (`ms`, `s`, `m`, `h`, `d`), or `0`.
fn parse_duration(value: &str) -> Option<Dur> {
    let value = value.trim();
    if value == "0" {
        return Some(Dur::secs(0));
    }
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = value.get(..digits)?.parse().ok()?;
    let ms = match &value[digits..] {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Dur::millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<LinkerdPolicy, String> {
        linkerd(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn retry_annotations_become_a_retry_policy() {
        let p = with(&[
            ("retry.linkerd.io/http", "gateway-error,429,400-401"),
            ("retry.linkerd.io/limit", "3"),
            ("retry.linkerd.io/timeout", "300ms"),
            ("unrelated.example.com/x", "whatever"),
        ])
        .unwrap();
        let retry = p.retry.unwrap();
        let codes: Vec<u16> = retry.codes.iter().map(|c| c.0).collect();
        assert_eq!(codes, [400, 401, 429, 502, 503, 504]);
        assert_eq!(retry.attempts, 3);
        assert_eq!(p.timeouts.backend_request, Some(Dur::millis(300)));
        // Any one of them turns retries on: a limit of 1, on 5xx.
        let only_limit = with(&[("retry.linkerd.io/limit", "0")])
            .unwrap()
            .retry
            .unwrap();
        assert_eq!((only_limit.attempts, only_limit.codes.len()), (1, 100));
        assert_eq!(with(&[]).unwrap(), LinkerdPolicy::default());
        let grpc = with(&[("retry.linkerd.io/grpc", "unavailable,deadline-exceeded")])
            .unwrap()
            .retry
            .unwrap();
        assert_eq!((grpc.grpc_codes, grpc.codes.len()), (vec![14, 4], 0));
    }

    #[test]
    fn timeout_annotations_win_field_by_field() {
        let p = with(&[
            ("timeout.linkerd.io/request", "10s"),
            ("timeout.linkerd.io/idle", "1m"),
        ])
        .unwrap();
        let rule = TimeoutsSpec {
            request: Some(Dur::secs(30)),
            backend_request: Some(Dur::secs(2)),
            stream_idle: None,
        };
        assert_eq!(
            p.timeouts_over(Some(rule)),
            Some(TimeoutsSpec {
                request: Some(Dur::secs(10)),
                backend_request: Some(Dur::secs(2)),
                stream_idle: Some(Dur::secs(60)),
            })
        );
        assert_eq!(LinkerdPolicy::default().timeouts_over(None), None);
    }

    #[test]
    fn bad_values_say_which_annotation() {
        for (name, value) in [
            ("retry.linkerd.io/http", "5xx, 600"),
            ("retry.linkerd.io/limit", "many"),
            ("timeout.linkerd.io/request", "1m30s"),
            ("timeout.linkerd.io/request", "1.5s"),
            ("timeout.linkerd.io/request", "5"),
        ] {
            let e = with(&[(name, value)]).unwrap_err();
            assert!(e.contains(name), "{e}");
        }
        assert_eq!(parse_duration("0"), Some(Dur::secs(0)));
        assert_eq!(parse_duration("2d"), Some(Dur::secs(172_800)));
    }
}
