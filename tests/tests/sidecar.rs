//! Sidecar mode end to end: real `lb` and `node` processes, each node in front of an application (the in-process
//! [`TestApp`]) that speaks the header contract of DESIGN §6.

use std::time::Duration;

use cluster_tests::test_app::TestApp;
use cluster_tests::{wait_until, Cluster, ClusterSpec, Reply, User};
use serde_json::Value;

/// A running cluster in sidecar mode with an app beside every node, and the runtime the apps run on.
struct Shop {
    c: Cluster,
    apps: Vec<Option<TestApp>>,
    rt: tokio::runtime::Runtime,
}

impl Shop {
    fn start(nodes: usize, lb: bool, tune: impl FnOnce(&mut ClusterSpec)) -> Shop {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut spec = ClusterSpec {
            nodes,
            lb,
            sidecar: true,
            ..ClusterSpec::default()
        };
        tune(&mut spec);
        let c = Cluster::start(spec).expect("cluster starts");
        let apps = c
            .nodes
            .iter()
            .map(|n| {
                Some(TestApp::start(
                    &rt,
                    n.app.expect("sidecar nodes have an app"),
                ))
            })
            .collect();
        Shop { c, apps, rt }
    }

    /// Calls of `/add/{item}` that reached any app.
    fn adds(&self, item: &str) -> usize {
        self.apps
            .iter()
            .flatten()
            .map(|a| a.seen.lock().unwrap().adds.get(item).copied().unwrap_or(0))
            .sum()
    }

    /// The session as the app last saw it, through `GET /show`.
    fn show(&self, user: &mut User, base: &str) -> Value {
        let r = user.send(base, "GET", "/show", None).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }
}

