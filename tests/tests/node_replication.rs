//! Nodes alone (no balancer): sync and async replication under kills, secondary death, resync, and hostile
//! peers on the replication port.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use cluster_tests::{cookie_pair, metric, wait_until, Cluster, ClusterSpec, Reply, User};

fn counter(r: &Reply) -> i64 {
    r.json()["value"]
        .as_i64()
        .unwrap_or_else(|| panic!("no value in {}", r.body))
}

/// Sends one increment like a balancer that knows nothing would: the same request id on every try, the next
/// node on a connection error. Returns the acknowledged value.
fn incr_anywhere(u: &mut User, urls: &[String], start: usize, key: &str, rid: &str) -> i64 {
    for attempt in 0..(urls.len() * 4) {
        let url = &urls[(start + attempt) % urls.len()];
        if let Ok(r) = u.send_with(
            url,
            "POST",
            &format!("/session/incr/{key}"),
            None,
            &[("x-lb-request-id", rid)],
        ) {
            if r.status == 200 {
                return counter(&r);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no node acknowledged {rid}");
}

#[test]
fn sync_replication_loses_no_acknowledged_increment_when_a_node_is_killed_mid_way() {
    let mut c = Cluster::start(ClusterSpec::default()).unwrap();
    let urls: Vec<String> = ["n1", "n2", "n3"].iter().map(|n| c.node_url(n)).collect();
    let sessions = 20;
    let per_session = 100;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..sessions)
            .map(|i| {
                let urls = urls.clone();
                let tx = tx.clone();
                s.spawn(move || {
                    let mut u = User::new();
                    let mut last = 0;
                    for k in 0..per_session {
                        let v = incr_anywhere(&mut u, &urls, i, "n", &format!("s{i}-k{k}"));
                        assert_eq!(v, last + 1, "session {i}: increments continue exactly");
                        last = v;
                        if k == per_session / 2 {
                            let _ = tx.send(());
                        }
                    }
                    (u, last)
                })
            })
            .collect();
        // Kill n1 once every session is half-way.
        for _ in 0..sessions {
            rx.recv().unwrap();
        }
        c.kill("n1");
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (mut u, last) in results {
        assert_eq!(last, per_session as i64);
        let r = u.get(&urls[1]).unwrap();
        assert_eq!(r.json()["data"]["n"], per_session as i64, "{}", r.body);
    }
}

#[test]
fn async_replication_loss_after_a_kill_is_bounded_by_the_batch_and_flagged_stale() {
    // Long batches: updates made just before the kill are certainly still queued.
    let spec = ClusterSpec {
        mode: "async",
        max_delay_ms: 1500,
        ..Default::default()
    };
    let mut c = Cluster::start(spec).unwrap();
    let health = c.health("n1");
    assert_eq!(
        health["mode"], "async",
        "the health page spells the mode as the file does"
    );
    let mut u = User::new();
    let base = counter(&u.incr(&c.node_url("n1"), "n").unwrap());
    assert_eq!(base, 1);
    let j = u.get(&c.node_url("n1")).unwrap().json();
    let copy = format!(
        "{}/_node/sessions/{}",
        c.node_url(j["secondary"].as_str().unwrap()),
        j["id"].as_str().unwrap()
    );
    wait_until(
        Duration::from_secs(10),
        "the first batch to reach the copy",
        || {
            reqwest::blocking::get(&copy)
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|r| r.json::<serde_json::Value>().ok())
                .is_some_and(|v| v["version"] == 1)
        },
    )
    .unwrap();
    let mut acked = base;
    for _ in 0..10 {
        acked = counter(&u.incr(&c.node_url("n1"), "n").unwrap());
    }
    c.kill("n1");
    let r = u.get(&c.node_url("n2")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let got = r.json()["data"]["n"].as_i64().unwrap_or(0);
    assert!(got >= base, "what was flushed survives: {got} < {base}");
    assert!(
        got < acked,
        "with a 1.5 s batch delay the last writes were not yet copied"
    );
    assert!(
        r.stale,
        "an older copy than the cookie's version is flagged: got {got}, acked {acked}"
    );
}

#[test]
fn async_loss_after_a_kill_is_bounded_by_max_updates_when_the_delay_never_ends_a_batch() {
    // A one-minute delay: only a full batch (8 queued updates) sends copies within this test.
    let spec = ClusterSpec {
        mode: "async",
        max_delay_ms: 60_000,
        max_updates: 8,
        ..Default::default()
    };
    let mut c = Cluster::start(spec).unwrap();
    let mut u = User::new();
    let mut acked = 0;
    for _ in 0..40 {
        acked = counter(&u.incr(&c.node_url("n1"), "n").unwrap());
    }
    let secondary = u.get(&c.node_url("n1")).unwrap().json()["secondary"]
        .as_str()
        .unwrap()
        .to_string();
    c.kill("n1");
    let r = u.get(&c.node_url(&secondary)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let got = r.json()["data"]["n"].as_i64().unwrap_or(0);
    // Up to one batch queued and one in flight when n1 died.
    assert!(
        acked - got <= 2 * 8,
        "loss is bounded by max_updates: got {got} of {acked}"
    );
}

#[test]
fn after_the_secondary_dies_the_new_secondary_holds_full_copies() {
    let mut c = Cluster::start(ClusterSpec::default()).unwrap();
    let cfg = c.config();
    let mut users: Vec<User> = Vec::new();
    for _ in 0..6 {
        let mut u = User::new();
        for _ in 0..5 {
            u.incr(&c.node_url("n1"), "n").unwrap();
        }
        users.push(u);
    }
    // Kill the secondary of the first session; every session that had it must move to the survivor.
    let (_, secondary) = cookie_pair(&cfg, users[0].cookie.as_ref().unwrap()).unwrap();
    let dead = secondary.unwrap();
    let survivor = if dead == "n2" { "n3" } else { "n2" };
    c.kill(&dead);
    let ids: Vec<String> = users
        .iter_mut()
        .map(|u| {
            u.get(&c.node_url("n1")).unwrap().json()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "copies re-homed to the survivor",
        || {
            ids.iter().all(|id| {
                reqwest::blocking::get(format!("{}/_node/sessions/{id}", c.node_url(survivor)))
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            })
        },
    )
    .unwrap();
    c.kill("n1");
    for u in users.iter_mut() {
        let r = u.get(&c.node_url(survivor)).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["data"]["n"], 5, "{}", r.body);
        assert!(!r.stale);
    }
}

#[test]
fn a_secondary_that_restarted_empty_gets_the_full_state_back() {
    let spec = ClusterSpec {
        nodes: 2,
        ..Default::default()
    };
    let mut c = Cluster::start(spec).unwrap();
    let mut u = User::new();
    for _ in 0..3 {
        u.incr(&c.node_url("n1"), "n").unwrap();
    }
    c.kill("n2");
    c.start_node("n2").unwrap();
    // The copy on n2 is gone; the next deltas do not follow its version (none), so n1 resends the whole session.
    for _ in 0..2 {
        u.incr(&c.node_url("n1"), "n").unwrap();
    }
    let fulls = metric(&c.node_url("n1"), "node_replication_full_copies_total");
    assert!(fulls >= 2.0, "first copy plus the resync: {fulls}");
    c.kill("n1");
    let r = u.get(&c.node_url("n2")).unwrap();
    assert_eq!(r.json()["data"]["n"], 5, "{}", r.body);
}

#[test]
fn copies_bigger_than_one_replication_frame_in_all_are_sent_in_several_batches() {
    // Async, with a batch window long enough that every write below rides in one batch if nothing splits it:
    // 90 sessions of 200 KiB each are 18 MiB, over the 16 MiB frame limit.
    let spec = ClusterSpec {
        nodes: 2,
        mode: "async",
        max_delay_ms: 3000,
        max_updates: 1024,
        ..Default::default()
    };
    let mut c = Cluster::start(spec).unwrap();
    let n1 = c.node_url("n1");
    let blob = "b".repeat(200 * 1024);
    let mut users: Vec<User> = (0..90).map(|_| User::new()).collect();
    for (i, u) in users.iter_mut().enumerate() {
        let body = format!(r#"{{"i": {i}, "blob": "{blob}"}}"#);
        let r = u.send(&n1, "PATCH", "/session", Some(&body)).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    c.wait_held(
        "n2",
        90,
        Duration::from_secs(30),
        "n2 holds a copy of every session",
    )
    .unwrap();
    c.kill("n1");
    for (i, u) in users.iter_mut().enumerate().step_by(17) {
        let r = u.get(&c.node_url("n2")).unwrap();
        assert_eq!(r.json()["data"]["i"], i, "session {i}");
    }
    assert!(
        !c.log("n2").contains("over the"),
        "no frame was refused:\n{}",
        c.log("n2")
    );
}

#[test]
fn a_peer_with_the_wrong_secret_is_refused_and_logged() {
    let c = Cluster::start(ClusterSpec {
        nodes: 1,
        ..Default::default()
    })
    .unwrap();
    let repl = c.node("n1").repl;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(repl).await.unwrap();
        let key = node::connection::auth_key("not-the-cluster-secret-at-all");
        node::connection::client_handshake(stream, "intruder", &[key])
            .await
            .err()
    });
    assert!(
        matches!(err, Some(node::connection::LinkError::Auth { .. })),
        "{err:?}"
    );
    let ok = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(repl).await.unwrap();
        let key = node::connection::auth_key("test-secret-0123456789abcdef");
        node::connection::client_handshake(stream, "friend", &[key])
            .await
            .is_ok()
    });
    assert!(ok, "the right secret is accepted");
    wait_until(Duration::from_secs(5), "the refusal to be counted", || {
        metric(&c.node_url("n1"), "node_replication_auth_failures_total") >= 1.0
    })
    .unwrap();
    assert!(c.log("n1").contains("replication connection refused"));
}

#[test]
fn malformed_frames_on_the_replication_port_leave_the_node_and_its_sessions_unharmed() {
    let c = Cluster::start(ClusterSpec::default()).unwrap();
    let mut u = User::new();
    for _ in 0..3 {
        u.incr(&c.node_url("n1"), "n").unwrap();
    }
    for n in ["n1", "n2", "n3"] {
        let repl = c.node(n).repl;
        let garbage: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            u32::MAX.to_be_bytes().to_vec(),
            vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0u8; 3],
            (0..4096u32).map(|i| (i * 31 % 251) as u8).collect(),
        ];
        for g in garbage {
            if let Ok(mut s) = TcpStream::connect(repl) {
                let _ = s.write_all(&g);
            }
        }
        // After authenticating, garbage is still only that connection's problem.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            let stream = tokio::net::TcpStream::connect(repl).await.unwrap();
            let key = node::connection::auth_key("test-secret-0123456789abcdef");
            let (_r, mut w) = node::connection::client_handshake(stream, "fuzzer", &[key])
                .await
                .unwrap();
            let _ = w.get_mut().write_all(&[0, 0, 0, 4, 9, 9, 9, 9]).await;
            let _ = w.get_mut().write_all(&[0xff; 64]).await;
        });
    }
    for n in ["n1", "n2", "n3"] {
        cluster_tests::wait_http_ok(
            &format!("{}/_node/health", c.node_url(n)),
            Duration::from_secs(5),
        )
        .unwrap();
    }
    assert_eq!(counter(&u.incr(&c.node_url("n1"), "n").unwrap()), 4);
    let r = u.get(&c.node_url("n2")).unwrap();
    assert_eq!(r.json()["data"]["n"], 4);
}

