//! Redis as the session bank, through the real lb and nodes (DESIGN §5.1, issue 10 item 7): web nodes copy
//! every session to a real `redis-server` (or a 3-master Redis Cluster); a dead web node's sessions are claimed
//! from Redis by the standby with nothing lost or applied twice; a paused, killed or emptied Redis never costs
//! a request, only protection, which comes back by itself once Redis answers again.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_tests::redis::{RedisCluster, Server};
use cluster_tests::{
    bin, cookie_pair, metric, metric_present, wait_until, Cluster, ClusterSpec, User,
};

/// The name sessions' cookies give the Redis bank as their secondary.
const BANK: &str = node::config::BankConfig::NAME;

/// n1 and n2 serve (`web`), n3 is the `standby`; `urls` and `kind` name the Redis bank.
fn redis_cluster(urls: &[String], kind: &str) -> Cluster {
    Cluster::start(ClusterSpec::redis_bank(
        &["web", "web", "standby"],
        urls,
        kind,
    ))
    .expect("cluster starts")
}

/// A series summed over the web nodes n1 and n2 (0 where absent).
fn on_web_nodes(c: &Cluster, series: &str) -> f64 {
    ["n1", "n2"]
        .iter()
        .map(|n| metric(&c.node_url(n), series))
        .sum()
}

/// Sessions owned by the web nodes with no copy anywhere.
fn unprotected(c: &Cluster) -> f64 {
    on_web_nodes(c, "node_sessions{role=\"unprotected\"}")
}

/// Sessions owned by the web nodes with a copy in Redis.
fn copied_to_redis(c: &Cluster) -> f64 {
    on_web_nodes(c, &format!("node_copies{{peer=\"{BANK}\"}}"))
}

/// One user of a [`Load`]: its client (with its cookie), the increments it had acknowledged, and which node
/// served each, with the phase of the test it was sent in.
struct Run {
    user: User,
    count: i64,
    served: Vec<(usize, String)>,
}

impl Run {
    /// The node that served this user's first request: where its session was made.
    fn home(&self) -> &str {
        self.served
            .first()
            .map(|(_, n)| n.as_str())
            .expect("a first request")
    }

    /// The nodes that served requests sent in `phase`.
    fn served_in(&self, phase: usize) -> Vec<&str> {
        self.served
            .iter()
            .filter(|(p, _)| *p == phase)
            .map(|(_, n)| n.as_str())
            .collect()
    }
}

/// `users` new users each make a session through `lb` and increment it three times, one after the other.
fn warm_up(lb: &str, users: usize) -> Vec<Run> {
    let mut runs: Vec<Run> = (0..users)
        .map(|_| Run {
            user: User::new(),
            count: 0,
            served: Vec::new(),
        })
        .collect();
    for _ in 0..3 {
        for (i, run) in runs.iter_mut().enumerate() {
            let r = run.user.incr(lb, "n").unwrap();
            run.count += 1;
            assert_eq!(
                (r.status, r.json()["value"].as_i64()),
                (200, Some(run.count)),
                "user {i}: {r:?}"
            );
            run.served.push((0, r.served_by.unwrap_or_default()));
        }
    }
    runs
}

/// Every session is counted as copied to Redis by the web nodes, none unprotected (asked with no request
/// running: a session busy at the moment the gauges are taken is left out of them).
fn wait_every_session_in_redis(c: &Cluster, users: usize) {
    wait_until(
        Duration::from_secs(10),
        "the web nodes to count a copy in Redis of every session",
        || copied_to_redis(c) == users as f64 && unprotected(c) == 0.0,
    )
    .unwrap();
}

