//! The bank's rules, as Lua scripts that run atomically in the store, and the pure decoding of their answers.
//!
//! A session is one hash, `srv:s:{id}`: `e` (its epoch), `v` (its version), `p` (its owner's id), `d` (the
//! session, postcard), `g` (the end of the read lease the owner holds, in the store's clock, ms). A session
//! that ended is a tombstone holding only `x` (the epoch at which it ended), so a late copy cannot bring it
//! back. The rules are those of a session server (`replicate::incoming`): an item from an owner that a newer
//! one outranks (a higher epoch, or the same epoch held by another node) is refused as fenced, so an old owner
//! can never roll a session back or get a write acknowledged once another node claimed it.

use crate::ids::NodeId;
use crate::wire::ItemResult;

/// Run before each script: `fields` reads a session's hash; a key under our prefix that is not a hash (another
/// program wrote it) is dropped and read as empty, so it costs that one session its copy instead of failing
/// every batch it is in.
pub const PRELUDE: &str = r"
local function fields(k, ...)
  local cur = redis.pcall('HMGET', k, ...)
  if cur.err then
    redis.call('DEL', k)
    return {}
  end
  return cur
end
";

/// Replication items, as many as there are keys, applied in one call: KEYS are the sessions' keys; ARGV[1] is
/// the TTL and ARGV[2] the lease (ms), ARGV[3] the owner sending them; then four arguments per item: the kind
/// (`c` a full copy, `v` a lease renewal, `r` a removal), the epoch, the version and the data (empty but for a
/// copy). Returns one answer per item. The rules per kind:
/// - a copy is refused as `ended` below a tombstone's epoch and as `fenced` under a newer owner; it is written
///   when newer than what is held, and renews the owner's lease either way;
/// - a renewal is `need_full` unless the bank holds exactly this owner's epoch and version;
/// - a removal leaves a tombstone (the larger epoch of two).
pub const APPLY: &str = r"
local ttl, lease, owner = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local lease_end = t[1] * 1000 + math.floor(t[2] / 1000) + lease
local function fenced(cur, e)
  local ce = tonumber(cur[1])
  if ce and (ce > e or (ce == e and cur[3] ~= owner)) then return {'fenced', cur[3], cur[1]} end
end
local function renew(k)
  redis.call('HSET', k, 'g', lease_end)
  redis.call('PEXPIRE', k, ttl)
  return {'applied'}
end
local function copy(k, es, vs, data)
  local cur = fields(k, 'e', 'v', 'p', 'x')
  local e, v = tonumber(es), tonumber(vs)
  if cur[4] and e < tonumber(cur[4]) then return {'ended', cur[4]} end
  local no = fenced(cur, e)
  if no then return no end
  local ce, cv = tonumber(cur[1]), tonumber(cur[2])
  if ce and ce == e and cv >= v then return renew(k) end
  redis.call('HSET', k, 'e', es, 'v', vs, 'p', owner, 'd', data, 'g', lease_end)
  if cur[4] then redis.call('HDEL', k, 'x') end
  redis.call('PEXPIRE', k, ttl)
  return {'applied'}
end
local function validate(k, es, vs)
  local cur = fields(k, 'e', 'v', 'p', 'x')
  local e = tonumber(es)
  if cur[4] then
    if e < tonumber(cur[4]) then return {'ended', cur[4]} end
    return {'need_full'}
  end
  if not cur[1] then return {'need_full'} end
  local no = fenced(cur, e)
  if no then return no end
  if tonumber(cur[1]) < e or cur[2] ~= vs then return {'need_full'} end
  return renew(k)
end
local function remove(k, es)
  local cur = fields(k, 'e', 'v', 'p', 'x')
  local e = tonumber(es)
  if cur[4] then
    if e < tonumber(cur[4]) then return {'ended', cur[4]} end
  else
    local no = fenced(cur, e)
    if no then return no end
  end
  redis.call('DEL', k)
  redis.call('HSET', k, 'x', es)
  redis.call('PEXPIRE', k, ttl)
  return {'applied'}
