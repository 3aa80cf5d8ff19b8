//! WebSockets through the lb to an app behind a sidecar node (issue 13): pinned by the routing cookie like any
//! request, and moved with their session: a draining node closes them with 1001 once their session has left,
//! and the client's reconnect lands on the session's live owner, session intact.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use cluster_tests::test_app::TestApp;
use cluster_tests::{
    connect_from, cookie_pair, metric_present, raw_header, wait_until, Cluster, ClusterSpec, User,
};
use node::websocket::{encode, frame, OP_CLOSE, OP_TEXT};

/// A client's open WebSocket, over a raw connection.
struct Ws {
    s: TcpStream,
    /// Bytes read past the last whole frame.
    buf: Vec<u8>,
    /// `X-Served-By` of the 101.
    served_by: String,
}

impl Ws {
    /// Opens `/ws` at `to` with `cookie`; fails unless the answer is 101 with the right accept key.
    fn open(to: SocketAddr, cookie: &str) -> Result<Ws> {
        let s = TcpStream::connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ws::handshake(s, cookie)
    }

    /// Opens `/ws` over `s`, as [`Ws::open`].
    fn handshake(mut s: TcpStream, cookie: &str) -> Result<Ws> {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: shop\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nCookie: {cookie}\r\n\r\n"
        )?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk)?;
            ensure!(
                n > 0,
                "closed before the answer: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        ensure!(head.starts_with("HTTP/1.1 101"), "not switched: {head}");
        let accept = cluster_tests::test_app::accept_key(key.as_bytes());
        ensure!(
            raw_header(&head, "sec-websocket-accept") == Some(accept),
            "{head}"
        );
        let served_by =
            raw_header(&head, "x-served-by").ok_or_else(|| anyhow!("no X-Served-By: {head}"))?;
        Ok(Ws {
            s,
            buf: buf[head_end..].to_vec(),
            served_by,
        })
    }

    /// The next whole frame: opcode and payload.
    fn next(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((h, payload, used)) = frame(&self.buf) {
                self.buf.drain(..used);
                return Ok((h.opcode, payload));
            }
            let n = self.s.read(&mut chunk)?;
            ensure!(n > 0, "the connection ended without a close frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `text` (masked, as a client must) and returns the app's answer.
    fn ask(&mut self, text: &str) -> Result<String> {
        self.s
            .write_all(&encode(OP_TEXT, text.as_bytes(), Some(rand::random())))?;
        let (op, payload) = self.next()?;
        ensure!(op == OP_TEXT, "answer opcode {op}");
        Ok(String::from_utf8(payload)?)
    }
}

/// A sidecar cluster with the lb and an app per node, and a user whose session holds two items.
fn shop() -> Result<(Cluster, Vec<TestApp>, tokio::runtime::Runtime, User)> {
    shop_with(|_| Ok(()))
}

/// [`shop`], with `tune` applied to the prepared cluster before anything starts.
fn shop_with(
    tune: impl FnOnce(&mut Cluster) -> Result<()>,
) -> Result<(Cluster, Vec<TestApp>, tokio::runtime::Runtime, User)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut c = Cluster::prepare(ClusterSpec {
        lb: true,
        sidecar: true,
        ..ClusterSpec::default()
    })?;
    tune(&mut c)?;
    c.rewrite_config()?;
    for n in c.nodes.clone() {
        c.start_node(&n.name)?;
    }
    c.start_lb()?;
    let apps: Vec<TestApp> = c
        .nodes
        .iter()
        .map(|n| TestApp::start(&rt, n.app.expect("an app per node")))
        .collect();
    let mut u = User::new();
    for item in ["a", "b"] {
        let r = u.send(&c.lb_url(), "POST", &format!("/add/{item}"), None)?;
        ensure!(r.status == 200, "{r:?}");
    }
    Ok((c, apps, rt, u))
}

