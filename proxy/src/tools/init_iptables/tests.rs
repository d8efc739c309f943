//! The rules each backend writes. Installing them is tested end to end, in a network
//! namespace, by `proxy/tests/transparent.rs`.

use clap::Parser;

use super::*;

/// The flags as the command line reads them: `skiff init-iptables` is this struct flattened.
#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

/// Parses `flags` (split on whitespace) and checks them as `skiff init-iptables` does.
fn parse(flags: &str) -> Result<Options, String> {
    let args = std::iter::once("init-iptables").chain(flags.split_whitespace());
    let options = Cli::try_parse_from(args)
        .map_err(|e| e.to_string())?
        .options;
    options.check().map_err(|e| e.to_string())?;
    Ok(options)
}

fn nft_script(flags: &str) -> String {
    let steps = plan(&parse(flags).unwrap());
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (steps[0].program, steps[0].args.join(" ")),
        ("nft", "-f -".into())
    );
    steps[0].stdin.clone().unwrap()
}

#[test]
fn flags_parse_into_typed_options() {
    let o = parse(
        "--backend iptables --inbound-port 5143 --outbound-port=5140 --proxy-uid 999 \
         --admin-port 5191 --skip-inbound-ports 22,8000-8100 --skip-outbound-ports 443 \
         --skip-outbound-cidrs 10.96.0.1/32,fd00::/8 --skip-outbound-cidrs=192.168.1.1 --ipv6",
    )
    .unwrap();
    assert_eq!(o.backend, Backend::Iptables);
    assert_eq!(
        (o.inbound_port, o.outbound_port, o.admin_port),
        (5143, 5140, 5191)
    );
    assert_eq!(o.proxy_uid, 999);
    assert_eq!(o.skip_inbound_ports, [Ports(22, 22), Ports(8000, 8100)]);
    assert_eq!(o.skip_outbound_ports, [Ports(443, 443)]);
    assert_eq!(
        o.skip_outbound_cidrs[2],
        Cidr("192.168.1.1".parse().unwrap(), 32)
    );
    assert!(o.ipv6);
    let defaults = parse("").unwrap();
    assert_eq!(defaults, Options::default());
    assert!(
        !defaults.ipv6 && !defaults.no_ipv6,
        "IPv6 follows the pod unless a flag says"
    );
    assert!(parse("--no-ipv6").unwrap().no_ipv6);
    assert!(parse("--ipv6 --no-ipv6").is_err(), "the two contradict");
}

#[test]
fn bad_flags_say_what_is_wrong() {
    for (flags, says) in [
        ("--backend pf", "[possible values: nft, iptables]"),
        (
            "--inbound-port 0",
            "invalid value '0' for '--inbound-port <P>'",
        ),
        (
            "--outbound-port",
            "a value is required for '--outbound-port <P>'",
        ),
        ("--skip-outbound-cidrs 10.0.0.0/33", "'10.0.0.0/33'"),
        ("--skip-inbound-ports 22,90-80", "'90-80'"),
        ("--inbound-port 4140", "must differ"),
        ("--redirect-all", "unexpected argument '--redirect-all'"),
        ("--dryrun", "a similar argument exists: '--dry-run'"),
    ] {
        let e = parse(flags).unwrap_err();
        assert!(e.contains(says), "{flags}: {e}");
    }
}

#[test]
fn nft_replaces_its_own_table_atomically() {
    let script = nft_script(
        "--ipv6 --skip-outbound-ports 443,5432 --skip-outbound-cidrs 10.96.0.1,fd00::/8",
    );
    // Whether or not the tables exist, one transaction deletes and recreates them.
    assert!(script.starts_with(
        "table ip skiff\ndelete table ip skiff\ntable inet skiff\ndelete table inet skiff\n\
         table inet skiff {\n"
    ));
    for rule in [
        "type nat hook prerouting priority dstnat; policy accept;",
        "tcp dport { 4191, 4143 } return",
        "meta l4proto tcp redirect to :4143",
        "type nat hook output priority -100; policy accept;",
        "meta skuid 2102 return",
        "oifname \"lo\" return",
        "tcp dport { 443, 5432 } return",
        "ip daddr { 10.96.0.1/32 } return",
        "ip6 daddr { fd00::/8 } return",
        "meta l4proto tcp redirect to :4140",
    ] {
        assert!(script.contains(rule), "missing {rule:?} in\n{script}");
    }
    // Exclusions come before the redirect in each chain.
    let output = &script[script.find("chain output").unwrap()..];
    assert!(output.find("skuid").unwrap() < output.find("redirect").unwrap());
}

#[test]
fn nft_without_ipv6_uses_an_ip_table_and_drops_ipv6_networks() {
    let script = nft_script("--skip-outbound-cidrs fd00::/8");
    assert!(script.contains("table ip skiff {"));
    assert!(!script.contains("ip6 daddr"));
}

#[test]
fn nft_cleanup_only_deletes_the_tables_of_both_families() {
    let both = "table ip skiff\ndelete table ip skiff\ntable inet skiff\ndelete table inet skiff\n";
    assert_eq!(nft_script("--cleanup"), both);
    assert_eq!(nft_script("--cleanup --ipv6"), both);
}

