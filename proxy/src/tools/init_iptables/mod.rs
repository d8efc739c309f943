//! `skiff init-iptables`: the rules that make interception transparent. Run once per pod by
//! an init container with `NET_ADMIN`, they redirect the pod's inbound TCP to Skiff's inbound
//! port and its outbound TCP to the outbound port, except:
//!
//! - connections Skiff itself makes (its user id), or it would proxy its own upstream calls
//!   back into itself;
//! - traffic over the loopback interface (the app talking to itself, or to Skiff directly);
//! - Skiff's admin port inbound (probes and scrapes reach it as they are), and any ports or
//!   destination networks the operator lists (the Kubernetes API, a database).
//!
//! Skiff then reads each connection's original destination (`SO_ORIGINAL_DST`).
//!
//! Two backends write the same rules: `nft` (one atomic transaction on a table `skiff` of its
//! own) and `iptables` (chains `SKIFF_INBOUND` and `SKIFF_OUTBOUND` in the nat table, filled by
//! `iptables-restore`, jumped to from PREROUTING and OUTPUT). Both are idempotent: running
//! again replaces the rules, and `--cleanup` removes exactly what was added.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// What rules to install: the flags of `skiff init-iptables`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct Options {
    /// Which tool writes the rules
    #[arg(long, value_enum, default_value_t = Backend::Nft)]
    pub backend: Backend,
    /// Where inbound connections are redirected: the port of `inbound.listen`
    #[arg(long, value_name = "P", default_value_t = 4143, value_parser = port())]
    pub inbound_port: u16,
    /// Where outbound connections are redirected: the port of `outbound.listen`
    #[arg(long, value_name = "P", default_value_t = 4140, value_parser = port())]
    pub outbound_port: u16,
    /// Connections made by this user are left alone: the uid Skiff runs as
    // Or Skiff's own upstream connections would be redirected back into it.
    #[arg(long, value_name = "UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Inbound connections to this port (Skiff's admin port) are left alone
    // So the kubelet's probes and Prometheus' scrapes reach it as they are.
    #[arg(long, value_name = "P", default_value_t = 4191, value_parser = port())]
    pub admin_port: u16,
    /// Inbound destination ports left alone: ports or inclusive ranges (22,9000-9100);
    /// may be given more than once
    #[arg(long, value_name = "P,A-B", value_delimiter = ',', value_parser = parse_ports)]
    pub skip_inbound_ports: Vec<Ports>,
    /// Outbound destination ports left alone, as for --skip-inbound-ports
    #[arg(long, value_name = "P,A-B", value_delimiter = ',', value_parser = parse_ports)]
    pub skip_outbound_ports: Vec<Ports>,
    /// Outbound destination networks left alone (10.96.0.1/32,fd00::/8); an address without
    /// a length is one host; may be given more than once
    #[arg(long, value_name = "NET,...", value_delimiter = ',', value_parser = parse_cidr)]
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// Redirect IPv6 too, whether or not the pod has an IPv6 address (by default IPv6 is
    /// redirected when the pod has a global IPv6 address, and left alone otherwise)
    // Skiff's listeners answer in IPv6 too (an IPv4 wildcard or loopback listener has an
    // IPv6 twin on the same port), so redirected IPv6 connections reach them.
    #[arg(long, conflicts_with = "no_ipv6")]
    pub ipv6: bool,
    /// Leave IPv6 alone, even when the pod has an IPv6 address
    #[arg(long)]
    pub no_ipv6: bool,
    /// Print the commands and their input; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the rules instead of installing them
    #[arg(long)]
    pub cleanup: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backend: Backend::Nft,
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_uid: 2102,
            admin_port: 4191,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            ipv6: false,
            no_ipv6: false,
            dry_run: false,
            cleanup: false,
        }
    }
}

/// The tool that writes the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `nft`, with a table of Skiff's own.
    Nft,
    /// `iptables-restore` and `iptables` (and the `ip6` variants); on current distributions
    /// these write nftables rules through the iptables-nft compatibility layer.
    Iptables,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Nft => "nft",
            Self::Iptables => "iptables",
        })
    }
}

/// A port or an inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports(pub u16, pub u16);

/// A network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub IpAddr, pub u8);

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The flags contradict each other.
    #[error("{0}")]
    Usage(String),
    /// A tool could not be run.
    #[error("cannot run {tool}: {source} (is it installed, and are we root or NET_ADMIN?)")]
    Spawn {
        /// The tool.
        tool: String,
        /// Why.
        source: std::io::Error,
    },
    /// A tool refused the rules.
    #[error("{tool} failed: {stderr}")]
    Failed {
        /// The tool and its arguments.
        tool: String,
        /// What it said.
        stderr: String,
    },
}

impl Options {
    /// What clap cannot check flag by flag: the two redirect targets must differ, or
    /// inbound and outbound connections would land on the same listener.
    pub fn check(&self) -> Result<(), InitError> {
        if self.inbound_port == self.outbound_port {
            return Err(InitError::Usage(
                "--inbound-port and --outbound-port must differ".into(),
            ));
        }
        Ok(())
    }