#[test]
fn a_node_added_by_reload_becomes_a_secondary_that_can_recover_sessions() {
    let mut c = Cluster::start(ClusterSpec {
        nodes: 2,
        ..Default::default()
    })
    .unwrap();
    let mut u = User::new();
    for _ in 0..3 {
        u.incr(&c.node_url("n1"), "n").unwrap();
    }
    let added = c.add_node().unwrap();
    for n in ["n1", "n2"] {
        c.signal(n, libc::SIGHUP);
    }
    wait_until(Duration::from_secs(10), "n1 to log the reload", || {
        c.log("n1").contains("cluster file reloaded")
    })
    .unwrap();
    // With n2 gone, n3 is n1's only possible secondary: it receives the full copy.
    c.kill("n2");
    let id = u.get(&c.node_url("n1")).unwrap().json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(
        Duration::from_secs(10),
        "the copy on the added node",
        || {
            reqwest::blocking::get(format!("{}/_node/sessions/{id}", c.node_url(&added)))
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        },
    )
    .unwrap();
    c.kill("n1");
    let r = u.get(&c.node_url(&added)).unwrap();
    assert_eq!(r.json()["data"]["n"], 3, "{}", r.body);
}

#[test]
fn an_invalid_file_on_reload_is_refused_and_the_node_keeps_serving() {
    let c = Cluster::start(ClusterSpec {
        nodes: 2,
        ..Default::default()
    })
    .unwrap();
    let mut u = User::new();
    u.incr(&c.node_url("n1"), "n").unwrap();
    let good = std::fs::read_to_string(&c.config_path).unwrap();
    c.write_config(&good.replace("[replication]", "[replication]\nbogus_key = 1"))
        .unwrap();
    c.signal("n1", libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the refusal in the log", || {
        c.log("n1").contains("reload refused")
    })
    .unwrap();
    assert!(c.log("n1").contains("bogus_key"), "the error names the key");
    assert_eq!(counter(&u.incr(&c.node_url("n1"), "n").unwrap()), 2);
}

