//! `bench compare`: one load, four paths to the same nodes — directly to a node, through `lb`, through a minimal
//! Pingora proxy and through HAProxy with cookie stickiness — and the ratios between them. Proxy CPU comes from
//! /proc, so "requests per proxy CPU-second" compares what each proxy burns, not what the generator does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::cli::{write_file, LoadArgs};
use crate::cluster::{free_port, which, Procs, LB};
use crate::{cpu, runner};

/// One measured path. `bench edge` counts connections, handshakes or bytes in `requests` and `rps`.
pub struct Row {
    /// The path, e.g. `direct n1`, `lb`.
    pub name: String,
    /// Requests per second over the run.
    pub rps: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// CPU of the proxy process during the run; `None` when there is no proxy.
    pub proxy_cpu: Option<Duration>,
    /// Requests answered during the run.
    pub requests: u64,
    /// An acknowledged update was lost or a session reset on this path.
    pub failed: bool,
}

impl Row {
    /// Requests per CPU-second of the proxy; `None` without a proxy or with no CPU measured.
    pub fn per_cpu_s(&self) -> Option<f64> {
        self.proxy_cpu
            .filter(|c| !c.is_zero())
            .map(|c| self.requests as f64 / c.as_secs_f64())
    }
}

/// Starts the cluster of `config`, measures every path `rounds_wanted` times (at least once), prints the table and
/// writes `--json`; `Ok(false)` when a path lost an update or reset a session.
///
/// # Errors
/// When the cluster or a proxy cannot be started, the file has no nodes, or the output cannot be written.
pub async fn compare(config: &Path, load: &LoadArgs, rounds_wanted: usize) -> Result<bool> {
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

    // Rounds in a rotating order, so that a drift in the machine's load (it is shared) falls on every path alike;
    // the ratios are then taken round by round.
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    let mut reports = Vec::new();
    for round in 0..rounds_wanted.max(1) {
        let mut this: Vec<Option<Row>> = (0..targets.len()).map(|_| None).collect();
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (name, addr, proc_key) = &targets[i];
            eprintln!(
                "\n== round {} of {rounds_wanted}: {name} (http://{addr})",
                round + 1
            );
            let spec = load.spec(*addr, Some(&cfg))?;
            let pid = proc_key.and_then(|k| procs.pid(k));
            let before = pid.and_then(cpu::of_pid);
            let s = runner::execute(&spec, name, None, vec![], load.quiet).await;
            let used = pid
                .and_then(cpu::of_pid)
                .zip(before)
                .map(|(a, b)| a.saturating_sub(b));
            println!("{}", s.table());
            this[i] = Some(Row {
                name: name.clone(),
                rps: s.rps(),
                p99_ms: s.ms(0.99),
                proxy_cpu: used,
                requests: s.result.tally.requests,
                failed: s.failed(),
            });
            reports.push(s.json());
        }
        rounds.push(this.into_iter().flatten().collect());
    }
    let rows = merge_rounds(&rounds);
    procs.kill_all();
    let mut t = table(&rows);
    t.push_str(&round_lines(&rounds));
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

/// Each path's rounds as one row: requests, time and CPU summed, the median round's p99.
pub fn merge_rounds(rounds: &[Vec<Row>]) -> Vec<Row> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let runs: Vec<&Row> = rounds.iter().filter_map(|r| r.get(i)).collect();
            let requests: u64 = runs.iter().map(|r| r.requests).sum();
            let secs: f64 = runs
                .iter()
                .filter(|r| r.rps > 0.0)
                .map(|r| r.requests as f64 / r.rps)
                .sum();
            let cpu = runs.iter().map(|r| r.proxy_cpu).sum::<Option<Duration>>();
            Row {
                name: first[i].name.clone(),
                rps: if secs > 0.0 {
                    requests as f64 / secs
                } else {
                    0.0
                },
                p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
                proxy_cpu: cpu,
                requests,
                failed: runs.iter().any(|r| r.failed),
            }
        })
        .collect()
}

/// One line per proxy: its requests per CPU-second over the minimal proxy's, round by round, and the median.
pub fn round_lines(rounds: &[Vec<Row>]) -> String {
    let mut t = String::new();
    if rounds.len() < 2 {
        return t;
    }
    let Some(first) = rounds.first() else {
        return t;
    };
    let Some(minimal) = first.iter().position(|x| x.name.starts_with("minimal")) else {
        return t;
    };
    let _ = writeln!(t, "\n  req/proxy-cpu-s over minimal, round by round:");
    for (i, row) in first.iter().enumerate() {
        if row.proxy_cpu.is_none() || i == minimal {
            continue;
        }
        let ratios = ratios_by_round(rounds, i, minimal, Row::per_cpu_s);
        let list: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(
            t,
            "  {:<32} {}  median {:.2}x",
            row.name,
            list.join(" "),
            median(ratios)
        );
    }
    t
}

/// Row `of` over row `over` in each round, by `value` (e.g. [`Row::per_cpu_s`]); a round where either has no
/// value, or `over`'s is 0, is left out. Every round lists its paths in the same order.
pub fn ratios_by_round(
    rounds: &[Vec<Row>],
    of: usize,
    over: usize,
    value: impl Fn(&Row) -> Option<f64>,
) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|r| {
            let base = value(r.get(over)?).filter(|b| *b > 0.0)?;
            Some(value(r.get(of)?)? / base)
        })
        .collect()
}

/// The median of `xs`; 0 when empty.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// HAProxy in front of every node, sticky by its own inserted cookie, balanced like our lb's default.
pub fn haproxy_config(
    listen: SocketAddr,
    cfg: &node::config::ClusterConfig,
    threads: usize,
) -> String {
    let mut c = haproxy_global(threads);
    c.push_str(&haproxy_http("http", listen, None, &servers(cfg)));
    c
}

