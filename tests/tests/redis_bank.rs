//! Redis as the session bank, the store's side (issue 10 item 7), against a real `redis-server` started on a
//! free loopback port: the bank answers replication items as a session server would, versioned writes never
//! roll a session back, an old owner is fenced once another node claimed the session, TTLs are set, and a
//! paused store gives a timeout error instead of a hang.

use std::sync::Arc;
use std::time::Duration;

use cluster_tests::redis::Server;
use node::config::{BankConfig, BankKind};
use node::ids::{NodeId, SessionId};
use node::redis_bank::{BankError, Pulled, RedisBank};
use node::session::Session;
use node::wire::{Item, ItemResult};

const SID: SessionId = SessionId(0x5e55);
const LEASE: Duration = Duration::from_millis(300);

fn node(n: u64) -> NodeId {
    NodeId::new((1 << 50) + n).unwrap()
}

fn session(owner: u64, epoch: u64, version: u64) -> Session {
    let mut s = Session::new(SID, node(owner), None);
    s.epoch = epoch;
    s.version = version;
    s.data.insert("version".into(), version.into());
    s
}

fn bank(server: &Server) -> Arc<RedisBank> {
    let cfg = BankConfig {
        urls: vec![server.url()],
        kind: BankKind::Server,
        master: None,
        timeout: Duration::from_millis(500),
        wait_replicas: 0,
        id: BankConfig::derive_id("test-secret"),
    };
    RedisBank::new(&cfg, Duration::from_secs(60), LEASE)
}

/// Owner `owner` copies `s` to the bank; returns the bank's answer.
async fn copy(b: &RedisBank, owner: u64, s: Session) -> ItemResult {
    let mut r = b
        .apply(node(owner), vec![Item::Full { session: s }])
        .await
        .unwrap();
    r.pop().unwrap()
}

