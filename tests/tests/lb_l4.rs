//! The Layer-4 listener (`[lb.l4]`, seed 004's local director): raw TCP connections from several 127.x.y.z
//! client addresses, each a new connection, through the real lb to real nodes.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use cluster_tests::{
    connect_from, raw_header, raw_headers, sample, wait_until, Cluster, ClusterSpec,
};

/// What a test reads of an answer that came over one fresh connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    served_by: Option<String>,
    /// `SRVSESSION=...` when the answer set one.
    cookie: Option<String>,
    body: String,
}

/// One request over a new connection from `from`, the connection closed after the answer.
fn request(
    from: Ipv4Addr,
    to: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> Result<Answer> {
    let mut s = connect_from(from, to)?;
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: l4\r\n{cookie}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no whole answer from {to}: {text:?}"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status line: {head:?}"))?;
    let cookie = raw_headers(head)
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| v.starts_with("SRVSESSION=").then(|| v.split(';').next()))
        .flatten()
        .map(str::to_string);
    Ok(Answer {
        status,
        served_by: raw_header(head, "x-served-by"),
        cookie,
        body: body.to_string(),
    })
}

/// Client addresses of their own, away from the cluster's address.
fn clients(n: u8) -> Vec<Ipv4Addr> {
    let base: u8 = rand::random::<u8>() % 200 + 20;
    (1..=n).map(|i| Ipv4Addr::new(127, base, 17, i)).collect()
}

/// `lb_l4_connections_total{outcome="ok"}` per node, from the admin listener.
fn connections(c: &Cluster) -> BTreeMap<String, u64> {
    let text = reqwest::blocking::get(format!("{}/metrics", c.admin_url()))
        .and_then(|r| r.text())
        .unwrap_or_default();
    c.nodes
        .iter()
        .map(|n| {
            let series = format!(
                "lb_l4_connections_total{{node=\"{}\",outcome=\"ok\"}}",
                n.name
            );
            (n.name.clone(), sample(&text, &series) as u64)
        })
        .collect()
}

/// The nodes whose connection count grew between two readings.
fn grown(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// A cluster of three nodes and the lb with a Layer-4 listener; `l4_extra` goes into `[lb.l4]`.
fn start(l4_extra: &str, lb_extra: &str, node_defaults: &str) -> Result<(Cluster, SocketAddr)> {
    let mut c = Cluster::prepare(ClusterSpec {
        lb: true,
        node_defaults_extra: node_defaults.to_string(),
        ..ClusterSpec::default()
    })?;
    let l4 = c.unused_addr();
    c.spec.lb_extra = format!("{lb_extra}\n[lb.l4]\nlisten = \"{l4}\"\n{l4_extra}\n");
    c.rewrite_config()?;
    for n in c.nodes.clone() {
        c.start_node(&n.name)?;
    }
    c.start_lb()?;
    Ok((c, l4))
}

/// The node a new session from `from` lands on (a new session is made where the connection arrives).
fn node_of(from: Ipv4Addr, l4: SocketAddr) -> Result<String> {
    let a = request(from, l4, "GET", "/session", None)?;
    anyhow::ensure!(a.status == 200, "new session from {from}: {a:?}");
    a.served_by
        .ok_or_else(|| anyhow!("no X-Served-By from {from}"))
}

#[test]
fn connections_from_one_address_stay_on_one_node_and_only_its_clients_move_when_it_dies(
) -> Result<()> {
    let (mut c, l4) = start("connect_timeout_ms = 300\n", "", "")?;
    let addrs = clients(12);
    let home: Vec<String> = addrs
        .iter()
        .map(|&a| node_of(a, l4))
        .collect::<Result<_>>()?;
    let used: HashSet<&String> = home.iter().collect();
    assert!(used.len() >= 2, "12 addresses all on one node: {home:?}");

    // One client's session, and 200 connections of its own: every one reaches the same node.
    let me = addrs[0];
    let mut cookie = None;
    for i in 1..=3 {
        let a = request(me, l4, "POST", "/session/incr/n", cookie.as_deref())?;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body.contains(&format!("\"value\":{i}")), "{a:?}");
        cookie = a.cookie.or(cookie);
    }
    let cookie = cookie.context("a routing cookie")?;
    let before = connections(&c);
    for _ in 0..200 {
        let a = request(me, l4, "GET", "/session", Some(&cookie))?;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let reached = grown(&before, &connections(&c));
    assert_eq!(
        reached,
        BTreeMap::from([(home[0].clone(), 200)]),
        "200 connections from {me}"
    );

    // Its node dies: the next connections from the same address all reach one other node, where the session
    // is recovered from the cookie with nothing lost; no other node's clients move.
    c.kill(&home[0]);
    let first = request(me, l4, "POST", "/session/incr/n", Some(&cookie))?;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(
        first.body.contains("\"value\":4"),
        "the session survives: {first:?}"
    );
    let before = connections(&c);
    for _ in 0..50 {
        let a = request(me, l4, "GET", "/session", Some(&cookie))?;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body.contains("\"n\":4"), "{a:?}");
    }
    let moved_to = grown(&before, &connections(&c));
    assert_eq!(moved_to.len(), 1, "one new node for {me}: {moved_to:?}");
    assert!(!moved_to.contains_key(&home[0]));
    for (a, h) in addrs.iter().zip(&home) {
        let now = node_of(*a, l4)?;
        if h == &home[0] {
            assert_ne!(&now, h, "{a} is still sent to the dead node");
        } else {
            assert_eq!(&now, h, "{a} moved though its node {h} lives");
        }
    }
    Ok(())
}

