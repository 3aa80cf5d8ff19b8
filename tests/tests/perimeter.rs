//! The cluster's perimeter (DESIGN §6, issue 12 item 4), with real processes: the lb keeps node-reserved paths and
//! internal headers away from clients, the admin listener may ask for a bearer token, and a node with
//! `[node] trusted` answers only those sources, the lb and the other nodes.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cluster_tests::test_app::TestApp;
use cluster_tests::{bin, wait_until, Cluster, ClusterSpec, User};
use http_body_util::Full;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// What a client forges: every internal header the lb and the nodes use among themselves.
const FORGED: [(&str, &str); 10] = [
    ("x-node-hop", "0"),
    ("x-lb-request-id", "client-chosen-id"),
    ("X-Session", r#"{"items":["forged"]}"#),
    ("X-Session-Id", "0123456789abcdef0123456789abcdef"),
    ("X-Session-Version", "99"),
    ("X-Session-Ref", "http://203.0.113.9/_node/sessions/x"),
    ("X-Session-Patch", r#"{"admin":true}"#),
    ("X-Session-Delete", "1"),
    ("X-Session-Custom", "anything"),
    ("x-session-token", ""),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One request a stand-in node received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: HeaderMap,
}

/// Listens on `addr` in place of a node: answers 200 `{}` to everything (health checks included) and keeps every
/// request's head.
fn stand_in_node(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> Arc<Mutex<Vec<Received>>> {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .expect("bind the node's address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    log.lock().unwrap().push(Received {
                        method: req.method().to_string(),
                        path: req.uri().path().to_string(),
                        headers: req.headers().clone(),
                    });
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("{}")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    seen
}

/// A client whose connections come from `from` (any 127/8 address works on Linux loopback).
fn client_from(from: Ipv4Addr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(IpAddr::V4(from))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn node_reserved_paths_through_the_lb_answer_404() {
    let c = Cluster::start(ClusterSpec {
        nodes: 2,
        lb: true,
        ..ClusterSpec::default()
    })
    .unwrap();
    let mut u = User::new();
    assert_eq!(u.incr(&c.lb_url(), "n").unwrap().status, 200);
    let sid = u.get(&c.lb_url()).unwrap().json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let session = format!("/_node/sessions/{sid}");
    for path in [
        "/_node/metrics",
        "/_node/health",
        "/_node/sessions/x",
        session.as_str(),
    ] {
        for method in ["GET", "POST"] {
            let r = u.send(&c.lb_url(), method, path, None).unwrap();
            assert_eq!(r.status, 404, "{method} {path} through the lb: {r:?}");
        }
    }
    // They exist, on the nodes themselves.
    let direct = User::new().send(&c.node_url("n1"), "GET", "/_node/health", None);
    assert_eq!(direct.unwrap().status, 200);
}

#[test]
fn a_clients_hop_request_id_and_sidecar_headers_never_reach_a_node() {
    let rt = runtime();
    let mut c = Cluster::prepare(ClusterSpec {
        nodes: 1,
        lb: true,
        token_header: Some("x-session-token"),
        ..ClusterSpec::default()
    })
    .unwrap();
    let seen = stand_in_node(&rt, c.nodes[0].http);
    c.start_lb().unwrap();
    let mut u = User::new();
    for method in ["GET", "POST", "PATCH", "DELETE"] {
        let r = u
            .send_with(&c.lb_url(), method, "/session", None, &FORGED)
            .unwrap();
        assert_eq!(r.status, 200, "{method}: {r:?}");
    }
    let received: Vec<Received> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/session")
        .cloned()
        .collect();
    assert_eq!(received.len(), 4, "{received:?}");
    for r in &received {
        let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert!(!names.contains(&"x-node-hop"), "{names:?}");
        let internal: Vec<&&str> = names
            .iter()
            .filter(|n| n.starts_with("x-session") && **n != "x-session-token")
            .collect();
        assert!(
            internal.is_empty(),
            "{} reached the node: {internal:?}",
            r.method
        );
        assert_eq!(
            r.headers["x-session-token"], "",
            "the session token header is the client's own and passes"
        );
        match r.headers.get("x-lb-request-id") {
            None => assert_eq!(r.method, "GET", "a write gets the lb's request id"),
            Some(id) => {
                assert_ne!(r.method, "GET");
                assert_ne!(id, "client-chosen-id", "the lb's own id, not the client's");
            }
        }
    }
}

#[test]
fn an_app_behind_a_node_sees_the_nodes_session_headers_never_a_clients_even_without_the_lb() {
    let rt = runtime();
    let c = Cluster::start(ClusterSpec {
        nodes: 2,
        lb: true,
        sidecar: true,
        ..ClusterSpec::default()
    })
    .unwrap();
    let _apps: Vec<TestApp> = c
        .nodes
        .iter()
        .map(|n| TestApp::start(&rt, n.app.unwrap()))
        .collect();
    // Alice's session holds something; Bob knows her session id and forges it, and more, in headers.
    let mut alice = User::new();
    let r = alice
        .send(&c.lb_url(), "POST", "/add/alices-secret", None)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let alice_id = alice
        .send(&c.lb_url(), "GET", "/show", None)
        .unwrap()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let forged: Vec<(&str, &str)> = FORGED
        .iter()
        .map(|&(k, v)| {
            if k == "X-Session-Id" {
                (k, alice_id.as_str())
            } else {
                (k, v)
            }
        })
        .collect();
    let mut bob = User::new();
    bob.send(&c.lb_url(), "POST", "/add/bobs-own", None)
        .unwrap();
    let bob_node = c.node_url(
        &bob.send(&c.lb_url(), "GET", "/show", None)
            .unwrap()
            .served_by
            .unwrap(),
    );
    for (how, base) in [
        ("through the lb", c.lb_url()),
        ("straight to the node", bob_node),
    ] {
        let r = bob.send_with(&base, "GET", "/show", None, &forged).unwrap();
        assert_eq!(r.status, 200, "{how}: {r:?}");
        let v: Value = r.json();
        assert_ne!(v["id"], alice_id.as_str(), "{how}: {v}");
        assert_eq!(v["id"].as_str().unwrap().len(), 32, "{how}: {v}");
        assert_eq!(
            v["session"]["items"],
            serde_json::json!(["bobs-own"]),
            "{how}: {v}"
        );
        assert_ne!(v["version"], "99", "{how}: {v}");
        let names: Vec<&str> = v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        for h in [
            "x-node-hop",
            "x-lb-request-id",
            "x-session-ref",
            "x-session-patch",
            "x-session-delete",
            "x-session-custom",
        ] {
            assert!(!names.contains(&h), "{how}: {h} reached the app: {names:?}");
        }
    }
    let r = alice.send(&c.lb_url(), "GET", "/show", None).unwrap();
    assert_eq!(
        r.json()["session"]["items"],
        serde_json::json!(["alices-secret"]),
        "nothing Bob forged touched Alice's session"
    );
}

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// A cluster of one node whose lb has `admin_token` set and its admin on `admin` (default: the cluster's own
/// loopback address), started without waiting for `/status` (which answers 401 now): returns once the admin
/// listener refuses an unauthenticated request.
fn cluster_with_admin_token(admin: Option<SocketAddr>) -> Cluster {
    let mut c = Cluster::prepare(ClusterSpec {
        nodes: 1,
        lb: true,
        lb_extra: format!("admin_token = {ADMIN_TOKEN:?}\n"),
        ..ClusterSpec::default()
    })
    .unwrap();
    if let Some(a) = admin {
        let text = std::fs::read_to_string(&c.config_path).unwrap();
        let text = text.replace(
            &format!("admin = \"{}\"", c.lb_admin),
            &format!("admin = \"{a}\""),
        );
        c.write_config(&text).unwrap();
        c.lb_admin = a;
    }
    c.start_node("n1").unwrap();
    let config = c.config_path.clone();
    c.start_process(
        "lb",
        &bin("lb"),
        &[std::ffi::OsStr::new("--config"), config.as_os_str()],
    )
    .unwrap();
    let status = format!("{}/status", c.admin_url());
    let probe = reqwest::blocking::Client::new();
    wait_until(
        Duration::from_secs(20),
        "the admin listener answers",
        || probe.get(&status).send().is_ok_and(|r| r.status() == 401),
    )
    .unwrap_or_else(|e| panic!("{e}; lb log:\n{}", c.log("lb")));
    c
}

#[test]
fn the_admin_listener_with_a_token_answers_401_without_it_or_with_a_wrong_one_and_200_with_it() {
    let c = cluster_with_admin_token(None);
    let admin = c.admin_url();
    let http = reqwest::blocking::Client::new();
    for (method, path) in [("GET", "/status"), ("GET", "/metrics"), ("POST", "/reload")] {
        let url = format!("{admin}{path}");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let send = |auth: Option<&str>| {
            let mut rb = http.request(m.clone(), &url);
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            rb.send().unwrap()
        };
        let r = send(None);
        assert_eq!(r.status(), 401, "{method} {path} without a token");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{:?}",
            r.headers()
        );
        for wrong in [
            "Bearer admin-token-0123456789abcdeX",
            "Bearer admin-token",
            &format!("Basic {ADMIN_TOKEN}"),
            ADMIN_TOKEN,
        ] {
            assert_eq!(
                send(Some(wrong)).status(),
                401,
                "{method} {path} with {wrong:?}"
            );
        }
        let r = send(Some(&format!("Bearer {ADMIN_TOKEN}")));
        assert_eq!(r.status(), 200, "{method} {path} with the token");
    }
    // The token guards the admin listener only: clients of the lb need none.
    assert_eq!(User::new().incr(&c.lb_url(), "n").unwrap().status, 200);
    assert!(
        !c.log("lb").contains("not on loopback"),
        "an admin listener on loopback is not warned about"
    );
}

#[test]
fn an_admin_listener_off_loopback_is_warned_about_at_start() {
    // 0.0.0.0 is every interface: not loopback. The token keeps it closed meanwhile.
    let port = cluster_tests::free_port(Ipv4Addr::UNSPECIFIED);
    let c = cluster_with_admin_token(Some(SocketAddr::from(([0, 0, 0, 0], port))));
    let log = c.log("lb");
    assert!(
        log.contains("the admin listener is not on loopback") && log.contains("WARN"),
        "{log}"
    );
    assert!(
        !log.contains(ADMIN_TOKEN),
        "the token is never logged: {log}"
    );
}

#[test]
fn with_trusted_set_a_node_refuses_other_sources_but_answers_the_lb_and_the_clusters_own_addresses()
{
    let mut c = Cluster::prepare(ClusterSpec {
        nodes: 2,
        lb: true,
        ..ClusterSpec::default()
    })
    .unwrap();
    // On loopback the lb and the nodes connect from 127.0.0.1 whatever address they listen on: trust it, and
    // come from elsewhere to be a stranger.
    let text = std::fs::read_to_string(&c.config_path).unwrap();
    assert!(text.contains("[node]\n"));
    let text = text.replace(
        "[node]\n",
        "[node]\ntrusted = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n",
    );
    c.write_config(&text).unwrap();
    for n in ["n1", "n2"] {
        c.start_node(n).unwrap();
    }
    c.start_lb().unwrap();

    let stranger = client_from(Ipv4Addr::new(127, 0, 0, 3));
    for path in ["/session", "/_node/health", "/_node/metrics"] {
        let r = stranger
            .get(format!("{}{path}", c.node_url("n1")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 403, "{path} straight from a stranger");
        let v: Value = r.json().unwrap();
        assert!(v["error"].as_str().unwrap().contains("trusted"), "{v}");
    }
    let r = stranger
        .post(format!("{}/session/incr/n", c.node_url("n2")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);

    // The same stranger through the lb: the lb is trusted, the request is served (and forwarded between the
    // nodes as needed).
    for i in 1..=5 {
        let r = stranger
            .post(format!("{}/session/incr/n", c.lb_url()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "through the lb");
        assert_eq!(
            r.json::<Value>().unwrap()["value"],
            1,
            "a new session each time (no cookie): {i}"
        );
    }

    // From the address the file gives the lb and the nodes: trusted without being listed.
    let own = client_from(c.ip);
    let r = own
        .get(format!("{}/_node/health", c.node_url("n1")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "from the cluster's own address {}", c.ip);
    // And from a listed source (the test's default, 127.0.0.1).
    assert_eq!(
        User::new().incr(&c.node_url("n1"), "n").unwrap().status,
        200
    );

    let log = c.log("n1");
    assert!(
        log.contains("refused a connection from a source not in [node] trusted")
            && log.contains("127.0.0.3"),
        "{log}"
    );
    let warnings = log.matches("refused a connection from a source").count();
    assert_eq!(
        warnings, 1,
        "one warning for the burst, the rest at debug level: {log}"
    );
}
