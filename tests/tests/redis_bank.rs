//! Redis as the session bank, the store's side (issue 10 item 7), against a real `redis-server` started on a
//! free loopback port: versioned writes never roll a session back, TTLs are set, and a paused store gives a
//! timeout error instead of a hang.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster_tests::{free_port, loopback_ip, wait_until};
use node::ids::{NodeId, SessionId};
use node::redis_bank::{BankError, RedisBank, Stored};
use node::session::Session;

/// A `redis-server` of our own, killed (by pid) when dropped.
struct Server {
    child: Child,
    port: u16,
    ip: std::net::Ipv4Addr,
}

impl Server {
    fn start() -> Server {
        let ip = loopback_ip();
        let port = free_port(ip);
        let child = Command::new("redis-server")
            .args(["--bind", &ip.to_string(), "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash .ci/setup installs it)");
        let s = Server { child, port, ip };
        wait_until(Duration::from_secs(10), "redis-server answers", || {
            s.cli(&["PING"]) == "PONG"
        })
        .unwrap();
        s
    }

    fn url(&self) -> String {
        format!("redis://{}:{}", self.ip, self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", &self.ip.to_string(), "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn session(epoch: u64, version: u64) -> Session {
    let mut s = Session::new(SessionId(0x5e55), NodeId::new((1 << 50) + 1).unwrap(), None);
    s.epoch = epoch;
    s.version = version;
    s.data.insert("version".into(), version.into());
    s
}

async fn bank(server: &Server) -> RedisBank {
    RedisBank::connect(
        &server.url(),
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_newer_copy_is_written_and_an_older_one_never_overwrites_it() {
    let server = Server::start();
    let b = bank(&server).await;
    assert_eq!(b.put(&session(1, 1)).await.unwrap(), Stored::Written);
    assert_eq!(b.put(&session(1, 3)).await.unwrap(), Stored::Written);
    assert_eq!(
        b.put(&session(1, 2)).await.unwrap(),
        Stored::Stale,
        "an older version"
    );
    assert_eq!(
        b.put(&session(1, 3)).await.unwrap(),
        Stored::Stale,
        "the same version"
    );
    assert_eq!(b.get(SessionId(0x5e55)).await.unwrap().unwrap().version, 3);
    // A takeover raises the epoch: its copy wins even at a lower version, and the old owner's never again.
    assert_eq!(b.put(&session(2, 1)).await.unwrap(), Stored::Written);
    assert_eq!(
        b.put(&session(1, 9)).await.unwrap(),
        Stored::Stale,
        "an old owner"
    );
    let held = b.get(SessionId(0x5e55)).await.unwrap().unwrap();
    assert_eq!(
        (held.epoch, held.version, held.data["version"].as_u64()),
        (2, 1, Some(1))
    );
    b.remove(SessionId(0x5e55)).await.unwrap();
    assert!(b.get(SessionId(0x5e55)).await.unwrap().is_none());
}

#[tokio::test]
async fn two_writers_racing_on_one_session_leave_the_newest_copy() {
    let server = Server::start();
    let (a, b) = (bank(&server).await, bank(&server).await);
    let up = async {
        for v in 1..=60 {
            a.put(&session(1, v)).await.unwrap();
        }
    };
    let down = async {
        for v in (1..=60).rev() {
            b.put(&session(1, v)).await.unwrap();
        }
    };
    tokio::join!(up, down);
    assert_eq!(a.get(SessionId(0x5e55)).await.unwrap().unwrap().version, 60);
}

#[tokio::test]
async fn every_write_and_read_sets_the_sessions_ttl() {
    let server = Server::start();
    let b = bank(&server).await;
    b.put(&session(1, 1)).await.unwrap();
    let key = format!("srv:s:{:032x}", 0x5e55);
    let ttl = |s: &Server| s.cli(&["PTTL", &key]).parse::<i64>().unwrap();
    assert!((1..=60_000).contains(&ttl(&server)), "{}", ttl(&server));
    server.cli(&["PEXPIRE", &key, "5000"]);
    b.get(SessionId(0x5e55)).await.unwrap();
    assert!(ttl(&server) > 5_000, "a read refreshes it");
}

#[tokio::test]
async fn a_paused_store_gives_a_timeout_error_not_a_hang_and_works_again_when_resumed() {
    let server = Server::start();
    let b = bank(&server).await;
    b.put(&session(1, 1)).await.unwrap();
    server.signal(libc::SIGSTOP);
    let err = b.put(&session(1, 2)).await.unwrap_err();
    assert!(matches!(err, BankError::Timeout(_)), "{err}");
    server.signal(libc::SIGCONT);
    // The connection manager reconnects in the background: the first puts may still fail.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let written = loop {
        match b.put(&session(1, 3)).await {
            Ok(w) => break w,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("the bank never worked again after SIGCONT: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(written, Stored::Written);
}
