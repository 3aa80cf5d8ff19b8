//! Pure verification: a virtual user's model of one session, fed (request, response) events, says what each
//! response reveals. No clocks or sockets in here: timestamps come in with the events, so scripted streams in
//! the tests below exercise exactly what the load loop runs.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What the client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `GET /session`.
    Get,
    /// `POST /session/incr/{key}`.
    Incr {
        /// The counter to increment.
        key: String,
    },
    /// `PATCH /session` setting one field.
    Patch {
        /// The field.
        key: String,
        /// Its new value.
        value: String,
    },
    /// `DELETE /session`.
    Delete,
}

/// Why a request did not produce a usable answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The connection could not be opened.
    Connect,
    /// No answer (or no connection) within the per-request timeout.
    Timeout,
    /// The connection broke after the request was (maybe) sent.
    Io,
    /// A 2xx whose body is not what the API promises.
    BadBody,
    /// A status other than 2xx (the status).
    Status(u16),
}

impl ErrorKind {
    /// Stable name for reports and JSON.
    pub fn label(&self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Io => "io".into(),
            ErrorKind::BadBody => "bad_body".into(),
            ErrorKind::Status(s) => format!("http_{s}"),
        }
    }
}

/// The parts of a successful response that verification looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    /// `X-Served-By`, when the cluster exposes it.
    pub served_by: Option<String>,
    /// `X-Session-Stale: 1`.
    pub stale_flag: bool,
    /// From the body (GET/PATCH) or from a decoded routing cookie; `None` when neither tells.
    pub session_id: Option<String>,
    /// What the body says.
    pub body: Body,
}

/// A successful answer's body, as the API defines it.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Body {
    /// GET and PATCH: the whole session.
    Session {
        /// The session's version.
        version: u64,
        /// The session's data.
        data: Map<String, Value>,
    },
    /// `POST /session/incr/{key}`.
    Incr {
        /// The counter after the increment.
        value: i64,
        /// The version the increment produced.
        version: u64,
    },
    /// DELETE's 204.
    #[default]
    Empty,
}

/// One finished request.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Milliseconds since the run started, when the response (or failure) arrived.
    pub at_ms: u64,
    /// What was asked.
    pub op: Op,
    /// The answer, or why there was none.
    pub outcome: Result<Reply, ErrorKind>,
}

/// What one response revealed. Counts are of acknowledged changes, not of responses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Why the request failed, if it did.
    pub error: Option<ErrorKind>,
    /// Acknowledged changes found missing.
    pub lost_updates: u64,
    /// Increments seen applied more often than they were sent.
    pub duplicates: u64,
    /// The session's version went backwards.
    pub stale_version: bool,
    /// The cluster flagged the answer as coming from an older copy.
    pub stale_flag: bool,
    /// The session was silently replaced.
    pub reset: bool,
    /// The serving node changed: the session moved.
    pub failover: bool,
}

/// Bounds a counter can be at: a failed increment may or may not have been applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Range {
    lo: i64,
    hi: i64,
}

/// A patched field: its acknowledged value and values from failed patches that may have landed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Field {
    acked: Option<String>,
    maybe: Vec<String>,
}

/// Failed patches remembered per field; more than this and older ones are forgotten (and then a late-landing
/// one would read as lost, which a run with that many failures on one field has bigger problems than).
const MAX_MAYBE: usize = 8;

/// A virtual user's model of one of its sessions.
#[derive(Clone, Debug, Default)]
pub struct SessionModel {
    id: Option<String>,
    version: u64,
    counters: BTreeMap<String, Range>,
    fields: BTreeMap<String, Field>,
    /// A DELETE failed: the session may or may not exist any more.
    maybe_deleted: bool,
    last_ok_ms: Option<u64>,
    served_by: Option<String>,
    failed_over: bool,
    /// Longest time between two successful requests of this session.
    max_gap_ms: u64,
}

impl SessionModel {
    /// True until a session exists (first request, or after a DELETE): the client should start with a GET.
    pub fn is_fresh(&self) -> bool {
        self.id.is_none() && self.counters.is_empty() && self.fields.is_empty()
    }

