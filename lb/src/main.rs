//! `lb --config FILE` runs the balancer; `lb check FILE` validates a cluster file and exits.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node::config::ClusterConfig;

// mimalloc: more requests per CPU-second for Pingora than the system allocator (bench/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "lb", about = "Session-pinning load balancer (Pingora)")]
struct Cli {
    /// The cluster file.
    #[arg(long, default_value = "config/local.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a cluster file without starting.
    Check { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Check { file }) = cli.command {
        let cfg = ClusterConfig::load(&file)?;
        println!(
            "{}: ok, {} nodes, lb on {} (admin {})",
            file.display(),
            cfg.nodes.len(),
            cfg.lb.listen,
            cfg.lb.admin
        );
        return Ok(());
    }
    // Until the control service listens for SIGHUP, a reload signal must not kill the process.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let cfg = ClusterConfig::load(&cli.config)?;
    init_tracing(cfg.node.log_format == node::config::LogFormat::Json);
    let path =
        std::fs::canonicalize(&cli.config).with_context(|| format!("{}", cli.config.display()))?;
    tracing::info!(listen = %cfg.lb.listen, admin = %cfg.lb.admin, nodes = cfg.nodes.len(), "lb starting");
    lb::server::build(&path, cfg).run_forever()
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `init` also installs the `log` bridge, so Pingora's own log lines come out here too.
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}
