//! Launching the real `lb` and `node` binaries of a cluster file, and the signals faults send them.
//!
//! Children are spawned from the thread that owns the [`Procs`] (PR_SET_PDEATHSIG fires when the *spawning
//! thread* exits, so spawning from a short-lived thread would kill them early), die with the bench through
//! PR_SET_PDEATHSIG, and are killed when the [`Procs`] is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use node::config::ClusterConfig;

use crate::procs::Children;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The key the balancer process is kept under.
pub const LB: &str = "lb";

/// The resident memory of process `pid`, in KiB (`VmRSS` in /proc).
///
/// # Errors
/// When the process is gone or /proc says nothing readable.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")
}
/// The key of a Redis bank the bench started itself (`kill:redis-bank@10s` works like on a node).
pub const BANK: &str = node::config::BankConfig::NAME;

/// Directory of our own binaries: the bench's own.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    Ok(exe
        .parent()
        .context("bench binary has no directory")?
        .to_path_buf())
}

/// A cluster's processes, by key (`lb`, node names, or anything else started with [`Procs::spawn`]), over the
/// shared controller [`Children`].
pub struct Procs {
    /// The cluster file every child is started with.
    pub config_path: PathBuf,
    /// That file, validated.
    pub config: ClusterConfig,
    /// Where each child's output goes, as `<key>.log`: `$TMPDIR/bench-<pid>`.
    pub log_dir: PathBuf,
    bin_dir: PathBuf,
    children: Children,
}

impl Procs {
    /// Reads the cluster file; starts nothing yet. Children log at `warn` unless `RUST_LOG` says otherwise.
    ///
    /// # Errors
    /// When the file is invalid, or the log directory or the bench's own directory cannot be found or made.
    pub fn new(config_path: &Path) -> Result<Procs> {
        let config = ClusterConfig::load(config_path)?;
        let log_dir = std::env::temp_dir().join(format!("bench-{}", std::process::id()));
        // Per-request logging would make the cluster measure its logger; RUST_LOG still wins.
        let children = Children::new(log_dir.clone(), "warn")?;
        Ok(Procs {
            config_path: config_path.to_path_buf(),
            config,
            log_dir,
            bin_dir: bin_dir()?,
            children,
        })
    }

    /// Starts `program` (a path, or a binary next to the bench) under `key`, output to `<log_dir>/<key>.log`.
    pub fn spawn(&mut self, key: &str, program: &Path, args: &[&str]) -> Result<u32> {
        let program = if program.is_absolute() {
            program.to_path_buf()
        } else {
            self.bin_dir.join(program)
        };
        self.children.spawn(key, &program, args)
    }

