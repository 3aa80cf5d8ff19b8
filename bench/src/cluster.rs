//! Launching the real `lb` and `node` binaries of a cluster file, and the signals faults send them.
//!
//! Children are spawned from the thread that owns the [`Procs`] (PR_SET_PDEATHSIG fires when the *spawning
//! thread* exits, so spawning from a short-lived thread would kill them early), die with the bench through
//! PR_SET_PDEATHSIG, and are killed when the [`Procs`] is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use node::config::ClusterConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The key the balancer process is kept under.
pub const LB: &str = "lb";

/// Directory of our own binaries: the bench's own.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    Ok(exe
        .parent()
        .context("bench binary has no directory")?
        .to_path_buf())
}

/// Running child processes, by key (`lb`, node names, or anything else started with [`Procs::spawn`]).
pub struct Procs {
    pub config_path: PathBuf,
    pub config: ClusterConfig,
    pub log_dir: PathBuf,
    bin_dir: PathBuf,
    children: BTreeMap<String, Child>,
}

impl Procs {
    pub fn new(config_path: &Path) -> Result<Procs> {
        let config = ClusterConfig::load(config_path)?;
        let log_dir = std::env::temp_dir().join(format!("bench-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir)?;
        Ok(Procs {
            config_path: config_path.to_path_buf(),
            config,
            log_dir,
            bin_dir: bin_dir()?,
            children: BTreeMap::new(),
        })
    }

    /// Starts `program` (a path, or a binary next to the bench) under `key`, output to `<log_dir>/<key>.log`.
    pub fn spawn(&mut self, key: &str, program: &Path, args: &[&str]) -> Result<u32> {
        let program = if program.is_absolute() {
            program.to_path_buf()
        } else {
            self.bin_dir.join(program)
        };
        let log = std::fs::File::create(self.log_dir.join(format!("{key}.log")))?;
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Per-request logging would make the cluster measure its logger; RUST_LOG still wins.
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when we go.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        self.children.insert(key.to_string(), child);
        Ok(pid)
    }

    pub fn start_node(&mut self, name: &str) -> Result<u32> {
        let cfg = self.config_path.display().to_string();
        self.spawn(name, Path::new("node"), &["--config", &cfg, "--name", name])
    }

    pub fn start_lb(&mut self) -> Result<u32> {
        let cfg = self.config_path.display().to_string();
        self.spawn(LB, Path::new("lb"), &["--config", &cfg])
    }

    /// Starts every node, then the lb, and waits until all answer their health endpoints.
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
        }
        Ok(())
    }

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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_status(addr, path).await == Some(200) {
                return Ok(());
            }
            if let Some(st) = self
                .children
                .get_mut(key)
                .and_then(|c| c.try_wait().ok().flatten())
            {
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

    pub fn pid(&self, key: &str) -> Option<u32> {
        self.children.get(key).map(Child::id)
    }

    pub fn is_running(&mut self, key: &str) -> bool {
        self.children
            .get_mut(key)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The first child that exited by itself, if any.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|(k, c)| c.try_wait().ok().flatten().map(|st| (k.clone(), st)))
    }

    /// kill -9, and reap.
    pub fn kill(&mut self, key: &str) {
        if let Some(mut c) = self.children.remove(key) {
            signal(c.id(), libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, key: &str, sig: i32) {
        if let Some(pid) = self.pid(key) {
            signal(pid, sig);
        }
    }

    /// SIGTERM to everyone, then SIGKILL for whoever is still there after `grace`.
    pub async fn shutdown(&mut self, grace: Duration) {
        for c in self.children.values() {
            signal(c.id(), libc::SIGCONT);
            signal(c.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self
                .children
                .values_mut()
                .any(|c| matches!(c.try_wait(), Ok(None)))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill_all();
    }

    pub fn kill_all(&mut self) {
        let keys: Vec<String> = self.children.keys().cloned().collect();
        for k in keys {
            self.kill(&k);
        }
    }

    /// The last lines a process logged.
    pub fn log_tail(&self, key: &str) -> String {
        let text =
            std::fs::read_to_string(self.log_dir.join(format!("{key}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid of our own child.
    unsafe {
        libc::kill(pid as i32, sig);
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

/// A port on `ip` that was free a moment ago.
pub fn free_port(ip: std::net::IpAddr) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}
