//! The grapevine (DESIGN §5.1, seed 002): every member of a broadcast group holds every session of the group,
//! and any member answers any request: behind a balancer that knows nothing (round robin per request, here
//! the client itself), increments stay exact; a member killed loses nothing; a member restarted empty is
//! refilled by the group.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::{metric_present, wait_until, Cluster, ClusterSpec, User};

/// One user of a load: its client, the increments it had acknowledged, and what went wrong.
type Shared = Arc<Mutex<(User, i64, Vec<String>)>>;

/// Three members of one group (n1, n2, n3), `sync` mode, with the lb when `lb`.
fn group(lb: bool) -> Cluster {
    Cluster::start(ClusterSpec {
        lb,
        replication_extra: "topology = \"broadcast\"".into(),
        ..ClusterSpec::default()
    })
    .expect("cluster starts")
}

/// The members' URLs, for a client that goes round robin over them.
fn members(c: &Cluster) -> Vec<String> {
    ["n1", "n2", "n3"].iter().map(|n| c.node_url(n)).collect()
}

#[test]
fn round_robin_per_request_over_a_group_keeps_sequential_increments_exact() {
    let c = group(false);
    let urls = members(&c);
    let mut u = User::new();
    let mut served = Vec::new();
    for i in 0..30 {
        let r = u.incr(&urls[i % 3], "n").unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.json()["value"], i + 1, "request {i} at {}", urls[i % 3]);
        served.push(r.served_by.clone().unwrap());
    }
    // The owner is the session's sequencer: the other members forward to it.
    assert!(
        served.iter().all(|s| *s == served[0]),
        "one member serves the session: {served:?}"
    );
    wait_until(
        Duration::from_secs(10),
        "every member holds the session",
        || ["n1", "n2", "n3"].iter().all(|n| c.sessions_held(n) == 1),
    )
    .unwrap();
    // The owner's copies went out on its link to each member, and came back answered.
    let owner = &served[0];
    for peer in ["n1", "n2", "n3"].into_iter().filter(|p| p != owner) {
        for direction in ["sent", "received"] {
            let series = format!(
                "node_replication_bytes_total{{direction=\"{direction}\",peer=\"{peer}\"}}"
            );
            let bytes = metric_present(&c.node_url(owner), &series);
            assert!(bytes > 0.0, "{owner} {direction} no bytes to {peer}");
        }
    }
}