#[test]
fn iptables_fills_its_chains_in_one_restore_then_adds_missing_jumps() {
    let o = parse(
        "--backend iptables --ipv6 --skip-outbound-cidrs 10.96.0.1/32,fd00::/8 --skip-inbound-ports 22",
    )
    .unwrap();
    let steps = plan(&o);
    let programs: Vec<&str> = steps.iter().map(|s| s.program).collect();
    assert_eq!(
        programs,
        [
            "iptables-restore",
            "iptables",
            "iptables",
            "iptables",
            "iptables",
            "ip6tables-restore",
            "ip6tables",
            "ip6tables",
            "ip6tables",
            "ip6tables"
        ]
    );
    let v4 = steps[0].stdin.as_deref().unwrap();
    assert_eq!(steps[0].args, ["--noflush"]);
    for rule in [
        ":SKIFF_INBOUND - [0:0]",
        "-A SKIFF_INBOUND -p tcp -m multiport --dports 4191,4143,22 -j RETURN",
        "-A SKIFF_INBOUND -p tcp -j REDIRECT --to-ports 4143",
        "-A SKIFF_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "-A SKIFF_OUTBOUND -o lo -j RETURN",
        "-A SKIFF_OUTBOUND -d 10.96.0.1/32 -j RETURN",
        "-A SKIFF_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
        "COMMIT",
    ] {
        assert!(v4.contains(rule), "missing {rule:?} in\n{v4}");
    }
    assert!(!v4.contains("fd00::"));
    assert!(steps[5]
        .stdin
        .as_deref()
        .unwrap()
        .contains("-d fd00::/8 -j RETURN"));
    // Each jump is checked first and added only when missing, so a second run adds nothing.
    assert_eq!(
        steps[1].args.join(" "),
        "-t nat -C PREROUTING -p tcp -j SKIFF_INBOUND"
    );
    assert!(steps[1].may_fail && steps[1].else_next);
    assert_eq!(
        steps[2].args.join(" "),
        "-t nat -A PREROUTING -p tcp -j SKIFF_INBOUND"
    );
    assert!(!steps[2].may_fail);
}

#[test]
fn iptables_cleanup_removes_jumps_then_chains_and_tolerates_absence() {
    let o = parse("--backend iptables --cleanup").unwrap();
    let steps = plan(&o);
    let lines: Vec<String> = steps
        .iter()
        .map(|s| format!("{} {}", s.program, s.args.join(" ")))
        .collect();
    let expected = |p: &str| {
        [
            format!("{p} -t nat -D PREROUTING -p tcp -j SKIFF_INBOUND"),
            format!("{p} -t nat -D OUTPUT -p tcp -j SKIFF_OUTBOUND"),
            format!("{p} -t nat -F SKIFF_INBOUND"),
            format!("{p} -t nat -F SKIFF_OUTBOUND"),
            format!("{p} -t nat -X SKIFF_INBOUND"),
            format!("{p} -t nat -X SKIFF_OUTBOUND"),
        ]
    };
    // Both families, whatever `--ipv6` says: what an earlier run installed goes.
    assert_eq!(lines[..6], expected("iptables"));
    assert_eq!(lines[6..], expected("ip6tables"));
    assert!(steps.iter().all(|s| s.may_fail));
    // An IPv4-only install also removes IPv6 rules left from an earlier `--ipv6` run.
    let install = plan(&parse("--backend iptables").unwrap());
    assert!(install
        .iter()
        .any(|s| s.program == "ip6tables" && s.args[2] == "-X"));
    assert!(!install.iter().any(|s| s.program == "ip6tables-restore"));
}

#[test]
fn many_skipped_ports_are_split_across_multiport_rules() {
    let ports: Vec<String> = (1000..1020).map(|p| p.to_string()).collect();
    let o = parse(&format!(
        "--backend iptables --skip-outbound-ports {}",
        ports.join(",")
    ))
    .unwrap();
    let restore = plan(&o)[0].stdin.clone().unwrap();
    let rules: Vec<&str> = restore
        .lines()
        .filter(|l| l.contains("SKIFF_OUTBOUND -p tcp -m multiport"))
        .collect();
    assert_eq!(rules.len(), 3);
    assert!(rules.iter().all(|r| r.split(',').count() <= 7));
}

#[test]
fn a_pod_has_ipv6_when_an_interface_but_loopback_has_a_global_address() {
    // Read off real namespaces: loopback's ::1, a ULA and a link-local address on eth0.
    let dual = "00000000000000000000000000000001 01 80 10 80       lo\n\
                fd000000000000000000000000000002 04 40 00 82     eth0\n\
                fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n";
    assert!(super::has_global_ipv6(dual));
    let v4_only = "00000000000000000000000000000001 01 80 10 80       lo\n\
                   fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n";
    assert!(!super::has_global_ipv6(v4_only), "link-local alone");
    assert!(!super::has_global_ipv6(""), "IPv6 disabled: no file");
}
