//! Short `bench cluster` runs against the real binaries, with the busiest node killed mid-way, or every node
//! restarted in turn: the bench must find no acknowledged update lost and no session silently reset.

use std::process::Command;

use cluster_tests::{bin, Cluster, ClusterSpec};

/// Runs `bench cluster` for 6 s against a cluster prepared from `spec`, with `fault`; checks that the bench
/// found no acknowledged update lost, no session silently reset, nothing applied twice, and that the fault was
/// applied. Returns the report.
fn bench_cluster_with(spec: ClusterSpec, faults: &[&str]) -> serde_json::Value {
    // The bench starts the processes itself: the cluster is only prepared (ports, file, directory).
    let c = Cluster::prepare(spec).unwrap();
    bench_cluster_on(&c, faults, "6s")
}

/// [`bench_cluster_with`] on a prepared cluster, for `duration`.
fn bench_cluster_on(c: &Cluster, faults: &[&str], duration: &str) -> serde_json::Value {
    let (dir, config) = (c.dir.clone(), c.config_path.clone());
    let report = dir.join("report.json");

    let out = Command::new(bin("bench"))
        .args(["cluster", "--config"])
        .arg(&config)
        .args([
            "--sessions",
            "60",
            "--concurrency",
            "8",
            "--duration",
            duration,
            "--quiet",
        ])
        .args(faults.iter().flat_map(|f| ["--fault", f]))
        .arg("--json")
        .arg(&report)
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        )
    });
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {r}"))
    };
    assert!(
        n("requests") > 100,
        "too little traffic to mean anything:\n{stdout}"
    );
    assert_eq!(n("lost_updates"), 0, "{stdout}");
    assert_eq!(n("session_resets"), 0, "{stdout}");
    assert_eq!(n("duplicates"), 0, "{stdout}");
    // The resident memory of every node and the lb, read after the warm-up (a fifth of the run).
    let memory = r["memory"].as_array().cloned().unwrap_or_default();
    for p in c.nodes.iter().map(|n| n.name.as_str()).chain(["lb"]) {
        assert!(
            memory
                .iter()
                .any(|m| m["process"] == p && m["start_kib"].as_u64() > Some(0)),
            "no memory reading of {p}: {memory:?}"
        );
    }
    // The fault list also records a skipped fault: check that each was really applied (`kill n1`, `stop
    // redis-bank for 1s`; `primary` is named by the node it turned out to be).
    let applied: Vec<&str> = r["faults"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["what"].as_str()).collect())
        .unwrap_or_default();
    for f in faults {
        let want = match f.split_once(':') {
            // `rolling restart of 3 nodes in ...`, not `rolling restart failed` or `... interrupted`.
            None if f.starts_with("rolling@") => "rolling restart of ".to_string(),
            None => panic!("{f}: ACTION:TARGET@TIME"),
            Some((action, rest)) => match rest.split('@').next().unwrap_or_default() {
                "primary" => format!("{action} n"),
                t => format!("{action} {t}"),
            },
        };
        assert!(
            applied
                .iter()
                .any(|a| a.starts_with(&want) && !a.contains("skipped")),
            "{f} was not applied ({applied:?}):\n{stdout}\n{stderr}"
        );
    }
    assert!(
        out.status.success(),
        "bench exited {}:\n{stdout}\n{stderr}",
        out.status
    );
    r
}

#[test]
fn bench_cluster_kill_primary_loses_nothing() {
    let r = bench_cluster_with(
        ClusterSpec {
            lb: true,
            ..ClusterSpec::default()
        },
        &["kill:primary@2s"],
    );
    assert!(
        r["sessions_failed_over"].as_u64() > Some(0),
        "no session moved off the killed node: {r}"
    );
}