#[test]
fn sixty_four_parallel_increments_on_one_session_over_every_member_are_each_applied_once() {
    let c = group(false);
    let urls = members(&c);
    let mut first = User::new();
    assert_eq!(first.incr(&urls[0], "n").unwrap().status, 200);
    let cookie = first.cookie.clone();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let (url, cookie, failures) = (urls[i % 3].clone(), cookie.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut u = User::new();
                u.cookie = cookie;
                match u.incr(&url, "n") {
                    Ok(r) if r.status == 200 => {}
                    other => failures.lock().unwrap().push(format!("{i}: {other:?}")),
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    for url in &urls {
        let r = first.get(url).unwrap();
        assert_eq!(
            r.json()["data"]["n"],
            65,
            "read at {url}: each increment applied exactly once"
        );
    }
}

#[test]
fn a_member_killed_under_load_through_the_lb_loses_nothing_and_the_rest_hold_every_session() {
    const USERS: usize = 6;
    let mut c = group(true);
    let lb = c.lb_url();
    let counts: Vec<Shared> = (0..USERS)
        .map(|_| Arc::new(Mutex::new((User::new(), 0, Vec::new()))))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = counts
        .iter()
        .map(|slot| {
            let (slot, stop, lb) = (slot.clone(), stop.clone(), lb.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                for _ in 0..5000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || started.elapsed() > Duration::from_secs(60)
                    {
                        return;
                    }
                    let mut g = slot.lock().unwrap();
                    let (u, n, errors) = &mut *g;
                    match u.incr(&lb, "n") {
                        Ok(r) if r.status == 200 && r.json()["value"] == *n + 1 => *n += 1,
                        other => {
                            errors.push(format!("after {n}: {other:?}"));
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    let total = |counts: &[Shared]| -> i64 { counts.iter().map(|s| s.lock().unwrap().1).sum() };
    wait_until(
        Duration::from_secs(20),
        "30 increments before the kill",
        || total(&counts) >= 30,
    )
    .unwrap();
    c.kill("n1");
    let at_kill = total(&counts);
    wait_until(
        Duration::from_secs(30),
        "60 more increments after the kill",
        || total(&counts) >= at_kill + 60,
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    for (i, slot) in counts.iter().enumerate() {
        let g = slot.lock().unwrap();
        assert!(g.2.is_empty(), "user {i}: {:?}", g.2);
    }
    let mut held = Vec::new();
    for (i, slot) in counts.iter().enumerate() {
        let mut g = slot.lock().unwrap();
        let n = g.1;
        let r = g.0.get(&lb).unwrap().json();
        assert_eq!(r["data"]["n"], n, "user {i}: nothing lost or applied twice");
        assert!(r["version"].as_u64() > Some(0), "user {i}: {r}");
        held.push((r["id"].as_str().unwrap().to_string(), r["version"].clone()));
    }
    // After quiescence every live member holds the same version of every session.
    let copy_version = |node: &str, sid: &str| -> serde_json::Value {
        reqwest::blocking::get(format!("{}/_node/sessions/{sid}", c.node_url(node)))
            .and_then(|r| r.json::<serde_json::Value>())
            .map(|v| v["version"].clone())
            .unwrap_or_default()
    };
    wait_until(
        Duration::from_secs(10),
        "both live members hold every session at its last version",
        || {
            held.iter()
                .all(|(sid, v)| ["n2", "n3"].iter().all(|n| copy_version(n, sid) == *v))
        },
    )
    .unwrap();
}

#[test]
fn a_member_restarted_empty_is_refilled_by_the_group_and_serves_exact_counts() {
    let mut c = group(false);
    let urls = members(&c);
    let mut users: Vec<(User, i64)> = (0..5).map(|_| (User::new(), 0)).collect();
    for (i, (u, n)) in users.iter_mut().enumerate() {
        for k in 0..3 {
            let r = u.incr(&urls[(i + k) % 3], "n").unwrap();
            assert_eq!(r.status, 200);
            *n += 1;
        }
    }
    c.wait_held("n3", 5, Duration::from_secs(10), "n3 holds every session")
        .unwrap();
    c.kill("n3");
    c.start_node("n3").unwrap();
    c.wait_held(
        "n3",
        5,
        Duration::from_secs(20),
        "the group refills the restarted n3",
    )
    .unwrap();
    for (i, (u, n)) in users.iter_mut().enumerate() {
        let r = u.incr(&urls[2], "n").unwrap();
        assert_eq!(r.status, 200, "user {i}: {r:?}");
        *n += 1;
        assert_eq!(r.json()["value"], *n, "user {i} at the restarted n3");
    }
}

#[test]
fn a_member_paused_and_resumed_never_serves_a_read_or_acknowledges_a_write_that_is_behind() {
    let c = group(false);
    let urls = members(&c);
    let mut u = User::new();
    let first = u.incr(&urls[0], "n").unwrap();
    assert_eq!(
        first.served_by.as_deref(),
        Some("n1"),
        "made, and owned, at n1"
    );
    c.signal("n1", libc::SIGSTOP);
    let mut n = 1;
    for i in 0..10 {
        let r = u.incr(&urls[1 + i % 2], "n").unwrap();
        assert_eq!(r.status, 200, "while n1 is paused: {r:?}");
        n += 1;
        assert_eq!(r.json()["value"], n);
    }
    c.signal("n1", libc::SIGCONT);
    let read = u.get(&urls[0]).unwrap();
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(
        read.json()["data"]["n"],
        n,
        "the resumed n1 does not serve its old copy"
    );
    let write = u.incr(&urls[0], "n").unwrap();
    assert_eq!(write.json()["value"], n + 1, "nor write on it");
}

/// Starts HAProxy (as one of the cluster's processes) in front of the group, balancing every request round
/// robin with no stickiness at all; returns its URL once it accepts connections.
fn haproxy(c: &mut Cluster) -> String {
    let listen = c.unused_addr();
    let mut cfg = format!(
        "global\n  maxconn 256\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  \
         timeout server 30s\n\nfrontend fe\n  bind {listen}\n  default_backend group\n\n\
         backend group\n  balance roundrobin\n"
    );
    for n in &c.nodes {
        cfg.push_str(&format!("  server {} {}\n", n.name, n.http));
    }
    let file = c.dir.join("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    let program = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("haproxy is installed (bash .ci/setup installs it)");
    let file = file.display().to_string();
    c.start_process(
        "haproxy",
        std::path::Path::new(program),
        &["-f", &file, "-db"],
    )
    .expect("haproxy starts");
    wait_until(
        Duration::from_secs(10),
        "haproxy accepts connections",
        || std::net::TcpStream::connect(listen).is_ok(),
    )
    .unwrap();
    format!("http://{listen}")
}

#[test]
fn behind_haproxy_round_robin_every_increment_is_exact_and_applied_once() {
    let mut c = group(false);
    let url = haproxy(&mut c);
    let mut u = User::new();
    for i in 0..30 {
        let r = u.incr(&url, "n").unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.json()["value"], i + 1, "request {i}");
    }
    let cookie = u.cookie.clone();
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (url, cookie) = (url.clone(), cookie.clone());
            std::thread::spawn(move || {
                let mut u = User::new();
                u.cookie = cookie;
                u.incr(&url, "n").map(|r| r.status).unwrap_or(0)
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(u.get(&url).unwrap().json()["data"]["n"], 30 + 64);
    // HAProxy spread the requests: the members that do not own the session forwarded theirs.
    let forwarded: Vec<f64> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| cluster_tests::metric(&c.node_url(n), "node_forwards_total"))
        .collect();
    assert_eq!(
        forwarded.iter().filter(|f| **f > 0.0).count(),
        2,
        "two members forwarded to the owner: {forwarded:?}"
    );
}
