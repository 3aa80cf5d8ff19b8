//! Partitions: nodes in network namespaces of the test's own (one each, joined by a bridge; the lb and the
//! test in the root namespace), links cut with blackhole routes, and a client incrementing one session through
//! the lb that records every acknowledged value. Skipped, with a message, where namespaces cannot be made.

use std::time::{Duration, Instant};

use anyhow::Result;
use cluster_tests::netns::Netns;
use cluster_tests::{wait_until, Cluster, ClusterSpec, User};
use serde_json::Value;

/// How long a client keeps writing across a cut before giving up on what it waits for.
const CUT_LIMIT: Duration = Duration::from_secs(20);
/// How long copies get to agree after a heal.
const HEAL_LIMIT: Duration = Duration::from_secs(15);

fn cluster(net: &Netns) -> Cluster {
    net.start_cluster(ClusterSpec {
        nodes: 3,
        lb: true,
        mode: "sync",
        ..ClusterSpec::default()
    })
    .expect("cluster starts in its namespaces")
}

/// The client: increments `n` in one session through the lb and keeps the accounts.
struct Client {
    user: User,
    lb: String,
    /// Every acknowledged value, in order.
    acked: Vec<i64>,
    /// Requests that got no 200 (an error status or none): each may or may not have been applied.
    failed: Vec<String>,
    /// Failed requests since the last acknowledgement.
    failed_since_ack: i64,
}

impl Client {
    fn new(c: &Cluster) -> Client {
        Client {
            user: User::new(),
            lb: c.lb_url(),
            acked: Vec::new(),
            failed: Vec::new(),
            failed_since_ack: 0,
        }
    }

    fn last(&self) -> i64 {
        self.acked.last().copied().unwrap_or(0)
    }

    /// One increment; the acknowledged value, if any. An acknowledged value is the last one plus one, plus
    /// at most the number of failed requests in between (each applied at most once).
    fn incr(&mut self) -> Option<i64> {
        match self.user.incr(&self.lb, "n") {
            Ok(r) if r.status == 200 => {
                let v = r.json()["value"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("no value in {}", r.body));
                let last = self.last();
                assert!(
                    v > last && v <= last + 1 + self.failed_since_ack,
                    "acknowledged {v} after {last} with {} failed requests in between: an increment was lost \
                     or applied twice (acked {:?}, failed {:?})",
                    self.failed_since_ack,
                    self.acked,
                    self.failed
                );
                self.acked.push(v);
                self.failed_since_ack = 0;
                Some(v)
            }
            Ok(r) => {
                self.failed.push(format!("{} {}", r.status, r.body.trim()));
                self.failed_since_ack += 1;
                None
            }
            Err(e) => {
                self.failed.push(format!("{e:#}"));
                self.failed_since_ack += 1;
                None
            }
        }
    }

    /// One increment that must be acknowledged.
    fn incr_ok(&mut self) -> i64 {
        self.incr()
            .unwrap_or_else(|| panic!("not acknowledged: {:?}", self.failed.last()))
    }

    /// The session's id (32 hex digits) and its value, from `GET /session` through the lb.
    fn session(&mut self) -> (String, i64) {
        let r = self.user.get(&self.lb).expect("GET /session");
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        let id = j["id"].as_str().expect("an id").to_string();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "not 32 hex digits: {id}"
        );
        (id, j["data"]["n"].as_i64().unwrap_or(0))
    }
}

/// Node `name`'s own copy of session `sid` (`None`: it holds none). Read over the bridge, or from inside
/// the node's namespace when `inside` (the root namespace is cut from it).
fn copy_of(net: &Netns, c: &Cluster, name: &str, sid: &str, inside: bool) -> Result<Option<Value>> {
    let path = format!("/_node/sessions/{sid}");
    let (status, body) = if inside {
        net.get_in(name, c.node(name).http, &path)?
    } else {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let r = client.get(format!("{}{path}", c.node_url(name))).send()?;
        (r.status().as_u16(), r.text()?)
    };
    match status {
        200 => Ok(Some(serde_json::from_str(&body)?)),
        404 => Ok(None),
        s => anyhow::bail!("{name}: {s} {body}"),
    }
}