/// Users, one thread each, incrementing their own session's counter through the lb until stopped. Every answer
/// must be a 200 whose value is the user's count plus one; anything else is an error and ends that user.
struct Load {
    stop: Arc<AtomicBool>,
    /// Bumped by the test after each event (a kill, a pause); each request records the phase it was sent in.
    phase: Arc<AtomicUsize>,
    /// Increments acknowledged, per user.
    counts: Arc<Vec<AtomicUsize>>,
    errors: Arc<Mutex<Vec<String>>>,
    workers: Vec<JoinHandle<Run>>,
}

impl Load {
    fn start(lb: &str, runs: Vec<Run>) -> Load {
        let users = runs.len();
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new((0..users).map(|_| AtomicUsize::new(0)).collect());
        let errors = Arc::new(Mutex::new(Vec::new()));
        let workers = runs
            .into_iter()
            .enumerate()
            .map(|(w, mut run)| {
                let (lb, stop, phase, counts, errors) = (
                    lb.to_string(),
                    stop.clone(),
                    phase.clone(),
                    counts.clone(),
                    errors.clone(),
                );
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(60);
                    for _ in 0..5000 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > until {
                            break;
                        }
                        let sent_in = phase.load(Ordering::SeqCst);
                        let step = run.count + 1;
                        match run.user.incr(&lb, "n") {
                            Ok(r) if r.status == 200 && r.json()["value"] == step => {
                                run.count = step;
                                run.served.push((sent_in, r.served_by.unwrap_or_default()));
                                counts[w].fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => {
                                errors.lock().unwrap().push(format!(
                                    "user {w} increment {step} (phase {sent_in}): {} from {:?}: {}",
                                    r.status, r.served_by, r.body
                                ));
                                break;
                            }
                            Err(e) => {
                                errors.lock().unwrap().push(format!(
                                    "user {w} increment {step} (phase {sent_in}): {e}"
                                ));
                                break;
                            }
                        }
                    }
                    run
                })
            })
            .collect();
        Load {
            stop,
            phase,
            counts,
            errors,
            workers,
        }
    }

    /// Starts the next phase: requests sent from now on are recorded in it.
    fn next_phase(&self) {
        self.phase.fetch_add(1, Ordering::SeqCst);
    }

    fn counts(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    /// Waits until every user has `more` increments acknowledged past `since` (a [`Load::counts`]); fails
    /// at once, with the errors, when a user stopped on one.
    fn wait_each(&self, since: &[usize], more: usize, what: &str) {
        wait_until(Duration::from_secs(30), what, || {
            let errors = self.errors.lock().unwrap();
            assert!(errors.is_empty(), "while waiting for {what}: {errors:?}");
            self.counts()
                .iter()
                .zip(since)
                .all(|(now, then)| *now >= then + more)
        })
        .unwrap();
    }

    /// Stops every user; returns their runs and every error seen.
    fn finish(self) -> (Vec<Run>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let runs = self
            .workers
            .into_iter()
            .map(|w| w.join().expect("load worker"))
            .collect();
        let errors = Arc::try_unwrap(self.errors).unwrap().into_inner().unwrap();
        (runs, errors)
    }
}

fn assert_no_errors(errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{} requests failed or counted wrong, first: {:?}",
        errors.len(),
        errors.first()
    );
}

/// Every run increments once more through `lb`: a 200 with its count plus one, served by `by` when given.
fn one_more_each(lb: &str, runs: &mut [Run], by: Option<&str>) {
    for (i, run) in runs.iter_mut().enumerate() {
        let r = run.user.incr(lb, "n").unwrap();
        assert_eq!(r.status, 200, "user {i}: never a 5xx: {r:?}");
        run.count += 1;
        assert_eq!(
            r.json()["value"],
            run.count,
            "user {i}: no increment lost or applied twice"
        );
        if let Some(by) = by {
            assert_eq!(r.served_by.as_deref(), Some(by), "user {i}");
        }
    }
}

/// The primary and secondary a run's cookie names.
fn pair_of(c: &Cluster, run: &Run) -> (String, Option<String>) {
    cookie_pair(&c.config(), run.user.cookie.as_deref().expect("a cookie")).expect("a valid cookie")
}

