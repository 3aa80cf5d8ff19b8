//! Network namespaces a test makes for itself, so it can cut links between real processes.
//!
//! [`Netns::create`] makes one namespace per node (`srv<pid>-<test#>-n1`, ...), a bridge in the root namespace
//! with an address, and a veth pair joining each namespace to the bridge, all in a private /24 of 10.0.0.0/8
//! unique to the process and the test. Nodes run inside their namespaces (`ip netns exec`), the lb and the
//! test in the root namespace, which reaches every node over the bridge. [`Netns::cut`] blackholes a node's
//! /32 inside another node's namespace (both ways); [`Netns::cut_root`] does it in the root namespace (the lb,
//! and the test, lose the node). Dropping the guard deletes every route, veth, namespace and the bridge, also
//! when the test panics.
//!
//! [`Netns::probe`] says whether namespaces can be made here (root, `ip`, bridges, veths); tests skip with a
//! message on stderr when they cannot.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{Cluster, ClusterSpec};

/// Tests in this process that made namespaces so far: part of every name and of the subnet.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Node ports inside the namespaces: each node has an address of its own, so fixed ports do.
pub const HTTP_PORT: u16 = 7080;
/// See [`HTTP_PORT`].
pub const REPL_PORT: u16 = 7081;

/// The `ip` binary.
fn ip_bin() -> Option<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs `ip args...`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let bin = ip_bin().context("no ip binary")?;
    let out = Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip netns exec ns ip args...`.
fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

/// One route we added, to delete again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cut {
    /// The namespace it is in; `None`: the root namespace.
    ns: Option<String>,
    /// The blackholed address.
    dst: Ipv4Addr,
}

/// Namespaces, a bridge and veths for one test; everything goes when it is dropped.
pub struct Netns {
    /// `srv<pid>-<test#>`: the prefix of every name.
    pub tag: String,
    /// Namespace of node `n{i+1}`, by index.
    pub names: Vec<String>,
    /// Address of node `n{i+1}` (inside its namespace), by index.
    pub addrs: Vec<Ipv4Addr>,
    /// The bridge's address in the root namespace.
    pub bridge_addr: Ipv4Addr,
    bridge: Option<String>,
    /// Root ends of the veth pairs made so far.
    veths: Vec<String>,
    /// Namespaces made so far.
    made: Vec<String>,
    cuts: Mutex<Vec<Cut>>,
}

impl Netns {
    /// Whether this process can make namespaces, bridges and veths: `Err` says why not. Tried once per
    /// process (tests of one process run in parallel; the throwaway names are the process's).
    ///
    /// # Errors
    /// When not root, without `ip`, or when making a throwaway namespace, bridge or veth pair fails.
    pub fn probe() -> Result<(), String> {
        static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
        PROBED.get_or_init(Netns::probe_once).clone()
    }