    /// Inbound ports never redirected: the admin port, the inbound port itself (already
    /// Skiff's), and the operator's.
    fn inbound_skips(&self) -> Vec<Ports> {
        let mut skips = vec![
            Ports(self.admin_port, self.admin_port),
            Ports(self.inbound_port, self.inbound_port),
        ];
        skips.extend(&self.skip_inbound_ports);
        skips
    }
}

/// Ports are 1 to 65535: 0 is no port a rule could match.
fn port() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..)
}

/// One item of a port list: `8081` or `9000-9100`.
fn parse_ports(v: &str) -> Result<Ports, String> {
    let v = v.trim();
    let (lo, hi) = v.split_once('-').unwrap_or((v, v));
    match (lo.parse::<u16>(), hi.parse::<u16>()) {
        (Ok(lo), Ok(hi)) if lo != 0 && lo <= hi => Ok(Ports(lo, hi)),
        _ => Err("expected a port (1-65535) or a range LOW-HIGH".into()),
    }
}

/// One item of a network list: `10.96.0.0/12`, `fd00::/8`, or an address alone (one host).
fn parse_cidr(v: &str) -> Result<Cidr, String> {
    let v = v.trim();
    let (ip, len) = v.split_once('/').unwrap_or((v, ""));
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("the prefix length is 0 to {max}"))?
    };
    Ok(Cidr(ip, len))
}

/// One tool run: the program, its arguments and what it reads on stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The program.
    pub program: &'static str,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its input.
    pub stdin: Option<String>,
    /// Whether failure is expected and fine (a check, or removing what is not there).
    pub may_fail: bool,
    /// With `may_fail`: run the next step only if this one failed (check, then add).
    pub else_next: bool,
}

impl Step {
    fn run(program: &'static str, args: &[&str]) -> Self {
        Self {
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: None,
            may_fail: false,
            else_next: false,
        }
    }
}

/// The steps that install (or remove) the rules.
pub fn plan(o: &Options) -> Vec<Step> {
    match o.backend {
        Backend::Nft => {
            // Declaring then deleting a table makes the script work whether or not it
            // exists; all of it is one transaction. Both families' tables go, so a run
            // with or without `--ipv6` replaces (or cleans up) what any earlier run left.
            let mut script = String::new();
            for family in ["ip", "inet"] {
                let _ = writeln!(script, "table {family} skiff\ndelete table {family} skiff");
            }
            if !o.cleanup {
                let family = if o.ipv6 { "inet" } else { "ip" };
                script.push_str(&nft_table(o, family));
            }
            vec![Step {
                stdin: Some(script),
                ..Step::run("nft", &["-f", "-"])
            }]
        }
        Backend::Iptables => {
            let mut steps = iptables_steps("iptables", o, false);
            if o.ipv6 {
                steps.extend(iptables_steps("ip6tables", o, true));
            } else {
                // IPv6 rules an earlier `--ipv6` run left are removed.
                let cleanup = Options {
                    cleanup: true,
                    ..o.clone()
                };
                steps.extend(iptables_steps("ip6tables", &cleanup, true));
            }
            steps
        }
    }
}

/// Ports as a tool writes them: ranges joined by `range` (`-` for nft, `:` for iptables).
fn port_list(ports: &[Ports], range: &str) -> Vec<String> {
    ports
        .iter()
        .map(|Ports(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}{range}{hi}")
            }
        })
        .collect()
}

fn nft_set(ports: &[Ports]) -> String {
    format!("{{ {} }}", port_list(ports, "-").join(", "))
}

fn nft_table(o: &Options, family: &str) -> String {
    let mut t = format!("table {family} skiff {{\n");
    t.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n",
    );
    let _ = writeln!(t, "    tcp dport {} return", nft_set(&o.inbound_skips()));
    let _ = writeln!(
        t,
        "    meta l4proto tcp redirect to :{}\n  }}",
        o.inbound_port
    );
    t.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n");
    let _ = writeln!(t, "    meta skuid {} return", o.proxy_uid);
    t.push_str("    oifname \"lo\" return\n");
    if !o.skip_outbound_ports.is_empty() {
        let _ = writeln!(
            t,
            "    tcp dport {} return",
            nft_set(&o.skip_outbound_ports)
        );
    }
    for (v6, keyword) in [(false, "ip"), (true, "ip6")] {
        let nets: Vec<String> = o
            .skip_outbound_cidrs
            .iter()
            .filter(|c| c.0.is_ipv6() == v6 && (o.ipv6 || !v6))
            .map(|Cidr(ip, len)| format!("{ip}/{len}"))
            .collect();
        if !nets.is_empty() {
            let _ = writeln!(t, "    {keyword} daddr {{ {} }} return", nets.join(", "));
        }
    }
    let _ = writeln!(
        t,
        "    meta l4proto tcp redirect to :{}\n  }}\n}}",
        o.outbound_port
    );
    t
}