    /// Whether a serving-node change was ever seen.
    pub fn failed_over(&self) -> bool {
        self.failed_over
    }

    /// Longest time between two successful requests of this session, in ms.
    pub fn max_gap_ms(&self) -> u64 {
        self.max_gap_ms
    }

    /// The latest version seen.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Checks `ev` against the model and updates the model to what the cluster now holds.
    pub fn observe(&mut self, ev: &Event) -> Verdict {
        match &ev.outcome {
            Err(kind) => {
                self.note_failure(&ev.op);
                Verdict {
                    error: Some(*kind),
                    ..Verdict::default()
                }
            }
            Ok(reply) => self.note_reply(ev.at_ms, &ev.op, reply),
        }
    }

    fn note_failure(&mut self, op: &Op) {
        match op {
            Op::Get => {}
            Op::Incr { key } => self.counters.entry(key.clone()).or_default().hi += 1,
            Op::Patch { key, value } => {
                let f = self.fields.entry(key.clone()).or_default();
                if f.maybe.len() == MAX_MAYBE {
                    f.maybe.remove(0);
                }
                f.maybe.push(value.clone());
            }
            Op::Delete => self.maybe_deleted = true,
        }
    }

    fn note_reply(&mut self, at_ms: u64, op: &Op, reply: &Reply) -> Verdict {
        let mut v = Verdict {
            stale_flag: reply.stale_flag,
            ..Verdict::default()
        };
        if let Op::Delete = op {
            // The slot's history (did it ever move, its longest gap) outlives the session it held.
            self.start_over();
            self.last_ok_ms = Some(at_ms);
            return v;
        }
        if self.replaced_by(op, reply) {
            // A vanished DELETE explains a new session; nothing else does.
            v.reset = !self.maybe_deleted;
            self.start_over();
        }
        // Only an answer that names its session proves the DELETE did not land (increments without a decodable
        // cookie do not).
        if reply.session_id.is_some() {
            self.maybe_deleted = false;
        }
        if self.id.is_none() {
            self.id = reply.session_id.clone();
        }
        let version = match &reply.body {
            Body::Session { version, .. } | Body::Incr { version, .. } => *version,
            Body::Empty => self.version,
        };
        if version < self.version {
            v.stale_version = true;
        }
        self.version = version;
        match (op, &reply.body) {
            (Op::Incr { key }, Body::Incr { value, .. }) => self.check_incr(key, *value, &mut v),
            (_, Body::Session { data, .. }) => {
                if let Op::Patch { key, value } = op {
                    // Acknowledged right now: it must be visible in this very answer.
                    self.fields.insert(
                        key.clone(),
                        Field {
                            acked: Some(value.clone()),
                            maybe: vec![],
                        },
                    );
                }
                self.check_data(data, &mut v);
            }
            _ => {}
        }
        self.track_node(at_ms, reply, &mut v);
        v
    }

    /// True when the answer is a different session than the one modelled.
    fn replaced_by(&self, op: &Op, reply: &Reply) -> bool {
        if let (Some(mine), Some(theirs)) = (&self.id, &reply.session_id) {
            if mine != theirs {
                return true;
            }
        }
        let had_something = self.counters.values().any(|r| r.lo > 0)
            || self.fields.values().any(|f| f.acked.is_some());
        if !had_something {
            return false;
        }
        match (&reply.body, op) {
            // A counter starting again from one, when the model knows it was higher, is a new session.
            (Body::Incr { value: 1, .. }, Op::Incr { key }) => {
                self.counters.get(key).is_some_and(|r| r.lo >= 1)
            }
            (Body::Session { data, .. }, _) => {
                let counters_gone = self
                    .counters
                    .iter()
                    .all(|(k, r)| r.lo == 0 || counter_of(data, k) == 0);
                let fields_gone = self
                    .fields
                    .iter()
                    .all(|(k, f)| f.acked.is_none() || !data.contains_key(k));
                counters_gone && fields_gone
            }
            _ => false,
        }
    }