end
local out = {}
for i, k in ipairs(KEYS) do
  local a = 4 + (i - 1) * 4
  local kind, e, v = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  if kind == 'c' then out[i] = copy(k, e, v, ARGV[a + 3])
  elseif kind == 'v' then out[i] = validate(k, e, v)
  else out[i] = remove(k, e) end
end
return out
";

/// What the bank holds, without the data: epoch, version, owner, lease mark, tombstone.
pub const PEEK: &str = r"
local cur = fields(KEYS[1], 'e', 'v', 'p', 'g', 'x')
return {cur[1] or '', cur[2] or '', cur[3] or '', cur[4] or '', cur[5] or ''}
";

/// A takeover: the requester becomes the owner at epoch + 1, if the session is still as peeked, its owner's
/// lease not renewed since (the lease mark unchanged) and, when asked to respect it, run out in the store's
/// clock too. ARGV: requester, peeked epoch, peeked owner, lease ms, ttl ms, respect the lease (`1`/`0`),
/// peeked lease mark.
pub const CLAIM: &str = r"
local cur = fields(KEYS[1], 'e', 'v', 'p', 'g', 'd')
if cur[1] ~= ARGV[2] or cur[3] ~= ARGV[3] or not cur[5] then return {'changed'} end
if ARGV[6] == '1' and (cur[4] or '') ~= ARGV[7] then return {'changed'} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local g = tonumber(cur[4]) or 0
if ARGV[6] == '1' and g > now then return {'wait', tostring(g - now)} end
local e = tonumber(cur[1]) + 1
redis.call('HSET', KEYS[1], 'e', tostring(e), 'p', ARGV[1], 'g', tostring(now + tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'granted', tostring(e), cur[2], cur[5]}
";

/// A script's answer that does not fit its contract (another program wrote the key, or a script changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected answer from the bank: {0}")]
pub struct Malformed(pub String);

fn text(field: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(field).map_err(|_| Malformed("a field that is not text".into()))
}

fn number(field: &[u8]) -> Result<u64, Malformed> {
    let t = text(field)?;
    t.parse()
        .map_err(|_| Malformed(format!("{t:?} is not a number")))
}

fn node(field: &[u8]) -> Result<NodeId, Malformed> {
    NodeId::new(number(field)?).map_err(Malformed)
}

/// One item's answer from [`APPLY`], as a session server would give it.
///
/// # Errors
/// [`Malformed`] for an answer none of the scripts gives.
pub fn item_result(answer: &[Vec<u8>]) -> Result<ItemResult, Malformed> {
    match answer {
        [kind] if kind == b"applied" => Ok(ItemResult::Applied),
        [kind] if kind == b"need_full" => Ok(ItemResult::NeedFull),
        [kind, epoch] if kind == b"ended" => Ok(ItemResult::Ended {
            epoch: number(epoch)?,
        }),
        [kind, owner, epoch] if kind == b"fenced" => Ok(ItemResult::Fenced {
            owner: node(owner)?,
            epoch: number(epoch)?,
        }),
        other => Err(Malformed(format!("{} fields", other.len()))),
    }
}

/// What [`PEEK`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Nothing under the key (never copied, or expired).
    Nothing,
    /// The session ended at this epoch.
    Ended(u64),
    /// A copy.
    Copy {
        /// Its ownership epoch.
        epoch: u64,
        /// Its version.
        version: u64,
        /// The node that owns it.
        owner: NodeId,
        /// The end of the owner's read lease as stored, changed by every renewal: a claim that waited out a
        /// lease checks that it was not renewed meanwhile.
        lease_mark: Vec<u8>,
    },
}

