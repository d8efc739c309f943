//! The dual-stack runs of `transparent.rs`: with IPv6 addresses in both namespaces,
//! `init-iptables` redirects IPv6 too, and IPv6 calls go through Skiff's listeners' IPv6
//! twins, routed by their IPv6 original destinations.

use super::{sum, Lab, POD_IP6, REMOTE_IP6};

/// In a dual-stack pod: IPv6 calls out of and into the pod go through Skiff as IPv4 ones do
/// (`init-iptables` redirected IPv6 because the pod has an IPv6 address), routed by their
/// IPv6 original destination, and counted on top of the IPv4 traffic in `before`.
pub(super) fn traffic(lab: &Lab, before: &str) {
    let pod = &lab.pod;
    // A cluster IPv6 address only Skiff's config knows: routed to the service's endpoint.
    let answer = lab.curl(pod, "http://[fd00:96::10]/");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello from the demo app\n"), "{answer}");
    // An IPv6 address no service owns: forwarded to it as it is.
    let answer = lab.curl(pod, &format!("http://[{REMOTE_IP6}]:8080/"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Into the pod over IPv6.
    let answer = lab.curl(&lab.remote, &format!("http://[{POD_IP6}]:8081/"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let after = lab.curl(pod, "http://127.0.0.1:4191/metrics");
    let outbound = r#"direction="outbound""#;
    for (name, labels, more) in [
        (
            "request_total",
            &[outbound, r#"target_addr="web6"#][..],
            1.0,
        ),
        (
            "request_total",
            &[outbound, r#"target_addr="passthrough""#],
            1.0,
        ),
        ("request_total", &[r#"direction="inbound""#], 1.0),
        ("tcp_open_total", &[outbound, r#"peer="src""#], 2.0),
    ] {
        assert_eq!(
            sum(&after, name, labels) - sum(before, name, labels),
            more,
            "{name} {labels:?}\n{after}"
        );
    }
}
