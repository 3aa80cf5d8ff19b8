//! `lb --config FILE` runs the balancer; `lb check FILE` validates a cluster file and exits; `lb check --diff OLD
//! NEW` validates both and says what a reload from OLD to NEW would change, and what needs a restart.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use lb::membership::read_file;
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
    Check {
        /// The cluster file.
        #[arg(required_unless_present = "diff", conflicts_with = "diff")]
        file: Option<PathBuf>,
        /// Validate OLD and NEW and print what a reload from OLD to NEW changes, and what needs a restart.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        diff: Option<Vec<PathBuf>>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check {
            diff: Some(files), ..
        }) => return check_diff(&files[0], &files[1]),
        Some(Command::Check {
            file: Some(file), ..
        }) => {
            let (cfg, _) = read_file(&file, None)?;
            print_ok(&file, &cfg);
            return Ok(());
        }
        _ => {}
    }
    // Until the control service listens for SIGHUP, a reload signal must not kill the process.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // Absolute, but through any symlink as given: relative paths in the file (`[lb.tls]`) resolve where `lb
    // check` resolves them, and a reload follows the link to whatever it names then.
    let path =
        std::path::absolute(&cli.config).with_context(|| format!("{}", cli.config.display()))?;
    let (cfg, key) = read_file(&path, None)?;
    init_tracing(cfg.node.log_format == node::config::LogFormat::Json);
    tracing::info!(listen = %cfg.lb.listen, admin = %cfg.lb.admin, nodes = cfg.nodes.len(), "lb starting");
    lb::server::build(&path, cfg, key).run_forever()
}

fn print_ok(file: &Path, cfg: &ClusterConfig) {
    println!(
        "{}: ok, {} nodes, lb on {} (admin {})",
        file.display(),
        cfg.nodes.len(),
        cfg.lb.listen,
        cfg.lb.admin
    );
}

/// `lb check --diff OLD NEW`: both files' errors as `lb check` prints them and exit 1 when either is invalid;
/// else the changes, grouped as applied by a reload or needing a restart.
fn check_diff(old: &Path, new: &Path) -> anyhow::Result<()> {
    // A file whose certificate would not load is as invalid as one that does not parse: a reload refuses it.
    let (a, b) = (read_file(old, None), read_file(new, None));
    let (a, b) = match (a, b) {
        (Ok((a, _)), Ok((b, _))) => (a, b),
        (a, b) => {
            // Every invalid file's error, as `lb check` prints one, then its exit status.
            for e in [a.err(), b.err()].into_iter().flatten() {
                eprintln!("Error: {e}");
            }
            std::process::exit(1);
        }
    };
    print_ok(old, &a);
    print_ok(new, &b);
    print!("{}", lb::diff::render(&lb::diff::diff(&a, &b)));
    Ok(())
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