#[test]
fn a_websocket_stays_on_its_sessions_node_and_after_the_drain_reconnects_to_the_live_owner_intact(
) -> Result<()> {
    let (mut c, _apps, _rt, mut u) = shop()?;
    let lb = c.lb_url();
    let cookie = u.cookie.clone().expect("a routing cookie");
    let (owner, _) = cookie_pair(&c.config(), &cookie).expect("a cookie of this cluster");

    // Pinned like a request: the session's primary answers, and the app has the session.
    let mut ws = Ws::open(c.lb_listen, &cookie)?;
    assert_eq!(ws.served_by, owner);
    for i in 0..3 {
        assert_eq!(ws.ask(&format!("hello {i}"))?, format!("2:hello {i}"));
    }

    // The owner drains: once the session has left it, the WebSocket is closed with 1001.
    let at = c.nodes.iter().position(|n| n.name == owner).unwrap();
    c.spec.node_extra.insert(at, "drain = true".into());
    c.rewrite_config()?;
    for n in c.nodes.clone() {
        c.signal(&n.name, libc::SIGHUP);
    }
    c.signal("lb", libc::SIGHUP);
    let (op, payload) = ws.next()?;
    assert_eq!((op, &payload[..]), (OP_CLOSE, &1001u16.to_be_bytes()[..]));
    // The client answers the close, as RFC 6455 asks; the node then ends the relay.
    ws.s.write_all(&encode(OP_CLOSE, &payload, Some(rand::random())))?;
    wait_until(
        Duration::from_secs(5),
        "the owner to count its 1001 close",
        || metric_present(&c.node_url(&owner), "node_websockets_going_away_total") == 1.0,
    )?;

    // The reconnect with the same cookie reaches the session's new owner, with the session as it was.
    wait_until(
        Duration::from_secs(10),
        "the session to have a new owner",
        || {
            u.send(&lb, "GET", "/show", None).is_ok_and(|r| {
                r.status == 200 && r.served_by.as_deref().is_some_and(|s| s != owner)
            })
        },
    )?;
    let cookie = u.cookie.clone().expect("the re-minted cookie");
    let mut again = Ws::open(c.lb_listen, &cookie)?;
    assert_ne!(again.served_by, owner);
    assert_eq!(again.ask("back")?, "2:back");
    Ok(())
}

#[test]
fn a_stopping_node_closes_its_websockets_with_1001_and_the_reconnect_finds_the_session(
) -> Result<()> {
    let (c, _apps, _rt, u) = shop()?;
    let cookie = u.cookie.clone().expect("a routing cookie");
    let (owner, _) = cookie_pair(&c.config(), &cookie).expect("a cookie of this cluster");
    let mut ws = Ws::open(c.lb_listen, &cookie)?;
    assert_eq!(ws.ask("hi")?, "2:hi");
    c.signal(&owner, libc::SIGTERM);
    let (op, payload) = ws.next()?;
    assert_eq!((op, &payload[..]), (OP_CLOSE, &1001u16.to_be_bytes()[..]));
    // The same cookie: the lb fails over, the session is taken over from its copy.
    let mut again = Ws::open(c.lb_listen, &cookie)?;
    assert_ne!(again.served_by, owner);
    assert_eq!(again.ask("back")?, "2:back");
    Ok(())
}

#[test]
fn behind_layer_4_a_websocket_that_reaches_another_node_is_relayed_to_its_sessions_owner(
) -> Result<()> {
    let mut l4 = None;
    let (c, _apps, _rt, u) = shop_with(|c| {
        let addr = c.unused_addr();
        c.spec.lb_extra = format!("[lb.l4]\nlisten = \"{addr}\"\n");
        l4 = Some(addr);
        Ok(())
    })?;
    let l4 = l4.expect("a Layer-4 address");
    let cookie = u.cookie.clone().expect("a routing cookie");
    let (owner, _) = cookie_pair(&c.config(), &cookie).expect("a cookie of this cluster");
    // A client address the director sends to another node than the session's owner.
    let base: u8 = rand::random::<u8>() % 200 + 20;
    let elsewhere = (1..=64)
        .map(|i| std::net::Ipv4Addr::new(127, base, 33, i))
        .find(|&a| ws_node(a, l4).is_some_and(|n| n != owner))
        .expect("some address reaches another node");
    let mut ws = Ws::handshake(connect_from(elsewhere, l4)?, &cookie)?;
    assert_eq!(
        ws.served_by, owner,
        "answered by the owner's app, through the node it reached"
    );
    assert_eq!(ws.ask("via l4")?, "2:via l4");
    Ok(())
}

/// The node a new connection from `from` reaches through `l4` (its `X-Served-By` for a request without a
/// session, which that node serves itself).
fn ws_node(from: std::net::Ipv4Addr, l4: SocketAddr) -> Option<String> {
    let mut s = connect_from(from, l4).ok()?;
    write!(
        s,
        "GET /show HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let head = out.split("\r\n\r\n").next()?;
    raw_header(head, "x-served-by")
}