    fn probe_once() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        if ip_bin().is_none() {
            return Err("no ip binary (iproute2)".into());
        }
        let pid = std::process::id();
        let (ns, br, veth) = (
            format!("srv{pid}-probe"),
            format!("sb{pid}p"),
            format!("sv{pid}p"),
        );
        let r = (|| {
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &br, "type", "bridge"])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])
        })();
        let _ = ip(&["link", "del", &veth]);
        let _ = ip(&["link", "del", &br]);
        let _ = ip(&["netns", "del", &ns]);
        r.map_err(|e| e.to_string())
    }

    /// [`Netns::create`] when [`Netns::probe`] passes; else prints `skipped: network namespaces unavailable
    /// (why)` to stderr, naming `test`, and returns `None`.
    ///
    /// # Panics
    /// When the probe passes but making the namespaces fails.
    pub fn create_or_skip(test: &str, nodes: usize) -> Option<Netns> {
        if let Err(why) = Netns::probe() {
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: network namespaces unavailable ({why})"
            );
            return None;
        }
        Some(Netns::create(nodes).expect("namespaces, bridge and veths are made"))
    }

    /// Makes `nodes` namespaces joined by a bridge (see the module doc).
    ///
    /// # Errors
    /// When an `ip` command fails; what was made so far is deleted again.
    pub fn create(nodes: usize) -> Result<Netns> {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("srv{pid}-{n}");
        let bridge_addr = free_subnet(pid, n)?;
        let o = bridge_addr.octets();
        let mut net = Netns {
            tag: tag.clone(),
            names: Vec::new(),
            addrs: Vec::new(),
            bridge_addr,
            bridge: None,
            veths: Vec::new(),
            made: Vec::new(),
            cuts: Mutex::new(Vec::new()),
        };
        // Interface names are at most 15 bytes: `sb<pid>-<n>` and `sv<pid>-<n>-<i>`.
        let br = format!("sb{pid}-{n}");
        ip(&["link", "add", &br, "type", "bridge"])?;
        net.bridge = Some(br.clone());
        ip(&["addr", "add", &format!("{bridge_addr}/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..nodes {
            let ns = format!("{tag}-n{}", i + 1);
            ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            let veth = format!("sv{pid}-{n}-{}", i + 1);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            net.veths.push(veth.clone());
            ip(&["link", "set", &veth, "master", &br])?;
            ip(&["link", "set", &veth, "up"])?;
            let addr = Ipv4Addr::new(o[0], o[1], o[2], 10 + i as u8);
            ip_in(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip_in(&ns, &["link", "set", "eth0", "up"])?;
            ip_in(&ns, &["link", "set", "lo", "up"])?;
            net.names.push(ns);
            net.addrs.push(addr);
        }
        Ok(net)
    }

    /// Index of node `name` (`n1` is 0).
    fn index(name: &str) -> usize {
        name.strip_prefix('n')
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| i.checked_sub(1))
            .unwrap_or_else(|| panic!("not a node name: {name}"))
    }

    /// Namespace of node `name`.
    pub fn ns(&self, name: &str) -> &str {
        &self.names[Netns::index(name)]
    }

    /// Address of node `name`.
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.addrs[Netns::index(name)]
    }

    /// The command prefix that runs a program inside node `name`'s namespace.
    pub fn exec_prefix(&self, name: &str) -> Vec<OsString> {
        let ip = ip_bin().expect("probed");
        vec![
            ip.into_os_string(),
            "netns".into(),
            "exec".into(),
            self.ns(name).into(),
        ]
    }

    /// Writes the cluster file for `spec` with node `n{i+1}` on this guard's address `i` (ports [`HTTP_PORT`]
    /// and [`REPL_PORT`]) and the lb on loopback, starts every node inside its namespace, then the lb when
    /// `spec.lb` is set.
    ///
    /// # Errors
    /// When a process does not start or become healthy.
    pub fn start_cluster(&self, spec: ClusterSpec) -> Result<Cluster> {
        assert!(spec.nodes <= self.addrs.len(), "a namespace per node");
        let hosts = &self.addrs[..spec.nodes];
        let mut c = Cluster::prepare_on_hosts(spec, hosts, HTTP_PORT, REPL_PORT)?;
        for n in c.nodes.clone() {
            c.set_node_prefix(&n.name, self.exec_prefix(&n.name));
            c.start_node(&n.name)?;
        }
        if c.spec.lb {
            c.start_lb()?;
        }
        Ok(c)
    }

    fn add_cut(&self, ns: Option<&str>, dst: Ipv4Addr) -> Result<()> {
        let d = format!("{dst}/32");
        match ns {
            Some(ns) => ip_in(ns, &["route", "add", "blackhole", &d])?,
            None => ip(&["route", "add", "blackhole", &d])?,
        }
        self.cuts.lock().unwrap().push(Cut {
            ns: ns.map(str::to_string),
            dst,
        });
        Ok(())
    }

    fn del_cut(cut: &Cut) -> Result<()> {
        let d = format!("{}/32", cut.dst);
        match &cut.ns {
            Some(ns) => ip_in(ns, &["route", "del", "blackhole", &d]),
            None => ip(&["route", "del", "blackhole", &d]),
        }
    }

    /// Cuts nodes `a` and `b` from each other: a blackhole route for the other's address in both namespaces.
    ///
    /// # Errors
    /// When a route cannot be added.
    pub fn cut(&self, a: &str, b: &str) -> Result<()> {
        self.add_cut(Some(self.ns(a)), self.addr(b))?;
        self.add_cut(Some(self.ns(b)), self.addr(a))
    }

    /// Cuts the root namespace (the lb, and the test itself) from node `a`: a blackhole route for its address.
    ///
    /// # Errors
    /// When the route cannot be added.
    pub fn cut_root(&self, a: &str) -> Result<()> {
        self.add_cut(None, self.addr(a))
    }

    /// Deletes every route [`Netns::cut`] and [`Netns::cut_root`] added.
    ///
    /// # Errors
    /// When a route cannot be deleted.
    pub fn heal(&self) -> Result<()> {
        let cuts = std::mem::take(&mut *self.cuts.lock().unwrap());
        for c in &cuts {
            Netns::del_cut(c)?;
        }
        Ok(())
    }

    /// `GET path` on `addr` from inside node `name`'s namespace (so it reaches the node whatever is cut):
    /// the status and the body. A plain HTTP/1.0 request on a thread that entered the namespace.
    ///
    /// # Errors
    /// When the namespace cannot be entered or the request fails.
    pub fn get_in(&self, name: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let file = PathBuf::from("/var/run/netns").join(self.ns(name));
        let path = path.to_string();
        std::thread::spawn(move || -> Result<(u16, String)> {
            let ns = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace file we hold open; it moves only this thread, which ends here.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let (head, body) = text.split_once("\r\n\r\n").context("no head")?;
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("no status")?;
            Ok((status, body.to_string()))
        })
        .join()
        .expect("the namespace thread does not panic")
    }
}

/// The bridge's address, `10.a.b.1`, in a /24 derived from the pid and the test number that no interface
/// here is on yet.
fn free_subnet(pid: u32, n: u32) -> Result<Ipv4Addr> {
    let taken = Command::new(ip_bin().context("no ip binary")?)
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let routes = Command::new(ip_bin().context("no ip binary")?)
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let start = pid.wrapping_mul(64).wrapping_add(n.wrapping_mul(7));
    for k in 0..4096u32 {
        // 10.64.0.0 to 10.191.255.0: clear of the usual 10.0.x.x and 10.255.x.x.
        let x = start.wrapping_add(k) % (128 * 256);
        let (a, b) = (64 + (x / 256) as u8, (x % 256) as u8);
        let prefix = format!("10.{a}.{b}.");
        if !taken.contains(&prefix) && !routes.contains(&prefix) {
            return Ok(Ipv4Addr::new(10, a, b, 1));
        }
    }
    bail!("no free 10.x.y.0/24")
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in std::mem::take(&mut *self.cuts.lock().unwrap()) {
            if c.ns.is_none() {
                let _ = Netns::del_cut(&c);
            }
        }
        // Deleting the root end of a veth deletes its peer at once; a namespace's own deletion is deferred.
        for v in &self.veths {
            let _ = ip(&["link", "del", v]);
        }
        for ns in &self.made {
            let _ = ip(&["netns", "del", ns]);
        }
        if let Some(br) = &self.bridge {
            let _ = ip(&["link", "del", br]);
        }
    }
}