    fn start_over(&mut self) {
        let (last_ok_ms, max_gap_ms, failed_over) =
            (self.last_ok_ms, self.max_gap_ms, self.failed_over);
        *self = SessionModel {
            last_ok_ms,
            max_gap_ms,
            failed_over,
            ..SessionModel::default()
        };
    }

    fn check_incr(&mut self, key: &str, value: i64, v: &mut Verdict) {
        let r = self.counters.entry(key.to_string()).or_default();
        if value < r.lo + 1 {
            v.lost_updates += (r.lo + 1 - value) as u64;
        } else if value > r.hi + 1 {
            v.duplicates += (value - r.hi - 1) as u64;
        }
        *r = Range {
            lo: value,
            hi: value,
        };
    }

    fn check_data(&mut self, data: &Map<String, Value>, v: &mut Verdict) {
        for (key, r) in self.counters.iter_mut() {
            let seen = counter_of(data, key);
            if seen < r.lo {
                v.lost_updates += (r.lo - seen) as u64;
            } else if seen > r.hi {
                v.duplicates += (seen - r.hi) as u64;
            }
            // Failed increments not visible yet may still land later (e.g. queued behind a paused node):
            // the upper bound keeps room for them.
            *r = Range {
                lo: seen,
                hi: seen.max(r.hi),
            };
        }
        for (key, f) in self.fields.iter_mut() {
            let seen = data.get(key).and_then(Value::as_str);
            let explained = match seen {
                Some(s) => f.acked.as_deref() == Some(s) || f.maybe.iter().any(|m| m == s),
                None => f.acked.is_none(),
            };
            if !explained && f.acked.is_some() {
                v.lost_updates += 1;
            }
            // Failed patches not seen yet may still land later; they stay possible until a patch is acknowledged.
            let mut maybe = std::mem::take(&mut f.maybe);
            maybe.retain(|m| Some(m.as_str()) != seen);
            *f = Field {
                acked: seen.map(str::to_string),
                maybe,
            };
        }
    }

    fn track_node(&mut self, at_ms: u64, reply: &Reply, v: &mut Verdict) {
        if let Some(prev) = self.last_ok_ms {
            self.max_gap_ms = self.max_gap_ms.max(at_ms.saturating_sub(prev));
        }
        self.last_ok_ms = Some(at_ms);
        if let (Some(before), Some(now)) = (&self.served_by, &reply.served_by) {
            if before != now {
                v.failover = true;
                self.failed_over = true;
            }
        }
        if reply.served_by.is_some() {
            self.served_by = reply.served_by.clone();
        }
    }
}

/// A counter's value in session data; absent means never incremented.
fn counter_of(data: &Map<String, Value>, key: &str) -> i64 {
    data.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// Totals over many verdicts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests made.
    pub requests: u64,
    /// Requests answered successfully.
    pub ok: u64,
    /// Failed requests by [`ErrorKind::label`].
    pub errors: BTreeMap<String, u64>,
    /// Acknowledged changes found missing.
    pub lost_updates: u64,
    /// Increments seen applied more often than they were sent.
    pub duplicates: u64,
    /// Answers whose session version went backwards.
    pub stale_versions: u64,
    /// Answers the cluster flagged `X-Session-Stale`.
    pub stale_flagged: u64,
    /// Sessions silently replaced.
    pub session_resets: u64,
    /// Answers from another node than the session's previous one.
    pub failovers: u64,
}

impl Tally {
    /// Counts one response's verdict.
    pub fn add(&mut self, v: &Verdict) {
        let mut one = Tally {
            requests: 1,
            lost_updates: v.lost_updates,
            duplicates: v.duplicates,
            stale_versions: v.stale_version as u64,
            stale_flagged: v.stale_flag as u64,
            session_resets: v.reset as u64,
            failovers: v.failover as u64,
            ..Tally::default()
        };
        match &v.error {
            Some(e) => {
                one.errors.insert(e.label(), 1);
            }
            None => one.ok = 1,
        }
        self.merge(&one);
    }

