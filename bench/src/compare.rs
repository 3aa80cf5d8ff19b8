//! `bench compare`: one load, four paths to the same nodes — directly to a node, through `lb`, through a minimal
//! Pingora proxy and through HAProxy with cookie stickiness — and the ratios between them. Proxy CPU comes from
//! /proc, so "requests per proxy CPU-second" compares what each proxy burns, not what the generator does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::cli::{write_file, LoadArgs};
use crate::cluster::{free_port, Procs, LB};
use crate::{cpu, runner};

/// One measured path.
pub struct Row {
    pub name: String,
    pub rps: f64,
    pub p99_ms: f64,
    /// CPU of the proxy process during the run; `None` when there is no proxy.
    pub proxy_cpu: Option<Duration>,
    pub requests: u64,
    pub failed: bool,
}

impl Row {
    pub fn per_cpu_s(&self) -> Option<f64> {
        self.proxy_cpu
            .filter(|c| !c.is_zero())
            .map(|c| self.requests as f64 / c.as_secs_f64())
    }
}

pub async fn compare(config: &Path, load: &LoadArgs) -> Result<bool> {
    let mut procs = Procs::new(config)?;
    procs.start_all(true).await?;
    let cfg = procs.config.clone();
    let first = cfg
        .nodes
        .first()
        .ok_or_else(|| anyhow::anyhow!("the cluster file has no nodes"))?
        .clone();
    let ip = cfg.lb.listen.ip();
    let threads = cfg.lb.threads.to_string();

    let mut targets: Vec<(String, SocketAddr, Option<&str>)> = vec![
        (format!("direct {}", first.name), first.http, None),
        ("lb".into(), cfg.lb.listen, Some(LB)),
    ];

    let minimal = SocketAddr::new(ip, free_port(ip)?);
    let exe = std::env::current_exe()?;
    let (l, u) = (minimal.to_string(), first.http.to_string());
    procs.spawn(
        "minimal",
        &exe,
        &[
            "minimal-proxy",
            "--listen",
            &l,
            "--upstream",
            &u,
            "--threads",
            &threads,
            "--config",
            &config.to_string_lossy(),
        ],
    )?;
    procs
        .wait_healthy("minimal", minimal, node::HEALTH_PATH)
        .await?;
    targets.push((
        format!("minimal pingora -> {}", first.name),
        minimal,
        Some("minimal"),
    ));

    match which("haproxy") {
        Some(haproxy) => {
            let addr = SocketAddr::new(ip, free_port(ip)?);
            let file = procs.log_dir.join("haproxy.cfg");
            std::fs::write(&file, haproxy_config(addr, &cfg, cfg.lb.threads))?;
            let f = file.display().to_string();
            procs.spawn("haproxy", &haproxy, &["-f", &f, "-db"])?;
            procs
                .wait_healthy("haproxy", addr, node::HEALTH_PATH)
                .await?;
            targets.push(("haproxy (cookie stickiness)".into(), addr, Some("haproxy")));
        }
        None => eprintln!("haproxy not installed: skipping it"),
    }

    let mut rows = Vec::new();
    let mut reports = Vec::new();
    for (name, addr, proc_key) in &targets {
        eprintln!("\n== {name} (http://{addr})");
        let spec = load.spec(*addr, Some(&cfg))?;
        let pid = proc_key.and_then(|k| procs.pid(k));
        let before = pid.and_then(cpu::of_pid);
        let s = runner::execute(&spec, name, None, vec![], load.quiet).await;
        let used = pid
            .and_then(cpu::of_pid)
            .zip(before)
            .map(|(a, b)| a.saturating_sub(b));
        println!("{}", s.table());
        rows.push(Row {
            name: name.clone(),
            rps: s.rps(),
            p99_ms: s.ms(0.99),
            proxy_cpu: used,
            requests: s.result.tally.requests,
            failed: s.failed(),
        });
        reports.push(s.json());
    }
    procs.kill_all();
    let t = table(&rows);
    println!("{t}");
    if let Some(p) = &load.json {
        write_file(
            p,
            &serde_json::to_string_pretty(&json!({ "runs": reports, "table": t }))?,
        )?;
    }
    let _ = std::fs::remove_dir_all(&procs.log_dir);
    Ok(rows.iter().all(|r| !r.failed))
}

/// The ratio table: throughput against going direct, CPU efficiency against the minimal Pingora proxy.
pub fn table(rows: &[Row]) -> String {
    let direct = rows.first().map_or(0.0, |r| r.rps).max(1e-9);
    let minimal = rows
        .iter()
        .find(|r| r.name.starts_with("minimal"))
        .and_then(Row::per_cpu_s);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "  {:<32} {:>9} {:>9} {:>9} {:>11} {:>13} {:>12}",
        "path", "req/s", "vs direct", "p99 ms", "proxy cpu s", "req/proxy-cpu-s", "vs minimal"
    );
    for r in rows {
        let per = r.per_cpu_s();
        let cpu = r
            .proxy_cpu
            .map_or("-".into(), |c| format!("{:.2}", c.as_secs_f64()));
        let per_s = per.map_or("-".into(), |p| format!("{p:.0}"));
        let vs = per
            .zip(minimal)
            .map_or("-".into(), |(p, m)| format!("{:.2}x", p / m));
        let _ = writeln!(
            t,
            "  {:<32} {:>9.0} {:>8.2}x {:>9.2} {:>11} {:>13} {:>12}",
            r.name,
            r.rps,
            r.rps / direct,
            r.p99_ms,
            cpu,
            per_s,
            vs
        );
    }
    t
}

/// HAProxy in front of every node, sticky by its own inserted cookie, balanced like our lb's default.
pub fn haproxy_config(
    listen: SocketAddr,
    cfg: &node::config::ClusterConfig,
    threads: usize,
) -> String {
    let mut c = format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n\ndefaults\n  mode http\n  timeout connect 2s\n  \
         timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\nfrontend fe\n  bind {listen}\n  \
         default_backend nodes\n\nbackend nodes\n  balance leastconn\n  cookie SRVID insert indirect nocache\n  \
         http-reuse safe\n"
    );
    for n in &cfg.nodes {
        let _ = writeln!(c, "  server {0} {1} cookie {0}", n.name, n.http);
    }
    c
}

/// A program on PATH (or in the sbin directories PATH often leaves out).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        let row = |name: &str, rps: f64, cpu: Option<u64>| Row {
            name: name.into(),
            rps,
            p99_ms: 1.0,
            proxy_cpu: cpu.map(Duration::from_secs),
            requests: (rps * 10.0) as u64,
            failed: false,
        };
        let t = table(&[
            row("direct n1", 1000.0, None),
            row("lb", 500.0, Some(5)),
            row("minimal pingora", 800.0, Some(4)),
        ]);
        assert!(t.contains("0.50x"), "{t}");
        // lb: 5000 req / 5 s = 1000 per CPU-s; minimal: 8000 / 4 = 2000: half as efficient.
        let lb_line = t
            .lines()
            .find(|l| l.trim_start().starts_with("lb"))
            .unwrap();
        assert!(
            lb_line.contains("1000") && lb_line.ends_with("0.50x"),
            "{lb_line}"
        );
    }
}
