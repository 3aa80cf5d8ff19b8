//! Nodes die, stop and come back under the balancer: clients see no error and no lost or doubled update.

mod lb_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::{cookie_pair, wait_until, User};
use lb_support::*;

#[test]
fn killing_the_primary_mid_session_loses_no_increment() {
    let mut c = cluster(3, "");
    let lb = c.lb_url();
    let mut u = User::new();
    for i in 1..=20 {
        assert_eq!(value(&u.incr(&lb, "n").unwrap()), i);
    }
    let primary = u.incr(&lb, "n").unwrap().served_by.unwrap();
    c.kill(&primary);
    let mut retries_after_first = None;
    for i in 22..=60 {
        let r = u.incr(&lb, "n").unwrap();
        assert_eq!(r.status, 200, "request {i} after the kill: {}", r.body);
        assert_eq!(value(&r), i, "the counter continues exactly");
        assert_ne!(r.served_by.as_deref(), Some(primary.as_str()));
        let series = format!("lb_retries_total{{node=\"{primary}\",reason=\"connect\"}}");
        let now = sample(&metrics(&c.admin_url()), &series);
        // The dead node is tried at most by the first request after the kill, never again while it is down.
        match retries_after_first {
            None => retries_after_first = Some(now),
            Some(before) => assert_eq!(now, before, "the dead node was tried again"),
        }
    }
    let (p, s) = cookie_pair(&c.config(), u.cookie.as_deref().unwrap()).expect("a valid cookie");
    assert_ne!(p, primary, "the new cookie names a live primary");
    assert_ne!(s.as_deref(), Some(primary.as_str()), "and a live secondary");
    // Back up: it rises through health checks, and the session carries on wherever it lives now.
    c.start_node(&primary).unwrap();
    wait_until(
        Duration::from_secs(15),
        "the old primary to be healthy again",
        || node_healthy(&c.admin_url(), &primary),
    )
    .unwrap();
    for i in 61..=70 {
        let r = u.incr(&lb, "n").unwrap();
        assert_eq!((r.status, value(&r)), (200, i));
    }
}

#[test]
fn killing_a_node_while_fifty_sessions_increment_in_parallel_loses_and_doubles_nothing() {
    const USERS: usize = 50;
    const INCREMENTS: i64 = 30;
    let mut c = cluster(3, "");
    let lb = c.lb_url();
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..USERS)
        .map(|w| {
            let (lb, done, errors) = (lb.clone(), done.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut u = User::new();
                for i in 1..=INCREMENTS {
                    match u.incr(&lb, "n") {
                        Ok(r) if r.status == 200 && value(&r) == i => {}
                        Ok(r) => errors
                            .lock()
                            .unwrap()
                            .push(format!("user {w} step {i}: {} {}", r.status, r.body)),
                        Err(e) => errors
                            .lock()
                            .unwrap()
                            .push(format!("user {w} step {i}: {e}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let r = u.get(&lb).unwrap();
                (r.status, data(&r, "n"))
            })
        })
        .collect();
    wait_until(Duration::from_secs(60), "a third of the increments", || {
        done.load(Ordering::Relaxed) >= USERS * INCREMENTS as usize / 3
    })
    .unwrap();
    c.kill("n1");
    for (w, h) in workers.into_iter().enumerate() {
        let (status, n) = h.join().expect("worker finished");
        assert_eq!(
            (status, n),
            (200, INCREMENTS),
            "user {w}: every increment applied exactly once"
        );
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} client-visible errors, first: {:?}",
        errors.len(),
        errors.first()
    );
}

#[test]
fn a_stopped_primary_is_bypassed_within_fall_times_interval_and_never_serves_stale_state_after() {
    let c = cluster(3, "");
    // The bound: fall x interval + 1 s, from the config the balancer runs.
    let health = c.config().lb.health;
    let bound = health.interval * health.fall + Duration::from_secs(1);
    let lb = c.lb_url();
    let mut u = User::new();
    for i in 1..=5 {
        assert_eq!(value(&u.incr(&lb, "n").unwrap()), i);
    }
    let old_cookie = u.cookie.clone().unwrap();
    let primary = u.get(&lb).unwrap().served_by.unwrap();
    c.signal(&primary, libc::SIGSTOP);
    let stopped = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the balancer to mark the stopped node down",
        || !node_healthy(&c.admin_url(), &primary),
    )
    .unwrap();
    assert!(
        stopped.elapsed() <= bound,
        "marked down after {:?}, bound {bound:?}",
        stopped.elapsed()
    );
    for i in 6..=8 {
        let r = u.incr(&lb, "n").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(value(&r), i);
        assert_ne!(r.served_by.as_deref(), Some(primary.as_str()));
    }
    c.signal(&primary, libc::SIGCONT);
    wait_until(Duration::from_secs(15), "the old primary to rise", || {
        node_healthy(&c.admin_url(), &primary)
    })
    .unwrap();
    // A client still holding the old cookie is routed to the old primary: it must not see or ack state from
    // before the failover.
    // It is answered from the current owner: the latest state, never the old primary's copy.
    let mut stale = user_with_cookie(&old_cookie);
    let r = stale.get(&lb).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(data(&r, "n"), 8, "served by {:?}", r.served_by);
    let mut stale = user_with_cookie(&old_cookie);
    let r = stale.incr(&lb, "n").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        value(&r),
        9,
        "an increment on the old cookie builds on the latest state"
    );
    let r = u.get(&lb).unwrap();
    assert_eq!((r.status, data(&r, "n")), (200, 9));
}

