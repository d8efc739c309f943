//! The `skiff` binary: runs the subcommand that `skiff::tools::args` parsed (`run`, `check`,
//! `demo`, `identity dev-ca`, the terminal tools `stat`, `top` and `tap`, `inject`,
//! `init-iptables`, `bench-backend` for the load harness, `version`). The proxy and the tools
//! live in the library; this file turns their results into output and exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use skiff::config::{self, Config};
use skiff::tools::args::{Cli, Command, DevCa, Identity, Inject};
use skiff::tools::demo::{self, Backend};
use skiff::tools::{init_iptables, stat};

/// `--features mimalloc`: less CPU per request; see `runtime::return_freed_memory` for why
/// it is not the default.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Bad arguments end here: clap prints the error (with a suggestion for a mistyped flag)
    // and exits 2; `--help` and `--version` print and exit 0.
    let cli = Cli::try_parse_checked(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Option<Command>) -> anyhow::Result<ExitCode> {
    let Some(command) = command else {
        Cli::command().print_help()?;
        return Ok(ExitCode::SUCCESS);
    };
    match command {
        Command::Run(args) => {
            let config = match config::load_file(&args.config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(1));
                }
            };
            serve(config, args.workers, None)
        }
        Command::Check(args) => match config::load_file(&args.config) {
            Ok(c) => {
                for warning in &c.warnings {
                    eprintln!("warning: {warning}");
                }
                let path = args.config.display();
                let warned = match c.warnings.len() {
                    0 => String::new(),
                    1 => ", 1 warning".to_owned(),
                    n => format!(", {n} warnings"),
                };
                println!("{path}: ok ({} services{warned})", c.proxy.services.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Demo(args) if args.print_config => {
            print!("{}", demo::CONFIG);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            demo::write_credentials().context("cannot write the demo's credentials")?;
            serve(demo::config(), args.workers, Some(demo::TRY))
        }
        Command::Identity(Identity::DevCa(args)) => dev_ca(&args),
        Command::Stat(args) => tool("stat", async move {
            stat::stat(args.admin.admin).await.map(|t| print!("{t}"))
        }),
        Command::Top(args) => tool("top", async move {
            stat::top(args.admin.admin, &args.filters.query()).await
        }),
        Command::Tap(args) => tool("tap", async move {
            stat::tap(args.admin.admin, &args.filters.query()).await
        }),
        Command::Inject(args) => inject(&args),
        Command::InitIptables(options) => {
            init_iptables::apply(&options)?;
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
        Command::BenchBackend(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            rt.block_on(async {
                demo::serve_backend(args.listen, Backend::Hello).await?;
                wait_for_signal().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("skiff {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `skiff inject`: Kubernetes YAML in (files or stdin), the same YAML with Skiff added out.
fn inject(args: &Inject) -> anyhow::Result<ExitCode> {
    let stdin = |f: &PathBuf| f.as_os_str() == "-";
    let mut input = String::new();
    if args.files.is_empty() || args.files.iter().any(stdin) {
        use std::io::Read;
        std::io::stdin().read_to_string(&mut input)?;
    }
    for f in args.files.iter().filter(|f| !stdin(f)) {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        if !input.is_empty() && !input.ends_with('\n') {
            input.push('\n');
        }
        if !input.is_empty() {
            input.push_str("---\n");
        }
        input.push_str(&text);
    }
    match skiff::tools::inject::transform(&input, &args.options, args.uninject) {
        Ok((out, report)) => {
            print!("{out}");
            let verb = if args.uninject {
                "uninjected"
            } else {
                "injected"
            };
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

/// `skiff stat`, `top`, `tap`: runs `view`, a client of a running proxy's admin listener,
/// on a runtime of its own thread (it is one connection).
fn tool(
    name: &str,
    view: impl std::future::Future<Output = Result<(), stat::CliError>>,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    match rt.block_on(view) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("skiff {name}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `skiff identity dev-ca`: writes a fresh CA and credentials for each workload named.
fn dev_ca(args: &DevCa) -> anyhow::Result<ExitCode> {
    let ca = proxy_tls::devca::DevCa::new(&args.trust_domain).context("cannot make a CA")?;
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("ca.crt"), ca.ca_pem())?;
    for w in &args.workload {
        let (ns, sa) = (w.namespace.as_str(), w.service_account.as_str());
        let id = ca.id(ns, sa).with_context(|| format!("--workload {w}"))?;
        let target = dir.join(ns).join(sa);
        ca.write_workload(
            &target,
            ns,
            sa,
            std::time::Duration::from_secs(args.days * 86_400),
        )
        .with_context(|| format!("cannot write {}", target.display()))?;
        println!("{id}: {}", target.display());
    }
    println!("trust bundle: {}", dir.join("ca.crt").display());
    Ok(ExitCode::SUCCESS)
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
        tokio::spawn(skiff::runtime::return_freed_memory());
        if banner.is_some() {
            let app = SocketAddr::from(([127, 0, 0, 1], 18081));
            let echo = SocketAddr::from(([127, 0, 0, 1], 18082));
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