/// A rolling restart of all three nodes under load through the lb: each is drained (`drain = true` in the
/// cluster file, reloaded), stopped, started again and waited for, in turn. Nothing lost, no reset, no failed
/// request, every node has a new pid, and the cluster file (with a comment of the user's) is as it was.
#[test]
fn bench_cluster_rolling_restart_of_every_node_loses_nothing_and_fails_no_request() {
    let c = Cluster::prepare(ClusterSpec {
        lb: true,
        ..ClusterSpec::default()
    })
    .unwrap();
    let text = format!(
        "# the user's own comment, kept\n{}",
        std::fs::read_to_string(&c.config_path).unwrap()
    );
    c.write_config(&text).unwrap();
    let r = bench_cluster_on(&c, &["rolling@2s"], "24s");
    assert_eq!(r["errors"].as_u64(), Some(0), "client errors: {r}");
    let label = r["faults"][0]["what"].as_str().unwrap_or_default();
    for n in ["n1", "n2", "n3"] {
        // `n1 pid 1234 -> 1240 (...)`
        let pids: Vec<&str> = label
            .split(&format!("{n} pid "))
            .nth(1)
            .unwrap_or_else(|| panic!("{n} was not restarted: {label}"))
            .split_whitespace()
            .take(3)
            .collect();
        assert!(
            pids.len() == 3 && pids[1] == "->" && pids[0] != pids[2],
            "{n} has no new pid: {label}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&c.config_path).unwrap(),
        text,
        "the cluster file is as it was"
    );
}

/// n1, n2 web; n3, n4 the bank, `copies` per session; n5 standby.
fn bank_spec(copies: usize) -> ClusterSpec {
    ClusterSpec::bank(&["web", "web", "rss", "rss", "standby"], copies)
}

#[test]
fn bench_cluster_on_a_bank_loses_nothing_when_a_web_node_is_killed() {
    let r = bench_cluster_with(bank_spec(1), &["kill:n1@2s"]);
    assert!(
        r["sessions_failed_over"].as_u64() > Some(0),
        "no session moved off the killed web node: {r}"
    );
}

#[test]
fn bench_cluster_on_a_bank_loses_nothing_when_a_bank_member_is_killed() {
    bench_cluster_with(bank_spec(1), &["kill:n3@2s"]);
}

#[test]
fn bench_cluster_on_a_bank_with_two_copies_loses_nothing_when_a_web_node_and_a_member_die_together()
{
    bench_cluster_with(bank_spec(2), &["kill:n1@2s", "kill:n3@2s"]);
}

/// n1, n2 web; n3 standby; the bank a `redis-server` the bench starts itself on a free loopback port.
fn redis_spec() -> ClusterSpec {
    let ip = cluster_tests::loopback_ip();
    let url = format!("redis://{ip}:{}", cluster_tests::free_port(ip));
    ClusterSpec::redis_bank(&["web", "web", "standby"], &[url], "server")
}

#[test]
fn bench_cluster_on_a_redis_bank_loses_nothing_when_a_web_node_is_killed() {
    let r = bench_cluster_with(redis_spec(), &["kill:n1@2s"]);
    assert!(
        r["sessions_failed_over"].as_u64() > Some(0),
        "no session moved off the killed web node: {r}"
    );
}

#[test]
fn bench_cluster_on_a_redis_bank_loses_nothing_while_the_store_is_paused() {
    bench_cluster_with(redis_spec(), &["stop:redis-bank@2s+1s"]);
}

#[test]
fn bench_compare_measures_every_path_and_gives_ratios_round_by_round() {
    let c = Cluster::prepare(ClusterSpec {
        lb: true,
        ..ClusterSpec::default()
    })
    .unwrap();
    let out = Command::new(bin("bench"))
        .args(["compare", "--config"])
        .arg(&c.config_path)
        .args([
            "--sessions",
            "20",
            "--concurrency",
            "4",
            "--duration",
            "1s",
            "--rounds",
            "2",
            "--mix",
            "get=1",
            "--quiet",
        ])
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name) && l.contains('x'))
            .unwrap_or_else(|| panic!("no {name} row in:\n{stdout}"))
            .to_string()
    };
    // Every path carried traffic: a req/s column above zero, and the two Pingora proxies' CPU was read.
    for name in ["direct", "lb", "minimal pingora"] {
        let rps: f64 = row(name)
            .split_whitespace()
            .rev()
            .nth(5)
            .unwrap()
            .parse()
            .unwrap();
        assert!(rps > 0.0, "{name}: {stdout}");
    }
    assert!(
        row("minimal pingora").trim_end().ends_with("1.00x"),
        "{stdout}"
    );
    let per_round = stdout
        .lines()
        .skip_while(|l| !l.contains("round by round"))
        .find(|l| l.trim_start().starts_with("lb"))
        .unwrap_or_else(|| panic!("no per-round line for lb in:\n{stdout}"));
    assert!(per_round.contains("median"), "{per_round}");
}