fn value(copy: &Value) -> i64 {
    copy["data"]["n"].as_i64().unwrap_or(0)
}

fn int(copy: &Value, key: &str) -> u64 {
    copy[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {copy}"))
}

/// Every node's copy (`None` for none), read over the bridge except from the nodes in `inside`.
fn copies(net: &Netns, c: &Cluster, sid: &str, inside: &[&str]) -> Vec<(String, Option<Value>)> {
    c.nodes
        .iter()
        .map(|n| {
            let copy = copy_of(net, c, &n.name, sid, inside.contains(&n.name.as_str()))
                .unwrap_or_else(|e| panic!("reading {}'s copy: {e:#}", n.name));
            (n.name.clone(), copy)
        })
        .collect()
}

/// Asserts that `acked` is held by a copy on a node other than `owner`: a sync write is acknowledged only once
/// its copy holds it.
fn assert_on_a_copy(net: &Netns, c: &Cluster, sid: &str, owner: &str, acked: i64, inside: &[&str]) {
    let all = copies(net, c, sid, inside);
    let best = all
        .iter()
        .filter(|(n, _)| n != owner)
        .filter_map(|(_, cp)| cp.as_ref().map(value))
        .max();
    assert!(
        best.is_some_and(|b| b >= acked),
        "{acked} was acknowledged but no copy off {owner} holds it: {all:?}"
    );
}

/// Waits until exactly one node holds the session as primary and every other holder is at its epoch and
/// version; returns the owner's name and copy.
fn wait_agreed(net: &Netns, c: &Cluster, sid: &str, what: &str) -> (String, Value) {
    let mut last = Vec::new();
    let mut agreed = None;
    wait_until(HEAL_LIMIT, what, || {
        last = copies(net, c, sid, &[]);
        let primaries: Vec<&(String, Option<Value>)> = last
            .iter()
            .filter(|(_, cp)| cp.as_ref().is_some_and(|v| v["role"] == "primary"))
            .collect();
        let [(owner, Some(o))] = primaries.as_slice() else {
            return false;
        };
        let held = last.iter().filter_map(|(_, cp)| cp.as_ref());
        let same = held.clone().all(|cp| {
            int(cp, "epoch") == int(o, "epoch")
                && int(cp, "version") == int(o, "version")
                && value(cp) == value(o)
        });
        if same && held.count() >= 2 {
            agreed = Some((owner.clone(), o.clone()));
        }
        agreed.is_some()
    })
    .unwrap_or_else(|e| panic!("{e:#}: {last:#?}"));
    agreed.expect("set when the wait ended")
}

/// The primary of `sid`, and its secondary, from the primary's own copy.
fn pair(net: &Netns, c: &Cluster, sid: &str) -> (String, String) {
    let p = c.primary_of(sid).expect("a primary");
    let cp = copy_of(net, c, &p, sid, false)
        .unwrap()
        .expect("the primary's copy");
    let s = cp["secondary"]
        .as_str()
        .unwrap_or_else(|| panic!("no secondary in {cp}"))
        .to_string();
    (p, s)
}

/// Whether the lb's `/status` counts node `name` healthy.
fn lb_counts_healthy(c: &Cluster, name: &str) -> bool {
    reqwest::blocking::get(format!("{}/status", c.admin_url()))
        .and_then(|r| r.json::<Value>())
        .ok()
        .and_then(|st| {
            st["nodes"].as_array()?.iter().find(|n| n["name"] == name)?["healthy"].as_bool()
        })
        .unwrap_or(false)
}

fn third(c: &Cluster, a: &str, b: &str) -> String {
    c.nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| n != a && n != b)
        .expect("three nodes")
}

