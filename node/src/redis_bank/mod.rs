//! A Redis or Valkey store as the session bank (DESIGN §5.1, issue 10 item 7): one server, a Redis Cluster, or
//! a primary found through Sentinel. To the rest of the node it is one more bank member: it takes a batch of
//! replication items and answers each as a session server would, and it hands a session over on a takeover.
//!
//! - Versioned writes: each item runs as a script ([`scripts`]) that compares `(epoch, owner, version)` with
//!   what is stored, so an older copy never overwrites a newer one and an old owner is fenced.
//! - TTL = the idle timeout, refreshed by every copy and lease renewal (reads renew leases).
//! - Every command gives up after `[replication.bank] timeout_ms`: a hung store delays an answer by that much
//!   once, then the bank counts as down and sessions run unprotected until it answers heartbeats again.
//! - The bank takes full copies only (it cannot apply deltas): [`RedisBank`] says so to the replicator.

pub mod scripts;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::{BankConfig, BankKind};
use crate::ids::{NodeId, SessionId};
use crate::session::Session;
use crate::wire::{Item, ItemResult};
use scripts::{Claimed, Held, Malformed};

/// Why the bank could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// No answer within the per-command timeout (the store is down, paused or overloaded).
    #[error("the bank did not answer within {0:?}")]
    Timeout(Duration),
    /// The store answered with an error, or the connection failed.
    #[error("the bank failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value that does not decode as a session, or an answer the scripts do not give.
    #[error("the bank holds a value that is not a session: {0}")]
    Corrupt(String),
}

impl From<Malformed> for BankError {
    fn from(m: Malformed) -> Self {
        BankError::Corrupt(m.0)
    }
}

impl BankError {
    /// Whether the store refused the connection: it is not running.
    pub fn is_refused(&self) -> bool {
        matches!(self, BankError::Redis(e) if e.is_connection_refusal())
    }
}

/// One connection, whichever kind of deployment: each reconnects on its own (Sentinel's is re-resolved by
/// [`RedisBank`] after a failure, so a failover is followed).
#[derive(Clone)]
enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// The scripts, hashed once.
struct Scripts {
    apply: redis::Script,
    peek: redis::Script,
    claim: redis::Script,
}

/// The bank: connects on first use (a store down at start only means sessions start unprotected).
pub struct RedisBank {
    cfg: BankConfig,
    ttl_ms: u64,
    lease_ms: u64,
    /// The connection once made; read on every call, written when made or dropped.
    conn: std::sync::RwLock<Option<Conn>>,
    /// Held while a connection is being made, so concurrent callers make one.
    connecting: tokio::sync::Mutex<()>,
    /// Fewer replicas than `wait_replicas` confirmed a write: `WAIT` (which holds the shared connection) is
    /// skipped until heartbeats see enough replicas connected again.
    replicas_short: std::sync::atomic::AtomicBool,
    scripts: Scripts,
}

/// A copy as a takeover saw it, to claim it only if nothing changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    /// Its ownership epoch.
    pub epoch: u64,
    /// The owner.
    pub owner: NodeId,
    /// The owner's lease as stored: every renewal changes it.
    lease_mark: Vec<u8>,
}

/// What a takeover got from the bank.
#[derive(Debug)]
pub enum Pulled {
    /// The bank has no copy (or only one older than asked for).
    Nothing,
    /// The session ended.
    Ended,
    /// A copy whose owner may still be alive: the requester decides whether to wait, claim or go there.
    Owned(Peeked),
}

