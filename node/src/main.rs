//! `node --config FILE --name NAME`: one session-hosting node of the cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use node::config::ClusterConfig;
use tokio::signal::unix::{signal, SignalKind};

// Many small, short-lived allocations (JSON, deltas, frames) across threads: mimalloc keeps them fast and
// returns memory the system allocator's per-thread arenas would hold on to.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Session-hosting node: in-memory sessions replicated to a secondary"
)]
struct Args {
    /// The cluster file (every process reads the same one).
    #[arg(long)]
    config: PathBuf,
    /// This node's name in the file's [[nodes]].
    #[arg(long)]
    name: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = ClusterConfig::load(&args.config)?;
    init_logs(cfg.node.log_format == node::config::LogFormat::Json);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("node")
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let me = cfg
            .node(&args.name)
            .ok_or_else(|| node::server::ServerError::UnknownNode(args.name.clone()))?;
        let listeners = node::server::Listeners::bind(me).await?;
        let node = node::server::start(cfg, &args.name, listeners)?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => reload(&node, &args.config),
            }
        }
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

/// SIGHUP re-reads the cluster file; an invalid file is refused and the running config stays.
fn reload(node: &node::server::Running, path: &std::path::Path) {
    let taken = ClusterConfig::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| node.reload(cfg).map_err(anyhow::Error::from));
    if let Err(e) = taken {
        tracing::error!(error = %e, "reload refused; the running config stays");
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
