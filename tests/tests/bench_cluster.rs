//! One short `bench cluster` run against the real binaries, with the busiest node killed mid-way: the bench
//! must find no acknowledged update lost and no session silently reset.

use std::net::SocketAddr;
use std::process::Command;

use cluster_tests::{bin, free_port, loopback_ip, render_config, ClusterSpec, NodeAddrs};

#[test]
fn bench_cluster_kill_primary_loses_nothing() {
    let ip = loopback_ip();
    let nodes: Vec<NodeAddrs> = (1..=3)
        .map(|i| NodeAddrs {
            name: format!("n{i}"),
            http: SocketAddr::from((ip, free_port(ip))),
            repl: SocketAddr::from((ip, free_port(ip))),
        })
        .collect();
    let lb = SocketAddr::from((ip, free_port(ip)));
    let admin = SocketAddr::from((ip, free_port(ip)));
    let spec = ClusterSpec {
        lb: true,
        ..ClusterSpec::default()
    };
    let dir = std::env::temp_dir().join(format!(
        "bench-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("cluster.toml");
    std::fs::write(&config, render_config(&spec, ip, &nodes, lb, admin)).unwrap();
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
            "6s",
            "--fault",
            "kill:primary@2s",
            "--quiet",
        ])
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
    // The fault list also records a skipped fault: check that a node was really killed and sessions moved.
    let applied = r["faults"][0]["what"].as_str().unwrap_or_default();
    assert!(
        applied.starts_with("kill n"),
        "the kill was not applied ({applied:?}):\n{stdout}\n{stderr}"
    );
    assert!(
        n("sessions_failed_over") > 0,
        "no session moved off the killed node:\n{stdout}"
    );
    assert!(
        out.status.success(),
        "bench exited {}:\n{stdout}\n{stderr}",
        out.status
    );
    let _ = std::fs::remove_dir_all(&dir);
}
