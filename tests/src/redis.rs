//! Real `redis-server` processes for the Redis bank tests: one server, or a 3-master Redis Cluster made with
//! `redis-cli --cluster create`, each on free loopback ports and killed (by pid) when dropped.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, loopback_ip, wait_until};

/// A `redis-server` of our own, killed (by pid) when dropped.
pub struct Server {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Its loopback address.
    pub ip: Ipv4Addr,
    dir: Option<std::path::PathBuf>,
}

impl Server {
    /// A server with no persistence on a free port of a fresh loopback address.
    pub fn start() -> Server {
        let ip = loopback_ip();
        Server::start_on(ip, free_port(ip), &[])
    }

    /// A server on `ip:port` (say, the port of one that was killed), with `extra` arguments.
    pub fn start_on(ip: Ipv4Addr, port: u16, extra: &[&str]) -> Server {
        let child = Command::new("redis-server")
            .args(["--bind", &ip.to_string(), "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash .ci/setup installs it)");
        let s = Server {
            child,
            port,
            ip,
            dir: None,
        };
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            s.cli(&["PING"]) == "PONG"
        })
        .unwrap();
        s
    }

    /// `redis://IP:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.ip, self.port)
    }

    /// Runs `redis-cli` against this server; returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", &self.ip.to_string(), "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Sends `sig` to the server (SIGSTOP, SIGCONT, SIGKILL).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Kills the server and waits for it to exit; once it was reaped, does nothing (its pid may be another
    /// process's by now).
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A Redis Cluster of three masters (no replicas) on one loopback address.
pub struct RedisCluster {
    /// Its masters.
    pub masters: Vec<Server>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`; returns once
    /// the cluster says `cluster_state:ok` on every master.
    pub fn start() -> RedisCluster {
        let ip = loopback_ip();
        let mut masters = Vec::new();
        let mut taken = std::collections::HashSet::new();
        for _ in 0..3 {
            // The cluster bus listens on port + 10000: both must be free.
            let port = loop {
                let p = crate::unused_port(ip, &mut taken);
                if p < 55_000 && std::net::TcpListener::bind((ip, p + 10_000)).is_ok() {
                    break p;
                }
            };
            let dir = std::env::temp_dir()
                .join(format!("srv-redis-cluster-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("nodes.conf");
            let mut s = Server::start_on(
                ip,
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    // Connections between nodes leave from 127.0.0.1, where no node listens: each must tell the
                    // others its own address, or the cluster never joins.
                    "--cluster-announce-ip",
                    &ip.to_string(),
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--dir",
                    dir.to_str().unwrap(),
                ],
            );
            s.dir = Some(dir);
            masters.push(s);
        }
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("{}:{}", m.ip, m.port))
            .collect();
        let mut create = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli is installed");
        // It waits for the nodes to join with no limit of its own.
        let joined = wait_until(
            Duration::from_secs(30),
            "redis-cli --cluster create to finish",
            || matches!(create.try_wait(), Ok(Some(_))),
        );
        if joined.is_err() {
            let _ = create.kill();
        }
        let out = create.wait_with_output().expect("redis-cli's output");
        assert!(
            joined.is_ok() && out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { masters };
        wait_until(
            Duration::from_secs(20),
            "every master says cluster_state:ok",
            || {
                c.masters
                    .iter()
                    .all(|m| m.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            },
        )
        .unwrap();
        c
    }

    /// The masters' URLs, as `[replication.bank] redis` seed nodes.
    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(Server::url).collect()
    }

    /// Keys held across the masters.
    pub fn keys(&self) -> usize {
        self.masters
            .iter()
            .map(|m| m.cli(&["DBSIZE"]).parse::<usize>().unwrap_or(0))
            .sum()
    }
}