/// The `(name, http address)` of every node of `cfg`, as HAProxy's servers.
pub fn servers(cfg: &node::config::ClusterConfig) -> Vec<(String, SocketAddr)> {
    cfg.nodes.iter().map(|n| (n.name.clone(), n.http)).collect()
}

/// HAProxy's `global` and `defaults` sections; each proxy section sets its own mode, so one process can serve
/// HTTP and TCP proxies side by side.
pub fn haproxy_global(threads: usize) -> String {
    format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n\ndefaults\n  timeout connect 2s\n  timeout client 30s\n  \
         timeout server 30s\n"
    )
}

/// An HTTP frontend `name` on `listen` and its backend of `servers`, sticky by HAProxy's own inserted cookie,
/// balanced like our lb's default. With `tls_pem` (certificate and key in one file) the frontend terminates TLS
/// and does what lb's TLS listener does: ALPN h2 and http/1.1, `X-Forwarded-Proto`/`-For`, a `Secure` cookie.
pub fn haproxy_http(
    name: &str,
    listen: SocketAddr,
    tls_pem: Option<&Path>,
    servers: &[(String, SocketAddr)],
) -> String {
    let mut c = format!("\nfrontend {name}\n  mode http\n  option http-keep-alive\n");
    let secure = match tls_pem {
        Some(pem) => {
            let _ = writeln!(
                c,
                "  bind {listen} ssl crt {} alpn h2,http/1.1\n  option forwardfor\n  \
                 http-request set-header X-Forwarded-Proto https",
                pem.display()
            );
            " secure"
        }
        None => {
            let _ = writeln!(c, "  bind {listen}");
            ""
        }
    };
    let _ = write!(
        c,
        "  default_backend {name}_nodes\n\nbackend {name}_nodes\n  mode http\n  balance leastconn\n  \
         cookie SRVID insert indirect nocache{secure}\n  http-reuse safe\n"
    );
    for (n, addr) in servers {
        let _ = writeln!(c, "  server {n} {addr} cookie {n}");
    }
    c
}

/// A TCP frontend `name` on `listen` and its backend of `servers`, each client address kept on one server
/// (`balance source`) by consistent hashing, which moves only a dead server's clients, as lb's Layer-4
/// director does.
pub fn haproxy_tcp(name: &str, listen: SocketAddr, servers: &[(String, SocketAddr)]) -> String {
    let mut c = format!(
        "\nfrontend {name}\n  mode tcp\n  bind {listen}\n  default_backend {name}_nodes\n\n\
         backend {name}_nodes\n  mode tcp\n  balance source\n  hash-type consistent\n"
    );
    for (n, addr) in servers {
        let _ = writeln!(c, "  server {n} {addr}");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, rps: f64, cpu: Option<u64>) -> Row {
        Row {
            name: name.into(),
            rps,
            p99_ms: rps / 100.0,
            proxy_cpu: cpu.map(Duration::from_secs),
            requests: (rps * 10.0) as u64,
            failed: false,
        }
    }

    #[test]
    fn rounds_merge_into_sums_and_a_median_p99_and_ratios_are_taken_round_by_round() {
        let rounds = vec![
            vec![row("lb", 500.0, Some(5)), row("minimal", 800.0, Some(4))],
            vec![row("lb", 700.0, Some(5)), row("minimal", 600.0, Some(4))],
            vec![row("lb", 600.0, Some(5)), row("minimal", 600.0, Some(5))],
        ];
        let merged = merge_rounds(&rounds);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].requests, 18_000);
        assert!((merged[0].rps - 600.0).abs() < 1e-9);
        assert_eq!(merged[0].p99_ms, 6.0);
        assert_eq!(merged[0].proxy_cpu, Some(Duration::from_secs(15)));
        // Per round: 1000/2000, 1400/1500, 1200/1200.
        let lines = round_lines(&rounds);
        assert!(lines.contains("0.50 0.93 1.00  median 0.93x"), "{lines}");
    }

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

    #[test]
    fn haproxy_serves_http_with_cookie_stickiness_tls_like_lb_and_tcp_by_source_address() {
        let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let nodes = vec![("n1".to_string(), at(9001)), ("n2".to_string(), at(9002))];
        let http = haproxy_http("http", at(8080), None, &nodes);
        assert!(http.contains("frontend http\n  mode http\n"), "{http}");
        assert!(http.contains("  bind 127.0.0.1:8080\n"), "{http}");
        assert!(
            http.contains("cookie SRVID insert indirect nocache\n"),
            "{http}"
        );
        assert!(
            http.contains("  server n2 127.0.0.1:9002 cookie n2\n"),
            "{http}"
        );
        let tls = haproxy_http("https", at(8443), Some(Path::new("/d/h.pem")), &nodes);
        assert!(
            tls.contains("  bind 127.0.0.1:8443 ssl crt /d/h.pem alpn h2,http/1.1\n"),
            "{tls}"
        );
        assert!(tls.contains("X-Forwarded-Proto https") && tls.contains("option forwardfor"));
        assert!(tls.contains("nocache secure\n"), "{tls}");
        let tcp = haproxy_tcp("l4", at(7000), &nodes);
        assert!(
            tcp.contains("  mode tcp\n  balance source\n  hash-type consistent\n"),
            "{tcp}"
        );
        assert!(tcp.contains("  server n1 127.0.0.1:9001\n"), "{tcp}");
        let all = haproxy_global(2) + &http + &tcp;
        assert!(all.starts_with("global\n  nbthread 2\n"), "{all}");
        assert_eq!(all.matches("default_backend").count(), 2);
    }
}
