//! `bench node`: what replication costs one node, and what sessions cost in memory.
//!
//! Throwaway clusters on free loopback ports, in one run so the numbers compare: one node alone
//! (unreplicated), pairs, session-server banks, broadcast groups of 2, 3 and 5, and a Redis bank, `sync` and
//! `async`; the same increment load straight at the first node of each (and, for a group of 3, through a member
//! that does not own the sessions). For each, the replication bytes per update on the first node's link to
//! each peer (`node_replication_bytes_total`). Then, on a fresh `sync` pair, N sessions of about
//! `session_bytes` each are created and the resident memory of the primary and the replica is read from /proc
//! before and after.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use node::config::builder::NodeEntry;
use node::config::{ClusterConfig, ClusterFile, ReplicationMode};
use serde_json::json;

use crate::cli::{write_file, LoadArgs};
use crate::client::{Conn, Jar};
use crate::cluster::{free_addrs, Procs};
use crate::runner;
use crate::verify::Op;

/// One throughput measurement.
struct Row {
    name: &'static str,
    rps: f64,
    p99_ms: f64,
    failed: bool,
    /// Cores used during the run: the node served, the copies' holder (a node or redis-server), the bench.
    cores: [f64; 3],
    /// Replication bytes per request on n1's link to each peer (mean over peers): sent, received. `None`
    /// without peers.
    bytes: Option<(f64, f64)>,
}

