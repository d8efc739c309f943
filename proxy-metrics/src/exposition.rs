//! What `/metrics` answers in: the Prometheus text format (0.0.4), as Linkerd's proxy does,
//! unless the scraper accepts only OpenMetrics.
//!
//! Prometheus 2.x asks for OpenMetrics first and the text format second. Skiff answers in
//! the text format, as Linkerd's proxy does, because Prometheus stores a histogram's `le`
//! as written: OpenMetrics writes `le="1.0"`, and a query or dashboard written for Linkerd
//! (`response_latency_ms_bucket{le="100"}`) then finds nothing. The registry encodes
//! OpenMetrics; [`to_text`] rewrites it line by line, and both formats write whole bucket
//! bounds as Linkerd does (`le="100"`).

/// The text format's content type.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The OpenMetrics content type.
pub const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a scraper sending `accept` gets OpenMetrics: only when it accepts nothing else
/// (neither `text/plain` nor a wildcard).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut openmetrics = false;
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
        let refused = parts.any(|p| p.replace(' ', "") == "q=0");
        if refused {
            continue;
        }
        match kind.as_str() {
            "application/openmetrics-text" => openmetrics = true,
            "text/plain" | "*/*" | "text/*" => return false,
            _ => {}
        }
    }
    openmetrics
}

/// An OpenMetrics exposition, in the Prometheus text format: `# TYPE` and `# HELP` name the
/// sample (`request_total`, not `request`), `# UNIT` and `# EOF` go, exemplars go, and
/// `info` and `stateset` families become gauges.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The counter families, whose `# TYPE` and `# HELP` (which comes first) name the
    // `_total` sample.
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_owned(), "gauge"),
                "gaugehistogram" => (name.to_owned(), "histogram"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            out.push_str(&format!("# HELP {name} {help}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        // A sample: drop its exemplar, and counters' `_created` series.
        let sample = line.split(" # ").next().unwrap_or(line);
        let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
        if sample[..name_end].ends_with("_created") {
            continue;
        }
        out.push_str(&whole_le(sample));
        out.push('\n');
    }
    out
}

/// A sample line with its `le="N.0"` written `le="N"`, as Linkerd writes bucket bounds.
pub fn whole_le(sample: &str) -> String {
    let Some(at) = sample.find("le=\"") else {
        return sample.to_owned();
    };
    let start = at + 4;
    let Some(len) = sample[start..].find('"') else {
        return sample.to_owned();
    };
    let value = &sample[start..start + len];
    match value.strip_suffix(".0") {
        Some(whole) if !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{}{whole}{}", &sample[..start], &sample[start + len..])
        }
        _ => sample.to_owned(),
    }
}

/// An OpenMetrics exposition with its bucket bounds written as [`whole_le`] does.
pub fn with_whole_le(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str(&whole_le(line));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_2_gets_the_text_format_and_an_openmetrics_only_client_openmetrics() {
        let prometheus_2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(!wants_openmetrics(Some(prometheus_2)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text; version=1.0.0"
        )));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text, text/plain;q=0"
        )));
    }

    #[test]
    fn openmetrics_becomes_text_with_linkerds_bucket_bounds() {
        let om = "# HELP request Requests.\n# TYPE request counter\nrequest_total{direction=\"inbound\"} 3\nrequest_created{direction=\"inbound\"} 1.0\n# HELP response_latency_ms Latency.\n# TYPE response_latency_ms histogram\n# UNIT response_latency_ms ms\nresponse_latency_ms_bucket{le=\"1.0\"} 1 # {trace_id=\"x\"} 0.5\nresponse_latency_ms_bucket{le=\"2.5\"} 1\nresponse_latency_ms_bucket{le=\"+Inf\"} 2\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# EOF\n";
        let text = to_text(om);
        assert_eq!(
            text,
            "# HELP request_total Requests.\n# TYPE request_total counter\nrequest_total{direction=\"inbound\"} 3\n# HELP response_latency_ms Latency.\n# TYPE response_latency_ms histogram\nresponse_latency_ms_bucket{le=\"1\"} 1\nresponse_latency_ms_bucket{le=\"2.5\"} 1\nresponse_latency_ms_bucket{le=\"+Inf\"} 2\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n"
        );
        assert!(with_whole_le(om).contains("le=\"1\"} 1 # {trace_id"));
        assert_eq!(
            whole_le("x_bucket{a=\"b\",le=\"100.0\"} 4"),
            "x_bucket{a=\"b\",le=\"100\"} 4"
        );
    }
}