    /// Adds another tally's counts to this one.
    pub fn merge(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.ok += o.ok;
        for (k, n) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        self.lost_updates += o.lost_updates;
        self.duplicates += o.duplicates;
        self.stale_versions += o.stale_versions;
        self.stale_flagged += o.stale_flagged;
        self.session_resets += o.session_resets;
        self.failovers += o.failovers;
    }

    /// Failed requests, of every kind.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Responses that went back in time, or that the cluster flagged as recovered from an older copy.
    pub fn stale_reads(&self) -> u64 {
        self.stale_versions + self.stale_flagged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn session(at_ms: u64, op: Op, node: &str, id: &str, version: u64, data: Value) -> Event {
        let Value::Object(data) = data else {
            panic!("data must be an object")
        };
        Event {
            at_ms,
            op,
            outcome: Ok(Reply {
                served_by: Some(node.into()),
                stale_flag: false,
                session_id: Some(id.into()),
                body: Body::Session { version, data },
            }),
        }
    }

    fn incr(at_ms: u64, node: &str, value: i64, version: u64) -> Event {
        Event {
            at_ms,
            op: Op::Incr { key: "c".into() },
            outcome: Ok(Reply {
                served_by: Some(node.into()),
                stale_flag: false,
                session_id: None,
                body: Body::Incr { value, version },
            }),
        }
    }

    fn failed(at_ms: u64, op: Op, kind: ErrorKind) -> Event {
        Event {
            at_ms,
            op,
            outcome: Err(kind),
        }
    }

    fn run(events: &[Event]) -> (Tally, SessionModel) {
        let mut m = SessionModel::default();
        let mut t = Tally::default();
        for e in events {
            t.add(&m.observe(e));
        }
        (t, m)
    }

    /// A session with counter c = 3 at version 3, served by n1.
    fn patch(key: &str, value: &str) -> Op {
        Op::Patch {
            key: key.into(),
            value: value.into(),
        }
    }

    fn warm_up() -> Vec<Event> {
        vec![
            session(0, Op::Get, "n1", ID, 0, json!({})),
            incr(10, "n1", 1, 1),
            incr(20, "n1", 2, 2),
            incr(30, "n1", 3, 3),
        ]
    }

    #[test]
    fn clean_stream_is_clean() {
        let mut ev = warm_up();
        ev.push(session(
            40,
            patch("p", "x"),
            "n1",
            ID,
            4,
            json!({"c": 3, "p": "x"}),
        ));
        ev.push(session(50, Op::Get, "n1", ID, 4, json!({"c": 3, "p": "x"})));
        let (t, m) = run(&ev);
        assert_eq!(
            t,
            Tally {
                requests: 6,
                ok: 6,
                ..Tally::default()
            }
        );
        assert!(!m.failed_over());
    }

    #[test]
    fn lost_update_is_classified() {
        let mut ev = warm_up();
        // The acknowledged third increment is gone: the counter continues from 2.
        ev.push(incr(40, "n1", 3, 4));
        let (t, _) = run(&ev);
        assert_eq!(t.lost_updates, 1);
        assert_eq!(
            (t.session_resets, t.stale_versions, t.duplicates),
            (0, 0, 0)
        );

        // A GET missing an acknowledged patch and two increments.
        let mut ev = warm_up();
        ev.push(session(
            40,
            patch("p", "x"),
            "n1",
            ID,
            4,
            json!({"c": 3, "p": "x"}),
        ));
        ev.push(session(50, Op::Get, "n2", ID, 4, json!({"c": 1, "p": "x"})));
        ev.push(session(60, Op::Get, "n2", ID, 4, json!({"c": 1})));
        let (t, _) = run(&ev);
        assert_eq!(t.lost_updates, 3);
        assert_eq!(t.session_resets, 0);
    }

    #[test]
    fn stale_read_is_classified() {
        let mut ev = warm_up();
        // Version went from 3 back to 2 (and the counter with it: that is a loss too).
        ev.push(session(40, Op::Get, "n1", ID, 2, json!({"c": 2})));
        let (t, _) = run(&ev);
        assert_eq!(t.stale_versions, 1);
        assert_eq!(t.stale_reads(), 1);
        assert_eq!(t.lost_updates, 1);
        assert_eq!(t.session_resets, 0);

        // A flagged answer counts as a stale read even when the numbers look right.
        let mut ev = warm_up();
        let mut flagged = session(40, Op::Get, "n2", ID, 3, json!({"c": 3}));
        if let Ok(r) = &mut flagged.outcome {
            r.stale_flag = true;
        }
        ev.push(flagged);
        let (t, _) = run(&ev);
        assert_eq!(
            (t.stale_flagged, t.stale_versions, t.lost_updates),
            (1, 0, 0)
        );
        assert_eq!(t.stale_reads(), 1);
    }

    #[test]
    fn silent_reset_is_classified() {
        // A different session id.
        let mut ev = warm_up();
        ev.push(session(
            40,
            Op::Get,
            "n2",
            "ffffffffffffffffffffffffffffffff",
            0,
            json!({}),
        ));
        let (t, m) = run(&ev);
        assert_eq!(t.session_resets, 1);
        assert_eq!(
            t.lost_updates, 0,
            "a reset is reported as a reset, not as lost updates too"
        );
        assert!(m.version() == 0);

        // Same id unknown (increment answers carry none), counter back to one.
        let mut ev = warm_up();
        ev.push(incr(40, "n2", 1, 1));
        ev.push(incr(50, "n2", 2, 2));
        let (t, _) = run(&ev);
        assert_eq!(
            (t.session_resets, t.lost_updates, t.stale_versions),
            (1, 0, 0)
        );

        // Same id, everything the client ever saw is gone.
        let mut ev = warm_up();
        ev.push(session(40, Op::Get, "n2", ID, 0, json!({})));
        let (t, _) = run(&ev);
        assert_eq!(t.session_resets, 1);
    }

    #[test]
    fn first_increment_of_another_counter_is_not_a_reset() {
        let mut ev = warm_up();
        ev.push(Event {
            at_ms: 40,
            op: Op::Incr {
                key: "other".into(),
            },
            outcome: Ok(Reply {
                served_by: Some("n1".into()),
                body: Body::Incr {
                    value: 1,
                    version: 4,
                },
                ..Reply::default()
            }),
        });
        let (t, _) = run(&ev);
        assert_eq!((t.session_resets, t.lost_updates, t.duplicates), (0, 0, 0));
    }

    #[test]
    fn deletion_is_not_a_reset() {
        let mut ev = warm_up();
        ev.push(Event {
            at_ms: 40,
            op: Op::Delete,
            outcome: Ok(Reply::default()),
        });
        ev.push(session(
            50,
            Op::Get,
            "n2",
            "ffffffffffffffffffffffffffffffff",
            0,
            json!({}),
        ));
        let (t, m) = run(&ev);
        assert_eq!(t.session_resets, 0);
        assert!(
            !m.failed_over(),
            "a new session on another node is not a failover"
        );

        // A DELETE whose outcome is unknown explains a new session as well.
        let mut ev = warm_up();
        ev.push(failed(40, Op::Delete, ErrorKind::Io));
        ev.push(incr(50, "n2", 1, 1));
        let (t, _) = run(&ev);
        assert_eq!((t.session_resets, t.lost_updates), (0, 0));
    }

    #[test]
    fn a_failed_patch_landing_after_a_read_is_not_a_lost_update() {
        let mut ev = warm_up();
        let first = patch("p", "x");
        ev.push(session(35, first, "n1", ID, 4, json!({"c": 3, "p": "x"})));
        let late = patch("p", "late");
        ev.push(failed(40, late, ErrorKind::Timeout));
        ev.push(session(50, Op::Get, "n1", ID, 4, json!({"c": 3, "p": "x"})));
        // The timed-out patch lands only now (it was queued behind a paused node).
        ev.push(session(
            60,
            Op::Get,
            "n1",
            ID,
            5,
            json!({"c": 3, "p": "late"}),
        ));
        let (t, _) = run(&ev);
        assert_eq!((t.lost_updates, t.duplicates), (0, 0));
    }

    #[test]
    fn a_failed_increment_landing_after_a_read_is_not_a_duplicate() {
        let mut ev = warm_up();
        ev.push(failed(40, Op::Incr { key: "c".into() }, ErrorKind::Timeout));
        ev.push(session(50, Op::Get, "n1", ID, 3, json!({"c": 3})));
        ev.push(incr(60, "n1", 5, 5));
        let (t, _) = run(&ev);
        assert_eq!((t.lost_updates, t.duplicates), (0, 0));
    }

    #[test]
    fn an_anonymous_answer_after_an_unknown_delete_does_not_turn_the_new_session_into_a_reset() {
        // The DELETE landed; an increment of another counter answers without naming its session (no cookie
        // decoding), and only the next read shows the new id.
        let mut ev = warm_up();
        ev.push(failed(40, Op::Delete, ErrorKind::Io));
        ev.push(Event {
            at_ms: 50,
            op: Op::Incr { key: "d".into() },
            outcome: Ok(Reply {
                served_by: Some("n1".into()),
                stale_flag: false,
                session_id: None,
                body: Body::Incr {
                    value: 1,
                    version: 1,
                },
            }),
        });
        ev.push(session(
            60,
            Op::Get,
            "n1",
            "another-session",
            1,
            json!({"d": 1}),
        ));
        let (t, _) = run(&ev);
        assert_eq!((t.session_resets, t.lost_updates), (0, 0));
    }

    #[test]
    fn clean_failover_is_classified() {
        let mut ev = warm_up();
        // n1 dies: two requests fail to connect, then n2 serves the session with every update intact.
        ev.push(failed(40, Op::Get, ErrorKind::Connect));
        ev.push(failed(
            500,
            Op::Incr { key: "c".into() },
            ErrorKind::Connect,
        ));
        ev.push(incr(1230, "n2", 4, 4));
        ev.push(session(1240, Op::Get, "n2", ID, 4, json!({"c": 4})));
        let (t, m) = run(&ev);
        assert_eq!(t.failovers, 1);
        assert_eq!(
            (
                t.lost_updates,
                t.session_resets,
                t.stale_reads(),
                t.duplicates
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(t.errors.get("connect"), Some(&2));
        assert!(m.failed_over());
        assert_eq!(m.max_gap_ms(), 1200);

        // Deleting the session afterwards does not erase that it moved.
        ev.push(Event {
            at_ms: 1250,
            op: Op::Delete,
            outcome: Ok(Reply::default()),
        });
        let (_, m) = run(&ev);
        assert!(m.failed_over());
        assert_eq!(m.max_gap_ms(), 1200);
    }

    #[test]
    fn uncertain_increment_may_or_may_not_land() {
        for landed in [3, 4] {
            let mut ev = warm_up();
            ev.push(failed(40, Op::Incr { key: "c".into() }, ErrorKind::Io));
            ev.push(session(
                50,
                Op::Get,
                "n1",
                ID,
                landed as u64,
                json!({ "c": landed }),
            ));
            let (t, _) = run(&ev);
            assert_eq!((t.lost_updates, t.duplicates), (0, 0), "value {landed}");
        }
        // ... but not twice.
        let mut ev = warm_up();
        ev.push(failed(40, Op::Incr { key: "c".into() }, ErrorKind::Io));
        ev.push(incr(50, "n1", 6, 6));
        assert_eq!(run(&ev).0.duplicates, 1);
    }

    #[test]
    fn uncertain_patch_may_land() {
        let mut ev = warm_up();
        ev.push(session(
            40,
            patch("p", "a"),
            "n1",
            ID,
            4,
            json!({"c": 3, "p": "a"}),
        ));
        ev.push(failed(50, patch("p", "b"), ErrorKind::Timeout));
        ev.push(session(60, Op::Get, "n1", ID, 5, json!({"c": 3, "p": "b"})));
        ev.push(session(70, Op::Get, "n1", ID, 5, json!({"c": 3, "p": "b"})));
        let (t, _) = run(&ev);
        assert_eq!(t.lost_updates, 0);
        assert_eq!(t.errors.get("timeout"), Some(&1));
    }
}
