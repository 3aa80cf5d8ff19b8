//! The remote session-server bank (DESIGN §5.1, seeds 000, 001, 004): web nodes copy every session to a bank
//! member; a dead web node's sessions are fetched from the bank by the node the lb sends them to, a standby
//! first.

use std::time::Duration;

use cluster_tests::{cookie_pair, wait_until, Cluster, ClusterSpec, User};

/// n1 and n2 serve (`web`), n3 is the bank (`rss`), n4 is the `standby`.
fn bank_cluster() -> Cluster {
    Cluster::start(ClusterSpec::bank(&["web", "web", "rss", "standby"], 1)).expect("cluster starts")
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
    let health = c.health("n3");
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
    c.wait_held(
        "n3",
        8,
        Duration::from_secs(5),
        "the bank holds every session",
    )
    .unwrap();
}

/// `users` increment once each through `lb`; each must see its own count plus one.
fn one_more_each(lb: &str, users: &mut [(User, i64)]) {
    for (i, (u, n)) in users.iter_mut().enumerate() {
        let r = u.incr(lb, "n").unwrap();
        assert_eq!(r.status, 200, "user {i}: {r:?}");
        *n += 1;
        assert_eq!(
            r.json()["value"],
            *n,
            "user {i}: no increment lost or applied twice"
        );
    }
}

#[test]
fn a_dead_bank_members_sessions_are_re_copied_to_another_member_and_survive_their_web_node() {
    // n1, n2 web; n3, n4 the bank.
    let mut c = Cluster::start(ClusterSpec::bank(&["web", "web", "rss", "rss"], 1)).unwrap();
    let lb = c.lb_url();
    let mut users: Vec<(User, i64)> = (0..10).map(|_| (User::new(), 0)).collect();
    one_more_each(&lb, &mut users);
    assert_eq!(
        c.sessions_held("n3") + c.sessions_held("n4"),
        10,
        "one copy of each session in the bank"
    );
    c.kill("n3");
    c.wait_held(
        "n4",
        10,
        Duration::from_secs(10),
        "n4 holds a copy of every session",
    )
    .unwrap();
    // The proof: the web nodes die too, one after the other; every session is fetched from n4.
    c.kill("n1");
    one_more_each(&lb, &mut users);
    for (u, _) in &users {
        let (primary, secondary) = cookie_pair(&c.config(), u.cookie.as_deref().unwrap()).unwrap();
        assert_eq!((primary.as_str(), secondary.as_deref()), ("n2", Some("n4")));
    }
}

#[test]
fn a_bank_member_restarted_empty_is_refilled_before_its_web_node_dies() {
    let mut c = bank_cluster();
    let lb = c.lb_url();
    let mut users: Vec<(User, i64)> = (0..6).map(|_| (User::new(), 0)).collect();
    one_more_each(&lb, &mut users);
    c.kill("n3");
    // The only member is gone: sessions run unprotected meanwhile (counted), and keep serving.
    one_more_each(&lb, &mut users);
    let unprotected = |c: &Cluster| {
        ["n1", "n2"]
            .iter()
            .map(|n| cluster_tests::metric(&c.node_url(n), "node_sessions{role=\"unprotected\"}"))
            .sum::<f64>()
    };
    wait_until(
        Duration::from_secs(5),
        "every session counted unprotected",
        || unprotected(&c) == 6.0,
    )
    .unwrap();
    c.start_node("n3").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the restarted member is refilled",
        || c.sessions_held("n3") == 6 && unprotected(&c) == 0.0,
    )
    .unwrap();
    c.kill("n1");
    c.kill("n2");
    one_more_each(&lb, &mut users);
    for (u, _) in &users {
        let (primary, _) = cookie_pair(&c.config(), u.cookie.as_deref().unwrap()).unwrap();
        assert_eq!(
            primary, "n4",
            "the standby serves every session once both web nodes are dead"
        );
    }
}

#[test]
fn with_one_copy_a_session_whose_web_node_and_bank_member_both_died_is_lost_explicitly() {
    let mut c = bank_cluster();
    let lb = c.lb_url();
    let mut users: Vec<(User, i64)> = (0..8).map(|_| (User::new(), 0)).collect();
    one_more_each(&lb, &mut users);
    let on_n1 = users
        .iter()
        .filter(|(u, _)| {
            cookie_pair(&c.config(), u.cookie.as_deref().unwrap())
                .unwrap()
                .0
                == "n1"
        })
        .count();
    assert!(on_n1 > 0);
    c.kill("n3");
    c.kill("n1");
    let mut fresh = 0;
    for (u, n) in users.iter_mut() {
        let r = u.incr(&lb, "n").unwrap();
        assert_eq!(r.status, 200, "never a 5xx: {r:?}");
        *n += 1;
        if r.json()["value"] == 1 {
            fresh += 1;
        } else {
            assert_eq!(
                r.json()["value"],
                *n,
                "a session that survived lost nothing"
            );
        }
    }
    assert_eq!(
        fresh, on_n1,
        "exactly the dead web node's sessions start over"
    );
    let lost = cluster_tests::metric_present(&c.node_url("n4"), "sessions_lost_total");
    assert_eq!(lost as usize, on_n1, "and each is counted as lost");
}

