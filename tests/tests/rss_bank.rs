//! The remote session-server bank (DESIGN §5.1, seeds 000, 001, 004): web nodes copy every session to a bank
//! member; a dead web node's sessions are fetched from the bank by the node the lb sends them to, a standby
//! first.

use std::collections::HashMap;
use std::time::Duration;

use cluster_tests::{cookie_pair, wait_until, Cluster, ClusterSpec, User};
use serde_json::Value;

/// n1 and n2 serve (`web`), n3 is the bank (`rss`), n4 is the `standby`.
fn bank_cluster() -> Cluster {
    Cluster::start(ClusterSpec {
        nodes: 4,
        lb: true,
        replication_extra: "topology = \"rss\"".into(),
        node_extra: HashMap::from([
            (2, "role = \"rss\"".to_string()),
            (3, "role = \"standby\"".to_string()),
        ]),
        ..ClusterSpec::default()
    })
    .expect("cluster starts")
}

#[test]
fn new_sessions_go_to_web_nodes_and_are_copied_to_the_bank_never_served_by_it() {
    let c = bank_cluster();
    let lb = c.lb_url();
    for _ in 0..12 {
        let mut u = User::new();
        let r = u.incr(&lb, "n").unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let served = r.served_by.clone().unwrap();
        assert!(
            served == "n1" || served == "n2",
            "a web node serves new sessions, not {served}"
        );
        let (primary, secondary) = cookie_pair(&c.config(), u.cookie.as_deref().unwrap()).unwrap();
        assert_eq!(
            (primary.as_str(), secondary.as_deref()),
            (served.as_str(), Some("n3"))
        );
    }
    let direct = User::new().incr(&c.node_url("n3"), "n").unwrap();
    assert_eq!(
        direct.status, 404,
        "a session server serves no sessions: {direct:?}"
    );
    let health: Value = reqwest::blocking::get(format!("{}/_node/health", c.node_url("n3")))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["role"], "rss");
    assert_eq!(
        health["sessions"], 12,
        "the bank holds a copy of every session"
    );
}

#[test]
fn a_killed_web_nodes_sessions_are_fetched_from_the_bank_by_the_standby_with_nothing_lost() {
    let mut c = bank_cluster();
    let lb = c.lb_url();
    let mut users: Vec<(User, i64)> = (0..8).map(|_| (User::new(), 0)).collect();
    for (u, n) in users.iter_mut() {
        for _ in 0..3 {
            let r = u.incr(&lb, "n").unwrap();
            assert_eq!(r.status, 200);
            *n += 1;
        }
    }
    let on_n1: Vec<usize> = users
        .iter()
        .enumerate()
        .filter(|(_, (u, _))| {
            cookie_pair(&c.config(), u.cookie.as_deref().unwrap())
                .unwrap()
                .0
                == "n1"
        })
        .map(|(i, _)| i)
        .collect();
    assert!(
        !on_n1.is_empty(),
        "least connections spreads new sessions over both web nodes"
    );
    c.kill("n1");
    for (i, (u, n)) in users.iter_mut().enumerate() {
        for _ in 0..3 {
            let r = u.incr(&lb, "n").unwrap();
            assert_eq!(r.status, 200, "user {i}: {r:?}");
            *n += 1;
            assert_eq!(
                r.json()["value"],
                *n,
                "user {i}: no increment lost or applied twice"
            );
            if on_n1.contains(&i) {
                assert_eq!(
                    r.served_by.as_deref(),
                    Some("n4"),
                    "the standby takes a dead node's sessions"
                );
            }
        }
    }
    for &i in &on_n1 {
        let cookie = users[i].0.cookie.clone().unwrap();
        let (primary, secondary) = cookie_pair(&c.config(), &cookie).unwrap();
        assert_eq!(
            (primary.as_str(), secondary.as_deref()),
            ("n4", Some("n3")),
            "re-minted"
        );
    }
    // The bank still holds every session, now for its new owner too.
    wait_until(
        Duration::from_secs(5),
        "the bank holds every session",
        || {
            reqwest::blocking::get(format!("{}/_node/health", c.node_url("n3")))
                .and_then(|r| r.json::<Value>())
                .is_ok_and(|h| h["sessions"] == 8)
        },
    )
    .unwrap();
}
