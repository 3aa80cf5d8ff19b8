//! `bench up`, the cluster `make run` starts, as the failover demo: kill -9 of a node leaves the lb and the other
//! nodes serving (and the session going on), Enter starts the node again, Ctrl-C stops everything.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_tests::{bin, wait_http_ok, wait_until, Cluster, ClusterSpec, User};

/// A running `bench up`: its output so far (stdout and stderr together), its stdin, killed (SIGKILL, its
/// children going with it through PR_SET_PDEATHSIG) when dropped.
struct Up {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
}

impl Up {
    fn start(c: &Cluster) -> Up {
        let mut child = Command::new(bin("bench"))
            .args(["up", "--config"])
            .arg(&c.config_path)
            // Its log directory ($TMPDIR/bench-<pid>) inside the cluster's, removed with it.
            .env("TMPDIR", &c.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bench up starts");
        let out = Arc::new(Mutex::new(String::new()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut pipe in pipes {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdin = child.stdin.take();
        Up { child, stdin, out }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until the output contains `text`; panics with the output otherwise.
    fn wait_for(&self, text: &str, limit: Duration) {
        if wait_until(limit, text, || self.output().contains(text)).is_err() {
            panic!(
                "bench up never printed {text:?}; it printed:\n{}",
                self.output()
            );
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The pids of the `pids:` line: `(key, pid)`.
    fn pids(&self) -> Vec<(String, u32)> {
        let out = self.output();
        let line = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("pids:"))
            .unwrap_or_else(|| panic!("no pids line in:\n{out}"));
        line.split(',')
            .map(|kv| {
                let (k, v) = kv.trim().split_once(' ').expect("KEY PID");
                (k.to_string(), v.trim().parse().expect("a pid"))
            })
            .collect()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` exists (a zombie counts).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn bench_up_keeps_serving_after_a_node_is_killed_restarts_it_on_enter_and_stops_everything_on_ctrl_c(
) {
    // The processes are bench up's; the cluster only gives the file, the ports and the directory.
    let c = Cluster::prepare(ClusterSpec {
        lb: true,
        ..ClusterSpec::default()
    })
    .unwrap();
    let mut up = Up::start(&c);
    up.wait_for("Ctrl-C stops everything", Duration::from_secs(60));
    let mut pids = up.pids();
    let names: Vec<&str> = pids.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3", "lb"], "{}", up.output());
    assert!(
        up.output().contains("Enter starts it again"),
        "{}",
        up.output()
    );

    // A session through the lb, and the node that holds it.
    let lb = c.lb_url();
    let mut user = User::new();
    for want in 1..=2 {
        let r = user.incr(&lb, "n").unwrap();
        assert_eq!(
            (r.status, r.json()["value"].as_i64()),
            (200, Some(want)),
            "{r:?}"
        );
    }
    let victim = user
        .incr(&lb, "n")
        .unwrap()
        .served_by
        .expect("X-Served-By (expose_node)");
    let victim_pid = pids.iter().find(|(k, _)| *k == victim).unwrap().1;

    // SAFETY: kill(2) on a pid bench up printed as its child's.
    unsafe {
        libc::kill(victim_pid as i32, libc::SIGKILL);
    }
    up.wait_for(&format!("{victim} exited"), Duration::from_secs(10));
    // The report ends with how to start it again; bench up must still run after printing it.
    up.wait_for("press Enter", Duration::from_secs(10));
    assert!(up.running(), "bench up stopped:\n{}", up.output());
    let out = up.output();
    assert!(
        out.contains(&format!("{victim}.log")) && out.contains("press Enter"),
        "the report names no log or restart:\n{out}"
    );
    let r = user.incr(&lb, "n").unwrap();
    assert_eq!(
        (r.status, r.json()["value"].as_i64()),
        (200, Some(4)),
        "the same session, counting on: {r:?}\n{out}"
    );
    assert_ne!(r.served_by.as_deref(), Some(victim.as_str()), "{r:?}");
    wait_http_ok(&format!("{}/status", c.admin_url()), Duration::from_secs(2)).unwrap();
    for (k, pid) in &pids {
        assert!(*k == victim || alive(*pid), "{k} went too:\n{out}");
    }

    // Enter starts the dead node again, healthy.
    up.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    up.wait_for(&format!("{victim} is back"), Duration::from_secs(30));
    wait_http_ok(
        &format!("{}/_node/health", c.node_url(&victim)),
        Duration::from_secs(2),
    )
    .unwrap();
    let out = up.output();
    let restarted = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("restarted {victim} (pid ")))
        .and_then(|rest| rest.trim_end_matches(')').parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no restart pid in:\n{out}"));
    assert!(alive(restarted));
    pids.push((victim.clone(), restarted));
    let r = user.incr(&lb, "n").unwrap();
    assert_eq!(r.json()["value"].as_i64(), Some(5), "{r:?}");

    // Ctrl-C: bench up exits 0 and takes every process with it.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(up.child.id() as i32, libc::SIGINT);
    }
    wait_until(Duration::from_secs(10), "bench up to exit", || {
        !up.running()
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", up.output()));
    let status = up.child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", up.output());
    for (k, pid) in pids.iter().filter(|(_, p)| *p != victim_pid) {
        wait_until(
            Duration::from_secs(5),
            &format!("{k} (pid {pid}) to go"),
            || !alive(*pid),
        )
        .unwrap_or_else(|e| panic!("{e}:\n{}", up.output()));
    }
}