#[test]
fn a_draining_node_loses_its_open_connections_at_the_grace_period_and_new_ones_go_elsewhere(
) -> Result<()> {
    let (c, l4) = start("", "grace_period_s = 1", "")?;
    let me = clients(1)[0];
    let home = node_of(me, l4)?;
    // An idle keep-alive connection to the home node.
    let mut open = connect_from(me, l4)?;
    write!(open, "GET /_node/health HTTP/1.1\r\nHost: l4\r\n\r\n")?;
    let mut buf = [0u8; 4096];
    let n = open.read(&mut buf)?;
    assert!(String::from_utf8_lossy(&buf[..n]).contains(&format!("\"name\":\"{home}\"")));

    let text = std::fs::read_to_string(&c.config_path)?;
    let drained = text.replacen(
        &format!("name = \"{home}\"\n"),
        &format!("name = \"{home}\"\ndrain = true\n"),
        1,
    );
    assert_ne!(text, drained, "the file names {home}");
    c.write_config(&drained)?;
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/reload", c.admin_url()))
        .send()?;
    assert!(r.status().is_success(), "reload: {}", r.text()?);

    // Closed by the lb within the grace period and its checks (the client sees the end of the stream).
    open.set_read_timeout(Some(Duration::from_secs(10)))?;
    let ended = open.read(&mut buf)?;
    assert_eq!(ended, 0, "the connection to the draining node was closed");
    assert_ne!(
        node_of(me, l4)?,
        home,
        "new connections avoid the draining node"
    );
    let text = reqwest::blocking::get(format!("{}/metrics", c.admin_url()))?.text()?;
    assert_eq!(sample(&text, "lb_l4_closed_total{reason=\"retired\"}"), 1.0);
    Ok(())
}

#[test]
fn connections_past_the_limit_are_closed_at_once_and_counted() -> Result<()> {
    let (c, l4) = start("max_connections = 2\n", "", "")?;
    let me = clients(1)[0];
    let text_of = || -> Result<String> {
        Ok(reqwest::blocking::get(format!("{}/metrics", c.admin_url()))?.text()?)
    };
    let sum = |series: &str| {
        text_of().map_or(-1.0, |t| {
            c.nodes
                .iter()
                .map(|n| sample(&t, &series.replace("NODE", &n.name)))
                .sum::<f64>()
        })
    };
    let open = || sum("lb_l4_open_connections{node=\"NODE\"}");
    // Starting the lb checked that this listener accepts: a connection too, relayed and counted; it must have
    // come and gone first.
    wait_until(
        Duration::from_secs(5),
        "the start-up check's connection to end",
        || sum("lb_l4_connections_total{node=\"NODE\",outcome=\"ok\"}") >= 1.0 && open() == 0.0,
    )?;
    let held: Vec<TcpStream> = (0..2)
        .map(|_| connect_from(me, l4))
        .collect::<Result<_>>()?;
    wait_until(Duration::from_secs(5), "both held connections open", || {
        open() == 2.0
    })?;
    let mut third = connect_from(me, l4)?;
    let mut buf = [0u8; 16];
    assert_eq!(third.read(&mut buf).unwrap_or(0), 0, "the third is closed");
    assert_eq!(
        sample(&text_of()?, "lb_l4_refused_total{reason=\"limit\"}"),
        1.0
    );
    drop(held);
    wait_until(Duration::from_secs(5), "room again", || {
        node_of(me, l4).is_ok()
    })?;
    Ok(())
}

#[test]
fn with_send_proxy_the_node_learns_the_client_address_and_without_accept_proxy_refuses_the_header(
) -> Result<()> {
    // The test reads node metrics from 127.0.0.1; relayed clients come from other addresses.
    let (c, l4) = start(
        "send_proxy = true\n",
        "",
        "accept_proxy = true\ntrusted = [\"127.0.0.1/32\"]\n",
    )?;
    let me = clients(1)[0];
    let home = node_of(me, l4)?;
    let proxied = |c: &Cluster, node: &str| {
        cluster_tests::metric(&c.node_url(node), "node_proxied_connections_total")
    };
    assert!(proxied(&c, &home) >= 1.0, "{home} read a PROXY header");
    // The node's own paths answer a relayed client only as they would answer it directly.
    let a = request(me, l4, "GET", "/_node/metrics", None)?;
    assert_eq!(a.status, 404, "{a:?}");
    // Health checks and the Layer-7 path send none, and are still served.
    let mut u = cluster_tests::User::new();
    assert_eq!(u.get(&c.lb_url())?.status, 200);

    // A node that does not accept the header does not serve a connection that begins with one.
    let (plain, _) = start("", "", "")?;
    let node = plain.node("n1").http;
    let mut s = connect_from(me, node)?;
    let mut bytes = node::proxy_header::encode(SocketAddr::from((me, 1234)), node);
    bytes.extend_from_slice(b"GET /session HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n");
    s.write_all(&bytes)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains(" 200 "), "served a PROXY connection: {text}");
    wait_until(Duration::from_secs(5), "n1 still answers", || {
        reqwest::blocking::get(format!("{}/_node/health", plain.node_url("n1")))
            .is_ok_and(|r| r.status().is_success())
    })?;
    Ok(())
}