/// What [`cut_primary_from_secondary`] leaves: the client, the session, its primary, its secondary before
/// the cut, the third node, and the client's cookie before the cut.
struct Rehomed {
    cl: Client,
    sid: String,
    p: String,
    s: String,
    t: String,
    old_cookie: String,
}

/// A client whose session got five increments through the lb: with the session's id and the pair that
/// holds it (primary, secondary).
fn five_increments(net: &Netns, c: &Cluster) -> (Client, String, String, String) {
    let mut cl = Client::new(c);
    for i in 1..=5 {
        assert_eq!(cl.incr_ok(), i);
    }
    let (sid, _) = cl.session();
    let (p, s) = pair(net, c, &sid);
    (cl, sid, p, s)
}

/// Five increments, then the session's primary cut from its secondary while the client keeps incrementing:
/// every acknowledged value is on a copy off the primary at once, until the third node holds the current
/// value for ten increments in a row (the copy re-homed to it); then the cut is healed. Every increment is
/// acknowledged.
fn cut_primary_from_secondary(net: &Netns, c: &Cluster) -> Rehomed {
    let (mut cl, sid, p, s) = five_increments(net, c);
    let old_cookie = cl.user.cookie.clone().expect("a cookie");
    let t = third(c, &p, &s);
    assert_on_a_copy(net, c, &sid, &p, cl.last(), &[]);

    net.cut(&p, &s).unwrap();
    let start = Instant::now();
    let mut after_rehome = 0;
    while after_rehome < 10 {
        assert!(
            start.elapsed() < CUT_LIMIT,
            "{t} never held a current copy; acked {:?}, failed {:?}; {p}'s log:\n{}",
            cl.acked,
            cl.failed,
            c.log(&p)
        );
        if let Some(v) = cl.incr() {
            assert_on_a_copy(net, c, &sid, &p, v, &[]);
            let on_t = copy_of(net, c, &t, &sid, false).unwrap();
            if on_t.is_some_and(|cp| value(&cp) == v) {
                after_rehome += 1;
            }
        }
    }
    assert_eq!(
        c.primary_of(&sid).as_deref(),
        Some(p.as_str()),
        "still the owner"
    );
    net.heal().unwrap();
    assert!(
        cl.failed.is_empty(),
        "every increment was acknowledged: {:?}",
        cl.failed
    );
    Rehomed {
        cl,
        sid,
        p,
        s,
        t,
        old_cookie,
    }
}

