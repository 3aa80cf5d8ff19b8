//! Nodes alone (no balancer): takeover from the cookie, exactly-once retries, concurrency, bad cookies, expiry.

use std::collections::HashSet;
use std::time::Duration;

use cluster_tests::{cookie_pair, metric, wait_until, Cluster, ClusterSpec, User};

fn cluster() -> Cluster {
    Cluster::start(ClusterSpec::default()).expect("cluster starts")
}

fn counter(r: &cluster_tests::Reply) -> i64 {
    r.json()["value"]
        .as_i64()
        .unwrap_or_else(|| panic!("no value in {}", r.body))
}

#[test]
fn a_killed_primarys_session_is_recovered_exactly_by_every_other_node() {
    let mut c = cluster();
    let mut u = User::new();
    for i in 1..=7 {
        assert_eq!(counter(&u.incr(&c.node_url("n1"), "visits").unwrap()), i);
    }
    u.send(
        &c.node_url("n1"),
        "PATCH",
        "/session",
        Some(r#"{"cart":{"apple":3}}"#),
    )
    .unwrap();
    let cookie = u.cookie.clone().unwrap();
    let cfg = c.config();
    let (primary, _) = cookie_pair(&cfg, &cookie).unwrap();
    assert_eq!(primary, "n1");
    c.kill("n1");
    for other in ["n2", "n3"] {
        let mut v = User::new();
        v.cookie = Some(cookie.clone());
        let r = v.get(&c.node_url(other)).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        assert_eq!(j["data"]["visits"], 7, "{}", r.body);
        assert_eq!(j["data"]["cart"]["apple"], 3);
        assert_eq!(j["version"], 8);
        assert!(!r.stale);
        let (p, s) =
            cookie_pair(&cfg, v.cookie.as_ref().unwrap()).expect("re-minted cookie decodes");
        assert_ne!(p, "n1", "new cookie must not name the dead node");
        assert_ne!(s.as_deref(), Some("n1"));
    }
}

#[test]
fn sixty_four_concurrent_increments_through_different_nodes_apply_exactly_once() {
    let c = cluster();
    let mut u = User::new();
    u.incr(&c.node_url("n1"), "n").unwrap();
    let cookie = u.cookie.clone().unwrap();
    let urls: Vec<String> = ["n1", "n2", "n3"].iter().map(|n| c.node_url(n)).collect();
    let values: Vec<i64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let url = urls[i % 3].clone();
                let cookie = cookie.clone();
                s.spawn(move || {
                    let mut v = User::new();
                    v.cookie = Some(cookie);
                    let r = v.incr(&url, "n").unwrap();
                    assert_eq!(r.status, 200, "{}", r.body);
                    counter(&r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<i64> = values.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        64,
        "every increment saw its own value: {values:?}"
    );
    assert_eq!(distinct, (2..=65).collect::<HashSet<i64>>());
    let r = u.get(&c.node_url("n2")).unwrap();
    assert_eq!(r.json()["data"]["n"], 65);
}

#[test]
fn a_retried_request_id_is_applied_once_on_the_same_node_and_after_a_kill() {
    let mut c = cluster();
    let mut u = User::new();
    u.incr(&c.node_url("n1"), "n").unwrap();
    let rid = [("x-lb-request-id", "retry-test-1")];
    let first = u
        .send_with(&c.node_url("n1"), "POST", "/session/incr/n", None, &rid)
        .unwrap();
    assert_eq!(counter(&first), 2);
    let again = u
        .send_with(&c.node_url("n1"), "POST", "/session/incr/n", None, &rid)
        .unwrap();
    assert_eq!(again.body, first.body, "same id, same outcome");
    c.kill("n1");
    let after_kill = u
        .send_with(&c.node_url("n2"), "POST", "/session/incr/n", None, &rid)
        .unwrap();
    assert_eq!(after_kill.status, 200);
    assert_eq!(
        after_kill.body, first.body,
        "the replicated outcome is returned, not applied again"
    );
    assert_eq!(u.get(&c.node_url("n3")).unwrap().json()["data"]["n"], 2);
}

#[test]
fn bad_cookies_of_every_kind_start_a_fresh_session_never_an_error() {
    let c = cluster();
    let mut u = User::new();
    u.incr(&c.node_url("n1"), "n").unwrap();
    let good = u.cookie.clone().unwrap();
    let value = good.split_once('=').unwrap().1.to_string();
    let mut flipped = value.clone().into_bytes();
    flipped[30] = if flipped[30] == b'A' { b'B' } else { b'A' };
    let other_secret = {
        let mut cfg = c.config();
        cfg.cookie.current.secret = "some-other-secret-entirely".into();
        node::cookie::CookieCodec::new(&cfg.cookie).encode(&node::cookie::RoutingCookie {
            session: node::ids::SessionId(1),
            segment: 2,
            version: 3,
        })
    };
    let unknown_pair = {
        let cfg = c.config();
        node::cookie::CookieCodec::new(&cfg.cookie).encode(&node::cookie::RoutingCookie {
            session: node::ids::SessionId(77),
            segment: 12345,
            version: 1,
        })
    };
    let cases = [
        ("forged MAC", String::from_utf8(flipped).unwrap()),
        ("other secret", other_secret),
        ("unknown pair", unknown_pair),
        ("garbage", "%%%not-base64%%%".to_string()),
        ("truncated", value[..20].to_string()),
        ("oversize", "A".repeat(4000)),
        ("empty", String::new()),
    ];
    for (what, v) in cases {
        for node in ["n1", "n2", "n3"] {
            let mut b = User::new();
            b.cookie = Some(format!("SRVSESSION={v}"));
            let r = b.incr(&c.node_url(node), "n").unwrap();
            assert_eq!(r.status, 200, "{what} on {node}: {}", r.body);
            assert_eq!(counter(&r), 1, "{what}: a fresh session starts at 0");
            let fresh = b.cookie.clone().expect("a new cookie");
            assert_ne!(fresh, good);
        }
    }
    // The real session was not touched by any of it.
    assert_eq!(u.get(&c.node_url("n1")).unwrap().json()["data"]["n"], 1);
}

#[test]
fn bad_requests_get_clear_client_errors_and_change_nothing() {
    let c = cluster();
    let mut u = User::new();
    u.incr(&c.node_url("n1"), "n").unwrap();
    let url = c.node_url("n1");
    assert_eq!(
        u.send(&url, "PATCH", "/session", Some("{not json"))
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        u.send(&url, "PATCH", "/session", Some("[1,2]"))
            .unwrap()
            .status,
        400
    );
    u.send(&url, "PATCH", "/session", Some(r#"{"name":"x"}"#))
        .unwrap();
    assert_eq!(u.incr(&url, "name").unwrap().status, 409);
    assert_eq!(u.send(&url, "PUT", "/session", None).unwrap().status, 405);
    assert_eq!(u.send(&url, "GET", "/nowhere", None).unwrap().status, 404);
    let huge = format!("{{\"k\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_eq!(
        u.send(&url, "PATCH", "/session", Some(&huge))
            .unwrap()
            .status,
        413
    );
    let j = u.get(&url).unwrap().json();
    assert_eq!(j["data"]["n"], 1);
    assert_eq!(j["data"]["name"], "x");
    assert_eq!(j["version"], 2);
}

#[test]
fn a_deleted_session_is_gone_from_both_copies() {
    let c = cluster();
    let mut u = User::new();
    let j = u.get(&c.node_url("n1")).unwrap().json();
    let id = j["id"].as_str().unwrap().to_string();
    let secondary = j["secondary"].as_str().unwrap().to_string();
    let copy_url = format!("{}/_node/sessions/{id}", c.node_url(&secondary));
    assert_eq!(reqwest::blocking::get(&copy_url).unwrap().status(), 200);
    let deleted_cookie = u.cookie.clone().unwrap();
    let r = u
        .send(&c.node_url("n1"), "DELETE", "/session", None)
        .unwrap();
    assert_eq!(r.status, 204);
    assert!(u.cookie.is_none(), "the cookie is cleared");
    assert_eq!(reqwest::blocking::get(&copy_url).unwrap().status(), 404);
    // A client replaying the deleted session's cookie, on any node, gets a fresh session; nothing is lost.
    for n in ["n1", "n2", "n3"] {
        let mut replay = User::new();
        replay.cookie = Some(deleted_cookie.clone());
        let r = replay.get(&c.node_url(n)).unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.json()["id"], id.as_str());
    }
    assert_eq!(lost_total(&c), 0.0);
}

fn lost_total(c: &Cluster) -> f64 {
    ["n1", "n2", "n3"]
        .iter()
        .map(|n| metric(&c.node_url(n), "sessions_lost_total"))
        .sum()
}

#[test]
fn idle_expiry_removes_every_copy() {
    let c = Cluster::start(ClusterSpec {
        idle_timeout_s: 1,
        ..Default::default()
    })
    .expect("cluster");
    let mut u = User::new();
    let j = u.get(&c.node_url("n2")).unwrap().json();
    let id = j["id"].as_str().unwrap().to_string();
    let copies: Vec<String> = [
        "n2".to_string(),
        j["secondary"].as_str().unwrap().to_string(),
    ]
    .iter()
    .map(|n| format!("{}/_node/sessions/{id}", c.node_url(n)))
    .collect();
    for url in &copies {
        assert_eq!(reqwest::blocking::get(url).unwrap().status(), 200);
    }
    wait_until(Duration::from_secs(10), "both copies to expire", || {
        copies.iter().all(|url| {
            reqwest::blocking::get(url)
                .map(|r| r.status() == 404)
                .unwrap_or(false)
        })
    })
    .unwrap();
    // The expired session's cookie comes back: a fresh session, not a lost one.
    let r = u.get(&c.node_url("n1")).unwrap();
    assert_eq!(r.status, 200);
    assert_ne!(r.json()["id"], id.as_str());
    assert_eq!(lost_total(&c), 0.0);
}

#[test]
fn a_paused_primary_never_serves_or_acknowledges_stale_state_after_it_wakes() {
    let c = cluster();
    let mut u = User::new();
    for _ in 0..3 {
        u.incr(&c.node_url("n1"), "n").unwrap();
    }
    let old_cookie = u.cookie.clone().unwrap();
    c.signal("n1", libc::SIGSTOP);
    // Another node takes the session over while n1 sleeps.
    assert_eq!(counter(&u.incr(&c.node_url("n2"), "n").unwrap()), 4);
    assert_eq!(counter(&u.incr(&c.node_url("n3"), "n").unwrap()), 5);
    c.signal("n1", libc::SIGCONT);
    let mut old = User::new();
    old.cookie = Some(old_cookie.clone());
    let r = old.get(&c.node_url("n1")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["data"]["n"],
        5,
        "the woken primary must not answer from its stale copy"
    );
    let mut old = User::new();
    old.cookie = Some(old_cookie.clone());
    let w = old.incr(&c.node_url("n1"), "n").unwrap();
    assert_eq!(
        counter(&w),
        6,
        "a write with the old cookie through the woken node lands once, on the owner"
    );
    assert_eq!(u.get(&c.node_url("n2")).unwrap().json()["data"]["n"], 6);
}
