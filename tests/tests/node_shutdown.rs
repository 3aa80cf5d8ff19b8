//! A planned stop loses nothing: SIGTERM on a node finishes its requests in flight and flushes every queued
//! copy before it exits, even in `async` mode with long batches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::{wait_until, Cluster, ClusterSpec, User};

#[test]
fn sigterm_under_async_load_flushes_every_acknowledged_update_and_exits_within_the_grace_period() {
    // Batches wait up to 2 s to fill: without the flush, the last writes before the stop are still queued.
    let spec = ClusterSpec {
        mode: "async",
        max_delay_ms: 2000,
        ..Default::default()
    };
    let mut c = Cluster::start(spec).unwrap();
    let n1 = c.node_url("n1");
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    // Four users, each with a session owned by n1, increment as fast as n1 answers until it stops answering.
    let users: Vec<_> = (0..4)
        .map(|_| {
            let (n1, stop, acks) = (n1.clone(), stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let mut u = User::new();
                let mut acked = 0i64;
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    match u.incr(&n1, "n") {
                        Ok(r) if r.status == 200 => {
                            acked = r.json()["value"].as_i64().unwrap();
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => panic!("n1 answered {} while stopping: {}", r.status, r.body),
                        // Refused or closed: n1 stopped accepting. Nothing was applied for this one.
                        Err(_) if stop.load(Ordering::SeqCst) => break,
                        Err(e) => panic!("n1 failed before the stop: {e}"),
                    }
                }
                (u, acked)
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "the users to get 200 increments acknowledged",
        || acks.load(Ordering::SeqCst) >= 200,
    )
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    c.signal("n1", libc::SIGTERM);
    let status = c
        .wait_exit("n1", Duration::from_secs(20))
        .expect("n1 exits after SIGTERM");
    assert!(status.success(), "a graceful stop exits 0: {status:?}");

    for h in users {
        let (mut u, acked) = h.join().unwrap();
        assert!(
            acked > 0,
            "every user got increments acknowledged before the stop"
        );
        let r = u.get(&c.node_url("n2")).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.json()["data"]["n"].as_i64(),
            Some(acked),
            "every acknowledged increment survived the stop, none twice"
        );
        assert!(
            !r.stale,
            "the recovered copy is as new as the client's cookie"
        );
    }
    // Within the 10 s grace period as the node itself measures it: it says so when it runs out.
    let log = c.log("n1");
    assert!(
        log.contains("node stopped") && !log.contains("at the end of the grace period"),
        "n1 finished its requests and confirmed every copy within its grace period:\n{log}"
    );
}
