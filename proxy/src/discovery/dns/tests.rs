//! The resolver's rules: resolv.conf, search order, /etc/hosts and TTL bounds. Lookups over
//! the network are tested end to end against a DNS server the test runs on loopback.

use super::*;
use crate::config::Dur;

const POD_RESOLV_CONF: &str = "\
# written by the kubelet
nameserver 10.96.0.10
nameserver fe80::1%eth0
search prod.svc.cluster.local svc.cluster.local cluster.local
options ndots:5 timeout:1
";

#[test]
fn resolv_conf_gives_servers_search_domains_and_ndots() {
    let conf = ResolvConf::parse(POD_RESOLV_CONF);
    assert_eq!(
        conf.nameservers,
        [
            "10.96.0.10:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
    assert_eq!(conf.search.len(), 3);
    assert_eq!(conf.ndots, 5);
    // Nothing usable: the local server, as glibc does.
    let empty = ResolvConf::parse("");
    assert_eq!(empty.nameservers, ["127.0.0.1:53".parse().unwrap()]);
    assert_eq!(empty.ndots, 1);
}

#[test]
fn names_are_tried_in_the_order_a_pod_resolver_uses() {
    let search = ResolvConf::parse(POD_RESOLV_CONF).search;
    assert_eq!(
        candidates("web-headless", &search, 5)[..2],
        [
            "web-headless.prod.svc.cluster.local",
            "web-headless.svc.cluster.local"
        ]
    );
    assert_eq!(
        candidates("web-headless", &search, 5).last().unwrap(),
        "web-headless"
    );
    // Enough dots: as written first.
    let fq = candidates("web.prod.svc.cluster.local", &search, 4);
    assert_eq!(fq[0], "web.prod.svc.cluster.local");
    // A trailing dot: only as written.
    assert_eq!(candidates("web.prod.", &search, 5), ["web.prod"]);
}

#[test]
fn hosts_file_names_match_any_alias_case_insensitively() {
    let hosts =
        "127.0.0.1 localhost\n::1 localhost ip6-localhost # comment\n10.0.0.9 db DB.local\n";
    assert_eq!(in_hosts(hosts, "localhost").len(), 2);
    assert_eq!(
        in_hosts(hosts, "db.LOCAL"),
        ["10.0.0.9".parse::<IpAddr>().unwrap()]
    );
    assert!(in_hosts(hosts, "comment").is_empty());
}

#[test]
fn ttls_are_bounded() {
    let spec = DnsSpec {
        min_ttl: Dur::secs(5),
        max_ttl: Dur::secs(60),
        ..DnsSpec::default()
    };
    let r = Resolver::with_resolv_conf(&spec, "");
    assert_eq!(r.bound(Duration::ZERO), Duration::from_secs(5));
    assert_eq!(r.bound(Duration::from_secs(30)), Duration::from_secs(30));
    assert_eq!(
        r.bound(Duration::from_secs(86_400)),
        Duration::from_secs(60)
    );
}

#[tokio::test]
async fn literals_and_hosts_entries_need_no_server() {
    // No server listens on port 9: a query would time out.
    let spec = DnsSpec {
        nameservers: vec!["127.0.0.1:9".parse().unwrap()],
        ..DnsSpec::default()
    };
    let r = Resolver::with_resolv_conf(&spec, "");
    let a = r.lookup("10.1.2.3").await.unwrap();
    assert_eq!(a.addrs, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(a.ttl, spec.max_ttl.0);
    let v6 = r.lookup("[::1]").await.unwrap();
    assert_eq!(v6.addrs, ["::1".parse::<IpAddr>().unwrap()]);
    let local = r.lookup("localhost").await.unwrap();
    assert!(local.addrs.iter().all(IpAddr::is_loopback) && !local.addrs.is_empty());
}
