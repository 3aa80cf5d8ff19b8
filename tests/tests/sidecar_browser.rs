//! The example shop (`node/examples/cart/app.py`, Flask) behind three nodes in sidecar mode and the lb, used by
//! a real headless Chromium: what a person sees when the node serving them dies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use cluster_tests::webdriver::{self, Browser};
use cluster_tests::{wait_http_ok, wait_until, Cluster, ClusterSpec};

/// How long a page may take to show what a click or a reload should show (a failover included).
const PAGE: Duration = Duration::from_secs(15);

/// The workspace root, where `node/examples` and `target` are.
fn workspace() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// The target directory, as cargo has it.
fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map_or_else(|_| workspace().join("target"), PathBuf::from)
}

/// A sidecar cluster with lb, and the example shop beside each node, on the cluster's own loopback address.
fn shop_cluster() -> Cluster {
    let mut c = Cluster::start(ClusterSpec {
        nodes: 3,
        lb: true,
        sidecar: true,
        ..Default::default()
    })
    .expect("cluster starts");
    let app_py = workspace().join("node/examples/cart/app.py");
    let ip = c.ip.to_string();
    for n in c.nodes.clone() {
        let app = n
            .app
            .expect("a sidecar cluster gives every node an app address");
        let port = app.port().to_string();
        let key = format!("app-{}", n.name);
        let args = [
            app_py.as_os_str(),
            "--port".as_ref(),
            port.as_ref(),
            "--host".as_ref(),
            ip.as_ref(),
        ];
        c.start_process(&key, Path::new("/usr/bin/python3"), &args)
            .expect("the app starts");
        wait_http_ok(&format!("http://{app}/healthz"), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}; app log:\n{}", c.log(&key)));
    }
    c
}

/// The quantity of `product` the page shows, `None` when the cart has no line for it (or the page is loading).
fn qty(b: &Browser, product: &str) -> Option<u32> {
    b.text(&format!("#qty-{product}")).ok()?.trim().parse().ok()
}

/// Waits until the page shows the cart `want` (each product with its quantity, nothing else) and its count.
fn wait_cart(b: &Browser, want: &[(&str, u32)], why: &str) -> Result<()> {
    let count: u32 = want.iter().map(|(_, q)| q).sum();
    let what = format!("the page to show the cart {want:?} (count {count}) {why}");
    wait_until(PAGE, &what, || {
        let lines = b.count("[id^='qty-']").unwrap_or(usize::MAX);
        let shown = b
            .text("#count")
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        lines == want.len()
            && shown == Some(count)
            && want.iter().all(|(p, q)| qty(b, p) == Some(*q))
    })
}

/// Clicks Add on `product` and waits for the cart the click should give.
fn add(b: &Browser, product: &str, then: &[(&str, u32)]) -> Result<()> {
    b.click(&format!("#add-{product}"))?;
    wait_cart(b, then, &format!("after adding {product}"))
}