impl RedisBank {
    /// The bank `cfg` describes; sessions live `ttl` after their last copy or lease renewal, and each copy
    /// grants its owner a read lease of `lease` (`[replication] lease_ms`). Connects on first use.
    pub fn new(cfg: &BankConfig, ttl: Duration, lease: Duration) -> Arc<RedisBank> {
        Arc::new(RedisBank {
            cfg: cfg.clone(),
            ttl_ms: ttl.as_millis().max(1) as u64,
            lease_ms: lease.as_millis().max(1) as u64,
            conn: std::sync::RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            replicas_short: std::sync::atomic::AtomicBool::new(false),
            scripts: Scripts {
                apply: guarded(scripts::APPLY),
                peek: guarded(scripts::PEEK),
                claim: guarded(scripts::CLAIM),
            },
        })
    }

    /// The bank's id: where a session server's id would stand in cookies.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    async fn connect(&self) -> Result<Conn, BankError> {
        let t = self.cfg.timeout;
        match self.cfg.kind {
            BankKind::Server => {
                let client = redis::Client::open(self.cfg.urls[0].as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(t))
                    .set_response_timeout(Some(t))
                    .set_number_of_retries(1);
                Ok(Conn::Server(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            BankKind::Cluster => {
                let client = redis::cluster::ClusterClientBuilder::new(self.cfg.urls.clone())
                    .connection_timeout(t)
                    .response_timeout(t)
                    .retries(1)
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
            BankKind::Sentinel => {
                let master = self.cfg.master.clone().unwrap_or_default();
                let mut client = redis::sentinel::SentinelClient::build(
                    self.cfg.urls.clone(),
                    master,
                    None,
                    redis::sentinel::SentinelServerType::Master,
                )?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(t))
                    .set_response_timeout(Some(t));
                Ok(Conn::Sentinel(
                    client.get_async_connection_with_config(&config).await?,
                ))
            }
        }
    }

    fn held(&self) -> Option<Conn> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_held(&self, c: Option<Conn>) {
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = c;
    }

    /// The connection, made now if there is none; `within` the timeout.
    async fn conn(&self) -> Result<Conn, BankError> {
        if let Some(c) = self.held() {
            return Ok(c);
        }
        within(self.cfg.timeout, async {
            let _one = self.connecting.lock().await;
            if let Some(c) = self.held() {
                return Ok(c);
            }
            let c = self.connect().await?;
            self.set_held(Some(c.clone()));
            Ok(c)
        })
        .await
    }

    /// Runs `f` on the connection within the timeout. A failed call through Sentinel drops the connection so
    /// the next one asks the sentinels for the primary again (it may have failed over).
    async fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, BankError>>,
    ) -> Result<T, BankError> {
        let r = within(self.cfg.timeout, f).await;
        if r.is_err() && self.cfg.kind == BankKind::Sentinel {
            self.set_held(None);
        }
        r
    }

    fn key(sid: SessionId) -> String {
        format!("srv:s:{:032x}", sid.0)
    }

    /// Answers `PING`; returns the server's incarnation (its `run_id`, hashed; 1 for a cluster, whose nodes
    /// each have one) so a restarted, empty store is noticed like a restarted session server.
    ///
    /// # Errors
    /// [`BankError`] when the store does not answer in time or fails.
    pub async fn ping(&self) -> Result<u64, BankError> {
        let mut c = self.conn().await?;
        self.run(async {
            if self.cfg.kind == BankKind::Cluster {
                let _: String = redis::cmd("PING").query_async(&mut c).await?;
                return Ok(1);
            }
            // Both sections in one round trip (Redis 7, Valkey): the run id, and the replicas connected.
            let info: String = redis::cmd("INFO")
                .arg("server")
                .arg("replication")
                .query_async(&mut c)
                .await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("")
                    .trim()
            };
            let h = ahash::RandomState::with_seeds(5, 6, 7, 8).hash_one(field("run_id:"));
            if self.replicas_short.load(Ordering::Relaxed) {
                let connected = field("connected_slaves:").parse::<u32>().unwrap_or(0);
                if connected >= self.cfg.wait_replicas {
                    self.replicas_short.store(false, Ordering::Relaxed);
                }
            }
            Ok(h.max(1))
        })
        .await
    }