/// Decodes [`PEEK`]'s answer.
///
/// # Errors
/// [`Malformed`] when the fields do not decode.
pub fn held(answer: &[Vec<u8>]) -> Result<Held, Malformed> {
    let [e, v, p, g, x] = answer else {
        return Err(Malformed(format!("{} fields from a peek", answer.len())));
    };
    if !x.is_empty() {
        return Ok(Held::Ended(number(x)?));
    }
    if e.is_empty() {
        return Ok(Held::Nothing);
    }
    Ok(Held::Copy {
        epoch: number(e)?,
        version: number(v)?,
        owner: node(p)?,
        lease_mark: g.clone(),
    })
}

/// What [`CLAIM`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The requester owns the session now, at `epoch`; `data` is the session as last copied.
    Granted {
        /// The new ownership epoch.
        epoch: u64,
        /// The version the bank held.
        version: u64,
        /// The session, postcard.
        data: Vec<u8>,
    },
    /// The old owner's lease runs this many ms more.
    Wait(u64),
    /// The session changed since it was peeked (a copy, or another claim): peek again.
    Changed,
}

/// Decodes [`CLAIM`]'s answer.
///
/// # Errors
/// [`Malformed`] for an answer the script does not give.
pub fn claimed(mut answer: Vec<Vec<u8>>) -> Result<Claimed, Malformed> {
    match answer.as_slice() {
        [kind] if kind == b"changed" => Ok(Claimed::Changed),
        [kind, ms] if kind == b"wait" => Ok(Claimed::Wait(number(ms)?)),
        [kind, e, v, _] if kind == b"granted" => {
            let (epoch, version) = (number(e)?, number(v)?);
            let data = answer.pop().unwrap_or_default();
            Ok(Claimed::Granted {
                epoch,
                version,
                data,
            })
        }
        other => Err(Malformed(format!("{} fields from a claim", other.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(f: &[&str]) -> Vec<Vec<u8>> {
        f.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn script_answers_decode_as_a_session_server_would_answer() {
        let owner = NodeId::new(1 << 50).unwrap();
        assert_eq!(item_result(&fields(&["applied"])), Ok(ItemResult::Applied));
        assert_eq!(
            item_result(&fields(&["need_full"])),
            Ok(ItemResult::NeedFull)
        );
        assert_eq!(
            item_result(&fields(&["ended", "4"])),
            Ok(ItemResult::Ended { epoch: 4 })
        );
        assert_eq!(
            item_result(&fields(&["fenced", &(1u64 << 50).to_string(), "7"])),
            Ok(ItemResult::Fenced { owner, epoch: 7 })
        );
        assert!(
            item_result(&fields(&["fenced", "12", "7"])).is_err(),
            "not a node id"
        );
        assert!(item_result(&fields(&["what"])).is_err());
    }

    #[test]
    fn a_peek_tells_nothing_a_tombstone_and_a_copy_with_its_lease_apart() {
        let owner = (1u64 << 50).to_string();
        assert_eq!(held(&fields(&["", "", "", "", ""])), Ok(Held::Nothing));
        assert_eq!(held(&fields(&["", "", "", "", "3"])), Ok(Held::Ended(3)));
        assert_eq!(
            held(&fields(&["2", "9", &owner, "350", ""])),
            Ok(Held::Copy {
                epoch: 2,
                version: 9,
                owner: NodeId::new(1 << 50).unwrap(),
                lease_mark: b"350".to_vec()
            })
        );
        assert!(held(&fields(&["2"])).is_err());
    }

    #[test]
    fn a_claim_answer_carries_the_new_epoch_and_the_data() {
        assert_eq!(claimed(fields(&["changed"])), Ok(Claimed::Changed));
        assert_eq!(claimed(fields(&["wait", "120"])), Ok(Claimed::Wait(120)));
        assert_eq!(
            claimed(fields(&["granted", "3", "9", "data"])),
            Ok(Claimed::Granted {
                epoch: 3,
                version: 9,
                data: b"data".to_vec()
            })
        );
        assert!(claimed(fields(&["granted", "x", "9", "d"])).is_err());
    }
}
