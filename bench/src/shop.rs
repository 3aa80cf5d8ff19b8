//! `bench shop` (issue 9): what a real application pays for sessions kept by the cluster instead of by itself.
//!
//! The cart example app (`node/examples/cart/app.py`) is measured twice in one invocation, on free loopback
//! ports, so that both configurations share the machine's mood:
//! 1. *app alone*: K app processes keeping their own sessions (`--own-sessions`, cookie `cart_sid`), each virtual
//!    user talking straight to one of them (users split evenly);
//! 2. *lb + sidecar*: the real `lb` and K `node` processes in `sync` mode, each node in front of its own app
//!    (the session travels in headers and is copied to a second node before the answer goes out), every user
//!    talking to the lb.
//!
//! The same cart workload drives both: each virtual user holds one keep-alive connection, one cookie jar and so
//! one cart, and sends `GET /cart` or `POST /cart/add` with a random product. The count it sees may only grow
//! by its own adds; anything else is a violation. After a warm-up, the measured window gives req/s, p50/p99 and
//! the CPU per request of each process kind (apps, nodes, lb, and the generator itself), read from /proc; the
//! result is the ratios lb + sidecar over app alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use node::config::builder::NodeEntry;
use node::config::{ClusterConfig, ClusterFile, ReplicationMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::cli::write_file;
use crate::client::{Http1, Jar};
use crate::cluster::{free_addrs, Procs, LB};
use crate::cpu;
use crate::spec::{parse_duration, MAX_RUN};
use crate::verify::ErrorKind;

/// The products the cart app sells.
pub const PRODUCTS: [&str; 6] = ["apple", "bread", "cheese", "coffee", "milk", "tea"];

/// The goal the issue states for lb + sidecar over the app alone: at least this share of its req/s...
pub const GOAL_RPS: f64 = 0.8;
/// ... and at most this multiple of its p99.
pub const GOAL_P99: f64 = 1.5;

/// Which configuration is measured first (the one measured second tends to find the machine warmer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// App alone, then lb + sidecar.
    AloneFirst,
    /// lb + sidecar, then app alone.
    SidecarFirst,
}

/// The flags of `bench shop`.
#[derive(clap::Args, Debug, Clone)]
pub struct ShopArgs {
    /// Cluster file: its secret, cookie name, lb threads, heartbeat and batch settings are used; every process
    /// runs on free loopback ports.
    #[arg(long, default_value = "config/local.toml")]
    pub config: PathBuf,
    /// The cart app.
    #[arg(long, default_value = "node/examples/cart/app.py")]
    pub app: PathBuf,
    /// The interpreter that runs it (the system one, which has Flask).
    #[arg(long, default_value = "/usr/bin/python3")]
    pub python: PathBuf,
    /// App processes in each configuration, and nodes in the second (at least 2: each session has a copy).
    #[arg(long, default_value_t = 2)]
    pub apps: usize,
    /// Virtual users, each with one keep-alive connection, one cookie jar and one cart.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured time of each configuration, after the warm-up.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// At most this many measured requests in each configuration (the duration still bounds it).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Load before the measured window, not counted in req/s, latency or CPU.
    #[arg(long, default_value = "2s")]
    pub warmup: String,
    /// Share of `GET /cart`; the rest are `POST /cart/add`.
    #[arg(long, default_value_t = 0.7)]
    pub reads: f64,
    /// Which configuration goes first.
    #[arg(long, value_enum, default_value_t = Order::AloneFirst)]
    pub order: Order,
    /// Per-request timeout.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Write the runs, the ratios and the table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No per-second progress.
    #[arg(long)]
    pub quiet: bool,
}

/// The two configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// The apps keep their own sessions; users talk to them directly.
    Alone,
    /// lb, nodes in `sync` mode, an app behind each node.
    Sidecar,
}

impl Setup {
    /// The name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Alone => "app alone",
            Setup::Sidecar => "lb + sidecar",
        }
    }
}

