//! Config reloads under load: nodes join and drain, a bad file is refused, and no request fails meanwhile.

mod lb_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_tests::{bin, metric, wait_until, Cluster, User};
use lb_support::*;

/// Users that each open a new session and increment it twice, over and over, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// When each new session's first request was sent, and which node served it.
    sessions: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Load {
    fn start(lb: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..threads)
            .map(|_| {
                let (lb, stop, errors, sessions) = (
                    lb.to_string(),
                    stop.clone(),
                    errors.clone(),
                    sessions.clone(),
                );
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(120);
                    for _ in 0..5000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > until {
                            return;
                        }
                        let mut u = User::new();
                        let sent = Instant::now();
                        match u.get(&lb) {
                            Ok(r) if r.status == 200 => sessions
                                .lock()
                                .unwrap()
                                .push((sent, r.served_by.unwrap_or_default())),
                            Ok(r) => errors
                                .lock()
                                .unwrap()
                                .push(format!("new session: {} {}", r.status, r.body)),
                            Err(e) => errors.lock().unwrap().push(format!("new session: {e}")),
                        }
                        for i in 1..=2 {
                            match u.incr(&lb, "n") {
                                Ok(r) if r.status == 200 && value(&r) == i => {}
                                Ok(r) => errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("incr {i}: {} {}", r.status, r.body)),
                                Err(e) => errors.lock().unwrap().push(format!("incr {i}: {e}")),
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            workers,
            errors,
            sessions,
        }
    }

    fn sessions_on_since(&self, node: &str, since: Instant) -> usize {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, n)| *t >= since && n == node)
            .count()
    }

    fn sessions_since(&self, since: Instant) -> usize {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= since)
            .count()
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.join().expect("load worker");
        }
        Arc::try_unwrap(self.errors).unwrap().into_inner().unwrap()
    }
}

/// Has the running nodes re-read the cluster file (they reload on SIGHUP too).
/// SIGHUPs the nodes and waits until each has taken the file, so that the balancer (reloaded next) never sends
/// a node a session whose pair it does not know yet.
fn reload_nodes(c: &Cluster, names: &[&str]) {
    let reloads = |n: &str| metric(&c.node_url(n), "node_reloads_total");
    let before: Vec<f64> = names.iter().map(|n| reloads(n)).collect();
    for n in names {
        c.signal(n, libc::SIGHUP);
    }
    for (n, b) in names.iter().zip(before) {
        wait_until(Duration::from_secs(10), &format!("{n} to reload"), || {
            reloads(n) > b
        })
        .unwrap();
    }
}

fn generation(c: &Cluster) -> u64 {
    status(&c.admin_url())["generation"].as_u64().unwrap()
}

#[test]
fn a_reload_adds_a_node_drains_one_and_refuses_a_bad_file_while_no_request_fails() {
    let mut c = cluster(3, "");
    let started = Instant::now();
    let load = Load::start(&c.lb_url(), 4);
    wait_until(Duration::from_secs(20), "load to run", || {
        load.sessions_since(started) >= 10
    })
    .unwrap();

    // A fourth node joins: it starts from the new file, then the balancer reloads (SIGHUP).
    c.add_node().unwrap();
    reload_nodes(&c, &["n1", "n2", "n3"]);
    c.signal("lb", libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the reload to apply", || {
        generation(&c) == 2
    })
    .unwrap();
    let joined = Instant::now();
    wait_until(Duration::from_secs(30), "new sessions on n4", || {
        load.sessions_on_since("n4", joined) >= 3
    })
    .unwrap();

    // n2 drains (POST /reload this time): no new session lands on it afterwards.
    c.spec.node_extra.insert(1, "drain = true".into());
    c.rewrite_config().unwrap();
    reload_nodes(&c, &["n1", "n2", "n3", "n4"]);
    let (code, body) = reload(&c.admin_url());
    assert_eq!(code, 200, "{body}");
    let drained = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "new sessions after the drain",
        || load.sessions_since(drained) >= 40,
    )
    .unwrap();
    assert_eq!(
        load.sessions_on_since("n2", drained),
        0,
        "a drained node gets no new session"
    );
    assert!(status(&c.admin_url())["nodes"][1]["drain"]
        .as_bool()
        .unwrap());

    // A broken file is refused by both paths, with its line, and the running config keeps serving.
    c.write_config("[cluster]\nsecret = \"short\"\n[lb]\nlisten = 1\n")
        .unwrap();
    let (code, body) = reload(&c.admin_url());
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("cluster.toml:"),
        "the error names file and line: {body}"
    );
    c.signal("lb", libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        "the SIGHUP reload to be refused too",
        || {
            sample(
                &metrics(&c.admin_url()),
                "lb_reloads_total{result=\"refused\"}",
            ) == 2.0
        },
    )
    .unwrap();
    let refused = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "traffic after the refused reload",
        || load.sessions_since(refused) >= 20,
    )
    .unwrap();
    assert_eq!(generation(&c), 3, "neither refused reload changed anything");
    assert_eq!(status(&c.admin_url())["nodes"].as_array().unwrap().len(), 4);
    assert!(
        c.log("lb").contains("reload refused"),
        "the refusal is logged"
    );

    let errors = load.finish();
    assert!(
        errors.is_empty(),
        "{} failed requests, first: {:?}",
        errors.len(),
        errors.first()
    );
}

#[test]
fn lb_check_accepts_a_valid_file_and_names_file_line_and_key_of_an_invalid_one() {
    let c = cluster(1, "");
    let ok = std::process::Command::new(bin("lb"))
        .arg("check")
        .arg(&c.config_path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = c.dir.join("bad.toml");
    let text = std::fs::read_to_string(&c.config_path)
        .unwrap()
        .replace("[lb]\n", "[lb]\nalgorithm = \"fastest\"\n");
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("algorithm = \"fastest\""))
        .expect("the bad key is in the file");
    std::fs::write(&bad, text).unwrap();
    let out = std::process::Command::new(bin("lb"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("bad.toml:{line}"))
            && err.contains("algorithm")
            && err.contains("fastest"),
        "the error names file:line, key and value: {err}"
    );
}