/// `users` users increment through the lb while n1 is killed -9; returns their runs once each made ten more
/// increments after the kill. Checks: no request failed, no count went wrong, n1's sessions moved to the
/// standby n3 (served by it from the kill on, cookies re-minted for it), n2's stayed, nothing was counted lost.
fn kill_a_web_node_under_load(c: &mut Cluster, users: usize) -> Vec<Run> {
    let lb = c.lb_url();
    let runs = warm_up(&lb, users);
    wait_every_session_in_redis(c, users);
    let load = Load::start(&lb, runs);
    load.wait_each(
        &vec![0; users],
        3,
        "every user to make three increments under load",
    );
    c.kill("n1");
    load.next_phase();
    let at_kill = load.counts();
    load.wait_each(
        &at_kill,
        10,
        "every user to make ten increments after the kill",
    );
    let (mut runs, errors) = load.finish();
    assert_no_errors(&errors);

    let homes: Vec<&str> = runs.iter().map(Run::home).collect();
    assert!(
        homes.iter().all(|h| *h == "n1" || *h == "n2"),
        "web nodes make new sessions, never the standby: {homes:?}"
    );
    assert!(
        homes.contains(&"n1") && homes.contains(&"n2"),
        "least connections spreads sessions over both web nodes: {homes:?}"
    );
    for (i, run) in runs.iter().enumerate() {
        // A request in flight at the kill may already be answered by the standby.
        let before = run.served_in(0);
        let after = run.served_in(1);
        let (moved_to, may_serve_before) = match run.home() {
            "n1" => ("n3", ["n1", "n3"]),
            _ => ("n2", ["n2", "n2"]),
        };
        assert!(
            before.iter().all(|n| may_serve_before.contains(n)),
            "user {i} (made on {}) before the kill: {before:?}",
            run.home()
        );
        assert!(
            !after.is_empty() && after.iter().all(|n| *n == moved_to),
            "user {i} (made on {}) after the kill, all on {moved_to}: {after:?}",
            run.home()
        );
        assert_eq!(
            pair_of(c, run),
            (moved_to.to_string(), Some(BANK.to_string())),
            "user {i}: the cookie names its live owner and Redis as its copy"
        );
    }
    // Their counts read back exactly, through the lb.
    for (i, run) in runs.iter_mut().enumerate() {
        let r = run.user.get(&lb).unwrap();
        assert_eq!(r.status, 200, "user {i}: {r:?}");
        assert_eq!(
            r.json()["data"]["n"],
            run.count,
            "user {i}: the session's count"
        );
    }
    for n in ["n2", "n3"] {
        let lost = metric_present(&c.node_url(n), "sessions_lost_total");
        assert_eq!(lost, 0.0, "{n} lost no session");
    }
    runs
}

#[test]
fn a_web_node_killed_under_load_has_its_sessions_claimed_from_redis_by_the_standby_exactly() {
    let server = Server::start();
    let mut c = redis_cluster(&[server.url()], "server");
    let runs = kill_a_web_node_under_load(&mut c, 8);
    assert_eq!(
        server.cli(&["DBSIZE"]),
        runs.len().to_string(),
        "Redis holds one key per session"
    );
    wait_until(
        Duration::from_secs(10),
        "the standby to count a copy in Redis of every session it claimed",
        || {
            let claimed = runs.iter().filter(|r| r.home() == "n1").count();
            metric(
                &c.node_url("n3"),
                &format!("node_copies{{peer=\"{BANK}\"}}"),
            ) == claimed as f64
        },
    )
    .unwrap();
}

/// `users` sessions, every one copied to Redis, incrementing under load; returns the load, still running.
fn load_with_every_session_in_redis(c: &Cluster, users: usize) -> Load {
    let runs = warm_up(&c.lb_url(), users);
    wait_every_session_in_redis(c, users);
    let load = Load::start(&c.lb_url(), runs);
    load.wait_each(
        &vec![0; users],
        3,
        "every user to make three increments under load",
    );
    load
}