/// One cluster to measure: its name, nodes, mode, where copies go, and whether requests after a session's
/// first go through n2 (a member that does not own it) instead of straight to n1.
type Run = (&'static str, usize, ReplicationMode, Bank, bool);

/// Runs the three throughput clusters and the memory measurement; prints ratios; `false` if any run failed.
pub async fn node_perf(
    config: &Path,
    load: &LoadArgs,
    memory_sessions: usize,
    session_bytes: usize,
) -> Result<bool> {
    let base = ClusterConfig::load(config)?;
    let dir = std::env::temp_dir().join(format!("bench-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut load = load.clone();
    load.mix = "incr=1".into();
    let mut rows = Vec::new();
    let redis = crate::cluster::which("redis-server").is_some();
    let (sync, not) = (ReplicationMode::Sync, ReplicationMode::Async);
    let mut runs: Vec<Run> = vec![
        ("unreplicated", 1, sync, Bank::None, false),
        ("sync", 2, sync, Bank::None, false),
        ("async", 2, not, Bank::None, false),
        ("rss sync", 2, sync, Bank::Nodes, false),
        ("rss async", 2, not, Bank::Nodes, false),
        ("group of 2 sync", 2, sync, Bank::Group, false),
        ("group of 2 async", 2, not, Bank::Group, false),
        ("group of 3 sync", 3, sync, Bank::Group, false),
        ("group of 3 async", 3, not, Bank::Group, false),
        ("group of 3 sync via n2", 3, sync, Bank::Group, true),
        ("group of 3 async via n2", 3, not, Bank::Group, true),
        ("group of 5 sync", 5, sync, Bank::Group, false),
        ("group of 5 async", 5, not, Bank::Group, false),
    ];
    if redis {
        runs.push(("redis sync", 1, sync, Bank::Redis, false));
        runs.push(("redis async", 1, not, Bank::Redis, false));
    } else {
        eprintln!("redis-server is not installed: no Redis bank rows (bash .ci/setup installs it)");
    }
    for (name, nodes, mode, bank, via) in runs {
        let mut procs = start(&dir, &base, name, nodes, mode, bank).await?;
        let target = procs.config.nodes[0].http;
        let mut spec = load.spec(target, Some(&procs.config))?;
        if via {
            spec.then = Some(procs.config.nodes[1].http);
        }
        eprintln!(
            "\n== {name}: increments to sessions made on {}",
            procs.config.nodes[0].name
        );
        let pids = [procs.pid("n1"), procs.pid(bank.holder())];
        let cpu_of = |p: Option<u32>| p.and_then(crate::cpu::of_pid).unwrap_or_default();
        let before = (pids.map(cpu_of), crate::cpu::own(), Instant::now());
        let s = runner::execute(&spec, name, None, vec![], load.quiet).await;
        let wall = before.2.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
        let after = (pids.map(cpu_of), crate::cpu::own());
        let core = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() / wall;
        let cores = [
            core(after.0[0], before.0[0]),
            core(after.0[1], before.0[1]),
            core(after.1, before.1),
        ];
        let requests = s.result.tally.requests.max(1) as f64;
        let bytes = match nodes {
            1 => None,
            _ => link_bytes(target, nodes - 1, load.quiet)
                .await
                .map(|(tx, rx)| (tx / requests, rx / requests)),
        };
        procs.kill_all();
        let _ = std::fs::remove_dir_all(&procs.log_dir);
        rows.push(Row {
            name,
            rps: s.rps(),
            p99_ms: s.ms(0.99),
            failed: s.failed(),
            cores,
            bytes,
        });
    }
    let mem = memory(&dir, &base, memory_sessions, session_bytes, Bank::None).await?;
    let redis_mem = if redis {
        Some(memory(&dir, &base, memory_sessions, session_bytes, Bank::Redis).await?)
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);

    let unrep = rows[0].rps.max(f64::MIN_POSITIVE);
    // A group's ratio is to the pair of the same mode.
    let pair_rps = |name: &str| {
        let mode = if name.contains("async") {
            "async"
        } else {
            "sync"
        };
        let pair = rows.iter().find(|r| r.name == mode)?;
        name.starts_with("group")
            .then_some(pair.rps.max(f64::MIN_POSITIVE))
    };
    let mut t = String::from("\nincrements/s through one node (same run, same load)\n");
    let _ = writeln!(
        t,
        "{:<24} {:>9} {:>7} {:>9} {:>8} {:>15}   cores: node / copy holder / bench",
        "replication", "req/s", "p99 ms", "vs unrep", "vs pair", "B/update/peer"
    );
    for r in &rows {
        let vs_pair = pair_rps(r.name).map_or(String::new(), |p| format!("{:.2}x", r.rps / p));
        let bytes = r
            .bytes
            .map_or(String::new(), |(tx, rx)| format!("{tx:.0} / {rx:.0}"));
        let _ = writeln!(
            t,
            "{:<24} {:>9.0} {:>7.2} {:>8.2}x {:>8} {:>15}   {:.2} / {:.2} / {:.2}",
            r.name,
            r.rps,
            r.p99_ms,
            r.rps / unrep,
            vs_pair,
            bytes,
            r.cores[0],
            r.cores[1],
            r.cores[2]
        );
    }
    t.push_str("(B/update/peer: replication bytes n1 sent / received on its link to each peer, per request)\n");
    let _ = writeln!(
        t,
        "\nresident memory per 100 000 sessions of ~{session_bytes} B ({memory_sessions} created): \
         primary {:.1} MiB, replica {:.1} MiB",
        mem.primary_mib_per_100k, mem.replica_mib_per_100k
    );
    if let Some(m) = &redis_mem {
        let _ = writeln!(
            t,
            "with a Redis bank: web node {:.1} MiB, redis-server {:.1} MiB",
            m.primary_mib_per_100k, m.replica_mib_per_100k
        );
    }
    println!("{t}");
    if let Some(p) = &load.json {
        let v = json!({
            "throughput": rows.iter().map(|r| json!({"replication": r.name, "rps": r.rps, "p99_ms": r.p99_ms,
                "ratio_to_unreplicated": r.rps / unrep, "ratio_to_pair": pair_rps(r.name).map(|p| r.rps / p),
                "bytes_sent_per_update_per_peer": r.bytes.map(|b| b.0),
                "bytes_received_per_update_per_peer": r.bytes.map(|b| b.1),
                "cores_node": r.cores[0], "cores_copy_holder": r.cores[1],
                "cores_bench": r.cores[2]})).collect::<Vec<_>>(),
            "memory": {"sessions": memory_sessions, "session_bytes": session_bytes,
                "primary_mib_per_100k": mem.primary_mib_per_100k, "replica_mib_per_100k": mem.replica_mib_per_100k,
                "redis_web_mib_per_100k": redis_mem.as_ref().map(|m| m.primary_mib_per_100k),
                "redis_server_mib_per_100k": redis_mem.as_ref().map(|m| m.replica_mib_per_100k)},
        });
        write_file(p, &serde_json::to_string_pretty(&v)?)?;
    }
    Ok(rows.iter().all(|r| !r.failed))
}

/// The replication bytes the node at `http` sent and received on its links, each summed over its peers and
/// divided by `peers`; `None` (with a note unless `quiet`) when its metrics cannot be read.
async fn link_bytes(http: std::net::SocketAddr, peers: usize, quiet: bool) -> Option<(f64, f64)> {
    let text = match crate::client::get_text(http, "/_node/metrics").await {
        Ok(t) => t,
        Err(e) => {
            if !quiet {
                eprintln!("cannot read the metrics of {http}: {e:?}");
            }
            return None;
        }
    };
    let sum = |direction: &str| {
        let label = format!("direction=\"{direction}\"");
        text.lines()
            .filter(|l| l.starts_with("node_replication_bytes_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            / peers as f64
    };
    Some((sum("sent"), sum("received")))
}

/// Where a run's copies go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bank {
    /// To the other nodes of a pair (or nowhere, alone).
    None,
    /// To session-server nodes (`role = "rss"`): every node but n1.
    Nodes,
    /// To a `redis-server` the bench starts on a free port.
    Redis,
    /// To every other member of one broadcast group.
    Group,
}

impl Bank {
    /// The process that holds the copies of n1's sessions.
    fn holder(self) -> &'static str {
        match self {
            Bank::Redis => crate::cluster::BANK,
            Bank::None | Bank::Nodes | Bank::Group => "n2",
        }
    }
}

/// Writes a cluster file of `nodes` nodes on free ports of 127.0.0.1 and starts its nodes (no lb), and the
/// Redis bank when `bank` asks for one.
async fn start(
    dir: &Path,
    base: &ClusterConfig,
    name: &str,
    nodes: usize,
    mode: ReplicationMode,
    bank: Bank,
) -> Result<Procs> {
    // Every address at once, none alike: lb, admin, the bank, then two per node.
    let mut free = free_addrs(IpAddr::V4(Ipv4Addr::LOCALHOST), 3 + 2 * nodes)?.into_iter();
    let mut port = || free.next().context("fewer free addresses than asked for");
    let mut file = ClusterFile::new(base.secret.clone(), port()?, port()?);
    file.replication.mode = Some(mode);
    file.replication.max_updates = Some(base.replication.max_updates);
    file.replication.max_delay = Some(base.replication.max_delay);
    match bank {
        Bank::None => {}
        Bank::Nodes => file.replication.extra = "topology = \"rss\"\n".into(),
        Bank::Group => file.replication.extra = "topology = \"broadcast\"\n".into(),
        Bank::Redis => {
            let at = port()?;
            file.replication.extra =
                format!("topology = \"rss\"\n\n[replication.bank]\nredis = [\"redis://{at}\"]\n");
        }
    }
    // Long enough that no session expires during a run, large enough for the memory run's sessions.
    file.session.idle_timeout = Some(Duration::from_secs(3600));
    file.session.max_session_bytes = Some(1024 * 1024);
    for i in 1..=nodes {
        let mut node = NodeEntry::new(format!("n{i}"), port()?, port()?);
        node.machine = Some(format!("m{i}"));
        // In the bank topology every node but n1 is a session server.
        if bank == Bank::Nodes && i > 1 {
            node.extra = "role = \"rss\"\n".into();
        }
        file.nodes.push(node);
    }
    let path = dir.join(format!("{}.toml", name.replace(' ', "-")));
    std::fs::write(&path, file.render())?;
    let mut procs = Procs::new(&path)?;
    procs.start_all(false).await?;
    Ok(procs)
}

struct Memory {
    primary_mib_per_100k: f64,
    replica_mib_per_100k: f64,
}

/// Creates `n` sessions of about `bytes` each on n1 of a fresh sync pair (or n1 with a Redis bank); RSS growth
/// of n1 and of the copy's holder (n2, or redis-server), per 100 000.
async fn memory(
    dir: &Path,
    base: &ClusterConfig,
    n: usize,
    bytes: usize,
    bank: Bank,
) -> Result<Memory> {
    let (name, nodes) = match bank {
        Bank::Redis => ("memory redis", 1),
        Bank::None | Bank::Nodes | Bank::Group => ("memory", 2),
    };
    let holder = bank.holder();
    let mut procs = start(dir, base, name, nodes, ReplicationMode::Sync, bank).await?;
    let target = procs.config.nodes[0].http;
    let pids = [
        procs.pid("n1").context("n1 pid")?,
        procs.pid(holder).context("copy holder pid")?,
    ];
    // Let both settle (heartbeats, first connections) before the baseline.
    let before = [
        settled_rss_kib(pids[0]).await?,
        settled_rss_kib(pids[1]).await?,
    ];
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let value = "x".repeat(bytes.saturating_sub(24).max(1));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (next, failures, value) = (next.clone(), failures.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target, Duration::from_secs(10));
            // Bounded by count: each task takes indices until all n are handed out.
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let mut jar = Jar::default();
                let op = Op::Patch {
                    key: "blob".into(),
                    value: value.clone(),
                };
                match conn.send(&op, &mut jar).await {
                    Ok(r) if r.status.is_success() => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {n} session creations failed");
    }
    eprintln!(
        "created {n} sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let after = [
        settled_rss_kib(pids[0]).await?,
        settled_rss_kib(pids[1]).await?,
    ];
    procs.kill_all();
    let _ = std::fs::remove_dir_all(&procs.log_dir);
    let per_100k = |i: usize| {
        (after[i].saturating_sub(before[i])) as f64 / 1024.0 * 100_000.0 / n.max(1) as f64
    };
    Ok(Memory {
        primary_mib_per_100k: per_100k(0),
        replica_mib_per_100k: per_100k(1),
    })
}

/// VmRSS once it has stopped moving (two readings 100 ms apart within 256 KiB; at most 5 s of trying).
async fn settled_rss_kib(pid: u32) -> Result<u64> {
    let mut last = crate::cluster::rss_kib(pid)?;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = crate::cluster::rss_kib(pid)?;
        if now.abs_diff(last) <= 256 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}