/// CPU used during the measured window, by process kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuUse {
    /// Every app process together.
    pub apps: Duration,
    /// Every node together; `None` without nodes.
    pub nodes: Option<Duration>,
    /// The balancer; `None` without one.
    pub lb: Option<Duration>,
    /// This load generator (all its threads).
    pub bench: Duration,
}

/// One configuration's measurement.
pub struct Run {
    /// Which configuration.
    pub setup: Setup,
    /// Successful requests in the measured window.
    pub requests: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency of those requests, microseconds.
    pub latency: Histogram<u64>,
    /// Failed requests, warm-up included, by kind (`status 502`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// The first few failures, described.
    pub error_samples: Vec<String>,
    /// Answers whose cart count was not the user's own adds, warm-up included.
    pub violations: u64,
    /// The first few violations, described.
    pub violation_samples: Vec<String>,
    /// Connections the users opened in the measured window (an app that closes after each answer makes this
    /// one per request).
    pub connections: u64,
    /// CPU in the measured window.
    pub cpu: CpuUse,
    /// /proc/loadavg just before the warm-up.
    pub loadavg: String,
}

impl Run {
    /// Requests per second over the measured window.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q`, milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Failed requests in all.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// CPU microseconds per measured request of `used`; `None` when there was no such process.
    pub fn per_request(&self, used: Option<Duration>) -> Option<f64> {
        used.map(|c| c.as_secs_f64() * 1e6 / self.requests.max(1) as f64)
    }

    /// CPU microseconds per request of the served side: apps, nodes and lb, without the generator.
    pub fn served_per_request(&self) -> f64 {
        let c = self.cpu;
        let total = c.apps + c.nodes.unwrap_or_default() + c.lb.unwrap_or_default();
        total.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        let us = |d: Option<Duration>| self.per_request(d);
        json!({
            "setup": self.setup.name(),
            "requests": self.requests,
            "seconds": self.elapsed.as_secs_f64(),
            "rps": self.rps(),
            "p50_ms": self.ms(0.5),
            "p99_ms": self.ms(0.99),
            "max_ms": self.latency.max() as f64 / 1000.0,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "violations": self.violations,
            "connections_opened": self.connections,
            "violation_samples": self.violation_samples,
            "cpu_s": {
                "apps": self.cpu.apps.as_secs_f64(),
                "nodes": self.cpu.nodes.map(|d| d.as_secs_f64()),
                "lb": self.cpu.lb.map(|d| d.as_secs_f64()),
                "bench": self.cpu.bench.as_secs_f64(),
            },
            "cpu_us_per_request": {
                "apps": us(Some(self.cpu.apps)),
                "nodes": us(self.cpu.nodes),
                "lb": us(self.cpu.lb),
                "bench": us(Some(self.cpu.bench)),
                "served": self.served_per_request(),
            },
            "loadavg_before": self.loadavg,
        })
    }
}

/// What one virtual user knows of its own cart: the count it last saw, and adds whose outcome it could not see
/// (a timeout or a broken connection may or may not have added).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CartModel {
    seen: u64,
    unsure: u64,
}

impl CartModel {
    /// An add whose answer did not come back well.
    pub fn unsure_add(&mut self) {
        self.unsure += 1;
    }

    /// Checks the count of an answer: to a read (`added` false) or to a successful add. The count must be the
    /// last one seen, plus this add, plus any of the unsure ones. The model then follows what was seen, so one
    /// violation is reported once. `Err` describes the violation.
    pub fn observe(&mut self, added: bool, count: u64) -> Result<(), String> {
        let low = self.seen + u64::from(added);
        let high = low + self.unsure;
        let verdict = if (low..=high).contains(&count) {
            Ok(())
        } else {
            let what = if added { "an add" } else { "a read" };
            Err(format!(
                "{what} saw count {count}, expected {}",
                if low == high {
                    low.to_string()
                } else {
                    format!("{low} to {high}")
                }
            ))
        };
        self.seen = count;
        self.unsure = 0;
        verdict
    }
}