/// Takes the session over for `requester`, waiting out the owner's lease if `respect_lease`.
async fn claim(
    b: &RedisBank,
    requester: u64,
    respect_lease: bool,
) -> Result<Session, Option<Duration>> {
    let Pulled::Owned(peeked) = b.peek(SID, 0).await.unwrap() else {
        panic!("the bank holds the session");
    };
    b.claim(SID, node(requester), &peeked, respect_lease)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_newer_copy_is_taken_and_an_older_one_never_overwrites_it() {
    let server = Server::start();
    let b = bank(&server);
    assert_eq!(copy(&b, 1, session(1, 1, 1)).await, ItemResult::Applied);
    assert_eq!(copy(&b, 1, session(1, 1, 3)).await, ItemResult::Applied);
    assert_eq!(
        copy(&b, 1, session(1, 1, 2)).await,
        ItemResult::Applied,
        "an older version is acknowledged (the bank holds newer) but not written"
    );
    let got = claim(&b, 2, false).await.unwrap();
    assert_eq!(
        (got.version, got.epoch, got.primary, got.secondary),
        (3, 2, node(2), Some(b.id())),
        "the newest copy, now owned by node 2 at a higher epoch, the bank its copy"
    );
    assert_eq!(got.data["version"], 3);
}

#[tokio::test]
async fn an_old_owner_is_fenced_once_another_node_claimed_the_session() {
    let server = Server::start();
    let b = bank(&server);
    copy(&b, 1, session(1, 1, 4)).await;
    assert!(
        matches!(claim(&b, 2, true).await, Err(Some(w)) if w <= LEASE),
        "node 1's read lease still runs"
    );
    let mut s = claim(&b, 2, false).await.unwrap();
    assert_eq!(
        copy(&b, 1, session(1, 1, 9)).await,
        ItemResult::Fenced {
            owner: node(2),
            epoch: 2
        },
        "the old owner can never again get a write acknowledged"
    );
    let renew = Item::Validate {
        sid: SID,
        epoch: 1,
        version: 4,
    };
    assert!(matches!(
        b.apply(node(1), vec![renew]).await.unwrap()[0],
        ItemResult::Fenced { .. }
    ));
    s.version += 1;
    assert_eq!(
        copy(&b, 2, s).await,
        ItemResult::Applied,
        "the new owner's copy is taken"
    );
}

#[tokio::test]
async fn a_claim_that_waited_out_a_lease_is_refused_when_the_owner_renewed_it_meanwhile() {
    let server = Server::start();
    let b = bank(&server);
    copy(&b, 1, session(1, 1, 4)).await;
    let Pulled::Owned(peeked) = b.peek(SID, 0).await.unwrap() else {
        panic!("the bank holds the session");
    };
    tokio::time::sleep(LEASE).await;
    let renew = Item::Validate {
        sid: SID,
        epoch: 1,
        version: 4,
    };
    b.apply(node(1), vec![renew]).await.unwrap();
    let got = b.claim(SID, node(2), &peeked, true).await.unwrap();
    assert!(
        matches!(got, Err(None)),
        "the owner renewed since the peek: alive after all ({got:?})"
    );
    assert_eq!(
        copy(&b, 1, session(1, 1, 5)).await,
        ItemResult::Applied,
        "and still the owner"
    );
}

#[tokio::test]
async fn two_owners_racing_on_one_session_leave_the_newest_copy() {
    let server = Server::start();
    let (a, b) = (bank(&server), bank(&server));
    let up = async {
        for v in 1..=60 {
            copy(&a, 1, session(1, 1, v)).await;
        }
    };
    let down = async {
        for v in (1..=60).rev() {
            copy(&b, 1, session(1, 1, v)).await;
        }
    };
    tokio::join!(up, down);
    assert_eq!(claim(&a, 2, false).await.unwrap().version, 60);
}

#[tokio::test]
async fn a_session_that_ended_is_not_brought_back_by_a_late_copy() {
    let server = Server::start();
    let b = bank(&server);
    copy(&b, 1, session(1, 2, 5)).await;
    let end = Item::Remove { sid: SID, epoch: 2 };
    assert_eq!(
        b.apply(node(1), vec![end]).await.unwrap(),
        vec![ItemResult::Applied]
    );
    assert_eq!(
        copy(&b, 1, session(1, 1, 4)).await,
        ItemResult::Ended { epoch: 2 },
        "a copy of an older tenure"
    );
    assert!(matches!(b.peek(SID, 0).await.unwrap(), Pulled::Ended));
    let older_end = Item::Remove { sid: SID, epoch: 1 };
    assert_eq!(
        b.apply(node(1), vec![older_end]).await.unwrap(),
        vec![ItemResult::Ended { epoch: 2 }],
        "a late removal of an older tenure keeps the newer tombstone"
    );
    assert_eq!(
        copy(&b, 1, session(1, 1, 4)).await,
        ItemResult::Ended { epoch: 2 }
    );
}

#[tokio::test]
async fn a_key_another_program_wrote_costs_that_session_its_copy_not_the_batch() {
    let server = Server::start();
    let b = bank(&server);
    let key = format!("srv:s:{:032x}", SID.0);
    server.cli(&["SET", &key, "not a session"]);
    assert_eq!(copy(&b, 1, session(1, 1, 2)).await, ItemResult::Applied);
    assert_eq!(claim(&b, 2, false).await.unwrap().version, 2);
}

#[tokio::test]
async fn a_delta_is_refused_and_the_missing_version_asks_for_the_whole_session() {
    let server = Server::start();
    let b = bank(&server);
    copy(&b, 1, session(1, 1, 3)).await;
    let renew = |version| Item::Validate {
        sid: SID,
        epoch: 1,
        version,
    };
    let delta = Item::Deltas {
        sid: SID,
        epoch: 1,
        base: 3,
        deltas: Vec::new(),
    };
    let answers = b
        .apply(node(1), vec![renew(3), delta, renew(4)])
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![
            ItemResult::Applied,
            ItemResult::NeedFull,
            ItemResult::NeedFull
        ],
        "one answer per item, in order"
    );
    assert!(
        matches!(b.peek(SID, 4).await.unwrap(), Pulled::Nothing),
        "a copy older than the client's cookie counts as none"
    );
}

#[tokio::test]
async fn every_copy_and_lease_renewal_sets_the_sessions_ttl() {
    let server = Server::start();
    let b = bank(&server);
    copy(&b, 1, session(1, 1, 1)).await;
    let key = format!("srv:s:{:032x}", SID.0);
    let ttl = |s: &Server| s.cli(&["PTTL", &key]).parse::<i64>().unwrap();
    assert!((1..=60_000).contains(&ttl(&server)), "{}", ttl(&server));
    server.cli(&["PEXPIRE", &key, "5000"]);
    let renew = Item::Validate {
        sid: SID,
        epoch: 1,
        version: 1,
    };
    b.apply(node(1), vec![renew]).await.unwrap();
    assert!(
        ttl(&server) > 5_000,
        "a renewal (every read after a lease) refreshes it"
    );
}

