//! Nodes started in-process (`server::start`) in one runtime under `tokio::time::pause()`: batching delays,
//! read leases, heartbeat misses and idle expiry checked in virtual time, without waiting for the wall clock.
//! Kill -9 and SIGSTOP stay with the process tests in `tests/`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use node::config::builder::NodeEntry;
use node::config::{ClusterConfig, ClusterFile, ReplicationMode};
use node::connection::{auth_key, server_handshake};
use node::cookie::CookieCodec;
use node::server::{self, Listeners, Running};
use node::wire::{Body, Envelope, ItemResult};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::{sleep, Instant};

const SECRET: &str = "paused-test-secret-0123456789";

/// Bound listeners for `n` nodes and the cluster file naming them, with test timings (200 ms heartbeats,
/// 1 s peer timeout, 300 ms lease) and whatever `tune` sets.
async fn cluster(n: usize, tune: impl FnOnce(&mut ClusterFile)) -> (ClusterConfig, Vec<Listeners>) {
    let unused: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut file = ClusterFile::new(SECRET, unused, unused);
    file.replication.heartbeat = Some(Duration::from_millis(200));
    file.replication.peer_timeout = Some(Duration::from_millis(1000));
    file.replication.lease = Some(Duration::from_millis(300));
    let mut listeners = Vec::new();
    for i in 1..=n {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let repl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut entry = NodeEntry::new(
            format!("n{i}"),
            http.local_addr().unwrap(),
            repl.local_addr().unwrap(),
        );
        entry.machine = Some(format!("m{i}"));
        file.nodes.push(entry);
        listeners.push(Listeners { http, repl });
    }
    tune(&mut file);
    let text = file.render();
    let cfg =
        ClusterConfig::from_toml("paused.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (cfg, listeners)
}

/// `async` mode with batches of `max_updates` sessions or 1 s, whichever comes first.
fn async_batches(f: &mut ClusterFile, max_updates: usize) {
    f.replication.mode = Some(ReplicationMode::Async);
    f.replication.max_updates = Some(max_updates);
    f.replication.max_delay = Some(Duration::from_millis(1000));
}

/// Starts every node that has listeners, in order n1, n2, ...
fn start_all(cfg: &ClusterConfig, listeners: Vec<Listeners>) -> Vec<Running> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| server::start(cfg.clone(), &format!("n{}", i + 1), l).unwrap())
        .collect()
}

/// A client keeping one user's routing cookie.
struct User {
    client: Client<HttpConnector, Full<Bytes>>,
    cookie: Option<String>,
}

impl User {
    fn new() -> User {
        User {
            client: Client::builder(TokioExecutor::new()).build_http(),
            cookie: None,
        }
    }

