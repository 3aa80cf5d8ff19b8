//! Command line: the subcommands, and the shared flags that describe the load.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use node::config::ClusterConfig;

use crate::cluster::Procs;
use crate::faults::Fault;
use crate::report::Summary;
use crate::spec::{parse_duration, parse_target, LoadSpec, Mix, MAX_RUN};
use crate::{plot, runner};

/// The `bench` command line.
#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Synthetic session traffic that verifies every acknowledged update, under faults"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Load against a running target.
    Run {
        /// e.g. http://127.0.0.1:8080 (loopback only).
        #[arg(long)]
        target: String,
        /// Cluster file; lets the bench decode routing cookies to see session ids on every answer.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The load to generate.
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Start the lb and nodes of a cluster file, load the lb while injecting faults, stop everything, report.
    Cluster {
        /// Cluster file: the lb and every node it lists are started on their configured addresses.
        #[arg(long)]
        config: PathBuf,
        /// ACTION:TARGET@TIME[+DURATION]: kill:n1@10s, stop:n2@5s+3s, restart:n1@20s, kill:primary@10s; or
        /// rolling@10s: every node in file order drained (drain = true in this file, reloaded), stopped
        /// (SIGTERM) and started again, the file's text put back at the end.
        #[arg(long = "fault")]
        faults: Vec<String>,
        /// The load to generate.
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The same load directly to a node, through lb, a minimal Pingora proxy and HAProxy (when installed).
    Compare {
        /// Cluster file: the lb and nodes are started from it; the direct path and the proxies use its first node.
        #[arg(long)]
        config: PathBuf,
        /// Each path is measured this many times, in a rotating order; ratios are reported round by round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The load to generate.
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Increments/s through one node unreplicated, sync and async (as ratios), and memory per 100 000 sessions.
    Node {
        /// Cluster file: its secret and batch settings are used; the nodes run on free loopback ports.
        #[arg(long)]
        config: PathBuf,
        /// Sessions created for the memory measurement.
        #[arg(long, default_value_t = 100_000)]
        memory_sessions: usize,
        /// Approximate size of each of those sessions.
        #[arg(long, default_value_t = 1024)]
        session_bytes: usize,
        /// The load to generate.
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The cart example app alone against lb + sidecar nodes in front of it: req/s, p99 and CPU per request.
    Shop {
        /// The configurations, the workload and the output.
        #[command(flatten)]
        args: crate::shop::ShopArgs,
    },
    /// Layer-4 connections and bytes, TLS handshakes and pinned HTTPS GETs through lb and HAProxy, as ratios.
    Edge {
        /// The cluster settings, the workloads and the output.
        #[command(flatten)]
        args: crate::edge::EdgeArgs,
    },
    /// Start the lb and every node of a cluster file in the foreground; Ctrl-C stops all of it.
    Up {
        /// Cluster file to start.
        #[arg(long)]
        config: PathBuf,
    },
    /// The minimal Pingora proxy `compare` measures against (started by `compare` itself).
    #[command(hide = true)]
    MinimalProxy {
        /// Address to accept clients on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The one node every request is proxied to.
        #[arg(long)]
        upstream: std::net::SocketAddr,
        /// Pingora worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Give the upstream the connect and read timeouts this cluster file sets for lb (default: none, as
        /// Pingora's defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// The flags that describe the load, shared by `run`, `cluster`, `compare` and `node`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Sessions in total, spread over the virtual users.
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Virtual users, each with one keep-alive connection.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Run time, e.g. 30s (default 10s unless --requests is given).
    #[arg(long, conflicts_with = "requests")]
    pub duration: Option<String>,
    /// Total requests instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Relative weight of each operation: get, incr, patch, delete.
    #[arg(long, default_value = "incr=0.6,get=0.3,patch=0.1")]
    pub mix: String,
    /// Size of each patched value.
    #[arg(long, default_value_t = 32)]
    pub value_bytes: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG timeline here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

impl LoadArgs {
    /// The load spec against `target`, decoding cookies with `config`'s keys when given.
    pub fn spec(
        &self,
        target: std::net::SocketAddr,
        config: Option<&ClusterConfig>,
    ) -> Result<LoadSpec> {
        let duration = match (&self.duration, self.requests) {
            (Some(d), _) => parse_duration(d)?,
            (None, Some(_)) => MAX_RUN,
            (None, None) => Duration::from_secs(10),
        };
        Ok(LoadSpec {
            target,
            then: None,
            sessions: self.sessions.max(1),
            concurrency: self.concurrency.max(1),
            duration: duration.min(MAX_RUN),
            max_requests: self.requests.unwrap_or(u64::MAX),
            mix: Mix::parse(&self.mix)?,
            value_bytes: self.value_bytes,
            timeout: parse_duration(&self.timeout)?,
            cookie_name: config.map_or_else(|| "SRVSESSION".to_string(), |c| c.cookie.name.clone()),
            cookie_codec: config.map(|c| Arc::new(node::cookie::CookieCodec::new(&c.cookie))),
        })
    }

    /// Prints the summary and writes the JSON and plot files asked for.
    pub fn output(&self, s: &Summary) -> Result<()> {
        println!("\n{}", s.table());
        if let Some(p) = &self.json {
            write_file(p, &serde_json::to_string_pretty(&s.json())?)?;
        }
        if let Some(p) = &self.plot {
            write_file(
                p,
                &plot::svg(&format!("bench: {}", s.target), &s.timeline, &s.faults),
            )?;
        }
        Ok(())
    }
}

/// Writes `text` to `path`, creating its directory first.
///
/// # Errors
/// When the directory cannot be created or the file written.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Exit code 1: an acknowledged update was lost or a session reset.
pub async fn dispatch(cli: Cli) -> Result<bool> {
    match cli.cmd {
        Cmd::Run {
            target,
            config,
            load,
        } => {
            let cfg = config.as_deref().map(ClusterConfig::load).transpose()?;
            let spec = load.spec(parse_target(&target)?, cfg.as_ref())?;
            let s = runner::execute(&spec, &target, None, vec![], load.quiet).await;
            load.output(&s)?;
            Ok(!s.failed())
        }
        Cmd::Cluster {
            config,
            faults,
            load,
        } => {
            let faults = faults
                .iter()
                .map(|f| Fault::parse(f))
                .collect::<Result<Vec<_>, _>>()?;
            let mut procs = Procs::new(&config)?;
            if !procs.config.node.expose_node {
                eprintln!(
                    "warning: [node] expose_node = false: failovers and `primary` cannot be seen"
                );
            }
            procs.start_all(true).await?;
            let spec = load.spec(procs.config.lb.listen, Some(&procs.config))?;
            let title = format!("lb http://{}", spec.target);
            eprintln!(
                "cluster up ({} nodes); logs in {}",
                procs.config.nodes.len(),
                procs.log_dir.display()
            );
            let s = runner::execute(&spec, &title, Some(&mut procs), faults, load.quiet).await;
            procs.kill_all();
            load.output(&s)?;
            if !s.failed() {
                let _ = std::fs::remove_dir_all(&procs.log_dir);
            }
            Ok(!s.failed())
        }
        Cmd::Compare {
            config,
            rounds,
            load,
        } => crate::compare::compare(&config, &load, rounds).await,
        Cmd::Node {
            config,
            memory_sessions,
            session_bytes,
            load,
        } => crate::nodeperf::node_perf(&config, &load, memory_sessions, session_bytes).await,
        Cmd::Shop { args } => crate::shop::shop(&args).await,
        Cmd::Edge { args } => crate::edge::edge(&args).await,
        Cmd::Up { config } => crate::up::up(&config).await.map(|()| true),
        Cmd::MinimalProxy { .. } => unreachable!("served before the runtime starts"),
    }
}