/// Users keep incrementing while Redis is unreachable (it was just paused or killed): every session, each
/// touched meanwhile, is counted unprotected and keeps serving. Stops the load while Redis is still
/// unreachable, so that what Redis holds afterwards can only come from the re-copy; returns the runs.
fn serve_unprotected_until_stopped(c: &Cluster, load: Load, users: usize) -> Vec<Run> {
    load.next_phase();
    let at_loss = load.counts();
    wait_until(
        Duration::from_secs(20),
        "sessions to be counted unprotected while Redis does not answer",
        || unprotected(c) > 0.0,
    )
    .unwrap();
    load.wait_each(
        &at_loss,
        5,
        "every user to make five increments with Redis unreachable",
    );
    let (runs, errors) = load.finish();
    assert_no_errors(&errors);
    wait_until(
        Duration::from_secs(10),
        "every session counted unprotected, none as copied to the Redis that does not answer",
        || unprotected(c) == users as f64 && copied_to_redis(c) == 0.0,
    )
    .unwrap();
    runs
}

/// Both web nodes die: the standby claims every session from Redis, each with its exact count.
fn every_session_survives_both_web_nodes(c: &mut Cluster, runs: &mut [Run]) {
    c.kill("n1");
    c.kill("n2");
    one_more_each(&c.lb_url(), runs, Some("n3"));
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(
            pair_of(c, run),
            ("n3".to_string(), Some(BANK.to_string())),
            "user {i}"
        );
    }
    let lost = metric_present(&c.node_url("n3"), "sessions_lost_total");
    assert_eq!(lost, 0.0, "nothing lost");
}

#[test]
fn a_paused_redis_costs_no_request_and_sessions_are_re_copied_when_it_resumes() {
    const USERS: usize = 6;
    let server = Server::start();
    let mut c = redis_cluster(&[server.url()], "server");
    let load = load_with_every_session_in_redis(&c, USERS);
    server.signal(libc::SIGSTOP);
    let mut runs = serve_unprotected_until_stopped(&c, load, USERS);
    server.signal(libc::SIGCONT);
    wait_until(
        Duration::from_secs(20),
        "every session re-copied once Redis answers heartbeats again",
        || unprotected(&c) == 0.0 && copied_to_redis(&c) == USERS as f64,
    )
    .unwrap();
    every_session_survives_both_web_nodes(&mut c, &mut runs);
}

#[test]
fn a_redis_killed_and_restarted_empty_costs_no_request_and_is_refilled_before_the_web_nodes_die() {
    const USERS: usize = 6;
    let mut server = Server::start();
    let (ip, port) = (server.ip, server.port);
    let mut c = redis_cluster(&[server.url()], "server");
    let load = load_with_every_session_in_redis(&c, USERS);
    server.kill();
    let mut runs = serve_unprotected_until_stopped(&c, load, USERS);
    // A new server without persistence: empty, and filled only by the web nodes' re-copy below.
    let server = Server::start_on(ip, port, &[]);
    wait_until(
        Duration::from_secs(20),
        "every session re-copied into the restarted, empty Redis",
        || {
            unprotected(&c) == 0.0
                && copied_to_redis(&c) == USERS as f64
                && server.cli(&["DBSIZE"]) == USERS.to_string()
        },
    )
    .unwrap();
    every_session_survives_both_web_nodes(&mut c, &mut runs);
}

#[test]
fn with_a_redis_cluster_sessions_spread_over_the_masters_and_a_killed_web_node_loses_nothing() {
    const USERS: usize = 12;
    let redis = RedisCluster::start();
    let mut c = redis_cluster(&redis.urls(), "cluster");
    let runs = kill_a_web_node_under_load(&mut c, USERS);
    assert_eq!(
        redis.keys(),
        runs.len(),
        "one key per session across the masters"
    );
    let holding: Vec<String> = redis.masters.iter().map(|m| m.cli(&["DBSIZE"])).collect();
    assert!(
        holding.iter().filter(|n| *n != "0").count() > 1,
        "sessions' keys spread over the masters by slot: {holding:?}"
    );
}