    /// Applies a batch of replication items from owner `from`, as a session server would: one answer per
    /// item, in order. Deltas are answered `NeedFull` (the bank keeps whole sessions; the replicator sends it
    /// full copies only). One script call for the whole batch on one server; on a cluster, one per item (a
    /// script's keys must share a slot). With `wait_replicas`, also waits for the store's replicas.
    ///
    /// # Errors
    /// [`BankError`] when the store does not answer in time or fails: the whole batch failed.
    pub async fn apply(
        &self,
        from: NodeId,
        items: Vec<Item>,
    ) -> Result<Vec<ItemResult>, BankError> {
        let c = self.conn().await?;
        // One invocation for the batch; on a cluster one per item, each routed by its key.
        let per_item = self.cfg.kind == BankKind::Cluster;
        let start = || {
            let mut call = self.scripts.apply.prepare_invoke();
            call.arg(self.ttl_ms)
                .arg(self.lease_ms)
                .arg(from.get().to_string());
            call
        };
        let mut calls = Vec::new();
        let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(items.len());
        for item in &items {
            let (sid, kind, epoch, version) = match item {
                Item::Deltas { .. } => {
                    results.push(Some(ItemResult::NeedFull));
                    continue;
                }
                // The store is the one copy holder a session has: it is never left behind by a re-homing.
                Item::Drop { .. } => {
                    results.push(Some(ItemResult::Applied));
                    continue;
                }
                Item::Full { session } => (session.id, "c", session.epoch, session.version),
                Item::Validate {
                    sid,
                    epoch,
                    version,
                } => (*sid, "v", *epoch, *version),
                Item::Remove { sid, epoch } => (*sid, "r", *epoch, 0),
            };
            if calls.is_empty() || per_item {
                calls.push(start());
            }
            let call = calls.last_mut().expect("pushed above");
            call.key(Self::key(sid)).arg(kind).arg(epoch).arg(version);
            match item {
                Item::Full { session } => call.arg(
                    postcard::to_allocvec(session)
                        .map_err(|e| BankError::Corrupt(e.to_string()))?,
                ),
                _ => call.arg(""),
            };
            results.push(None);
        }
        let answers = self
            .run(futures_util::future::try_join_all(calls.iter().map(
                |call| {
                    let mut c = c.clone();
                    async move {
                        let answers: Vec<Vec<Vec<u8>>> = call.invoke_async(&mut c).await?;
                        Ok::<_, BankError>(answers)
                    }
                },
            )))
            .await?;
        let mut answers = answers.into_iter().flatten();
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(match r {
                Some(r) => r,
                None => {
                    let a = answers
                        .next()
                        .ok_or_else(|| BankError::Corrupt("fewer answers than items".into()))?;
                    scripts::item_result(&a)?
                }
            });
        }
        if out.contains(&ItemResult::Applied) {
            self.wait_replicas(c).await?;
        }
        Ok(out)
    }

    /// `WAIT n` (`wait_replicas`, when set): the store's replicas hold every write made on this connection so
    /// far. Fewer within the timeout is not a failure (the primary holds the writes): it is logged, and waiting
    /// stops until enough replicas are connected again.
    async fn wait_replicas(&self, mut c: Conn) -> Result<(), BankError> {
        let want = self.cfg.wait_replicas;
        if want == 0 || self.replicas_short.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Short of the command timeout, so a missing replica shows as fewer confirmations, not a failed bank.
        let t = (self.cfg.timeout.as_millis() as u64 * 3 / 4).max(1);
        let got: u32 = self
            .run(async {
                Ok(redis::cmd("WAIT")
                    .arg(want)
                    .arg(t)
                    .query_async(&mut c)
                    .await?)
            })
            .await?;
        if got < want {
            self.replicas_short.store(true, Ordering::Relaxed);
            tracing::warn!(
                want,
                got,
                "the bank's replicas did not all confirm within the timeout: not waiting for them until they are back"
            );
        }
        Ok(())
    }

    /// What the bank holds for `sid`, for a takeover. A copy older than `min_version` counts as nothing.
    ///
    /// # Errors
    /// [`BankError`] when the store does not answer in time or fails.
    pub async fn peek(&self, sid: SessionId, min_version: u64) -> Result<Pulled, BankError> {
        let mut c = self.conn().await?;
        let answer: Vec<Vec<u8>> = self
            .run(async {
                Ok(self
                    .scripts
                    .peek
                    .key(Self::key(sid))
                    .invoke_async(&mut c)
                    .await?)
            })
            .await?;
        Ok(match scripts::held(&answer)? {
            Held::Nothing => Pulled::Nothing,
            Held::Ended(_) => Pulled::Ended,
            Held::Copy { version, .. } if version < min_version => Pulled::Nothing,
            Held::Copy {
                epoch,
                owner,
                lease_mark,
                ..
            } => Pulled::Owned(Peeked {
                epoch,
                owner,
                lease_mark,
            }),
        })
    }

    /// Makes `requester` the owner of the session as `peeked`: epoch + 1, the bank as its copy. With
    /// `respect_lease` (the caller waited a whole lease since the peek, by its own clock), only if the owner did
    /// not renew its lease since and it ran out in the store's clock too. Returns the session to install, or
    /// `Err(Some(wait))` / `Err(None)` when the lease still runs / the session changed since the peek. With
    /// `wait_replicas`, a granted claim is on the store's replicas before it is returned (a failover must not
    /// forget it and let the old owner write again).
    ///
    /// # Errors
    /// [`BankError`] when the store does not answer in time, fails, or holds something that is not a session.
    pub async fn claim(
        &self,
        sid: SessionId,
        requester: NodeId,
        peeked: &Peeked,
        respect_lease: bool,
    ) -> Result<Result<Session, Option<Duration>>, BankError> {
        let mut c = self.conn().await?;
        let answer: Vec<Vec<u8>> = self
            .run(async {
                let mut call = self.scripts.claim.key(Self::key(sid));
                call.arg(requester.get().to_string())
                    .arg(peeked.epoch.to_string())
                    .arg(peeked.owner.get().to_string())
                    .arg(self.lease_ms)
                    .arg(self.ttl_ms)
                    .arg(if respect_lease { "1" } else { "0" })
                    .arg(peeked.lease_mark.as_slice());
                Ok(call.invoke_async(&mut c).await?)
            })
            .await?;
        match scripts::claimed(answer)? {
            Claimed::Changed => Ok(Err(None)),
            Claimed::Wait(ms) => Ok(Err(Some(Duration::from_millis(ms)))),
            Claimed::Granted {
                epoch,
                version,
                data,
            } => {
                let mut s: Session =
                    postcard::from_bytes(&data).map_err(|e| BankError::Corrupt(e.to_string()))?;
                if s.version != version || s.id != sid {
                    return Err(BankError::Corrupt(format!(
                        "the stored session is not the one its key and version name ({} vs {version})",
                        s.version
                    )));
                }
                s.epoch = epoch;
                s.primary = requester;
                s.secondary = Some(self.cfg.id);
                s.also = None;
                self.wait_replicas(c).await?;
                Ok(Ok(s))
            }
        }
    }
}

/// `script` with [`scripts::PRELUDE`] before it.
fn guarded(script: &str) -> redis::Script {
    redis::Script::new(&format!("{}{script}", scripts::PRELUDE))
}

/// `f`, or [`BankError::Timeout`] after `limit`.
async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, BankError>>,
) -> Result<T, BankError> {
    match tokio::time::timeout(limit, f).await {
        // The client's own response timeout (the same limit) says the same thing.
        Ok(Err(BankError::Redis(e))) if e.is_timeout() => Err(BankError::Timeout(limit)),
        Ok(r) => r,
        Err(_) => Err(BankError::Timeout(limit)),
    }
}
