//! The balancer pins sessions by cookie, treats bad cookies as absent, and agrees with another balancer.

mod lb_support;

use cluster_tests::{cookie_pair, User};
use lb_support::*;

#[test]
fn two_hundred_requests_of_one_session_are_all_served_by_one_node() {
    let c = cluster(3, "");
    let lb = c.lb_url();
    let mut u = User::new();
    let mut served = std::collections::BTreeSet::new();
    for i in 1..=200 {
        let r = u.incr(&lb, "n").unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(value(&r), i);
        served.insert(r.served_by.clone().expect("X-Served-By"));
    }
    assert_eq!(served.len(), 1, "one session, one node: {served:?}");
    let (primary, _) =
        cookie_pair(&c.config(), u.cookie.as_deref().unwrap()).expect("a valid cookie");
    assert!(served.contains(&primary), "the cookie's primary serves it");
}

#[test]
fn new_sessions_are_spread_over_every_node() {
    let c = cluster(3, "");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let r = User::new().get(&c.lb_url()).unwrap();
        assert_eq!(r.status, 200);
        *seen.entry(r.served_by.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        3,
        "least_connections rotates ties over all nodes: {seen:?}"
    );
}

#[test]
fn forged_garbage_truncated_and_oversize_cookies_start_a_fresh_session_and_never_a_5xx() {
    let c = cluster(3, "");
    let lb = c.lb_url();
    let mut owner = User::new();
    owner.incr(&lb, "n").unwrap();
    let good = owner.cookie.clone().expect("a cookie was minted");
    let original_id = owner.get(&lb).unwrap().json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (name, cookie_value) = good.split_once('=').unwrap();
    let mut forged = cookie_value.as_bytes().to_vec();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let variants = [
        format!("{name}={forged}"),
        format!("{name}=garbage!!"),
        format!("{name}={}", &cookie_value[..cookie_value.len() / 2]),
        format!("{name}={}", "A".repeat(4000)),
        format!("{name}="),
        format!("{name}={cookie_value}{cookie_value}"),
        "unrelated=1".to_string(),
    ];
    for v in &variants {
        let mut u = user_with_cookie(v);
        let r = u.get(&lb).unwrap();
        assert!(r.status < 500, "{v:.40}: {} {}", r.status, r.body);
        assert_eq!(r.status, 200, "{v:.40}: {}", r.body);
        assert_ne!(
            r.json()["id"].as_str().unwrap(),
            original_id,
            "{v:.40} must not adopt the session"
        );
        assert!(
            r.set_cookie.is_some(),
            "{v:.40}: a fresh session gets a fresh cookie"
        );
        assert_eq!(data_or_zero(&r, "n"), 0);
    }
    // A head over the lb's cap is refused as such, not as a server error.
    let mut huge = user_with_cookie(&format!("{name}={}", "A".repeat(40_000)));
    assert_eq!(huge.get(&lb).unwrap().status, 431);
    // The real session is untouched by all of it.
    assert_eq!(value(&owner.incr(&lb, "n").unwrap()), 2);
}

fn data_or_zero(r: &cluster_tests::Reply, key: &str) -> i64 {
    r.json()["data"][key].as_i64().unwrap_or(0)
}

#[test]
fn a_client_supplied_request_id_never_reaches_a_node() {
    let c = cluster(3, "");
    let lb = c.lb_url();
    let mut u = User::new();
    let forged = [(node::REQUEST_ID_HEADER, "client-chosen-id")];
    let a = u
        .send_with(&lb, "POST", "/session/incr/n", None, &forged)
        .unwrap();
    let b = u
        .send_with(&lb, "POST", "/session/incr/n", None, &forged)
        .unwrap();
    assert_eq!((a.status, b.status), (200, 200));
    // Had the header gone through, the node would have answered the second as a replay of the first.
    assert_eq!((value(&a), value(&b)), (1, 2));
}

#[test]
fn node_reserved_paths_are_not_served_to_clients_through_the_lb() {
    let c = cluster(3, "");
    let lb = c.lb_url();
    let mut u = User::new();
    assert_eq!(u.incr(&lb, "n").unwrap().status, 200);
    let sid = u.send(&lb, "GET", "/session", None).unwrap().json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        "/_node/metrics",
        "/_node/health",
        &format!("/_node/sessions/{sid}"),
    ] {
        let r = u.send(&lb, "GET", path, None).unwrap();
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
    // The nodes still serve them on their own port.
    let direct = u
        .send(&c.node_url("n1"), "GET", "/_node/health", None)
        .unwrap();
    assert_eq!(direct.status, 200);
}

#[test]
fn two_balancers_with_one_config_route_every_cookie_alike() {
    let mut c = cluster(3, "");
    let lb2 = SecondLb::start(&mut c).unwrap();
    let mut users: Vec<User> = (0..30).map(|_| User::new()).collect();
    for u in &mut users {
        assert_eq!(u.incr(&c.lb_url(), "n").unwrap().status, 200);
    }
    for (i, u) in users.iter_mut().enumerate() {
        let a = u.incr(&c.lb_url(), "n").unwrap();
        let b = u.incr(&lb2.url, "n").unwrap();
        assert_eq!((a.status, b.status), (200, 200));
        assert_eq!(
            a.served_by, b.served_by,
            "user {i}: both balancers pick the same node"
        );
        assert_eq!((value(&a), value(&b)), (2, 3), "user {i}");
    }
}

#[test]
fn a_client_trickling_its_request_head_is_cut_off_at_the_header_deadline() {
    use std::io::{Read, Write};
    let c = cluster(1, "\n[lb.limits]\nheader_timeout_ms = 500\n");
    let mut s = std::net::TcpStream::connect(c.lb_listen).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    s.write_all(b"GET /session HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    // One header line every 100 ms keeps every single read short; only a total deadline ends it.
    for i in 0..100 {
        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("no answer is due before the head is complete"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "the lb kept a trickling connection open for {:?}",
        started.elapsed()
    );
    // Normal clients are unaffected.
    assert_eq!(User::new().get(&c.lb_url()).unwrap().status, 200);
}

#[test]
fn a_body_over_the_cap_is_refused_with_413() {
    let c = cluster(1, "\n[lb.limits]\nmax_body_bytes = 1000\n");
    let client = reqwest::blocking::Client::new();
    let big = format!("{{\"k\": \"{}\"}}", "x".repeat(2000));
    let r = client
        .patch(format!("{}/session", c.lb_url()))
        .body(big.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Without a declared length (chunked), the running count catches it.
    let chunks = vec![Ok::<_, std::io::Error>(big.into_bytes())];
    let body = reqwest::blocking::Body::new(std::io::Cursor::new(
        chunks.into_iter().next().unwrap().unwrap(),
    ));
    let r = client
        .patch(format!("{}/session", c.lb_url()))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
}
