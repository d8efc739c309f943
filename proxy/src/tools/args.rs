//! The `skiff` command line, typed: every subcommand and flag as a clap struct, so a
//! mistyped or unknown flag is an error with a suggestion (exit 2) instead of being ignored,
//! and `--help` is generated from the same definitions. `main.rs` only acts on the result.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use super::{init_iptables, inject, stat::TapFilters};

/// Skiff, a sidecar L7 proxy for service meshes
#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    after_help = "Logs go to stderr; set SKIFF_LOG (e.g. SKIFF_LOG=debug, SKIFF_LOG=skiff=debug,info)."
)]
pub struct Cli {
    /// What to do; without one, the help is printed.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Parses `args` (the program name first), including the checks that span flags. Errors
    /// are clap's: `.exit()` prints them and exits 2 (0 for `--help` and `--version`).
    pub fn try_parse_checked<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Self::try_parse_from(args)?;
        if let Some(Command::InitIptables(options)) = &cli.command {
            options
                .check()
                .map_err(|e| usage_error("init-iptables", ErrorKind::ArgumentConflict, e))?;
        }
        Ok(cli)
    }
}

/// An error in clap's format, with the usage of the subcommand `name`.
fn usage_error(name: &str, kind: ErrorKind, message: impl std::fmt::Display) -> clap::Error {
    let mut cli = Cli::command();
    // Building gives subcommands their full usage line (`skiff init-iptables [OPTIONS]`).
    cli.build();
    match cli.find_subcommand_mut(name) {
        Some(sub) => sub.error(kind, message),
        None => cli.error(kind, message),
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve, reloading the config file when it changes
    Run(Run),
    /// Validate a config file; report every error with its line
    Check(Check),
    /// Run built-in backends with Skiff in front of them, or print the demo's config
    Demo(Demo),
    /// Mesh identity tools
    #[command(subcommand)]
    Identity(Identity),
    /// The /stats table of a running proxy: success rate, RPS, latency
    Stat(Stat),
    /// The busiest paths of a running proxy, live
    Top(Tap),
    /// Live request events of a running proxy
    Tap(Tap),
    /// Add Skiff as a native sidecar to every pod template (YAML in, YAML out)
    Inject(Inject),
    /// Redirect this network namespace's TCP through Skiff (transparent mode; needs NET_ADMIN)
    InitIptables(init_iptables::Options),
    /// The demo's fixed-body backend alone, HTTP/1.1 and h2c, for the load harness
    // Hidden: a tool of benches/load, not of Skiff's users.
    #[command(hide = true)]
    BenchBackend(BenchBackend),
    /// Print the version
    Version,
}

/// `skiff run`.
#[derive(Debug, Args)]
pub struct Run {
    /// The config file, watched for changes
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Worker threads [default: spec.workers, else the CPU quota or count]
    #[arg(long, value_name = "N")]
    pub workers: Option<NonZeroUsize>,
}

/// `skiff check`.
#[derive(Debug, Args)]
pub struct Check {
    /// The config file to validate
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `skiff demo`.
#[derive(Debug, Args)]
pub struct Demo {
    /// Worker threads [default: the CPU quota or count]
    #[arg(long, value_name = "N")]
    pub workers: Option<NonZeroUsize>,
    /// Print the demo's config (a start for your own) and exit
    #[arg(long)]
    pub print_config: bool,
}

/// `skiff identity ...`.
#[derive(Debug, Subcommand)]
pub enum Identity {
    /// A new local CA and workload credentials (DIR/NS/SA/tls.crt, tls.key, ca.crt) for mTLS
    DevCa(DevCa),
}

/// `skiff identity dev-ca`.
#[derive(Debug, Args)]
pub struct DevCa {
    /// Where to write ca.crt and each workload's credentials
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A workload to make credentials for; may be given more than once
    #[arg(long, value_name = "NS/SA", required = true)]
    pub workload: Vec<Workload>,
    /// The SPIFFE trust domain
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// How long the workload certificates are valid, in days
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub days: u64,
}

/// A workload named as `NAMESPACE/SERVICE_ACCOUNT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() => Ok(Self {
                namespace: ns.to_owned(),
                service_account: sa.to_owned(),
            }),
            _ => Err("expected NAMESPACE/SERVICE_ACCOUNT".to_owned()),
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// The admin listener the terminal tools talk to.
#[derive(Debug, Args)]
pub struct Admin {
    /// The proxy's admin listener
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4191")]
    pub admin: SocketAddr,
}