#[test]
fn with_two_copies_a_web_node_and_a_bank_member_dying_together_lose_nothing() {
    // n1, n2 web; n3, n4 the bank, each session on both.
    let mut c = Cluster::start(ClusterSpec::bank(&["web", "web", "rss", "rss"], 2)).unwrap();
    let lb = c.lb_url();
    let mut users: Vec<(User, i64)> = (0..10).map(|_| (User::new(), 0)).collect();
    one_more_each(&lb, &mut users);
    one_more_each(&lb, &mut users);
    assert_eq!(
        (c.sessions_held("n3"), c.sessions_held("n4")),
        (10, 10),
        "every session on both members"
    );
    let named_n3 = users
        .iter()
        .filter(|(u, _)| {
            cookie_pair(&c.config(), u.cookie.as_deref().unwrap())
                .unwrap()
                .1
                .as_deref()
                == Some("n3")
        })
        .count();
    assert!(
        named_n3 > 0,
        "some cookies name n3, so their takeover must poll n4"
    );
    c.kill("n1");
    c.kill("n3");
    one_more_each(&lb, &mut users);
    let lost = cluster_tests::metric_present(&c.node_url("n2"), "sessions_lost_total");
    assert_eq!(lost, 0.0, "nothing lost");
}

#[test]
fn a_copy_left_behind_on_a_paused_bank_member_is_never_handed_out_over_a_current_one() {
    // n1 web, n2 standby; n3, n4, n5 the bank, each session on two of them. Ids are set so that a takeover
    // polls the bank in the order n4, n3, n5: the member left behind (n4) comes before the current one (n5).
    let id = |n: u64| format!("id = {}", (1u64 << 50) + n);
    let mut spec = ClusterSpec::bank(&["web", "standby", "rss", "rss", "rss"], 2);
    for (i, n) in [1_000_003, 2_000_029, 40_009, 3, 700_001]
        .into_iter()
        .enumerate()
    {
        spec.node_extra.entry(i).or_default().push_str(&id(n));
    }
    let mut c = Cluster::start(spec).unwrap();
    let lb = c.lb_url();
    let mut users: Vec<(User, i64)> = (0..10).map(|_| (User::new(), 0)).collect();
    for _ in 0..3 {
        one_more_each(&lb, &mut users);
    }
    // n4 pauses: its sessions' copies move to the other members, and n4 keeps what it had, now behind.
    c.signal("n4", libc::SIGSTOP);
    for _ in 0..7 {
        one_more_each(&lb, &mut users);
    }
    c.signal("n4", libc::SIGCONT);
    // The web node dies with the member the cookies name; the takeover polls n4 (behind) before the other
    // current member.
    let named = cookie_pair(&c.config(), users[0].0.cookie.as_deref().unwrap())
        .unwrap()
        .1
        .unwrap();
    assert_ne!(named, "n4", "the paused member was replaced");
    c.kill("n1");
    c.kill(&named);
    one_more_each(&lb, &mut users);
    for (i, (u, _)) in users.iter().enumerate() {
        let (primary, _) = cookie_pair(&c.config(), u.cookie.as_deref().unwrap()).unwrap();
        assert_eq!(primary, "n2", "user {i}: the standby owns it now");
    }
    let stale = cluster_tests::metric_present(&c.node_url("n2"), "sessions_stale_total");
    assert_eq!(stale, 0.0, "no copy older than its cookie was installed");
}

#[test]
fn a_bank_member_restarted_faster_than_a_heartbeat_can_miss_is_refilled_all_the_same() {
    let mut c = bank_cluster();
    let lb = c.lb_url();
    let mut users: Vec<(User, i64)> = (0..6).map(|_| (User::new(), 0)).collect();
    one_more_each(&lb, &mut users);
    one_more_each(&lb, &mut users);
    c.kill("n3");
    c.start_node("n3").unwrap();
    // Its new incarnation shows in the next heartbeat answer: the web nodes re-send every copy in full.
    c.wait_held(
        "n3",
        6,
        Duration::from_secs(10),
        "the restarted member is refilled",
    )
    .unwrap();
    c.kill("n1");
    c.kill("n2");
    one_more_each(&lb, &mut users);
}

#[test]
fn a_reload_that_changes_a_nodes_role_is_refused_and_the_node_keeps_serving() {
    let c = bank_cluster();
    let mut u = User::new();
    assert_eq!(u.incr(&c.node_url("n1"), "n").unwrap().status, 200);
    let good = std::fs::read_to_string(&c.config_path).unwrap();
    c.write_config(&good.replace("role = \"standby\"", "role = \"web\""))
        .unwrap();
    c.signal("n1", libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the refusal in the log", || {
        c.log("n1").contains("reload refused")
    })
    .unwrap();
    assert!(
        c.log("n1").contains("a node's role changed"),
        "{}",
        c.log("n1")
    );
    assert_eq!(u.incr(&c.node_url("n1"), "n").unwrap().json()["value"], 2);
}