/// Runs both configurations in the order asked, prints the table and writes `--json`; `Ok(false)` when a request
/// failed or a cart count was wrong.
///
/// # Errors
/// When a flag is invalid, the app is missing, a process cannot be started or the output cannot be written.
pub async fn shop(args: &ShopArgs) -> Result<bool> {
    let base = ClusterConfig::load(&args.config)?;
    if args.apps < 2 {
        bail!("--apps must be at least 2, so that each session has a copy on a second node");
    }
    if !(0.0..=1.0).contains(&args.reads) {
        bail!("--reads must be between 0 and 1");
    }
    let app = std::fs::canonicalize(&args.app)
        .with_context(|| format!("the cart app {} is not there", args.app.display()))?;
    if !args.python.is_file() {
        bail!("no interpreter at {}", args.python.display());
    }
    let load = Load {
        users: args.concurrency.max(1),
        warmup: parse_duration(&args.warmup)?,
        duration: parse_duration(&args.duration)?.min(MAX_RUN),
        max_requests: args.requests.unwrap_or(u64::MAX),
        reads: args.reads,
        timeout: parse_duration(&args.timeout)?,
        quiet: args.quiet,
    };
    let dir = std::env::temp_dir().join(format!("bench-shop-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let order = match args.order {
        Order::AloneFirst => [Setup::Alone, Setup::Sidecar],
        Order::SidecarFirst => [Setup::Sidecar, Setup::Alone],
    };
    let mut runs = Vec::new();
    for setup in order {
        let run = measure(setup, &dir, &base, args, &app, &load).await?;
        println!("{}", run_lines(&run));
        runs.push(run);
    }
    runs.sort_by_key(|r| r.setup == Setup::Sidecar);
    let t = table(&runs, args, &load);
    println!("{t}");
    if let Some(p) = &args.json {
        let (alone, sidecar) = (&runs[0], &runs[1]);
        let v = json!({
            "workload": {
                "users": load.users, "reads": load.reads, "apps": args.apps,
                "warmup_s": load.warmup.as_secs_f64(), "duration_s": load.duration.as_secs_f64(),
                "order": format!("{:?}", args.order),
            },
            "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
            "ratios": {
                "rps": sidecar.rps() / alone.rps().max(1e-9),
                "p99": sidecar.ms(0.99) / alone.ms(0.99).max(1e-9),
                "served_cpu_per_request": sidecar.served_per_request() / alone.served_per_request().max(1e-9),
            },
            "goal": {"rps_at_least": GOAL_RPS, "p99_at_most": GOAL_P99},
            "table": t,
        });
        write_file(p, &serde_json::to_string_pretty(&v)?)?;
    }
    let clean = runs
        .iter()
        .all(|r| r.error_count() == 0 && r.violations == 0 && r.requests > 0);
    if clean {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
    Ok(clean)
}

/// Starts one configuration, loads it, stops every process it started.
async fn measure(
    setup: Setup,
    dir: &Path,
    base: &ClusterConfig,
    args: &ShopArgs,
    app: &Path,
    load: &Load,
) -> Result<Run> {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // Every address of the run at once, so no two share a port: the apps, the lb's two, two per node.
    let mut addrs = free_addrs(ip, 3 * args.apps + 2)?.into_iter();
    let apps: Vec<SocketAddr> = addrs.by_ref().take(args.apps).collect();
    let file = cluster_file(base, &apps, addrs)?;
    let path = dir.join("shop.toml");
    std::fs::write(&path, file.render())?;
    // One controller for every process of this configuration: each is killed by its pid when it goes.
    let mut procs = Procs::new(&path)?;
    let mut app_pids = Vec::new();
    for (i, a) in apps.iter().enumerate() {
        let key = format!("app{}", i + 1);
        let port = a.port().to_string();
        let mut app_args = vec![
            app.to_str().context("the app's path is not UTF-8")?,
            "--port",
            &port,
            "--host",
            "127.0.0.1",
        ];
        if setup == Setup::Alone {
            app_args.push("--own-sessions");
        }
        app_pids.push(procs.spawn(&key, &args.python, &app_args)?);
    }
    for (i, a) in apps.iter().enumerate() {
        procs
            .wait_healthy(&format!("app{}", i + 1), *a, "/healthz")
            .await?;
    }
    let (targets, node_pids, lb_pid) = match setup {
        Setup::Alone => (apps.clone(), None, None),
        Setup::Sidecar => {
            procs.start_all(true).await?;
            let nodes = procs
                .config
                .nodes
                .iter()
                .filter_map(|n| procs.pid(&n.name))
                .collect::<Vec<_>>();
            (vec![procs.config.lb.listen], Some(nodes), procs.pid(LB))
        }
    };
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    eprintln!(
        "\n== {}: {} users against {}; load average {loadavg}",
        setup.name(),
        load.users,
        targets
            .iter()
            .map(|t| format!("http://{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let pids = Pids {
        apps: app_pids,
        nodes: node_pids,
        lb: lb_pid,
    };
    let out = run_load(load, &targets, &pids).await;
    if let Some((key, st)) = procs.exited() {
        eprintln!(
            "{key} exited during the run ({st}); log:\n{}",
            procs.log_tail(&key)
        );
    }
    // Keep the logs of a run that went wrong, next to its cluster file.
    if out.error_count() > 0 || out.violations > 0 {
        let keep = dir.join(setup.name().replace([' ', '+'], "-"));
        let _ = std::fs::create_dir_all(&keep);
        if let Ok(entries) = std::fs::read_dir(&procs.log_dir) {
            for e in entries.flatten() {
                let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
            }
        }
    }
    procs.kill_all();
    let _ = std::fs::remove_dir_all(&procs.log_dir);
    Ok(Run {
        setup,
        loadavg,
        ..out
    })
}

/// The sidecar configuration's cluster file: K nodes on the addresses `free` gives (2 + 2K of them), `sync`, node
/// `n<i>` in front of app `i`. The alone configuration uses it only for its process controller.
fn cluster_file(
    base: &ClusterConfig,
    apps: &[SocketAddr],
    free: impl IntoIterator<Item = SocketAddr>,
) -> Result<ClusterFile> {
    let mut free = free.into_iter();
    let mut port = || {
        free.next()
            .context("fewer free addresses than the cluster needs")
    };
    let mut file = ClusterFile::new(base.secret.clone(), port()?, port()?);
    file.cookie.name = Some(base.cookie.name.clone());
    file.lb.threads = Some(base.lb.threads);
    file.replication.mode = Some(ReplicationMode::Sync);
    file.replication.heartbeat = Some(base.replication.heartbeat);
    file.replication.peer_timeout = Some(base.replication.peer_timeout);
    file.replication.max_updates = Some(base.replication.max_updates);
    file.replication.max_delay = Some(base.replication.max_delay);
    // No cart expires during a run.
    file.session.idle_timeout = Some(Duration::from_secs(3600));
    for (i, a) in apps.iter().enumerate() {
        let mut n = NodeEntry::new(format!("n{}", i + 1), port()?, port()?);
        n.machine = Some(format!("m{}", i + 1));
        n.upstream = Some(format!("http://{a}"));
        file.nodes.push(n);
    }
    Ok(file)
}

/// The load's parameters, parsed.
struct Load {
    users: usize,
    warmup: Duration,
    duration: Duration,
    max_requests: u64,
    reads: f64,
    timeout: Duration,
    quiet: bool,
}

/// The processes whose CPU is read, by kind.
struct Pids {
    apps: Vec<u32>,
    nodes: Option<Vec<u32>>,
    lb: Option<u32>,
}

impl Pids {
    fn read(&self) -> CpuUse {
        let sum = |pids: &[u32]| {
            pids.iter()
                .filter_map(|p| cpu::of_pid(*p))
                .sum::<Duration>()
        };
        CpuUse {
            apps: sum(&self.apps),
            nodes: self.nodes.as_deref().map(sum),
            lb: self.lb.map(|p| sum(&[p])),
            bench: cpu::own(),
        }
    }
}

fn since(after: CpuUse, before: CpuUse) -> CpuUse {
    let d = |a: Duration, b: Duration| a.saturating_sub(b);
    let o = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| d(a, b));
    CpuUse {
        apps: d(after.apps, before.apps),
        nodes: o(after.nodes, before.nodes),
        lb: o(after.lb, before.lb),
        bench: d(after.bench, before.bench),
    }
}

const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const DONE: u8 = 2;

/// What the virtual users share: the phase, the measured-request budget, counters for the progress line.
struct Shared {
    phase: AtomicU8,
    budget: AtomicU64,
    /// Notified when the budget runs out.
    spent: Notify,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// What one virtual user measured and found.
struct UserResult {
    requests: u64,
    connections: u64,
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    violations: u64,
    violation_samples: Vec<String>,
}

const SAMPLES: usize = 3;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// Warm-up, then the measured window (ended by the duration or the request budget), with CPU read at both ends
/// of it; user `u` talks to `targets[u % len]`.
async fn run_load(load: &Load, targets: &[SocketAddr], pids: &Pids) -> Run {
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        budget: AtomicU64::new(load.max_requests),
        spent: Notify::new(),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let mut tasks = Vec::with_capacity(load.users);
    for u in 0..load.users {
        let (shared, target) = (shared.clone(), targets[u % targets.len()]);
        let (reads, timeout) = (load.reads, load.timeout);
        tasks.push(tokio::spawn(async move {
            user(u, target, reads, timeout, shared).await
        }));
    }
    progress(load, &shared, "warm-up", load.warmup).await;
    let before = pids.read();
    let started = Instant::now();
    shared.ok.store(0, Relaxed);
    shared.phase.store(MEASURING, Relaxed);
    tokio::select! {
        () = progress(load, &shared, "measuring", load.duration) => {}
        () = shared.spent.notified() => {}
    }
    shared.phase.store(DONE, Relaxed);
    let elapsed = started.elapsed();
    let used = since(pids.read(), before);

    let mut run = Run {
        setup: Setup::Alone,
        requests: 0,
        connections: 0,
        elapsed,
        latency: new_histogram(),
        errors: BTreeMap::new(),
        error_samples: Vec::new(),
        violations: 0,
        violation_samples: Vec::new(),
        cpu: used,
        loadavg: String::new(),
    };
    for t in tasks {
        // A user only fails by panicking, which is a bug worth surfacing loudly.
        let r = t.await.expect("virtual user panicked");
        run.requests += r.requests;
        run.connections += r.connections;
        run.latency.add(&r.latency).expect("same bounds");
        for (k, n) in r.errors {
            *run.errors.entry(k).or_default() += n;
        }
        run.violations += r.violations;
        let room = SAMPLES.saturating_sub(run.error_samples.len());
        run.error_samples
            .extend(r.error_samples.into_iter().take(room));
        let room = SAMPLES.saturating_sub(run.violation_samples.len());
        run.violation_samples
            .extend(r.violation_samples.into_iter().take(room));
    }
    run
}

/// Sleeps `span`, printing a line a second (unless quiet).
async fn progress(load: &Load, shared: &Shared, what: &str, span: Duration) {
    let start = Instant::now();
    let mut last_ok = shared.ok.load(Relaxed);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    while start.elapsed() < span {
        let left = span.saturating_sub(start.elapsed());
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep(left) => break,
        }
        let ok = shared.ok.load(Relaxed);
        if !load.quiet {
            eprintln!(
                "  {what} {:>3.0} s: {:>7} req/s, {} failed so far",
                start.elapsed().as_secs_f64(),
                ok - last_ok,
                shared.failed.load(Relaxed)
            );
        }
        last_ok = ok;
    }
}

/// One virtual user: closed-loop requests on one connection, one cart, until the phase is done.
async fn user(
    index: usize,
    target: SocketAddr,
    reads: f64,
    timeout: Duration,
    shared: Arc<Shared>,
) -> UserResult {
    let mut rng = StdRng::seed_from_u64(0x5407_u64 ^ index as u64);
    // The app alone may close after each answer: a connection that closes under a waiting request is replaced.
    let mut conn = Http1::new(target, timeout);
    let mut jar = Jar::default();
    let mut cart = CartModel::default();
    let mut r = UserResult {
        requests: 0,
        connections: 0,
        latency: new_histogram(),
        errors: BTreeMap::new(),
        error_samples: Vec::new(),
        violations: 0,
        violation_samples: Vec::new(),
    };
    loop {
        let phase = shared.phase.load(Relaxed);
        if phase == DONE {
            break;
        }
        if phase == MEASURING
            && shared
                .budget
                .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(1))
                .is_err()
        {
            shared.spent.notify_one();
            break;
        }
        let add = (rng.gen::<f64>() >= reads).then(|| PRODUCTS[rng.gen_range(0..PRODUCTS.len())]);
        let opened = conn.opened();
        let t0 = Instant::now();
        let answer = send(&mut conn, add, &mut jar).await;
        let took = t0.elapsed();
        if shared.phase.load(Relaxed) == MEASURING {
            r.connections += conn.opened() - opened;
        }
        match answer {
            Ok(count) => {
                shared.ok.fetch_add(1, Relaxed);
                // Counted only when it ended inside the measured window.
                if shared.phase.load(Relaxed) == MEASURING {
                    r.requests += 1;
                    let _ = r
                        .latency
                        .record((took.as_micros() as u64).clamp(1, 120_000_000));
                }
                if let Err(why) = cart.observe(add.is_some(), count) {
                    r.violations += 1;
                    if r.violation_samples.len() < SAMPLES {
                        r.violation_samples.push(format!("user {index}: {why}"));
                    }
                }
            }
            Err(f) => {
                shared.failed.fetch_add(1, Relaxed);
                if add.is_some() {
                    cart.unsure_add();
                }
                *r.errors.entry(f.kind()).or_default() += 1;
                if r.error_samples.len() < SAMPLES {
                    let what =
                        add.map_or("GET /cart".to_string(), |p| format!("POST /cart/add {p}"));
                    r.error_samples
                        .push(format!("user {index}: {what}: {}", f.describe()));
                }
                // A refused or broken target must not turn the loop into a spin.
                if matches!(f, Failure::Connect) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    r
}

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    Connect,
    Timeout,
    Io,
    Status(u16, String),
    BadBody(String),
}

impl Failure {
    fn kind(&self) -> String {
        match self {
            Failure::Connect => "connect".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Io => "io".into(),
            Failure::Status(s, _) => format!("status {s}"),
            Failure::BadBody(_) => "bad body".into(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Status(s, body) => format!("status {s}: {body}"),
            Failure::BadBody(body) => format!("no count in the answer: {body}"),
            other => other.kind(),
        }
    }
}

impl From<ErrorKind> for Failure {
    fn from(e: ErrorKind) -> Failure {
        match e {
            ErrorKind::Connect => Failure::Connect,
            ErrorKind::Timeout => Failure::Timeout,
            ErrorKind::Io => Failure::Io,
            // An exchange yields neither of these: the answer is judged after it, in `send`.
            ErrorKind::Status(s) => Failure::Status(s, String::new()),
            ErrorKind::BadBody => Failure::BadBody(String::new()),
        }
    }
}

/// `GET /cart`, or `POST /cart/add` of `add`, on `conn`; the cart's count from the answer.
async fn send(conn: &mut Http1, add: Option<&str>, jar: &mut Jar) -> Result<u64, Failure> {
    let mut req = Request::builder()
        .header("host", conn.host())
        .header("accept", "application/json");
    let body = match add {
        None => {
            req = req.method(Method::GET).uri("/cart");
            Bytes::new()
        }
        Some(p) => {
            req = req
                .method(Method::POST)
                .uri("/cart/add")
                .header("content-type", "application/json");
            Bytes::from(json!({ "product": p }).to_string())
        }
    };
    if let Some(c) = jar.header() {
        req = req.header("cookie", c);
    }
    let req = req.body(Full::new(body)).expect("well-formed request");
    let (parts, body) = conn.exchange(req, jar).await?;
    let text = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if parts.status != StatusCode::OK {
        return Err(Failure::Status(parts.status.as_u16(), text()));
    }
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("count")?.as_u64())
        .ok_or_else(|| Failure::BadBody(text()))
}

/// The lines of one run, printed as soon as it ends.
fn run_lines(r: &Run) -> String {
    let mut t = format!(
        "  {}: {} requests in {:.1} s, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} failed, {} count violations, \
         {:.2} new connections per request",
        r.setup.name(),
        r.requests,
        r.elapsed.as_secs_f64(),
        r.rps(),
        r.ms(0.5),
        r.ms(0.99),
        r.error_count(),
        r.violations,
        r.connections as f64 / r.requests.max(1) as f64
    );
    for s in r.error_samples.iter().chain(&r.violation_samples) {
        let _ = write!(t, "\n    {s}");
    }
    t
}

/// The comparison table: each run, then lb + sidecar over app alone. `runs` is alone, then sidecar.
fn table(runs: &[Run], args: &ShopArgs, load: &Load) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\ncart workload: {} users, {:.0} % GET /cart, {:.0} % POST /cart/add, {} apps / nodes, {:.0} s measured \
         after {:.0} s warm-up, {}",
        load.users,
        load.reads * 100.0,
        (1.0 - load.reads) * 100.0,
        args.apps,
        load.duration.as_secs_f64(),
        load.warmup.as_secs_f64(),
        match args.order {
            Order::AloneFirst => "alone first",
            Order::SidecarFirst => "sidecar first",
        }
    );
    t.push_str(&rows(runs));
    t
}

/// The rows and the ratio lines (pure, for the tests).
fn rows(runs: &[Run]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "  {:<14} {:>8} {:>8} {:>8} {:>7} {:>10} {:>9}   {:>28} {:>7} {:>7} {:>7}",
        "run",
        "req/s",
        "p50 ms",
        "p99 ms",
        "failed",
        "violations",
        "conns/req",
        "CPU us per request: apps",
        "nodes",
        "lb",
        "bench"
    );
    let us = |r: &Run, d: Option<Duration>| {
        r.per_request(d)
            .map_or("-".to_string(), |x| format!("{x:.0}"))
    };
    for r in runs {
        let _ = writeln!(
            t,
            "  {:<14} {:>8.0} {:>8.2} {:>8.2} {:>7} {:>10} {:>9.2}   {:>28} {:>7} {:>7} {:>7}",
            r.setup.name(),
            r.rps(),
            r.ms(0.5),
            r.ms(0.99),
            r.error_count(),
            r.violations,
            r.connections as f64 / r.requests.max(1) as f64,
            us(r, Some(r.cpu.apps)),
            us(r, r.cpu.nodes),
            us(r, r.cpu.lb),
            us(r, Some(r.cpu.bench)),
        );
    }
    let (Some(alone), Some(side)) = (
        runs.iter().find(|r| r.setup == Setup::Alone),
        runs.iter().find(|r| r.setup == Setup::Sidecar),
    ) else {
        return t;
    };
    let rps = side.rps() / alone.rps().max(1e-9);
    let p99 = side.ms(0.99) / alone.ms(0.99).max(1e-9);
    let mark = |ok: bool| if ok { "met" } else { "not met" };
    let _ = writeln!(
        t,
        "\n  lb + sidecar / app alone: req/s {rps:.2}x (goal >= {GOAL_RPS}x: {}), p99 {p99:.2}x (goal <= {GOAL_P99}x: {})",
        mark(rps >= GOAL_RPS),
        mark(p99 <= GOAL_P99)
    );
    let _ = writeln!(
        t,
        "  CPU per request, apps + nodes + lb: {:.0} us against {:.0} us alone ({:.2}x)",
        side.served_per_request(),
        alone.served_per_request(),
        side.served_per_request() / alone.served_per_request().max(1e-9)
    );
    let kinds = [
        ("apps", Some(side.cpu.apps)),
        ("nodes", side.cpu.nodes),
        ("lb", side.cpu.lb),
        ("bench", Some(side.cpu.bench)),
    ];
    let mut shares: Vec<(&str, f64)> = kinds
        .iter()
        .filter_map(|(k, d)| Some((*k, side.per_request(*d)?)))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = shares.iter().map(|s| s.1).sum::<f64>().max(1e-9);
    let list: Vec<String> = shares
        .iter()
        .map(|(k, us)| format!("{k} {:.0} %", us / total * 100.0))
        .collect();
    let _ = writeln!(
        t,
        "  where the CPU goes with lb + sidecar (generator included): {}",
        list.join(", ")
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cart_count_may_only_grow_by_the_users_own_adds() {
        let mut c = CartModel::default();
        assert!(c.observe(false, 0).is_ok());
        assert!(c.observe(true, 1).is_ok());
        assert!(c.observe(false, 1).is_ok());
        let e = c.observe(true, 3).unwrap_err();
        assert_eq!(e, "an add saw count 3, expected 2");
        // The model follows what it saw: the next answer is judged from 3.
        assert!(c.observe(false, 3).is_ok());
        assert_eq!(
            c.observe(false, 0).unwrap_err(),
            "a read saw count 0, expected 3"
        );
    }

    #[test]
    fn an_add_without_an_answer_may_or_may_not_have_counted() {
        let mut c = CartModel::default();
        c.unsure_add();
        c.unsure_add();
        assert!(c.observe(true, 2).is_ok());
        c.unsure_add();
        assert!(c.observe(false, 2).is_ok());
        c.unsure_add();
        assert_eq!(
            c.observe(false, 4).unwrap_err(),
            "a read saw count 4, expected 2 to 3"
        );
    }

    fn run(setup: Setup, requests: u64, p99_ms: u64, apps_s: u64, nodes_s: Option<u64>) -> Run {
        let mut latency = new_histogram();
        for i in 0..100 {
            latency
                .record(if i < 98 { 1000 } else { p99_ms * 1000 })
                .unwrap();
        }
        Run {
            setup,
            requests,
            elapsed: Duration::from_secs(10),
            latency,
            errors: BTreeMap::new(),
            error_samples: Vec::new(),
            violations: 0,
            violation_samples: Vec::new(),
            connections: 0,
            cpu: CpuUse {
                apps: Duration::from_secs(apps_s),
                nodes: nodes_s.map(Duration::from_secs),
                lb: nodes_s.map(|_| Duration::from_secs(1)),
                bench: Duration::from_secs(2),
            },
            loadavg: String::new(),
        }
    }

    #[test]
    fn the_table_gives_the_ratios_and_where_the_cpu_goes() {
        let runs = [
            run(Setup::Alone, 10_000, 4, 10, None),
            run(Setup::Sidecar, 8_000, 5, 8, Some(4)),
        ];
        assert_eq!(runs[1].rps(), 800.0);
        let t = rows(&runs);
        assert!(t.contains("req/s 0.80x (goal >= 0.8x: met)"), "{t}");
        assert!(t.contains("p99 1.25x (goal <= 1.5x: met)"), "{t}");
        // Alone: 10 s of app CPU over 10 000 requests, 1000 us; sidecar: (8 + 4 + 1) s over 8 000, 1625 us.
        assert!(t.contains("1625 us against 1000 us alone (1.62x)"), "{t}");
        // Sidecar per request: apps 1000, nodes 500, bench 250, lb 125 of 1875.
        assert!(
            t.contains("apps 53 %, nodes 27 %, bench 13 %, lb 7 %"),
            "{t}"
        );
        let alone_row = t.lines().nth(1).unwrap();
        assert!(alone_row.trim_start().starts_with("app alone"), "{t}");
        assert!(alone_row.contains(" - "), "{alone_row}");
    }
}