#[test]
fn with_min_copies_2_a_write_that_cannot_reach_a_copy_is_refused_not_acknowledged_alone() {
    let mut c = Cluster::start(ClusterSpec {
        nodes: 2,
        replication_extra: "min_copies = 2".into(),
        ..ClusterSpec::default()
    })
    .unwrap();
    let n1 = c.node_url("n1");
    let mut u = User::new();
    for i in 1..=3 {
        assert_eq!(
            counter(&u.incr(&n1, "n").unwrap()),
            i,
            "with its copy on n2"
        );
    }
    c.kill("n2");
    // The first write after the kill may be applied before n1 sees n2 gone (then it waits for a copy that never
    // comes); none is acknowledged, and once n2 is known dead each is refused before it changes anything.
    for i in 0..5 {
        let r = u.incr(&n1, "n").unwrap();
        assert_eq!(r.status, 503, "write {i} with no copy anywhere: {r:?}");
        assert!(r.headers.contains_key("retry-after"), "{r:?}");
    }
    let fresh = User::new().get(&n1).unwrap();
    assert_eq!(
        fresh.status, 503,
        "no session is made with no copy: {fresh:?}"
    );
    let read = u.get(&n1).unwrap();
    assert_eq!(read.status, 200, "reads go on: {read:?}");
    let shown = read.json()["data"]["n"].as_i64().unwrap();
    assert!(
        shown <= 4,
        "at most the one write applied before n2 was known dead: {shown}"
    );
    c.start_node("n2").unwrap();
    wait_until(
        Duration::from_secs(15),
        "writes are acknowledged again",
        || u.incr(&n1, "n").is_ok_and(|r| r.status == 200),
    )
    .unwrap();
}