    /// Starts the `node` binary as `name`; returns its pid. Does not wait for it to be healthy.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn start_node(&mut self, name: &str) -> Result<u32> {
        let cfg = self.config_path.display().to_string();
        self.spawn(name, Path::new("node"), &["--config", &cfg, "--name", name])
    }

    /// Starts the `lb` binary under the key [`LB`]; returns its pid. Does not wait for it to be healthy.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn start_lb(&mut self) -> Result<u32> {
        let cfg = self.config_path.display().to_string();
        self.spawn(LB, Path::new("lb"), &["--config", &cfg])
    }

    /// The address of the file's Redis bank when it is one server on a loopback address: one the bench may
    /// start itself.
    pub fn local_bank(&self) -> Option<SocketAddr> {
        let bank = self.config.replication.bank.as_ref()?;
        if bank.kind != node::config::BankKind::Server {
            return None;
        }
        let rest = bank.urls[0].strip_prefix("redis://")?;
        let addr: SocketAddr = rest.split('/').next()?.parse().ok()?;
        addr.ip().is_loopback().then_some(addr)
    }

    /// Starts `redis-server` (no persistence) on the file's local bank address under the key [`BANK`] and waits
    /// until it answers `PING` (at most 10 s).
    ///
    /// # Errors
    /// When the file names no local bank, `redis-server` is not installed, or it does not answer.
    pub async fn start_bank(&mut self) -> Result<u32> {
        let addr = self
            .local_bank()
            .context("the cluster file names no Redis bank on a loopback address")?;
        let program = which("redis-server")
            .context("redis-server is not installed (bash .ci/setup installs it)")?;
        let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
        let args = [
            "--bind",
            &ip,
            "--port",
            &port,
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        let pid = self.children.spawn(BANK, &program, &args)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_pong(addr).await {
            if Instant::now() > deadline || !self.children.is_running(BANK) {
                bail!(
                    "redis-server on {addr} did not answer PING; log:\n{}",
                    self.log_tail(BANK)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(pid)
    }

    /// Starts node or bank `key` again (a fault's restart). Does not wait for a node to be healthy.
    ///
    /// # Errors
    /// When it cannot be started.
    pub async fn restart(&mut self, key: &str) -> Result<u32> {
        if key == BANK {
            self.start_bank().await
        } else {
            self.start_node(key)
        }
    }

    /// Starts a local Redis bank when the file names one that is not running, every node, then the lb, and
    /// waits until all answer their health endpoints.
    pub async fn start_all(&mut self, with_lb: bool) -> Result<()> {
        // A leftover cluster on the same ports would answer the health checks for ours, and the load would
        // measure it instead.
        let mut addrs: Vec<SocketAddr> = self
            .config
            .nodes
            .iter()
            .flat_map(|n| [n.http, n.repl])
            .collect();
        if with_lb {
            addrs.extend([self.config.lb.listen, self.config.lb.admin]);
        }
        for a in addrs {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(a)).await
            {
                bail!(
                    "{a} from {} is already in use: is another cluster running?",
                    self.config_path.display()
                );
            }
        }
        if let Some(bank) = self.local_bank() {
            // A server the user runs is used as it is; otherwise the bench runs one for the cluster's life.
            if !redis_pong(bank).await {
                self.start_bank().await?;
            }
        }
        let names: Vec<String> = self.config.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &names {
            self.start_node(n)?;
        }
        for n in &names {
            self.wait_node(n).await?;
        }
        if with_lb {
            self.start_lb()?;
            let admin = self.config.lb.admin;
            self.wait_healthy(LB, admin, "/status").await?;
            // Pingora binds each service's listener on that service's own thread: the admin one may answer
            // before the proxy's.
            let listen = self.config.lb.listen;
            self.wait_status(LB, listen, "/", |_| true).await?;
        }
        Ok(())
    }

    /// Waits until node `name` answers its health endpoint (at most 30 s).
    ///
    /// # Errors
    /// When `name` is not in the file, the node exits first, or 30 s pass; with the end of its log.
    pub async fn wait_node(&mut self, name: &str) -> Result<()> {
        let addr = self
            .config
            .node(name)
            .with_context(|| format!("no node {name} in the config"))?
            .http;
        self.wait_healthy(name, addr, node::HEALTH_PATH).await
    }

    /// Polls `GET path` on `addr` until 200, failing early when the process exits.
    pub async fn wait_healthy(&mut self, key: &str, addr: SocketAddr, path: &str) -> Result<()> {
        self.wait_status(key, addr, path, |s| s == 200).await
    }

    /// Polls `GET path` on `addr` until its status passes `ok` (at most 30 s), failing early when `key` exits.
    async fn wait_status(
        &mut self,
        key: &str,
        addr: SocketAddr,
        path: &str,
        ok: impl Fn(u16) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_status(addr, path).await.is_some_and(&ok) {
                return Ok(());
            }
            if let Some(st) = self.children.wait_exit(key, Duration::ZERO) {
                bail!(
                    "{key} exited ({st}) before it was healthy; log:\n{}",
                    self.log_tail(key)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{key} not healthy at http://{addr}{path} after 30 s; log:\n{}",
                    self.log_tail(key)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pid of `key`, while it is ours.
    pub fn pid(&self, key: &str) -> Option<u32> {
        self.children.pid(key)
    }

    /// The resident memory of every running process of the cluster now: (key, pid, KiB), nodes in file
    /// order, then the lb and the bench's Redis bank.
    pub fn memory(&self) -> Vec<(String, u32, u64)> {
        let keys = self.config.nodes.iter().map(|n| n.name.clone());
        let keys = keys.chain([LB.to_string(), BANK.to_string()]);
        keys.filter_map(|k| {
            let pid = self.pid(&k)?;
            Some((k, pid, rss_kib(pid).ok()?))
        })
        .collect()
    }

    /// Whether `key` is running (not exited, not killed).
    pub fn is_running(&mut self, key: &str) -> bool {
        self.children.is_running(key)
    }

    /// Waits up to `timeout` for `key` to exit by itself; returns its status (and forgets it), or `None`.
    pub fn wait_exit(&mut self, key: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.children.wait_exit(key, timeout)
    }

    /// The first child that exited by itself, if any.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children.exited()
    }

    /// kill -9, and reap.
    pub fn kill(&mut self, key: &str) {
        self.children.kill(key);
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`) to `key`.
    pub fn signal(&self, key: &str, sig: i32) {
        self.children.signal(key, sig);
    }

    /// SIGTERM to everyone, then SIGKILL for whoever is still there after `grace`.
    pub async fn shutdown(&mut self, grace: Duration) {
        self.children.signal_all(libc::SIGCONT);
        self.children.signal_all(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.children.any_running() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill_all();
    }

    /// kill -9 to every child, and reap.
    pub fn kill_all(&mut self) {
        self.children.kill_all();
    }

    /// The last lines a process logged.
    pub fn log_tail(&self, key: &str) -> String {
        self.children.log_tail(key, 30)
    }
}

/// Status code of `GET path` on a loopback address, `None` on any failure. One short-lived connection: probes
/// are rare and must not disturb pooled ones.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    if !addr.ip().is_loopback() {
        return None;
    }
    let probe = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))?
            .get(..3)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_millis(500), probe)
        .await
        .ok()
        .flatten()
}

/// Whether a Redis server answers `PING` on `addr` (a loopback address) within 300 ms.
pub async fn redis_pong(addr: SocketAddr) -> bool {
    if !addr.ip().is_loopback() {
        return false;
    }
    let ping = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_millis(300), ping)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A program on `$PATH` (or in the sbin directories `$PATH` often leaves out).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A port on `ip` that was free a moment ago.
pub fn free_port(ip: std::net::IpAddr) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// `n` addresses on `ip` with free ports, no two alike (the kernel may hand a just-closed port out twice).
pub fn free_addrs(ip: std::net::IpAddr, n: usize) -> Result<Vec<std::net::SocketAddr>> {
    let mut taken = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let p = free_port(ip)?;
        if taken.insert(p) {
            out.push(std::net::SocketAddr::new(ip, p));
        }
    }
    Ok(out)
}