/// Starts `node --config FILE --name n1` on the file `spec` renders, without Redis; returns its log once it
/// exited, failing if it exits 0 or keeps running.
fn node_refuses(spec: ClusterSpec) -> String {
    let mut c = Cluster::prepare(spec).expect("a cluster file");
    let config = c.config_path.clone();
    let args = [
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("n1"),
    ];
    c.start_process("check", &bin("node"), &args).unwrap();
    let status = c
        .wait_exit("check", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the node started on a file it must refuse:\n{}",
                c.log("check")
            )
        });
    let log = c.log("check");
    assert!(
        !status.success(),
        "the node exits non-zero: {status:?}\n{log}"
    );
    log
}

#[test]
fn the_node_refuses_a_redis_bank_beside_session_servers_and_a_bank_outside_the_rss_topology() {
    let ip = cluster_tests::loopback_ip();
    let url = format!("redis://{ip}:{}", cluster_tests::free_port(ip));
    let with_rss = ClusterSpec::redis_bank(
        &["web", "rss", "standby"],
        std::slice::from_ref(&url),
        "server",
    );
    let log = node_refuses(with_rss);
    assert!(
        log.contains("`nodes[1].role`") && log.contains("[replication.bank]"),
        "the error names the rss node's role and the bank: {log}"
    );

    let in_a_pair = ClusterSpec {
        replication_extra: format!(
            "topology = \"pair\"\n\n[replication.bank]\nredis = [{url:?}]\n"
        ),
        ..ClusterSpec::redis_bank(&["web", "web", "web"], &[url], "server")
    };
    let log = node_refuses(in_a_pair);
    assert!(
        log.contains("`replication.bank`") && log.contains("topology = \"rss\""),
        "the error names the bank and the topology it needs: {log}"
    );
}

#[test]
fn a_session_ended_while_redis_was_paused_does_not_come_back_when_its_web_node_dies() {
    let server = Server::start();
    let mut c = redis_cluster(&[server.url()], "server");
    let lb = c.lb_url();
    let mut u = User::new();
    for _ in 0..3 {
        assert_eq!(u.incr(&lb, "n").unwrap().status, 200);
    }
    let home = u.get(&lb).unwrap().served_by.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the session is copied to Redis",
        || copied_to_redis(&c) == 1.0,
    )
    .unwrap();
    server.signal(libc::SIGSTOP);
    wait_until(
        Duration::from_secs(20),
        "the session runs unprotected while Redis is paused",
        || unprotected(&c) == 1.0,
    )
    .unwrap();
    let cookie = u.cookie.clone();
    let ended = u.send(&lb, "DELETE", "/session", None).unwrap();
    assert!((200..300).contains(&ended.status), "{ended:?}");
    server.signal(libc::SIGCONT);
    // Redis still holds the copy from before the pause until the web node tells it the session ended.
    wait_until(
        Duration::from_secs(20),
        "Redis holds the session's tombstone",
        || {
            let keys = server.cli(&["KEYS", "srv:s:*"]);
            !keys.is_empty() && server.cli(&["HEXISTS", &keys, "x"]) == "1"
        },
    )
    .unwrap();
    c.kill(&home);
    u.cookie = cookie;
    let again = u.incr(&lb, "n").unwrap();
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(
        again.json()["value"],
        1,
        "a fresh session: the logout was not undone"
    );
    let served = again.served_by.clone().unwrap();
    assert_eq!(
        metric_present(&c.node_url(&served), "sessions_lost_total"),
        0.0,
        "an ended session is not counted as lost"
    );
}
