//! Migrate-then-drain (issue 12): a node set `drain = true` by reload hands every session it owns to the
//! others while they are in use through the lb; once it owns none it is stopped, and nothing was lost.

mod lb_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_tests::{metric, metric_present, wait_until, Cluster, User};
use lb_support::*;

/// Users that keep incrementing their own long-lived sessions through the lb, each answer checked against
/// the count of the increments acknowledged before it.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
    acked: Arc<AtomicU64>,
    /// Which node served each session's last answer, by user.
    served: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(lb: &str, threads: usize, sessions_each: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(AtomicU64::new(0));
        let served = Arc::new(Mutex::new(vec![String::new(); threads * sessions_each]));
        let workers = (0..threads)
            .map(|t| {
                let (lb, stop, errors, acked, served) = (
                    lb.to_string(),
                    stop.clone(),
                    errors.clone(),
                    acked.clone(),
                    served.clone(),
                );
                std::thread::spawn(move || {
                    let mut users: Vec<(User, i64)> =
                        (0..sessions_each).map(|_| (User::new(), 0)).collect();
                    let until = Instant::now() + Duration::from_secs(120);
                    for round in 0..100_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > until {
                            return;
                        }
                        let i = round % sessions_each;
                        let (u, n) = &mut users[i];
                        match u.incr(&lb, "n") {
                            Ok(r) if r.status == 200 && value(&r) == *n + 1 => {
                                *n += 1;
                                acked.fetch_add(1, Ordering::Relaxed);
                                served.lock().unwrap()[t * sessions_each + i] =
                                    r.served_by.unwrap_or_default();
                            }
                            Ok(r) => errors
                                .lock()
                                .unwrap()
                                .push(format!("user {t}.{i} after {n}: {} {}", r.status, r.body)),
                            Err(e) => errors
                                .lock()
                                .unwrap()
                                .push(format!("user {t}.{i} after {n}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            workers,
            errors,
            acked,
            served,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` further increments were acknowledged.
    fn go_on(&self, more: u64, what: &str) {
        let from = self.acked();
        wait_until(Duration::from_secs(30), what, || {
            self.acked() >= from + more
        })
        .unwrap();
    }

    fn served_by(&self, node: &str) -> usize {
        self.served
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == node)
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

fn owned(c: &Cluster, node: &str) -> f64 {
    metric_present(&c.node_url(node), "node_sessions{role=\"primary\"}")
}

#[test]
fn a_draining_node_hands_its_sessions_over_under_load_and_is_stopped_with_nothing_lost() {
    let mut c = cluster(3, "");
    let load = Load::start(&c.lb_url(), 4, 6);
    load.go_on(150, "the load to warm up");
    assert!(
        load.served_by("n1") > 0,
        "n1 owns sessions before the drain"
    );

    c.spec.node_extra.insert(0, "drain = true".into());
    c.rewrite_config().unwrap();
    for n in ["n1", "n2", "n3"] {
        c.signal(n, libc::SIGHUP);
    }
    c.signal("lb", libc::SIGHUP);
    // `drained` is true only once the node drains (took the file) and owns nothing: no race with the reload.
    wait_until(Duration::from_secs(30), "n1 to say it is drained", || {
        c.health("n1")["drained"] == serde_json::json!(true)
    })
    .unwrap();
    assert_eq!(c.health("n1")["draining"], serde_json::json!(true));
    assert_eq!(
        metric_present(&c.node_url("n1"), "node_drain_sessions_left"),
        0.0
    );
    // The sessions gauge follows within its housekeeping period.
    wait_until(Duration::from_secs(5), "n1's primary gauge at 0", || {
        owned(&c, "n1") == 0.0
    })
    .unwrap();
    // The lb's health checks read the drain's progress too.
    wait_until(Duration::from_secs(10), "the lb to show n1 drained", || {
        status(&c.admin_url())["nodes"][0]["sessions_left"] == serde_json::json!(0)
    })
    .unwrap();
    assert!(metrics(&c.admin_url()).contains("lb_node_drain_sessions_left{node=\"n1\"} 0"));
    assert!(metrics(&c.admin_url()).contains("lb_node_drain_sessions_left{node=\"n2\"} -1"));
    let adopted: f64 = ["n2", "n3"]
        .iter()
        .map(|n| metric(&c.node_url(n), "node_sessions_adopted_total"))
        .sum();
    assert!(adopted > 0.0, "the others adopted n1's sessions");
    load.go_on(150, "the load to go on after the drain");
    assert_eq!(
        load.served_by("n1"),
        0,
        "the next answers came from the heirs"
    );

    // Stopped the hard way: every session has its owner and copy elsewhere.
    c.kill("n1");
    load.go_on(150, "the load to go on without n1");
    let lost = ["n2", "n3"]
        .iter()
        .map(|n| metric_present(&c.node_url(n), "sessions_lost_total"))
        .sum::<f64>();
    let errors = load.finish();
    assert!(errors.is_empty(), "{} errors: {errors:?}", errors.len());
    assert_eq!(lost, 0.0, "no session was lost");
}