/// `skiff stat`.
#[derive(Debug, Args)]
pub struct Stat {
    /// Which proxy to ask.
    #[command(flatten)]
    pub admin: Admin,
}

/// `skiff tap` and `skiff top`: the admin listener and which events to ask for.
#[derive(Debug, Args)]
pub struct Tap {
    /// Which proxy to ask.
    #[command(flatten)]
    pub admin: Admin,
    /// Which events to ask for.
    #[command(flatten)]
    pub filters: TapFilters,
}

/// `skiff inject`.
#[derive(Debug, Args)]
pub struct Inject {
    /// Kubernetes YAML files; stdin when none, or for -
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Take out what injecting added instead
    #[arg(long)]
    pub uninject: bool,
    /// What the sidecar looks like.
    #[command(flatten)]
    pub options: inject::Options,
}

/// `skiff bench-backend`.
#[derive(Debug, Args)]
pub struct BenchBackend {
    /// Where to listen
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Command, String> {
        let args = std::iter::once("skiff").chain(args.split_whitespace());
        Cli::try_parse_checked(args)
            .map(|cli| cli.command.expect("a subcommand"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_its_flags_and_refuses_others_with_a_suggestion() {
        let Ok(Command::Run(run)) = parse("run --config f.yaml --workers=2") else {
            panic!("not parsed");
        };
        assert_eq!(run.config, PathBuf::from("f.yaml"));
        assert_eq!(run.workers, NonZeroUsize::new(2));
        let e = parse("run --config f --worker 2").unwrap_err();
        assert!(e.contains("a similar argument exists: '--workers'"), "{e}");
        let e = parse("run --workers 2").unwrap_err();
        assert!(e.contains("--config <FILE>"), "{e}");
        assert!(parse("run --config f --workers 0").is_err());
    }

    #[test]
    fn dev_ca_reads_repeated_workloads_and_checks_them() {
        let Ok(Command::Identity(Identity::DevCa(ca))) =
            parse("identity dev-ca --dir d --workload shop/web --workload=shop/api")
        else {
            panic!("not parsed");
        };
        assert_eq!(ca.workload.len(), 2);
        assert_eq!(ca.workload[1].to_string(), "shop/api");
        assert_eq!((ca.trust_domain.as_str(), ca.days), ("cluster.local", 30));
        for (args, says) in [
            ("identity dev-ca --dir d", "--workload <NS/SA>"),
            (
                "identity dev-ca --dir d --workload web",
                "NAMESPACE/SERVICE_ACCOUNT",
            ),
            (
                "identity dev-ca --dir d --workload a/b --days 0",
                "--days <N>",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(says), "{args}: {e}");
        }
    }

    #[test]
    fn the_tools_default_to_the_local_admin_listener() {
        let Ok(Command::Top(top)) = parse("top --status 5xx") else {
            panic!("not parsed");
        };
        assert_eq!(top.admin.admin, SocketAddr::from(([127, 0, 0, 1], 4191)));
        assert_eq!(top.filters.query(), "status=5xx");
        // `stat` has no filters.
        assert!(parse("stat --status 5xx").is_err());
    }

    #[test]
    fn inject_reads_files_and_options() {
        let Ok(Command::Inject(i)) = parse("inject a.yaml - --transparent --image skiff:dev")
        else {
            panic!("not parsed");
        };
        assert_eq!(i.files, [PathBuf::from("a.yaml"), PathBuf::from("-")]);
        assert!(i.options.transparent && !i.uninject);
        assert_eq!(i.options.image, "skiff:dev");
        assert_eq!(i.options.config_map, inject::Options::default().config_map);
        assert!(parse("inject --transparant").is_err());
    }

    #[test]
    fn init_iptables_checks_across_flags() {
        let e = parse("init-iptables --inbound-port 4140").unwrap_err();
        assert!(e.contains("must differ"), "{e}");
        assert!(
            e.contains("skiff init-iptables"),
            "the subcommand's usage: {e}"
        );
        let Ok(Command::InitIptables(o)) = parse("init-iptables") else {
            panic!("not parsed");
        };
        assert_eq!(o, init_iptables::Options::default());
    }
}