    async fn send(&mut self, method: &str, url: String) -> (u16, Value) {
        let mut req = hyper::Request::builder().method(method).uri(url);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if let Some(sc) = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
        {
            self.cookie = Some(sc.split(';').next().unwrap().to_string());
        }
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

fn url(cfg: &ClusterConfig, name: &str, path: &str) -> String {
    format!("http://{}{path}", cfg.node(name).unwrap().http)
}

/// A node's copy of session `sid`, or `None` when it holds none.
async fn copy(cfg: &ClusterConfig, name: &str, sid: &str) -> Option<Value> {
    let (status, v) = User::new()
        .send("GET", url(cfg, name, &format!("/_node/sessions/{sid}")))
        .await;
    (status == 200).then_some(v)
}

/// One metric of a node.
async fn metric(cfg: &ClusterConfig, name: &str, series: &str) -> f64 {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(url(cfg, name, "/_node/metrics").parse().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits in virtual time, a heartbeat at a time, until `cond` holds; panics naming `what` after `limit`.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// A session created on n1 by one increment; returns the user and the session id (read from the cookie: a
/// read would have to renew the lease, which in `async` mode waits for a batch).
async fn session_on_n1(cfg: &ClusterConfig) -> (User, String) {
    let mut u = User::new();
    let (status, v) = u.send("POST", url(cfg, "n1", "/session/incr/n")).await;
    assert_eq!(status, 200, "{v}");
    let value = u
        .cookie
        .as_deref()
        .and_then(|c| c.split_once('='))
        .unwrap()
        .1;
    let cookie = CookieCodec::new(&cfg.cookie).decode(value).unwrap();
    (u, cookie.session.to_string())
}

#[tokio::test(start_paused = true)]
async fn an_async_batch_waits_max_delay_when_it_does_not_fill_and_leaves_at_once_when_it_does() {
    let (cfg, l) = cluster(2, |f| async_batches(f, 4)).await;
    let _nodes = start_all(&cfg, l);
    sleep(Duration::from_millis(500)).await; // a heartbeat round: n2 is alive for n1
    let started = Instant::now();
    let (_, sid) = session_on_n1(&cfg).await;
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(
        copy(&cfg, "n2", &sid).await.is_none(),
        "one queued session waits for the batch to fill"
    );
    sleep(Duration::from_millis(1000)).await;
    let (c, s) = (&cfg, &sid);
    until(
        "the batch to leave after max_delay",
        Duration::from_millis(500),
        move || async move { copy(c, "n2", s).await.is_some() },
    )
    .await;

    // Four sessions queued at once fill a batch: it leaves without waiting out the delay.
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(session_on_n1(&cfg).await.1);
    }
    for id in &ids {
        let c = &cfg;
        until(
            "a full batch to reach n2",
            Duration::from_millis(300),
            move || async move { copy(c, "n2", id).await.is_some() },
        )
        .await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "a full batch does not wait max_delay"
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_inside_the_lease_needs_no_round_trip_and_one_after_it_renews_the_lease() {
    let (cfg, l) = cluster(2, |_| {}).await;
    let _nodes = start_all(&cfg, l);
    sleep(Duration::from_millis(500)).await;
    let (mut u, _) = session_on_n1(&cfg).await;
    let items = "node_replication_items_total";
    let before = metric(&cfg, "n1", items).await;
    assert_eq!(u.send("GET", url(&cfg, "n1", "/session")).await.0, 200);
    assert_eq!(
        metric(&cfg, "n1", items).await,
        before,
        "inside the 300 ms lease a read is served locally"
    );
    sleep(Duration::from_millis(400)).await;
    assert_eq!(u.send("GET", url(&cfg, "n1", "/session")).await.0, 200);
    assert_eq!(
        metric(&cfg, "n1", items).await,
        before + 1.0,
        "after the lease one validate renews it"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_expires_on_every_copy_after_the_idle_timeout() {
    let (cfg, l) = cluster(2, |f| {
        f.session.idle_timeout = Some(Duration::from_secs(60))
    })
    .await;
    let _nodes = start_all(&cfg, l);
    sleep(Duration::from_millis(500)).await;
    let (_, sid) = session_on_n1(&cfg).await;
    sleep(Duration::from_secs(30)).await;
    assert!(
        copy(&cfg, "n1", &sid).await.is_some(),
        "not idle long enough yet"
    );
    sleep(Duration::from_secs(32)).await;
    let (c, s) = (&cfg, &sid);
    until(
        "both copies to expire",
        Duration::from_secs(3),
        move || async move { copy(c, "n1", s).await.is_none() && copy(c, "n2", s).await.is_none() },
    )
    .await;
    assert_eq!(metric(&cfg, "n1", "node_sessions_expired_total").await, 1.0);
}

/// A peer on `listener` (bound by the test, so no other process can take its port meanwhile) that answers heartbeats and confirms copies until `mute` is set; then it keeps its
/// connections open and answers nothing, as a paused process would.
fn muteable_peer(listener: TcpListener, mute: Arc<AtomicBool>) {
    let key = auth_key(SECRET);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mute = mute.clone();
            tokio::spawn(async move {
                let Ok((mut r, mut w, _)) = server_handshake(stream, &[key]).await else {
                    return;
                };
                while let Ok(Some(env)) = r.next().await {
                    if mute.load(Ordering::SeqCst) {
                        continue;
                    }
                    let body = match env.body {
                        Body::Ping { .. } => Body::Pong {
                            sessions: 0,
                            incarnation: 1,
                        },
                        Body::Batch { items, .. } => Body::BatchReply {
                            results: vec![ItemResult::Applied; items.len()],
                        },
                        _ => Body::Error {
                            message: "no".into(),
                        },
                    };
                    if w.write(&Envelope { id: env.id, body }).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[tokio::test(start_paused = true)]
async fn a_secondary_that_stops_answering_heartbeats_is_replaced_after_the_peer_timeout() {
    let (cfg, mut l) = cluster(3, |_| {}).await;
    // n2 is a stand-in that can go silent; n1 pins it as its secondary so the first copy goes there.
    let fake = l.remove(1);
    let mute = Arc::new(AtomicBool::new(false));
    muteable_peer(fake.repl, mute.clone());
    let pinned = {
        let mut c = cfg.clone();
        c.nodes[0].secondary = Some("n2".into());
        c
    };
    let n3 = l.pop().unwrap();
    let n1 = l.pop().unwrap();
    let _n1 = server::start(pinned.clone(), "n1", n1).unwrap();
    let _n3 = server::start(pinned.clone(), "n3", n3).unwrap();
    sleep(Duration::from_millis(500)).await;
    let (mut u, sid) = session_on_n1(&pinned).await;

    mute.store(true, Ordering::SeqCst);
    let muted_at = Instant::now();
    // The local copy's view: no read of the session itself, whose lease renewal would also notice the mute.
    let (c, s) = (&pinned, &sid);
    until(
        "n1 to give the session a new secondary",
        Duration::from_secs(5),
        move || async move {
            copy(c, "n1", s)
                .await
                .is_some_and(|v| v["secondary"] == "n3")
        },
    )
    .await;
    let took = muted_at.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "not before peer_timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(4000),
        "soon after peer_timeout: {took:?}"
    );
    let (status, v) = u.send("POST", url(&pinned, "n1", "/session/incr/n")).await;
    assert_eq!(
        (status, v["value"].as_i64()),
        (200, Some(2)),
        "writes go on with the new secondary"
    );
}

#[tokio::test(start_paused = true)]
async fn a_forward_to_an_owner_that_stops_answering_gives_up_within_heartbeats_and_the_copy_takes_over(
) {
    use node::connection::{AuthKeys, PeerLink, Traffic};
    use node::cookie::RoutingCookie;
    use node::ids::{Pair, SessionId};
    use node::session::Session;
    use node::wire::Item;

    let (cfg, mut l) = cluster(2, |_| {}).await;
    // n2 is a stand-in owner: its replication port answers until muted, its HTTP port accepts and never answers.
    let fake = l.remove(1);
    let n2_http = fake.http;
    let mute = Arc::new(AtomicBool::new(false));
    muteable_peer(fake.repl, mute.clone());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = n2_http.accept().await {
            held.push(s);
        }
    });
    let n1 = l.pop().unwrap();
    let _n1 = server::start(cfg.clone(), "n1", n1).unwrap();
    sleep(Duration::from_millis(500)).await;

    // n2 owns a session and copies it to n1, as a primary does.
    let (id1, id2) = (cfg.node("n1").unwrap().id, cfg.node("n2").unwrap().id);
    let mut s = Session::new(SessionId::random(), id2, Some(id1));
    s.patch(&serde_json::json!({"cart": 3}), 1 << 20).unwrap();
    let link = PeerLink::new(
        cfg.node("n1").unwrap().repl,
        "n2",
        std::sync::Arc::new(AuthKeys::new(SECRET, None)),
        Duration::from_secs(1),
        Traffic::default(),
    );
    let items = vec![Item::Full { session: s.clone() }];
    let reply = link
        .call(Body::Batch { from: id2, items }, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        reply,
        Body::BatchReply {
            results: vec![ItemResult::Applied]
        }
    );
    let codec = CookieCodec::new(&cfg.cookie);
    let pair = Pair {
        primary: id2,
        secondary: Some(id1),
    };
    let value = codec.encode(&RoutingCookie {
        session: s.id,
        segment: pair.segment(),
        version: s.version,
    });
    let mut u = User::new();
    u.cookie = Some(format!("{}={value}", cfg.cookie.name));

    // n1 forwards the read to the live owner, which then goes silent with the request in hand.
    let started = Instant::now();
    let request = tokio::spawn({
        let url = url(&cfg, "n1", "/session");
        async move { u.send("GET", url).await }
    });
    sleep(Duration::from_millis(50)).await;
    mute.store(true, Ordering::SeqCst);
    let (status, body) = request.await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["cart"], 3, "the copy on n1 took over: {body}");
    assert_eq!(body["primary"], "n1", "{body}");
    assert!(
        took < Duration::from_millis(3000),
        "the watchdog gave up before the 3 s forward timeout: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_that_must_renew_its_lease_does_not_wait_for_an_async_batch_to_fill() {
    // A long max_delay, so that waiting for the batch and not waiting are far apart.
    let (cfg, l) = cluster(2, |f| {
        async_batches(f, 64);
        f.replication.max_delay = Some(Duration::from_secs(10));
    })
    .await;
    let _nodes = start_all(&cfg, l);
    sleep(Duration::from_millis(500)).await;
    let (mut u, _) = session_on_n1(&cfg).await;
    sleep(Duration::from_secs(11)).await; // the first copy left; the 300 ms lease ran out
    let started = Instant::now();
    assert_eq!(u.send("GET", url(&cfg, "n1", "/session")).await.0, 200);
    // Virtual time: a wait for the batch would show as the whole max_delay (10 s). Idle moments on loopback
    // may move the clock on by a heartbeat (200 ms) now and then; half of max_delay leaves room for many.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a lease renewal leaves at once instead of waiting out max_delay: {took:?}"
    );
}