/// The shopper's visit; `killed` learns which node was killed, for the failure report.
fn shop(c: &mut Cluster, b: &Browser, killed: &mut Option<String>) -> Result<()> {
    let shop = format!("{}/", c.lb_url());
    b.goto(&shop)?;
    wait_until(PAGE, "the shop page with an empty cart", || {
        b.text("#count").is_ok_and(|t| t.trim() == "0") && b.find("#empty").is_ok()
    })?;
    let sid = b.text("#sid")?.trim().to_string();
    ensure!(
        sid.len() == 32 && sid.bytes().all(|c| c.is_ascii_hexdigit()),
        "the page should show the node's session id (32 hex digits), not {sid:?}"
    );
    let cookies = b.cookies()?;
    ensure!(
        cookies.iter().any(|(name, _)| name == "SRVSESSION"),
        "the browser should hold the routing cookie SRVSESSION; it has {cookies:?}"
    );

    add(b, "apple", &[("apple", 1)])?;
    add(b, "apple", &[("apple", 2)])?;
    add(b, "bread", &[("apple", 2), ("bread", 1)])?;
    ensure!(
        b.text("#sid")?.trim() == sid,
        "the session id changed while shopping"
    );

    // In sync mode the primary copy is in place before the answer: whoever holds it serves this shopper.
    let mut primary = None;
    wait_until(
        PAGE,
        "a node holding the primary copy of the session",
        || {
            primary = c.primary_of(&sid);
            primary.is_some()
        },
    )?;
    let Some(victim) = primary else {
        bail!("no node holds the primary copy")
    };
    // Kill the node and its app: the machine is gone, and the cart must not have lived in either.
    c.kill(&victim);
    c.kill(&format!("app-{victim}"));
    *killed = Some(victim.clone());
    eprintln!("killed {victim}, the primary of session {sid}, and its app; reloading the page");

    b.refresh()?;
    wait_cart(
        b,
        &[("apple", 2), ("bread", 1)],
        &format!("after {victim} was killed and the page reloaded"),
    )?;
    ensure!(
        b.text("#sid")?.trim() == sid,
        "the session should survive the node's death with its id, not be replaced"
    );
    // The killed node refuses the connection: only a live node can answer as the primary now.
    let mut now = None;
    wait_until(
        PAGE,
        "a live node holding the primary copy after the takeover",
        || {
            now = c.primary_of(&sid);
            now.is_some()
        },
    )?;
    eprintln!(
        "{} took the session over; the cart is whole",
        now.unwrap_or_default()
    );

    add(b, "cheese", &[("apple", 2), ("bread", 1), ("cheese", 1)])?;
    let orders = |b: &Browser| b.text("#orders").ok().map(|t| t.trim().to_string());
    ensure!(
        orders(b).as_deref() == Some("0"),
        "no order yet, the page shows {:?}",
        orders(b)
    );

    b.click("#checkout")?;
    wait_cart(b, &[], "after checking out")?;
    wait_until(PAGE, "the page to count one order", || {
        orders(b).as_deref() == Some("1")
    })?;
    if !b.url()?.starts_with(&shop) {
        bail!(
            "after checking out the browser should be back on the shop page, it is on {}",
            b.url()?
        );
    }
    Ok(())
}

#[test]
fn a_shopper_in_a_real_browser_keeps_the_cart_when_the_node_serving_it_is_killed() {
    if let Some(why) = webdriver::missing() {
        panic!("{why}");
    }
    // A report left by an earlier failure would mislead whoever looks after this run.
    for stale in [
        "sidecar-browser-failure.png",
        "sidecar-browser-failure.html",
    ] {
        let _ = std::fs::remove_file(target_dir().join(stale));
    }
    let mut c = shop_cluster();
    let b = Browser::start().expect("headless Chromium starts");
    let mut killed = None;
    if let Err(e) = shop(&mut c, &b, &mut killed) {
        panic!("{}", report(&c, &b, killed.as_deref(), &e));
    }
}

/// What a failure leaves: the error, a screenshot and the page source in `target/`, the text the page showed,
/// and the end of every process's log.
fn report(c: &Cluster, b: &Browser, killed: Option<&str>, e: &anyhow::Error) -> String {
    let target = target_dir();
    let shot = target.join("sidecar-browser-failure.png");
    let shot = match b.screenshot(&shot) {
        Ok(()) => format!("screenshot: {}", shot.display()),
        Err(err) => format!("no screenshot ({err:#})"),
    };
    let html = target.join("sidecar-browser-failure.html");
    let html = match b.source().and_then(|s| Ok(std::fs::write(&html, s)?)) {
        Ok(()) => format!("page source: {}", html.display()),
        Err(err) => format!("no page source ({err:#})"),
    };
    let url = b.url().unwrap_or_default();
    let text = b.text("body").unwrap_or_default();
    let mut out = format!(
        "{e:#}\nkilled: {}\n{shot}\n{html}\npage {url} shows:\n{text}\n",
        killed.unwrap_or("none yet")
    );
    let apps = c.nodes.iter().map(|n| format!("app-{}", n.name));
    let nodes = c.nodes.iter().map(|n| n.name.clone());
    for key in std::iter::once("lb".to_string()).chain(nodes).chain(apps) {
        out.push_str(&format!(
            "\n----- {key}.log -----\n{}",
            tail(&c.log(&key), 60)
        ));
    }
    out
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
