//! A session's replicated state and the pure operations on it.
//!
//! Every applied update adds 1 to `version` and produces a [`Delta`]: the JSON merge patch that turns version
//! `v - 1` into `v`, plus the outcome recorded under the balancer's request id. Applying the same deltas in
//! order to a copy at `v - 1` gives the same state (seed 003 [0063]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{NodeId, SessionId};

/// How many recent request outcomes a session remembers for exactly-once retries.
pub const OUTCOMES_KEPT: usize = 32;
/// Bytes of recorded answers ([`Outcome::Replied`]) a session keeps at most: beyond it the oldest outcomes go
/// (the newest always stays), so that replays cannot make a session, and so a replication frame, grow without
/// bound.
pub const OUTCOME_BYTES_KEPT: usize = 64 * 1024;
/// Longest request id accepted from the balancer's header.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// What a write did, kept so that a retry of it gets the same answer. Compact on purpose: every session keeps
/// [`OUTCOMES_KEPT`] of them, and they travel with every copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `POST /session/incr/{key}` answered `{"value": value, "version": version}`.
    Incremented {
        /// The number after the increment.
        value: i64,
        /// The session version the increment produced.
        version: u64,
    },
    /// `PATCH /session` was applied; a retry is answered with the session as it is then.
    Patched,
    /// An application's answer to a write (sidecar mode), as the retry gets it again. Boxed: every session
    /// keeps outcomes, and this variant would otherwise make each of them, of every kind, three times larger.
    Replied(Box<RecordedReply>),
}

impl Outcome {
    /// Roughly the bytes it takes, in memory and on the wire.
    pub fn bytes(&self) -> usize {
        match self {
            Outcome::Replied(r) => {
                let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
                16 + headers + r.body.as_ref().map_or(0, Vec::len)
            }
            Outcome::Incremented { .. } | Outcome::Patched => 16,
        }
    }
}

/// An application's answer kept for a replay: status, the end-to-end headers, and the body when it was no
/// larger than `[sidecar] replay_body_bytes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedReply {
    /// The HTTP status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body; `None` when it was over the size kept.
    pub body: Option<Vec<u8>>,
}

/// A request id as kept in the session: the 64-bit FNV-1a hash of the balancer's id. Deterministic, so every
/// node maps one id to one key; two ids of one session colliding is a 2^-64 event.
pub fn request_key(rid: &str) -> u64 {
    rid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One applied update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The version this delta produces; it applies to `version - 1`.
    pub version: u64,
    /// JSON merge patch text (RFC 7396).
    pub patch: String,
    /// The write's outcome under its [`request_key`], so a copy can answer a retry; `None` for a write without a
    /// request id.
    pub outcome: Option<(u64, Outcome)>,
}

/// Why an operation was refused. The session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The patch is JSON but not an object.
    #[error("a merge patch must be a JSON object")]
    PatchNotObject,
    /// An increment of a key that holds something other than an integer.
    #[error("`{key}` holds {found}, not an integer")]
    NotAnInteger {
        /// The key to increment.
        key: String,
        /// What it holds, in words (`a string`, `an array`, ...).
        found: &'static str,
    },
    /// An increment past `i64::MAX`.
    #[error("`{key}` would overflow")]
    Overflow {
        /// The key to increment.
        key: String,
    },
    /// The session's data would exceed `[session] max_session_bytes`.
    #[error("the session would be {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// The data's JSON size after the change, in bytes.
        size: usize,
        /// `max_session_bytes`.
        limit: usize,
    },
    /// A delta that does not follow the copy's version: the copy needs the whole session instead.
    #[error("delta for version {got} does not follow version {have}")]
    VersionGap {
        /// The copy's version.
        have: u64,
        /// The version the delta produces.
        got: u64,
    },
    /// A delta whose patch text is not a JSON object.
    #[error("stored patch is not valid JSON")]
    CorruptPatch,
}

/// The replicated part of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session's id, as in its cookie.
    pub id: SessionId,
    /// Updates applied so far; 0 for a new session.
    pub version: u64,
    /// Ownership epoch: +1 on every takeover. A copy with a higher epoch fences the lower.
    pub epoch: u64,
    /// The session data as JSON object text (kept as text so any serde format can carry it).
    #[serde(with = "json_text")]
    pub data: Map<String, Value>,
    /// The node that owns the session and serves its requests.
    pub primary: NodeId,
    /// The node that holds its copy; `None` while no live peer does. The routing cookie names it.
    pub secondary: Option<NodeId>,
    /// A second bank member holding a copy (`rss` topology, `copies = 2`); the cookie does not name it, a
    /// takeover finds it by polling the bank.
    pub also: Option<NodeId>,
    /// The last [`OUTCOMES_KEPT`] writes' outcomes by [`request_key`], oldest first, for exactly-once retries.
    pub outcomes: VecDeque<(u64, Outcome)>,
}

mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::{Map, Value};

    pub(super) fn serialize<S: Serializer>(
        m: &Map<String, Value>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(m).map_err(serde::ser::Error::custom)?)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Map<String, Value>, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

impl Session {
    /// A new, empty session owned by `primary`.
    pub fn new(id: SessionId, primary: NodeId, secondary: Option<NodeId>) -> Session {
        Session {
            id,
            version: 0,
            epoch: 1,
            data: Map::new(),
            primary,
            secondary,
            also: None,
            outcomes: VecDeque::new(),
        }
    }

    /// The recorded outcome of request `rid`, if this session applied it.
    pub fn outcome_of(&self, rid: &str) -> Option<Outcome> {
        let key = request_key(rid);
        self.outcomes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, o)| o.clone())
    }

    /// Applies a merge patch as one update.
    ///
    /// # Errors
    /// [`SessionError::PatchNotObject`] or [`SessionError::TooLarge`]; the session is then unchanged.
    pub fn patch(&mut self, patch: &Value, limit: usize) -> Result<Delta, SessionError> {
        let Value::Object(p) = patch else {
            return Err(SessionError::PatchNotObject);
        };
        let mut data = self.data.clone();
        merge_patch(&mut data, p);
        let size = serde_json::to_string(&data)
            .map(|s| s.len())
            .unwrap_or(usize::MAX);
        if size > limit {
            return Err(SessionError::TooLarge { size, limit });
        }
        self.data = data;
        Ok(self.next_delta(patch.to_string()))
    }

    /// Adds 1 to the integer at `key` (absent counts as 0) as one update; returns the new value and the delta.
    ///
    /// # Errors
    /// [`SessionError::NotAnInteger`] or [`SessionError::Overflow`]; the session is then unchanged.
    pub fn incr(&mut self, key: &str) -> Result<(i64, Delta), SessionError> {
        let current = match self.data.get(key) {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) if n.is_i64() => n.as_i64().expect("checked"),
            Some(other) => {
                return Err(SessionError::NotAnInteger {
                    key: key.into(),
                    found: kind(other),
                })
            }
        };
        let value = current
            .checked_add(1)
            .ok_or_else(|| SessionError::Overflow { key: key.into() })?;
        self.data.insert(key.to_string(), Value::from(value));
        let patch = Value::Object(Map::from_iter([(key.to_string(), Value::from(value))]));
        Ok((value, self.next_delta(patch.to_string())))
    }

    fn next_delta(&mut self, patch: String) -> Delta {
        self.version += 1;
        Delta {
            version: self.version,
            patch,
            outcome: None,
        }
    }

    /// Remembers the outcome of request `rid` in the session and in its delta.
    pub fn record(&mut self, delta: &mut Delta, rid: &str, outcome: Outcome) {
        let key = request_key(rid);
        delta.outcome = Some((key, outcome.clone()));
        self.remember(key, outcome);
    }

    fn remember(&mut self, key: u64, outcome: Outcome) {
        let recorded_answer = matches!(outcome, Outcome::Replied(_));
        if self.outcomes.len() >= OUTCOMES_KEPT {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((key, outcome));
        // Only a recorded answer can take the outcomes over their byte budget. Primary and copies apply the
        // same deltas in the same order, so they drop the same outcomes.
        while recorded_answer
            && self.outcomes.len() > 1
            && self.outcomes.iter().map(|(_, o)| o.bytes()).sum::<usize>() > OUTCOME_BYTES_KEPT
        {
            self.outcomes.pop_front();
        }
    }

    /// Applies a delta received from the primary.
    ///
    /// # Errors
    /// [`SessionError::VersionGap`] when it does not follow this copy's version: the copy needs the full state.
    pub fn apply(&mut self, d: &Delta) -> Result<(), SessionError> {
        if d.version != self.version + 1 {
            return Err(SessionError::VersionGap {
                have: self.version,
                got: d.version,
            });
        }
        let Ok(Value::Object(p)) = serde_json::from_str::<Value>(&d.patch) else {
            return Err(SessionError::CorruptPatch);
        };
        merge_patch(&mut self.data, &p);
        self.version = d.version;
        if let Some((key, o)) = &d.outcome {
            self.remember(*key, o.clone());
        }
        Ok(())
    }

    /// The JSON the session API answers with.
    pub fn to_json(&self, name_of: impl Fn(NodeId) -> Option<String>) -> Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "version": self.version,
            "data": Value::Object(self.data.clone()),
            "primary": name_of(self.primary),
            "secondary": self.secondary.and_then(name_of),
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a non-integer number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// RFC 7396 merge patch of an object into an object: `null` removes, objects merge, anything else replaces.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let slot = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    merge_patch(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(n: u64) -> NodeId {
        NodeId::new((1 << 50) + n).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn merge_patch_follows_rfc_7396_examples() {
        let mut t = obj(json!({"a": "b", "c": {"d": "e", "f": "g"}}));
        merge_patch(&mut t, &obj(json!({"a": "z", "c": {"f": null}})));
        assert_eq!(Value::Object(t), json!({"a": "z", "c": {"d": "e"}}));
        let mut t = obj(json!({"a": [1]}));
        merge_patch(&mut t, &obj(json!({"a": {"b": "c"}})));
        assert_eq!(Value::Object(t), json!({"a": {"b": "c"}}));
    }

    #[test]
    fn deltas_replayed_on_a_copy_give_the_same_state() {
        let mut primary = Session::new(SessionId(7), node(1), Some(node(2)));
        let mut copy = primary.clone();
        let mut deltas = vec![primary.incr("n").unwrap().1];
        deltas.push(
            primary
                .patch(&json!({"cart": {"apple": 2}}), 1 << 20)
                .unwrap(),
        );
        let (v, mut d) = primary.incr("n").unwrap();
        primary.record(
            &mut d,
            "req-1",
            Outcome::Incremented {
                value: 2,
                version: 3,
            },
        );
        deltas.push(d);
        assert_eq!(v, 2);
        for d in &deltas {
            copy.apply(d).unwrap();
        }
        assert_eq!(copy, primary);
        assert_eq!(
            copy.outcome_of("req-1"),
            Some(Outcome::Incremented {
                value: 2,
                version: 3
            })
        );
        assert_eq!(copy.outcome_of("req-2"), None);
    }

    #[test]
    fn a_delta_that_skips_a_version_is_refused() {
        let mut primary = Session::new(SessionId(7), node(1), None);
        let mut copy = primary.clone();
        primary.incr("n").unwrap();
        let d2 = primary.incr("n").unwrap().1;
        assert_eq!(
            copy.apply(&d2),
            Err(SessionError::VersionGap { have: 0, got: 2 })
        );
        assert_eq!(copy.version, 0);
    }

    #[test]
    fn refused_operations_leave_the_session_unchanged() {
        let mut s = Session::new(SessionId(1), node(1), None);
        s.patch(&json!({"name": "x"}), 1 << 20).unwrap();
        let before = s.clone();
        assert!(matches!(
            s.incr("name"),
            Err(SessionError::NotAnInteger { .. })
        ));
        assert_eq!(
            s.patch(&json!([1]), 1 << 20),
            Err(SessionError::PatchNotObject)
        );
        assert!(matches!(
            s.patch(&json!({"big": "x".repeat(100)}), 50),
            Err(SessionError::TooLarge { .. })
        ));
        s.data.insert("max".into(), json!(i64::MAX));
        let before_max = s.clone();
        assert!(matches!(s.incr("max"), Err(SessionError::Overflow { .. })));
        assert_eq!(s, before_max);
        assert_eq!(before.version, 1);
    }

    #[test]
    fn recorded_answers_are_kept_within_their_byte_budget_newest_first() {
        let mut s = Session::new(SessionId(1), node(1), None);
        let answer = |n: usize| {
            Outcome::Replied(Box::new(RecordedReply {
                status: 200,
                headers: vec![],
                body: Some(vec![b'x'; n]),
            }))
        };
        for i in 0..10 {
            let mut d = s.patch(&serde_json::json!({"i": i}), 1 << 20).unwrap();
            s.record(&mut d, &format!("r{i}"), answer(20 * 1024));
        }
        let kept: usize = s.outcomes.iter().map(|(_, o)| o.bytes()).sum();
        assert!(kept <= OUTCOME_BYTES_KEPT, "{kept}");
        assert!(s.outcome_of("r9").is_some() && s.outcome_of("r0").is_none());
        let mut d = s.patch(&serde_json::json!({"big": 1}), 1 << 20).unwrap();
        s.record(&mut d, "huge", answer(2 * OUTCOME_BYTES_KEPT));
        assert_eq!(
            s.outcomes.len(),
            1,
            "one answer over the budget is still kept, alone"
        );
    }

    #[test]
    fn only_the_latest_outcomes_are_kept() {
        let mut s = Session::new(SessionId(1), node(1), None);
        for i in 0..OUTCOMES_KEPT + 5 {
            let (_, mut d) = s.incr("n").unwrap();
            s.record(&mut d, &format!("r{i}"), Outcome::Patched);
        }
        assert_eq!(s.outcomes.len(), OUTCOMES_KEPT);
        assert!(s.outcome_of("r0").is_none());
        assert!(s.outcome_of(&format!("r{}", OUTCOMES_KEPT + 4)).is_some());
    }
}