#[test]
fn a_primary_cut_from_its_secondary_acknowledges_only_writes_a_copy_holds_and_rehomes_the_copy() {
    let Some(net) = Netns::create_or_skip("partitions", 3) else {
        return;
    };
    let c = cluster(&net);
    let Rehomed {
        mut cl, sid, p, t, ..
    } = cut_primary_from_secondary(&net, &c);
    for _ in 0..5 {
        let v = cl.incr_ok();
        assert_on_a_copy(&net, &c, &sid, &p, v, &[]);
    }
    let mut last = Vec::new();
    wait_until(HEAL_LIMIT, "the owner and its new secondary agree", || {
        last = copies(&net, &c, &sid, &[]);
        let at = |n: &str| {
            last.iter()
                .find(|(name, _)| name == n)
                .and_then(|(_, cp)| cp.clone())
        };
        match (at(&p), at(&t)) {
            (Some(o), Some(s)) => {
                o["role"] == "primary"
                    && o["secondary"] == t.as_str()
                    && (int(&o, "epoch"), int(&o, "version"), value(&o))
                        == (int(&s, "epoch"), int(&s, "version"), value(&s))
            }
            _ => false,
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}: {last:#?}"));
    let (_, seen) = cl.session();
    assert_eq!(seen, cl.last());
    assert_eq!(cl.acked, (1..=cl.last()).collect::<Vec<_>>());
}

/// Found by this file, fixed: the old secondary kept its stale copy after the heal, and an old cookie made it
/// take the session over from that copy once the owner died (6 where 15 were acknowledged). Now the owner tells
/// a peer it left a copy behind on to drop it once it answers, and in a pair a takeover that finds nothing in
/// the cookie's pair asks every other web node for a copy as new as the cookie.
#[test]
fn after_the_heal_the_old_secondary_holds_no_stale_copy_and_an_old_cookie_loses_no_acknowledged_write(
) {
    let Some(net) = Netns::create_or_skip("partitions", 3) else {
        return;
    };
    let mut c = cluster(&net);
    let Rehomed {
        mut cl,
        sid,
        p,
        s,
        old_cookie,
        ..
    } = cut_primary_from_secondary(&net, &c);
    let stale = copy_of(&net, &c, &s, &sid, false).unwrap();
    // Give the heal time to reach everyone before the owner goes.
    let agreed = wait_until(
        Duration::from_secs(5),
        "the old secondary current or empty",
        || {
            copy_of(&net, &c, &s, &sid, false)
                .unwrap()
                .is_none_or(|cp| value(&cp) == cl.last())
        },
    );
    c.kill(&p);
    let mut old = User::new();
    old.cookie = Some(old_cookie);
    let r = old.get(&c.lb_url()).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["data"]["n"].as_i64(),
        Some(cl.last()),
        "an old cookie after the owner died is served every acknowledged write (served by {:?}, stale \
         flag {}); {s}'s copy after the cut: {stale:?}",
        r.served_by,
        r.stale
    );
    let (_, seen) = cl.session();
    assert_eq!(seen, cl.last());
    agreed.unwrap_or_else(|e| panic!("{e:#}; {s} still holds {stale:?}"));
}

#[test]
fn the_lb_cut_from_a_live_primary_still_gets_every_increment_applied_once_and_no_copy_diverges() {
    let Some(net) = Netns::create_or_skip("partitions", 3) else {
        return;
    };
    let c = cluster(&net);
    let (mut cl, sid, p, _) = five_increments(&net, &c);

    net.cut_root(&p).unwrap();
    let inside = [p.as_str()];
    for _ in 0..20 {
        let v = cl.incr_ok();
        let owner = copies(&net, &c, &sid, &inside)
            .into_iter()
            .find(|(_, cp)| cp.as_ref().is_some_and(|v| v["role"] == "primary"))
            .map(|(n, _)| n)
            .expect("an owner");
        assert_on_a_copy(&net, &c, &sid, &owner, v, &inside);
    }

    net.heal().unwrap();
    for _ in 0..5 {
        cl.incr_ok();
    }
    let (_, owner) = wait_agreed(&net, &c, &sid, "one owner and every copy at its version");
    let (_, seen) = cl.session();
    assert_eq!(value(&owner), cl.last());
    assert_eq!(seen, cl.last());
    assert_eq!(cl.acked, (1..=30).collect::<Vec<_>>(), "{:?}", cl.failed);
}

/// Five increments, then the session's primary cut from both other nodes and from the lb while the client
/// keeps incrementing through the lb for at least `isolation` and until ten increments after the takeover:
/// each is acknowledged by a new owner under a newer epoch and held by a copy, while the isolated node's own
/// copy stays as it was. Then the heal: the old primary must end fenced (the newer epoch's copy or none), an
/// increment under the cookie from before the cut (once the lb counts the old primary healthy again, when
/// `settle`) is applied exactly once on the current copy, and every copy agrees.
fn isolate_primary(isolation: Duration, settle: bool) {
    let Some(net) = Netns::create_or_skip("partitions", 3) else {
        return;
    };
    let c = cluster(&net);
    let (mut cl, sid, p, s) = five_increments(&net, &c);
    let t = third(&c, &p, &s);
    let old_cookie = cl.user.cookie.clone().expect("a cookie");
    let before = copy_of(&net, &c, &p, &sid, false)
        .unwrap()
        .expect("p's copy");
    let (old_epoch, old_version) = (int(&before, "epoch"), int(&before, "version"));

    net.cut(&p, &s).unwrap();
    net.cut(&p, &t).unwrap();
    net.cut_root(&p).unwrap();
    let inside = [p.as_str()];
    let start = Instant::now();
    let mut new_epoch = None;
    let mut after_takeover = 0;
    while after_takeover < 10 || start.elapsed() < isolation {
        assert!(
            start.elapsed() < CUT_LIMIT,
            "the session was never taken over; acked {:?}, failed {:?}",
            cl.acked,
            cl.failed
        );
        let acked = cl.incr();
        let all = copies(&net, &c, &sid, &inside);
        let on_p = all
            .iter()
            .find(|(n, _)| *n == p)
            .and_then(|(_, cp)| cp.clone());
        // It may drop its copy once it sees its peers go; it never gets a newer one while nothing reaches it.
        if let Some(on_p) = on_p {
            assert_eq!(
                (int(&on_p, "epoch"), int(&on_p, "version")),
                (old_epoch, old_version),
                "nothing reaches the isolated {p}, so its copy stays as it was"
            );
        }
        if let Some(v) = acked {
            let (owner, o) = all
                .iter()
                .find(|(n, cp)| *n != p && cp.as_ref().is_some_and(|v| v["role"] == "primary"))
                .map(|(n, cp)| (n.clone(), cp.clone().unwrap()))
                .unwrap_or_else(|| panic!("{v} acknowledged with no owner but {p}: {all:?}"));
            assert!(
                int(&o, "epoch") > old_epoch,
                "taken over under a newer epoch: {o}"
            );
            assert_on_a_copy(&net, &c, &sid, &owner, v, &inside);
            new_epoch = Some(int(&o, "epoch"));
            after_takeover += 1;
        }
    }
    let new_epoch = new_epoch.expect("taken over");

    net.heal().unwrap();
    let mut on_p = None;
    wait_until(HEAL_LIMIT, "the old primary fenced", || {
        on_p = copy_of(&net, &c, &p, &sid, false).unwrap();
        on_p.as_ref().is_none_or(|cp| int(cp, "epoch") >= new_epoch)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {p} still holds {on_p:?}; every copy: {:#?}",
            copies(&net, &c, &sid, &[])
        )
    });
    if settle {
        wait_until(
            HEAL_LIMIT,
            "the lb counting the old primary healthy",
            || lb_counts_healthy(&c, &p),
        )
        .unwrap();
    }
    // The cookie from before the cut names the old primary first: applied once, on the current copy.
    cl.user.cookie = Some(old_cookie);
    cl.incr_ok();
    for _ in 0..5 {
        cl.incr_ok();
    }
    let (_, o) = wait_agreed(&net, &c, &sid, "one owner and every copy current");
    assert!(int(&o, "epoch") >= new_epoch);
    let (_, seen) = cl.session();
    assert_eq!(value(&o), cl.last());
    assert_eq!(seen, cl.last());
}

#[test]
fn a_primary_isolated_past_its_peer_timeout_is_taken_over_acknowledges_nothing_and_is_fenced_after_the_heal(
) {
    isolate_primary(Duration::from_secs(3), true);
}

/// Found by this file, fixed: after the heal, n1 took the session back from n2 (a grant), and n2 told its old
/// copy holder n3 to drop its copy with a *removal*, which leaves a tombstone: the next request that reached
/// n3 (the lb still counting n1 down) was answered with a fresh session (1 after 491). A grant now tells old
/// copies to drop theirs with `Item::Drop`, which keeps no tombstone.
#[test]
fn an_old_cookie_sent_at_once_after_the_heal_loses_no_acknowledged_increment() {
    isolate_primary(Duration::from_secs(3), false);
}

/// Found by this file, fixed: a primary isolated for less than `peer_timeout` (its peers took the session over
/// at once, their forwards to it failing fast) kept its old epoch's copy as primary after the heal. The node
/// that promotes now tells the old owner to drop it once it answers again.
#[test]
fn a_primary_isolated_briefly_is_fenced_after_the_heal_too() {
    isolate_primary(Duration::ZERO, true);
}