#[test]
fn a_request_caught_on_a_node_that_stops_moves_as_soon_as_the_node_is_marked_down() {
    // A read timeout far beyond the test's patience: only the mark-down can free the request.
    let c = cluster(3, "\n[lb.limits]\nread_timeout_ms = 120000\n");
    let lb = c.lb_url();
    let mut u = User::new();
    for i in 1..=3 {
        assert_eq!(value(&u.incr(&lb, "n").unwrap()), i);
    }
    let primary = u.get(&lb).unwrap().served_by.unwrap();
    let cookie = u.cookie.clone().unwrap();
    c.signal(&primary, libc::SIGSTOP);
    // Sent at once, while the balancer still counts the node healthy: it reaches the stopped node and waits.
    let (tx, rx) = std::sync::mpsc::channel();
    let lb2 = lb.clone();
    std::thread::spawn(move || {
        let mut late = user_with_cookie(&cookie);
        let r = late.incr(&lb2, "n");
        let _ = tx.send((late, r));
    });
    let answer = rx.recv_timeout(Duration::from_secs(30));
    // Woken only after the answer (or after giving up on it): the node is still stopped when it comes.
    c.signal(&primary, libc::SIGCONT);
    let (mut late, r) = answer.expect("the request was still waiting on the stopped node");
    let r = r.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(value(&r), 4);
    assert_ne!(r.served_by.as_deref(), Some(primary.as_str()));
    let m = metrics(&c.admin_url());
    assert!(
        m.lines().any(
            |l| l.starts_with("lb_retries_total") && l.contains(&format!("node=\"{primary}\""))
        ),
        "the attempt on {primary} was cut and retried:\n{m}"
    );
    // Applied once: the stopped node, woken, does not add its buffered copy of the request.
    wait_until(Duration::from_secs(15), "the old primary to rise", || {
        node_healthy(&c.admin_url(), &primary)
    })
    .unwrap();
    let g = late.get(&lb).unwrap();
    assert_eq!((g.status, data(&g, "n")), (200, 4), "{}", g.body);
}

#[test]
fn with_every_node_down_the_balancer_answers_503_with_retry_after_and_resumes_when_one_returns() {
    let mut c = cluster(2, "");
    let lb = c.lb_url();
    assert_eq!(User::new().get(&lb).unwrap().status, 200);
    c.kill("n1");
    c.kill("n2");
    let r = User::new().get(&lb).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.headers.get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    c.start_node("n1").unwrap();
    wait_until(Duration::from_secs(15), "traffic to resume", || {
        User::new()
            .get(&lb)
            .map(|r| r.status == 200)
            .unwrap_or(false)
    })
    .unwrap();
    let r = User::new().get(&lb).unwrap();
    assert_eq!((r.status, r.served_by.as_deref()), (200, Some("n1")));
}

#[test]
fn failover_secondary_sends_a_dead_primarys_sessions_to_their_secondary() {
    let mut c = cluster(3, "failover = \"secondary\"");
    let lb = c.lb_url();
    let s = status(&c.admin_url());
    assert_eq!(
        (s["algorithm"].as_str(), s["failover"].as_str()),
        (Some("least_connections"), Some("secondary")),
        "/status spells settings as the file does"
    );
    let mut u = User::new();
    for i in 1..=3 {
        assert_eq!(value(&u.incr(&lb, "n").unwrap()), i);
    }
    let (primary, secondary) = cookie_pair(&c.config(), u.cookie.as_deref().unwrap()).unwrap();
    let secondary = secondary.expect("a replicated session has a secondary");
    c.kill(&primary);
    let r = u.incr(&lb, "n").unwrap();
    assert_eq!((r.status, value(&r)), (200, 4));
    assert_eq!(
        r.served_by.as_deref(),
        Some(secondary.as_str()),
        "the secondary takes over"
    );
}

#[test]
fn sigterm_stops_the_balancer_within_its_grace_period() {
    let mut c = cluster(1, "grace_period_s = 3");
    assert_eq!(User::new().get(&c.lb_url()).unwrap().status, 200);
    c.signal("lb", libc::SIGTERM);
    let st = c
        .wait_exit("lb", Duration::from_secs(3 + 2))
        .expect("the lb exits within the grace period");
    assert!(st.success(), "{st:?}");
}