#[tokio::test]
async fn a_paused_store_gives_a_timeout_error_not_a_hang_and_works_again_when_resumed() {
    let server = Server::start();
    let b = bank(&server);
    copy(&b, 1, session(1, 1, 1)).await;
    server.signal(libc::SIGSTOP);
    let err = b
        .apply(
            node(1),
            vec![Item::Full {
                session: session(1, 1, 2),
            }],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BankError::Timeout(_)), "{err}");
    server.signal(libc::SIGCONT);
    // The connection manager reconnects in the background: the first copies may still fail.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match b
            .apply(
                node(1),
                vec![Item::Full {
                    session: session(1, 1, 3),
                }],
            )
            .await
        {
            Ok(r) => break assert_eq!(r, vec![ItemResult::Applied]),
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("the bank never worked again after SIGCONT: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A primary, its replica and one sentinel watching them (quorum 1, quick failover), on one loopback address;
/// everything killed (by pid) when dropped.
struct Watched {
    primary: Server,
    replica: Server,
    sentinel: std::process::Child,
    sentinel_port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
        // The replica keeps its snapshot in the directory: it goes first.
        self.replica.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Watched {
    fn start() -> Watched {
        let primary = Server::start();
        let ip = primary.ip;
        let dir = std::env::temp_dir().join(format!(
            "srv-sentinel-{}-{}",
            std::process::id(),
            primary.port
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let replica = Server::start_on(
            ip,
            cluster_tests::free_port(ip),
            &[
                "--replicaof",
                &ip.to_string(),
                &primary.port.to_string(),
                // Otherwise the primary sees it as 127.0.0.1 (its connection's source), where it does not
                // listen, and sentinel finds no replica to promote.
                "--replica-announce-ip",
                &ip.to_string(),
                // A replica keeps the primary's snapshot on disk while it loads: not in the source tree.
                "--dir",
                dir.to_str().unwrap(),
            ],
        );
        cluster_tests::wait_until(Duration::from_secs(10), "the replica is in sync", || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        })
        .unwrap();
        let conf = dir.join("sentinel.conf");
        let sentinel_port = cluster_tests::free_port(ip);
        std::fs::write(
            &conf,
            format!(
                "bind {ip}\nport {sentinel_port}\nsentinel monitor bank {ip} {} 1\n\
                 sentinel down-after-milliseconds bank 500\nsentinel failover-timeout bank 2000\n",
                primary.port
            ),
        )
        .unwrap();
        // Sentinel wants its (writable) config file as the first argument.
        let sentinel = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let w = Watched {
            primary,
            replica,
            sentinel,
            sentinel_port,
            dir,
        };
        cluster_tests::wait_until(
            Duration::from_secs(10),
            "the sentinel knows the primary",
            || {
                w.sentinel_cli(&["SENTINEL", "get-master-addr-by-name", "bank"])
                    .contains(&w.primary.port.to_string())
            },
        )
        .unwrap();
        // Sentinel learns of replicas from the primary's INFO, every 10 s: no failover before that.
        cluster_tests::wait_until(
            Duration::from_secs(20),
            "the sentinel knows the replica",
            || {
                w.sentinel_cli(&["SENTINEL", "replicas", "bank"])
                    .contains(&w.replica.port.to_string())
            },
        )
        .unwrap();
        w
    }

    fn sentinel_cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-h",
                &self.primary.ip.to_string(),
                "-p",
                &self.sentinel_port.to_string(),
            ])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn bank(&self) -> Arc<RedisBank> {
        let cfg = BankConfig {
            urls: vec![format!(
                "redis://{}:{}",
                self.primary.ip, self.sentinel_port
            )],
            kind: BankKind::Sentinel,
            master: Some("bank".into()),
            timeout: Duration::from_millis(500),
            wait_replicas: 1,
            id: BankConfig::derive_id("test-secret"),
        };
        RedisBank::new(&cfg, Duration::from_secs(60), LEASE)
    }
}

#[tokio::test]
async fn through_sentinel_a_copy_waits_for_the_replica_and_survives_a_failover() {
    let mut w = Watched::start();
    let b = w.bank();
    assert_eq!(copy(&b, 1, session(1, 1, 7)).await, ItemResult::Applied);
    let key = format!("srv:s:{:032x}", SID.0);
    assert_eq!(
        w.replica.cli(&["HGET", &key, "v"]),
        "7",
        "WAIT 1: the replica held the copy when the bank answered"
    );
    w.primary.kill();
    // Sentinel promotes the replica; the bank follows it (a failed call asks the sentinels again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match b.peek(SID, 7).await {
            Ok(Pulled::Owned { .. }) => break,
            Ok(other) => panic!("the promoted replica lost the copy: {other:?}"),
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("the bank never reached the promoted replica: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let renewed = Item::Full {
        session: session(1, 1, 8),
    };
    let answers = b.apply(node(1), vec![renewed]).await;
    assert!(
        matches!(answers.as_deref(), Ok([ItemResult::Applied])),
        "copies go to the new primary: {answers:?}"
    );
}