fn items(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .map(|a| a.iter().map(|i| i.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

#[test]
fn the_app_gets_the_session_in_headers_and_its_patch_is_applied_copied_and_stripped() {
    let shop = Shop::start(2, true, |_| {});
    let lb = shop.c.lb_url();
    let mut u = User::new();
    // A client's own copies of the sidecar headers must never reach the app or change the session.
    let forged = [
        ("x-session", r#"{"items":["forged"]}"#),
        ("x-session-patch", r#"{"evil":1}"#),
        ("x-session-id", "deadbeef"),
        ("x-node-hop", "1"),
    ];
    let r = u
        .send_with(&lb, "POST", "/add/apple", None, &forged)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(items(&r.json()), ["apple"]);
    assert_eq!(
        header(&r, "x-app"),
        Some("yes"),
        "the app's own headers pass"
    );
    for h in ["x-session-leak", "x-session-patch"] {
        assert!(header(&r, h).is_none(), "{h} reached the client: {r:?}");
    }
    let cookies: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        cookies.iter().any(|c| c.starts_with("app-pref=1")),
        "{cookies:?}"
    );
    assert!(
        cookies.iter().any(|c| c.starts_with("SRVSESSION=")),
        "{cookies:?}"
    );

    let seen = shop
        .apps
        .iter()
        .flatten()
        .find_map(|a| a.seen.lock().unwrap().headers.first().cloned());
    let seen = seen.expect("the app saw the request");
    assert_eq!(seen["x-session"], "{}", "a new session starts empty");
    assert_eq!(seen["x-session-version"], "0");
    let id = seen["x-session-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    for h in ["x-session-patch", "x-lb-request-id", "x-node-hop"] {
        assert!(!seen.contains_key(h), "{h} reached the app");
    }

    let r = u.send(&lb, "POST", "/add/pear", None).unwrap();
    assert_eq!(items(&r.json()), ["apple", "pear"]);
    let shown = shop.show(&mut u, &lb);
    assert_eq!(shown["version"], "2");
    assert_eq!(items(&shown["session"]), ["apple", "pear"]);
    assert!(shown["session"].get("evil").is_none());
    // Sync mode: both nodes hold the patched session by the time the answer came.
    for n in &shop.c.nodes {
        let url = format!("{}/_node/sessions/{id}", shop.c.node_url(&n.name));
        let copy: Value = reqwest::blocking::get(url).unwrap().json().unwrap();
        assert_eq!(
            items(&copy["data"]),
            ["apple", "pear"],
            "{}: {copy}",
            n.name
        );
    }
}

#[test]
fn an_app_that_answers_delete_ends_the_session_on_every_copy_and_clears_the_cookie() {
    let shop = Shop::start(2, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let mut u = User::new();
    assert_eq!(u.send(&n1, "POST", "/add/apple", None).unwrap().status, 200);
    let id = shop.show(&mut u, &n1)["id"].as_str().unwrap().to_string();
    let r = u.send(&n1, "POST", "/forget", None).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "bye"));
    assert!(header(&r, "x-session-delete").is_none());
    assert!(u.cookie.is_none(), "the routing cookie is cleared: {r:?}");
    wait_until(Duration::from_secs(5), "no node holds a copy", || {
        shop.c.nodes.iter().all(|n| {
            let url = format!("{}/_node/sessions/{id}", shop.c.node_url(&n.name));
            reqwest::blocking::get(url).is_ok_and(|r| r.status() == 404)
        })
    })
    .unwrap();
    let fresh = shop.show(&mut u, &n1);
    assert_ne!(
        fresh["id"],
        id.as_str(),
        "the next request starts a new session"
    );
    assert_eq!(items(&fresh["session"]), Vec::<String>::new());
}

#[test]
fn a_request_held_up_in_the_app_locks_nothing_but_its_own_sessions_turn() {
    let shop = Shop::start(2, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let app = shop.apps[0].as_ref().unwrap();
    let mut a = User::new();
    assert_eq!(a.send(&n1, "POST", "/add/apple", None).unwrap().status, 200);
    let id = shop.show(&mut a, &n1)["id"].as_str().unwrap().to_string();
    std::thread::scope(|s| {
        let (n1, cookie) = (&n1, a.cookie.clone());
        let held = s.spawn(move || {
            let mut same = User::new();
            same.cookie = cookie;
            same.send(n1, "GET", "/hold", None).unwrap()
        });
        wait_until(Duration::from_secs(10), "the app holds a request", || {
            app.seen.lock().unwrap().headers.len() >= 3
        })
        .unwrap();
        // While the app holds session A's request: A's copy can be read (as a pull would), and another session's
        // write is applied, copied and answered.
        let url = format!("{n1}/_node/sessions/{id}");
        let copy = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(url)
            .send()
            .expect("the held session's copy is readable while its app call runs");
        assert_eq!(copy.status(), 200);
        let r = User::new().send(n1, "POST", "/add/pear", None).unwrap();
        assert_eq!(
            (r.status, items(&r.json())),
            (200, vec!["pear".to_string()])
        );
        app.hold.add_permits(1);
        assert_eq!(held.join().unwrap().status, 200);
    });
}

#[test]
fn a_write_whose_client_left_while_the_app_ran_is_applied_and_its_retry_replayed() {
    let shop = Shop::start(2, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let app = shop.apps[0].as_ref().unwrap();
    let mut u = User::new();
    assert_eq!(u.send(&n1, "POST", "/add/apple", None).unwrap().status, 200);
    let rid = ("x-lb-request-id", "left-early-1");
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{n1}/hold/pear"))
        .header("cookie", u.cookie.clone().unwrap())
        .header(rid.0, rid.1)
        .send();
    assert!(
        gone.is_err(),
        "the client gave up while the app held the request"
    );
    app.hold.add_permits(1);
    wait_until(
        Duration::from_secs(10),
        "the app answered the held add",
        || shop.adds("pear") == 1,
    )
    .unwrap();
    // The balancer's retry of it, same request id: answered from the record.
    let r = u
        .send_with(&n1, "POST", "/hold/pear", None, &[rid])
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "x-node-replayed"), Some("1"));
    assert_eq!(items(&r.json()), ["apple", "pear"]);
    assert_eq!(shop.adds("pear"), 1, "the app ran once");
}

#[test]
fn a_bad_change_from_the_app_is_a_502_with_a_reason_and_the_session_is_unchanged() {
    let shop = Shop::start(2, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let mut u = User::new();
    assert_eq!(u.send(&n1, "POST", "/add/apple", None).unwrap().status, 200);
    for (kind, reason) in [
        ("array", "JSON object"),
        ("json", "not JSON"),
        ("big", "limit"),
        ("both", "both"),
    ] {
        let r = u.send(&n1, "POST", &format!("/bad/{kind}"), None).unwrap();
        assert_eq!(r.status, 502, "{kind}: {r:?}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(reason),
            "{kind}: {}",
            r.body
        );
        assert!(header(&r, "x-session-patch").is_none());
    }
    let shown = shop.show(&mut u, &n1);
    assert_eq!(shown["version"], "1", "nothing was applied");
    assert_eq!(items(&shown["session"]), ["apple"]);
    assert!(
        shop.c.log("n1").contains("nothing applied"),
        "the node logs why"
    );
}

#[test]
fn the_app_sees_one_request_of_a_session_at_a_time_and_different_sessions_in_parallel() {
    let shop = Shop::start(2, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let mut first = User::new();
    assert_eq!(
        first.send(&n1, "POST", "/slow/0", None).unwrap().status,
        200
    );
    let cookie = first.cookie.clone();
    std::thread::scope(|s| {
        // Eight parallel writes to one session, and four other sessions at the same time.
        for i in 1..=8 {
            let (n1, cookie) = (&n1, cookie.clone());
            s.spawn(move || {
                let mut u = User::new();
                u.cookie = cookie;
                let r = u.send(n1, "POST", &format!("/slow/{i}"), None).unwrap();
                assert_eq!(r.status, 200, "{r:?}");
            });
        }
        for _ in 0..4 {
            let n1 = &n1;
            s.spawn(move || {
                let r = User::new().send(n1, "POST", "/slow/1", None).unwrap();
                assert_eq!(r.status, 200, "{r:?}");
            });
        }
    });
    let seen = shop.apps[0].as_ref().unwrap().seen.lock().unwrap();
    assert_eq!(
        seen.max_per_session, 1,
        "two requests of one session overlapped at the app"
    );
    assert!(
        seen.max_total >= 2,
        "sessions never ran in parallel (max {})",
        seen.max_total
    );
    drop(seen);
    let mut order: Vec<u64> = shop.show(&mut first, &n1)["session"]["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    order.sort_unstable();
    assert_eq!(
        order,
        (0..=8).collect::<Vec<_>>(),
        "each write applied exactly once"
    );
}

#[test]
fn when_the_app_is_down_the_client_gets_502_with_retry_after_and_nothing_changes() {
    let mut shop = Shop::start(1, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let mut u = User::new();
    assert_eq!(u.send(&n1, "POST", "/add/apple", None).unwrap().status, 200);
    shop.apps[0].take().unwrap().stop();
    let r = u.send(&n1, "POST", "/add/pear", None).unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("nothing was changed"));
    // A newcomer while the app is down gets the same, and leaves no session behind.
    let before = shop.c.sessions_held("n1");
    let newcomer = User::new().send(&n1, "GET", "/show", None).unwrap();
    assert_eq!(newcomer.status, 502);
    assert!(newcomer.set_cookie.is_none(), "{newcomer:?}");
    assert_eq!(shop.c.sessions_held("n1"), before);
    let addr = shop.c.nodes[0].app.unwrap();
    let rt = &shop.rt;
    shop.apps[0] = Some(TestApp::start(rt, addr));
    let shown = shop.show(&mut u, &n1);
    assert_eq!(items(&shown["session"]), ["apple"]);
    assert_eq!(shown["version"], "1");
}

#[test]
fn an_app_slower_than_the_read_timeout_gets_504_with_retry_after_and_nothing_changes() {
    let shop = Shop::start(1, false, |s| {
        s.sidecar_extra = "read_timeout_ms = 10".into()
    });
    let n1 = shop.c.node_url("n1");
    let mut u = User::new();
    // `/slow` waits 30 ms before answering with its patch.
    let r = u.send(&n1, "POST", "/slow/1", None).unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(header(&r, "retry-after"), Some("1"));
    let shown = shop.show(&mut u, &n1);
    assert_eq!(shown["version"], "0", "nothing was applied: {shown}");
}

#[test]
fn a_session_over_the_header_cap_reaches_the_app_by_reference() {
    // The default cap is 8 KiB: a 16 KiB blob goes by reference.
    let shop = Shop::start(1, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let mut u = User::new();
    assert_eq!(u.send(&n1, "POST", "/fill/16", None).unwrap().status, 200);
    let shown = shop.show(&mut u, &n1);
    let names: Vec<&str> = shown["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"x-session-ref") && !names.contains(&"x-session"),
        "{names:?}"
    );
    assert_eq!(
        shown["session"]["blob"].as_str().map(str::len),
        Some(16 * 1024)
    );
}

#[test]
fn large_bodies_stream_both_ways_through_the_node() {
    let shop = Shop::start(1, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let mut u = User::new();
    let r = u.send(&n1, "GET", "/download/4096", None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 4096 * 1024);
    // Over `[sidecar] buffer_body_bytes` (64 KiB), under `[node] max_body_bytes` (1 MiB).
    let upload = "u".repeat(900 * 1024);
    let r = u.send(&n1, "POST", "/upload", Some(&upload)).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["bytes"], 900 * 1024);
    // Chunked (no length announced) and over `[node] max_body_bytes` (1 MiB): the client's mistake, a 413.
    let body =
        reqwest::blocking::Body::new(ChunkReader(std::io::Cursor::new(vec![b'u'; 1536 * 1024])));
    let r = reqwest::blocking::Client::new()
        .post(format!("{n1}/upload"))
        .header("cookie", u.cookie.clone().unwrap())
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
}

/// A reader of unknown length, so the client sends its body chunked.
struct ChunkReader(std::io::Cursor<Vec<u8>>);

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

#[test]
fn a_retried_write_is_answered_from_its_record_without_reaching_the_app_again_even_after_failover()
{
    let mut shop = Shop::start(2, false, |_| {});
    let n1 = shop.c.node_url("n1");
    let n2 = shop.c.node_url("n2");
    let mut u = User::new();
    let rid = [("x-lb-request-id", "retry-me-1")];
    let first = u.send_with(&n1, "POST", "/add/apple", None, &rid).unwrap();
    assert_eq!(first.status, 200);
    assert!(header(&first, "x-node-replayed").is_none());
    let again = u.send_with(&n1, "POST", "/add/apple", None, &rid).unwrap();
    assert_eq!(
        (again.status, again.body.as_str()),
        (200, first.body.as_str())
    );
    assert_eq!(header(&again, "x-node-replayed"), Some("1"));
    assert_eq!(
        header(&again, "x-app"),
        Some("yes"),
        "the recorded headers come back"
    );
    shop.c.kill("n1");
    // The balancer's retry after a crash lands on the copy: answered from the copied record.
    let retried = u.send_with(&n2, "POST", "/add/apple", None, &rid).unwrap();
    assert_eq!(
        (retried.status, retried.body.as_str()),
        (200, first.body.as_str()),
        "{retried:?}"
    );
    assert_eq!(header(&retried, "x-node-replayed"), Some("1"));
    assert_eq!(shop.adds("apple"), 1, "the app was called once");
    let r = u.send(&n2, "POST", "/add/pear", None).unwrap();
    assert_eq!(items(&r.json()), ["apple", "pear"]);
}

#[test]
fn a_cart_filled_through_the_lb_loses_and_doubles_nothing_when_its_node_is_killed() {
    let mut shop = Shop::start(3, true, |_| {});
    let lb = shop.c.lb_url();
    let mut u = User::new();
    let mut expect: Vec<String> = Vec::new();
    let mut errors = 0;
    for i in 0..40 {
        if i == 20 {
            let id = shop.show(&mut u, &lb)["id"].as_str().unwrap().to_string();
            let owner = shop.c.primary_of(&id).expect("a primary holds the cart");
            shop.c.kill(&owner);
        }
        let item = format!("item{i}");
        let r = u.send(&lb, "POST", &format!("/add/{item}"), None).unwrap();
        if r.status != 200 {
            // Not acknowledged: the client cannot know whether it was applied, so it looks before adding again.
            errors += 1;
            let seen = wait_for_cart(&mut u, &lb);
            if !seen.contains(&item) {
                let r = u.send(&lb, "POST", &format!("/add/{item}"), None).unwrap();
                assert_eq!(r.status, 200, "{r:?}");
            }
        }
        expect.push(item);
    }
    let cart = wait_for_cart(&mut u, &lb);
    assert_eq!(
        cart, expect,
        "every add once, in order ({errors} answered with an error)"
    );
    // Before the kill nothing was retried: each of those adds reached an app exactly once.
    for item in &expect[..20] {
        assert_eq!(shop.adds(item), 1, "{item} reached the app once");
    }
}

/// The cart, once the cluster serves it again after a kill.
fn wait_for_cart(u: &mut User, lb: &str) -> Vec<String> {
    let mut cart = None;
    wait_until(
        Duration::from_secs(15),
        "the cart is served again",
        || match u.send(lb, "GET", "/show", None) {
            Ok(r) if r.status == 200 => {
                cart = Some(items(&r.json()["session"]));
                true
            }
            _ => false,
        },
    )
    .unwrap();
    cart.unwrap()
}

/// A client that keeps its session in a header only: no cookie jar.
struct TokenClient {
    client: reqwest::blocking::Client,
    token: Option<String>,
}

impl TokenClient {
    fn send(&mut self, url: &str, method: reqwest::Method) -> reqwest::blocking::Response {
        // Empty at first: the header asks for a token instead of a cookie.
        let token = self.token.as_deref().unwrap_or("");
        let rb = self
            .client
            .request(method, url)
            .header("x-session-token", token);
        let r = rb.send().unwrap();
        if let Some(t) = r.headers().get("x-session-token") {
            self.token = Some(t.to_str().unwrap().to_string());
        }
        r
    }
}

#[test]
fn a_client_with_only_a_session_token_header_keeps_its_session_across_a_node_kill() {
    let mut c = Cluster::start(ClusterSpec {
        nodes: 3,
        lb: true,
        token_header: Some("x-session-token"),
        ..ClusterSpec::default()
    })
    .unwrap();
    let lb = c.lb_url();
    let mut t = TokenClient {
        client: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap(),
        token: None,
    };
    let mut served = Vec::new();
    for i in 1..=10 {
        let r = t.send(&format!("{lb}/session/incr/n"), reqwest::Method::POST);
        assert_eq!(r.status(), 200);
        served.push(r.headers()["x-served-by"].to_str().unwrap().to_string());
        let v: Value = r.json().unwrap();
        assert_eq!(v["value"], i);
    }
    assert!(t.token.is_some(), "the node answered with a token");
    let cookie_client = User::new().get(&lb).unwrap();
    assert!(
        cookie_client.headers.get("x-session-token").is_none(),
        "a cookie client never gets the token in a header a script could read"
    );
    assert!(
        served.iter().all(|s| *s == served[0]),
        "the lb pins by the header: {served:?}"
    );
    c.kill(&served[0]);
    for i in 11..=20 {
        let r = t.send(&format!("{lb}/session/incr/n"), reqwest::Method::POST);
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("set-cookie").is_none(),
            "a token client gets no cookie"
        );
        let v: Value = r.json().unwrap();
        assert_eq!(v["value"], i, "nothing lost across the kill");
    }
}

#[test]
fn in_sidecar_mode_the_token_header_carries_the_session_too() {
    let shop = Shop::start(2, true, |s| s.token_header = Some("x-session-token"));
    let lb = shop.c.lb_url();
    let mut t = TokenClient {
        client: reqwest::blocking::Client::new(),
        token: None,
    };
    for (i, item) in ["apple", "pear", "plum"].iter().enumerate() {
        let r = t.send(&format!("{lb}/add/{item}"), reqwest::Method::POST);
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), i + 1, "{v}");
    }
    assert!(t.token.is_some(), "the node answered with a token");
}
