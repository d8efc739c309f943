//! The `skiff` command line: `run`, `check`, `demo`, `identity dev-ca`, the terminal tools
//! `stat`, `top` and `tap`, `bench-backend` (for the load harness) and `version`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use skiff::config::{self, Config};
use skiff::tools::demo::{self, Backend};

/// `--features mimalloc`: less CPU per request for more memory (see benches/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
Skiff, a sidecar L7 proxy for service meshes

Usage:
  skiff run --config FILE [--workers N]   serve, reloading FILE when it changes
  skiff check --config FILE               validate FILE; report every error with its line
  skiff demo [--workers N] [--print-config]  built-in backends with Skiff in front of them
  skiff identity dev-ca --dir DIR --workload NS/SA [--workload NS/SA ...]
                [--trust-domain DOMAIN] [--days N]
                                          a new local CA and workload credentials
                                          (DIR/NS/SA/tls.crt, tls.key, ca.crt) for mTLS
  skiff stat [--admin ADDR]                the /stats table: success rate, RPS, latency
  skiff top [--admin ADDR] [FILTERS]      the busiest paths, live
  skiff tap [--admin ADDR] [FILTERS]      live request events; FILTERS: --direction,
                                          --authority, --path (prefix), --method, --route,
                                          --status (2xx..5xx), --max-rate, --body (bytes)
                                          (ADDR default 127.0.0.1:4191)
  skiff inject [FILE...] [--uninject] [--image IMAGE] [--config-map NAME]
               [--identity-secret NAME] [--transparent [--init-image IMAGE]]
                                          add Skiff as a native sidecar to every pod
                                          template (stdin when no FILE, or -); YAML out;
                                          --transparent adds the init-iptables step
  skiff init-iptables [--backend nft|iptables] [--inbound-port 4143] [--outbound-port 4140]
               [--admin-port 4191] [--proxy-uid 2102] [--skip-inbound-ports P,A-B]
               [--skip-outbound-ports P,A-B] [--skip-outbound-cidrs NET,...] [--ipv6]
               [--dry-run] [--cleanup]    redirect this network namespace's TCP through
                                          Skiff (transparent mode; needs NET_ADMIN)
  skiff version

