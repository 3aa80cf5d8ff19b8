//! A Redis or Valkey server as the session bank (DESIGN §5.1, issue 10 item 7): versioned writes that never
//! put an older copy over a newer one, a TTL of the idle timeout refreshed on every write and read, and a
//! timeout on every command so a hung store never holds an answer beyond it.
//!
//! Not wired into the replication path yet: this is the store's side, tested against a real `redis-server`.
//!
//! A session is one hash, `srv:s:{id}`: `e` (its epoch), `v` (its version), `d` (the session, postcard). A write
//! is a script that compares `(epoch, version)` with what is stored and writes only when it is newer: two web
//! nodes racing (an old owner and its successor) can never roll a session back.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::ids::SessionId;
use crate::session::Session;

/// Writes `ARGV[3]` under (epoch, version) = (`ARGV[1]`, `ARGV[2]`) unless the key holds that pair or a newer one;
/// sets the TTL to `ARGV[4]` ms either way (the session is alive). Returns 1 when written, 0 when stale.
const PUT: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'e', 'v')
local e, v = tonumber(ARGV[1]), tonumber(ARGV[2])
local ce, cv = tonumber(cur[1]), tonumber(cur[2])
if ce and (ce > e or (ce == e and cv >= v)) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 0
end
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'v', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Why the bank could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// No answer within the per-command timeout (the store is down, paused or overloaded).
    #[error("the bank did not answer within {0:?}")]
    Timeout(Duration),
    /// The store answered with an error, or the connection failed.
    #[error("the bank failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value that does not decode as a session.
    #[error("the bank holds a value that is not a session: {0}")]
    Corrupt(String),
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The bank holds this version now.
    Written,
    /// The bank already holds this version or a newer one (a newer epoch, or the same epoch further on): nothing
    /// was written.
    Stale,
}

/// One Redis (or Valkey) server as the bank.
pub struct RedisBank {
    conn: ConnectionManager,
    put: redis::Script,
    ttl: Duration,
    timeout: Duration,
}

impl RedisBank {
    /// Connects to `url` (`redis://HOST:PORT`); sessions live `ttl` after their last write or read; every
    /// command gives up after `timeout`.
    ///
    /// # Errors
    /// [`BankError`] when the URL is invalid or the server does not answer in time.
    pub async fn connect(
        url: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<RedisBank, BankError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = within(timeout, async {
            Ok(ConnectionManager::new_with_config(client, config).await?)
        })
        .await?;
        Ok(RedisBank {
            conn,
            put: redis::Script::new(PUT),
            ttl,
            timeout,
        })
    }

    fn key(sid: SessionId) -> String {
        format!("srv:s:{:032x}", sid.0)
    }

    /// Stores `s` unless the bank holds its version or a newer one.
    ///
    /// # Errors
    /// [`BankError`] when the store does not answer in time or fails.
    pub async fn put(&self, s: &Session) -> Result<Stored, BankError> {
        let data = postcard::to_allocvec(s).map_err(|e| BankError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        let ttl_ms = self.ttl.as_millis() as u64;
        let written: i64 = within(self.timeout, async {
            let mut call = self.put.key(Self::key(s.id));
            call.arg(s.epoch).arg(s.version).arg(data).arg(ttl_ms);
            Ok(call.invoke_async(&mut conn).await?)
        })
        .await?;
        Ok(if written == 1 {
            Stored::Written
        } else {
            Stored::Stale
        })
    }

    /// The session the bank holds, if any, with its TTL refreshed.
    ///
    /// # Errors
    /// [`BankError`] when the store does not answer in time, fails, or holds something that is not a session.
    pub async fn get(&self, sid: SessionId) -> Result<Option<Session>, BankError> {
        let mut conn = self.conn.clone();
        let key = Self::key(sid);
        let ttl_ms = self.ttl.as_millis() as i64;
        let (data, _): (Option<Vec<u8>>, i64) = within(self.timeout, async {
            Ok(redis::pipe()
                .cmd("HGET")
                .arg(&key)
                .arg("d")
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await?)
        })
        .await?;
        data.map(|d| postcard::from_bytes(&d).map_err(|e| BankError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Removes the session (it ended).
    ///
    /// # Errors
    /// [`BankError`] when the store does not answer in time or fails.
    pub async fn remove(&self, sid: SessionId) -> Result<(), BankError> {
        let mut conn = self.conn.clone();
        within(self.timeout, async {
            let _: i64 = redis::cmd("DEL")
                .arg(Self::key(sid))
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }
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