/// Writes `send` to the replication port at `repl` and returns every byte that came back before the node
/// closed the connection (waiting at most 3 s).
fn exchange_raw(repl: std::net::SocketAddr, send: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut s = TcpStream::connect(repl).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(send).unwrap();
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

#[test]
fn a_peer_of_another_protocol_version_is_refused_by_name_and_the_node_stays_up() {
    use node::connection::{MAGIC, PROTOCOL_VERSION};
    use node::wire::{Body, Envelope};
    let c = Cluster::start(ClusterSpec {
        nodes: 1,
        ..Default::default()
    })
    .unwrap();
    let repl = c.node("n1").repl;
    // A release speaking version 1: it is told ours (so it can name the mismatch too), then the node closes.
    let mut v1 = MAGIC.to_vec();
    v1.extend(1u16.to_be_bytes());
    let back = exchange_raw(repl, &v1);
    let mut ours = MAGIC.to_vec();
    ours.extend(PROTOCOL_VERSION.to_be_bytes());
    assert_eq!(back, ours, "our preamble and nothing more");
    // A release from before the preamble opens with its Hello frame: nothing is read as a frame.
    let mut hello = bytes::BytesMut::new();
    let body = Body::Hello {
        node: "old".into(),
        nonce: [7; 32],
    };
    node::wire::encode(&Envelope { id: 0, body }, &mut hello);
    assert!(exchange_raw(repl, &hello).is_empty(), "closed unanswered");
    wait_until(Duration::from_secs(5), "both refusals logged", || {
        let log = c.log("n1");
        log.contains("speaks replication protocol version 1")
            && log.contains("of no version of ours")
    })
    .unwrap();
    assert!(metric(&c.node_url("n1"), "node_replication_auth_failures_total") >= 2.0);
    cluster_tests::wait_http_ok(
        &format!("{}/_node/health", c.node_url("n1")),
        Duration::from_secs(5),
    )
    .unwrap();
}

#[test]
fn a_frame_forged_after_the_handshake_is_refused_and_changes_nothing() {
    use node::wire::{Body, Envelope, Item};
    let c = Cluster::start(ClusterSpec::default()).unwrap();
    let mut u = User::new();
    for _ in 0..3 {
        u.incr(&c.node_url("n1"), "n").unwrap();
    }
    let r = u.get(&c.node_url("n1")).unwrap();
    let sid = u128::from_str_radix(r.json()["id"].as_str().unwrap(), 16).unwrap();
    let secondary = r.json()["secondary"].as_str().unwrap().to_string();
    let repl = c.node(&secondary).repl;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let forged = Envelope {
        id: 1,
        body: Body::Batch {
            from: node::ids::NodeId::new(1 << 50).unwrap(),
            items: vec![Item::Remove {
                sid: node::ids::SessionId(sid),
                epoch: 1 << 40,
            }],
        },
    };
    let answered = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let stream = tokio::net::TcpStream::connect(repl).await.unwrap();
        let key = node::connection::auth_key("test-secret-0123456789abcdef");
        let (mut r, mut w) = node::connection::client_handshake(stream, "forger", &[key])
            .await
            .unwrap();
        // Well-formed, after a real handshake, but without the connection's seal: what an on-path attacker
        // who cannot know the keys would inject into it.
        let mut frame = bytes::BytesMut::new();
        node::wire::encode(&forged, &mut frame);
        w.get_mut().write_all(&frame).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(3), r.next()).await;
        matches!(next, Ok(Ok(Some(_))))
    });
    assert!(!answered, "the forged batch got no answer");
    wait_until(
        Duration::from_secs(5),
        "the forged frame to be logged",
        || {
            c.log(&secondary)
                .contains("replication frame failed authentication")
        },
    )
    .unwrap();
    assert!(
        metric(
            &c.node_url(&secondary),
            "node_replication_frame_errors_total"
        ) >= 1.0
    );
    let copy = reqwest::blocking::get(format!(
        "{}/_node/sessions/{}",
        c.node_url(&secondary),
        r.json()["id"].as_str().unwrap()
    ))
    .unwrap();
    assert_eq!(copy.status(), 200, "the copy is still there");
    assert_eq!(counter(&u.incr(&c.node_url("n1"), "n").unwrap()), 4);
}