Logs go to stderr; set SKIFF_LOG (e.g. SKIFF_LOG=debug, SKIFF_LOG=skiff=debug,info).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("help", &[][..]),
    };
    match command {
        "run" => {
            let path = flag(rest, "--config")?.context("`skiff run` needs --config FILE")?;
            let path = PathBuf::from(path);
            let config = match config::load_file(&path) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(1));
                }
            };
            let workers = flag(rest, "--workers")?
                .map(|w| w.parse().context("--workers takes a positive number"))
                .transpose()?;
            serve(config, workers, None)
        }
        "check" => {
            let path = flag(rest, "--config")?.context("`skiff check` needs --config FILE")?;
            match config::load_file(path.as_ref()) {
                Ok(c) => {
                    println!("{path}: ok ({} services)", c.proxy.services.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        "demo" if rest.iter().any(|a| a == "--print-config") => {
            print!("{}", demo::CONFIG);
            Ok(ExitCode::SUCCESS)
        }
        "demo" => {
            let workers = flag(rest, "--workers")?
                .map(|w| w.parse().context("--workers takes a positive number"))
                .transpose()?;
            demo::write_credentials().context("cannot write the demo's credentials")?;
            serve(demo::config(), workers, Some(demo::TRY))
        }
        "identity" if rest.first().map(String::as_str) == Some("dev-ca") => dev_ca(&rest[1..]),
        "stat" | "top" | "tap" => tool(command, rest),
        "inject" => inject(rest),
        "init-iptables" => {
            let options = skiff::tools::init_iptables::Options::parse(rest)?;
            skiff::tools::init_iptables::apply(&options)?;
            if !options.dry_run {
                let done = if options.cleanup {
                    "removed"
                } else {
                    "installed"
                };
                eprintln!("skiff: redirect rules {done} ({})", options.backend);
            }
            Ok(ExitCode::SUCCESS)
        }
        // For benchmarks: the demo's fixed-body backend alone (HTTP/1.1 and h2c).
        "bench-backend" => {
            let addr: std::net::SocketAddr = flag(rest, "--listen")?
                .context("bench-backend needs --listen ADDR")?
                .parse()
                .context("--listen takes ip:port")?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            rt.block_on(async {
                demo::serve_backend(addr, Backend::Hello).await?;
                wait_for_signal().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        "version" | "--version" | "-V" => {
            println!("skiff {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// `skiff inject`: Kubernetes YAML in (files or stdin), the same YAML with Skiff added out.
fn inject(args: &[String]) -> anyhow::Result<ExitCode> {
    let mut options = skiff::tools::inject::Options::default();
    let mut uninject = false;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--uninject" => uninject = true,
            "--image" => options.image = value("--image")?,
            "--config-map" => options.config_map = value("--config-map")?,
            "--identity-secret" => options.identity_secret = Some(value("--identity-secret")?),
            "--transparent" => options.transparent = true,
            "--init-image" => options.init_image = value("--init-image")?,
            f if f.starts_with("--") => bail!("unknown flag {f}"),
            f => files.push(f.to_owned()),
        }
    }
    let mut input = String::new();
    if files.is_empty() || files.iter().any(|f| f == "-") {
        use std::io::Read;
        std::io::stdin().read_to_string(&mut input)?;
    }
    for f in files.iter().filter(|f| *f != "-") {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {f}"))?;
        if !input.is_empty() && !input.ends_with('\n') {
            input.push('\n');
        }
        if !input.is_empty() {
            input.push_str("---\n");
        }
        input.push_str(&text);
    }
    match skiff::tools::inject::transform(&input, &options, uninject) {
        Ok((out, report)) => {
            print!("{out}");
            let verb = if uninject { "uninjected" } else { "injected" };
            eprintln!(
                "skiff inject: {} pod template(s) {verb}, {} left as they were",
                report.changed, report.skipped
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("skiff inject: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `skiff stat`, `top`, `tap`: clients of a running proxy's admin listener.
fn tool(command: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let admin: std::net::SocketAddr = flag(args, "--admin")?
        .unwrap_or("127.0.0.1:4191")
        .parse()
        .context("--admin takes ip:port")?;
    let query = match command {
        "stat" => String::new(),
        _ => skiff::tools::stat::tap_query(args).map_err(anyhow::Error::msg)?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let result = rt.block_on(async {
        match command {
            "stat" => skiff::tools::stat::stat(admin).await.map(|t| print!("{t}")),
            "top" => skiff::tools::stat::top(admin, &query).await,
            _ => skiff::tools::stat::tap(admin, &query).await,
        }
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("skiff {command}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `skiff identity dev-ca`: writes a fresh CA and credentials for each workload named.
fn dev_ca(args: &[String]) -> anyhow::Result<ExitCode> {
    let dir = PathBuf::from(flag(args, "--dir")?.context("dev-ca needs --dir DIR")?);
    let domain = flag(args, "--trust-domain")?.unwrap_or("cluster.local");
    let days: u64 = flag(args, "--days")?
        .map(|d| d.parse().context("--days takes a whole number"))
        .transpose()?
        .unwrap_or(30);
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let workloads = all_flags(args, "--workload");
    if workloads.is_empty() {
        bail!("dev-ca needs at least one --workload NAMESPACE/SERVICE_ACCOUNT");
    }
    let ca = proxy_tls::devca::DevCa::new(domain).context("cannot make a CA")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("ca.crt"), ca.ca_pem())?;
    for w in workloads {
        let (ns, sa) = w
            .split_once('/')
            .with_context(|| format!("--workload {w}: expected NAMESPACE/SERVICE_ACCOUNT"))?;
        let id = ca.id(ns, sa).with_context(|| format!("--workload {w}"))?;
        let target = dir.join(ns).join(sa);
        ca.write_workload(
            &target,
            ns,
            sa,
            std::time::Duration::from_secs(days * 86_400),
        )
        .with_context(|| format!("cannot write {}", target.display()))?;
        println!("{id}: {}", target.display());
    }
    println!("trust bundle: {}", dir.join("ca.crt").display());
    Ok(ExitCode::SUCCESS)
}

/// Every value given for the repeatable flag `name`.
fn all_flags<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            out.extend(it.next().map(String::as_str));
        } else if let Some(v) = a.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
            out.push(v);
        }
    }
    out
}

/// The value after `name` in `args`, if present.
fn flag<'a>(args: &'a [String], name: &str) -> anyhow::Result<Option<&'a str>> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            return it
                .next()
                .map(|v| Some(v.as_str()))
                .with_context(|| format!("{name} needs a value"));
        }
        if let Some(v) = a.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn serve(
    config: Config,
    workers: Option<std::num::NonZeroUsize>,
    banner: Option<&str>,
) -> anyhow::Result<ExitCode> {
    skiff::logging::init();
    let threads = skiff::runtime::worker_threads(workers.or(config.proxy.workers));
    // One worker: everything on this thread, with none of the work-stealing scheduler's
    // cross-thread bookkeeping (a sidecar usually gets one CPU).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        .thread_name("skiff-worker")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        if banner.is_some() {
            let app = "127.0.0.1:18081".parse().expect("valid");
            let echo = "127.0.0.1:18082".parse().expect("valid");
            demo::serve_backend(app, Backend::Hello).await?;
            demo::serve_backend(echo, Backend::Echo).await?;
        }
        // The demo's second proxy: the server side of its meshed hop.
        let peer = match banner {
            Some(_) => Some(skiff::start(demo::peer_config()).await?),
            None => None,
        };
        let running = skiff::start(config).await?;
        tracing::info!(workers = threads, "serving");
        if let Some(b) = banner {
            println!("{b}");
        }
        tokio::select! {
            r = wait_for_signal() => r?,
            () = running.shutdown_requested() => tracing::info!("POST /shutdown received"),
        }
        running.shutdown().await;
        if let Some(peer) = peer {
            peer.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    // The config watcher handles SIGHUP when there is a file; without one (the demo), it
    // must not fall through to the default action, which kills the process.
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {}
        }
    };
    tracing::info!("{name} received");
    Ok(())
}