const INBOUND_CHAIN: &str = "SKIFF_INBOUND";
const OUTBOUND_CHAIN: &str = "SKIFF_OUTBOUND";

fn iptables_steps(program: &'static str, o: &Options, v6: bool) -> Vec<Step> {
    let jumps = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTBOUND_CHAIN)];
    let mut steps = Vec::new();
    if o.cleanup {
        for (hook, chain) in jumps {
            steps.push(Step {
                may_fail: true,
                ..Step::run(
                    program,
                    &["-t", "nat", "-D", hook, "-p", "tcp", "-j", chain],
                )
            });
        }
        for flag in ["-F", "-X"] {
            for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
                steps.push(Step {
                    may_fail: true,
                    ..Step::run(program, &["-t", "nat", flag, chain])
                });
            }
        }
        return steps;
    }
    // The chains' contents are replaced in one restore; `--noflush` leaves other rules be.
    let multiport = |ports: &[Ports]| port_list(ports, ":").join(",");
    let mut r = format!("*nat\n:{INBOUND_CHAIN} - [0:0]\n:{OUTBOUND_CHAIN} - [0:0]\n");
    let inbound_skips = o.inbound_skips();
    // multiport takes at most 15 ports; a range counts as two.
    for chunk in inbound_skips.chunks(7) {
        let _ = writeln!(
            r,
            "-A {INBOUND_CHAIN} -p tcp -m multiport --dports {} -j RETURN",
            multiport(chunk)
        );
    }
    let _ = writeln!(
        r,
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        o.inbound_port
    );
    let _ = writeln!(
        r,
        "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN",
        o.proxy_uid
    );
    let _ = writeln!(r, "-A {OUTBOUND_CHAIN} -o lo -j RETURN");
    for chunk in o.skip_outbound_ports.chunks(7) {
        let _ = writeln!(
            r,
            "-A {OUTBOUND_CHAIN} -p tcp -m multiport --dports {} -j RETURN",
            multiport(chunk)
        );
    }
    for Cidr(ip, len) in o.skip_outbound_cidrs.iter().filter(|c| c.0.is_ipv6() == v6) {
        let _ = writeln!(r, "-A {OUTBOUND_CHAIN} -d {ip}/{len} -j RETURN");
    }
    let _ = writeln!(
        r,
        "-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        o.outbound_port
    );
    r.push_str("COMMIT\n");
    let restore = if v6 {
        "ip6tables-restore"
    } else {
        "iptables-restore"
    };
    steps.push(Step {
        stdin: Some(r),
        ..Step::run(restore, &["--noflush"])
    });
    for (hook, chain) in jumps {
        steps.push(Step {
            may_fail: true,
            else_next: true,
            ..Step::run(
                program,
                &["-t", "nat", "-C", hook, "-p", "tcp", "-j", chain],
            )
        });
        steps.push(Step::run(
            program,
            &["-t", "nat", "-A", hook, "-p", "tcp", "-j", chain],
        ));
    }
    steps
}

/// Whether the network namespace has a global IPv6 address on an interface other than
/// loopback, from `/proc/net/if_inet6` (one address a line: address, interface index,
/// prefix length, scope, flags, name; scope `00` is global, unique-local included). A
/// link-local address alone, which every interface gets, is not a pod with IPv6.
fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, _, _, "00", _, name] if *name != "lo")
    })
}

/// Runs the steps (or, with `dry_run`, prints them).
pub fn apply(o: &Options) -> Result<(), InitError> {
    o.check()?;
    let mut o = o.clone();
    if !o.ipv6 && !o.no_ipv6 && !o.cleanup {
        o.ipv6 =
            has_global_ipv6(&std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default());
    }
    let o = &o;
    let steps = plan(o);
    if o.dry_run {
        let mut out = String::new();
        for step in &steps {
            let _ = writeln!(out, "{} {}", step.program, step.args.join(" "));
            if let Some(input) = &step.stdin {
                out.push_str(input);
            }
        }
        print!("{out}");
        return Ok(());
    }
    let mut skip_next = false;
    for step in &steps {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let ok = execute(step)?;
        skip_next = ok && step.else_next;
    }
    Ok(())
}

/// Runs one step; `Ok(false)` when it failed and was allowed to.
fn execute(step: &Step) -> Result<bool, InitError> {
    let tool = format!("{} {}", step.program, step.args.join(" "));
    let child = Command::new(step.program)
        .args(&step.args)
        .stdin(if step.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        // Removing rules of a tool that is not installed: there are none.
        Err(e) if step.may_fail && e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(InitError::Spawn {
                tool: step.program.into(),
                source,
            })
        }
    };
    if let (Some(input), Some(mut pipe)) = (&step.stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| InitError::Spawn {
                tool: tool.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(true);
    }
    if step.may_fail {
        return Ok(false);
    }
    Err(InitError::Failed {
        tool,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests;
