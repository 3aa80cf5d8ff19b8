//! Rotating the cluster secret by reload, under load (issue 12): nodes and lb take a new `[cluster] secret`
//! with the old one as `previous_secret` and as a previous cookie key; replication keeps working across
//! nodes that have and have not reloaded yet; cookies signed with the old key keep their session until the
//! old key is removed, and start fresh after.

mod lb_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::{metric, wait_until, Cluster, ClusterSpec, User};
use lb_support::*;

const OLD: &str = "test-secret-0123456789abcdef";
const NEW: &str = "a-brand-new-secret-9876543210";

/// Three nodes and the lb, node ids written out (as a rotation needs: derived ids follow the secret).
fn pinned_cluster() -> Cluster {
    let mut spec = ClusterSpec {
        lb: true,
        ..ClusterSpec::default()
    };
    for i in 0..3 {
        let id = node::ids::NodeId::derive(&format!("n{}", i + 1), OLD).get();
        spec.node_extra.insert(i, format!("id = {id}"));
    }
    Cluster::start(spec).unwrap()
}

/// The rotation's three files, from the `original`: the `Phase` of a rotation.
#[derive(Clone, Copy)]
enum Phase {
    /// The new key is accepted for cookies (as key 2), not yet used: a node still on the old file must read
    /// what a node on the next file mints.
    Announce,
    /// The new secret signs and proves; the old one is still accepted (from peers, and as cookie key 1).
    Switch,
    /// The old secret is gone.
    Done,
}

fn rotated(original: &str, phase: Phase) -> String {
    assert!(
        !original.contains("[cookie]"),
        "the harness writes no [cookie] table: {original}"
    );
    let key = |id: u8, secret: &str| {
        format!("\n[[cookie.previous_keys]]\nid = {id}\nsecret = \"{secret}\"\n")
    };
    let (secrets, cookie) = match phase {
        Phase::Announce => (format!("secret = \"{OLD}\""), key(2, NEW)),
        Phase::Switch => (
            format!("secret = \"{NEW}\"\nprevious_secret = \"{OLD}\""),
            format!("\n[cookie]\nkey_id = 2\n{}", key(1, OLD)),
        ),
        Phase::Done => (
            format!("secret = \"{NEW}\""),
            "\n[cookie]\nkey_id = 2\n".into(),
        ),
    };
    original.replace(&format!("secret = \"{OLD}\""), &secrets) + &cookie
}

/// Has every node and then the lb re-read the file, each confirmed.
fn reload_all(c: &Cluster) {
    for n in ["n1", "n2", "n3"] {
        let before = metric(&c.node_url(n), "node_reloads_total");
        c.signal(n, libc::SIGHUP);
        wait_until(Duration::from_secs(10), &format!("{n} to reload"), || {
            metric(&c.node_url(n), "node_reloads_total") > before
        })
        .unwrap();
    }
    let generation = status(&c.admin_url())["generation"].as_u64().unwrap();
    c.signal("lb", libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the lb to reload", || {
        status(&c.admin_url())["generation"].as_u64() == Some(generation + 1)
    })
    .unwrap();
}

#[test]
fn a_secret_rotated_by_reload_under_load_fails_no_request_and_old_cookies_last_the_grace_period() {
    let mut c = pinned_cluster();
    let original = std::fs::read_to_string(&c.config_path).unwrap();
    let lb = c.lb_url();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (lb, stop, errors) = (lb.clone(), stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                let mut u = User::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    match u.incr(&lb, "n") {
                        Ok(r) if r.status == 200 && value(&r) == n + 1 => n += 1,
                        Ok(r) => errors
                            .lock()
                            .unwrap()
                            .push(format!("{}: {}", r.status, r.body)),
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    let (mut kept, mut idle) = (User::new(), User::new());
    for i in 1..=3 {
        assert_eq!(value(&kept.incr(&lb, "n").unwrap()), i);
    }
    assert_eq!(value(&idle.incr(&lb, "n").unwrap()), 1);
    let old_cookie = kept.cookie.clone();

    // The rotation: everyone learns the new cookie key, then signs and proves with the new secret while
    // still accepting the old one.
    c.write_config(&rotated(&original, Phase::Announce))
        .unwrap();
    reload_all(&c);
    c.write_config(&rotated(&original, Phase::Switch)).unwrap();
    reload_all(&c);
    let r = kept.incr(&lb, "n").unwrap();
    assert_eq!(
        (r.status, value(&r)),
        (200, 4),
        "an old-key cookie keeps its session"
    );
    assert_ne!(
        kept.cookie, old_cookie,
        "and its answer re-mints it with the new key"
    );
    // Copies still flow: a node that dies now loses nothing of `kept`.
    let owner = r.served_by.clone().unwrap();
    c.kill(&owner);
    let r = kept.incr(&lb, "n").unwrap();
    assert_eq!(
        (r.status, value(&r)),
        (200, 5),
        "taken over after {owner} died"
    );
    c.start_node(&owner).unwrap();

    // After the grace period the old key goes: an idle client's old cookie starts a fresh session.
    c.write_config(&rotated(&original, Phase::Done)).unwrap();
    reload_all(&c);
    let r = idle.incr(&lb, "n").unwrap();
    assert_eq!(
        (r.status, value(&r)),
        (200, 1),
        "a fresh session, not an error"
    );
    assert_eq!(
        value(&kept.incr(&lb, "n").unwrap()),
        6,
        "re-minted cookies go on"
    );

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "{} errors: {errors:?}", errors.len());
}
