//! The load loop: `concurrency` virtual users, each owning a share of the sessions, each sending closed-loop
//! requests on its own keep-alive connection and verifying every answer against its own models. Bounded by
//! request count and by time, whichever comes first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng as SmallRng;
use rand::{Rng, SeedableRng};

use crate::client::{interpret, Conn, Jar};
use crate::live::Live;
use crate::spec::{LoadSpec, OpKind};
use crate::verify::{Event, Op, SessionModel, Tally};

/// Counter keys: few, so each counter sees many increments.
const COUNTERS: [&str; 2] = ["c0", "c1"];
/// Patched fields: few, so patched data stays small.
const FIELDS: [&str; 4] = ["p0", "p1", "p2", "p3"];

/// What one run measured.
pub struct RunResult {
    /// What every response revealed, summed.
    pub tally: Tally,
    /// Latency of successful requests, microseconds.
    pub latency: Histogram<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Sessions whose serving node changed at least once.
    pub sessions_failed_over: u64,
    /// Longest gap between two successful requests of a session that moved nodes.
    pub failover_max_gap_ms: u64,
    /// Same, over every session.
    pub max_gap_ms: u64,
}

struct UserResult {
    tally: Tally,
    latency: Histogram<u64>,
    models: Vec<SessionModel>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// A session slot of one user.
struct Owned {
    model: SessionModel,
    jar: Jar,
}

/// Runs the load; `stop` ends it early (Ctrl-C). `live` must be fresh for this run.
pub async fn run(spec: &LoadSpec, live: Arc<Live>, stop: Arc<AtomicBool>) -> RunResult {
    let users = spec.concurrency.max(1);
    let sessions = spec.sessions.max(users);
    let deadline = live.start() + spec.duration;
    let budget = Arc::new(AtomicU64::new(spec.max_requests));
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(users);
    for u in 0..users {
        let owned = (u..sessions).step_by(users).count();
        let (spec, live, stop, budget, seq) = (
            spec.clone(),
            live.clone(),
            stop.clone(),
            budget.clone(),
            seq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            user(u, owned, spec, live, stop, budget, seq, deadline).await
        }));
    }
    let mut tally = Tally::default();
    let mut latency = new_histogram();
    let mut models = Vec::new();
    for t in tasks {
        // A user task only fails by panicking, which is a bug worth surfacing loudly.
        let r = t.await.expect("virtual user panicked");
        tally.merge(&r.tally);
        latency.add(&r.latency).expect("same bounds");
        models.extend(r.models);
    }
    let moved: Vec<&SessionModel> = models.iter().filter(|m| m.failed_over()).collect();
    RunResult {
        tally,
        latency,
        elapsed: live.start().elapsed(),
        sessions_failed_over: moved.len() as u64,
        failover_max_gap_ms: moved.iter().map(|m| m.max_gap_ms()).max().unwrap_or(0),
        max_gap_ms: models.iter().map(|m| m.max_gap_ms()).max().unwrap_or(0),
    }
}

#[allow(clippy::too_many_arguments)]
async fn user(
    index: usize,
    owned: usize,
    spec: LoadSpec,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
    budget: Arc<AtomicU64>,
    seq: Arc<AtomicU64>,
    deadline: Instant,
) -> UserResult {
    let mut rng = SmallRng::seed_from_u64(0x5eed ^ index as u64);
    let mut conn = Conn::new(spec.target, spec.timeout);
    let mut then = spec.then.map(|t| Conn::new(t, spec.timeout));
    let mut slots: Vec<Owned> = (0..owned)
        .map(|_| Owned {
            model: SessionModel::default(),
            jar: Jar::default(),
        })
        .collect();
    let mut tally = Tally::default();
    let mut latency = new_histogram();
    let mut next = 0usize;
    while !slots.is_empty() && !stop.load(Relaxed) && Instant::now() < deadline {
        if budget
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(1))
            .is_err()
        {
            break;
        }
        let slot = &mut slots[next];
        next = (next + 1) % owned;
        let op = if slot.model.is_fresh() {
            Op::Get
        } else {
            pick_op(&spec, &mut rng, &seq)
        };
        let t0 = Instant::now();
        let to = match then.as_mut() {
            Some(t) if !slot.model.is_fresh() => t,
            _ => &mut conn,
        };
        let outcome = match to.send(&op, &mut slot.jar).await {
            Ok(raw) => {
                // Only an increment's answer lacks the session id in its body: decode (and verify) the cookie
                // for those alone.
                let cookie_id = matches!(op, Op::Incr { .. })
                    .then(|| spec.cookie_codec.as_ref())
                    .flatten()
                    .and_then(|c| {
                        let v = slot.jar.get(&spec.cookie_name)?;
                        c.decode(v).ok().map(|rc| rc.session.to_string())
                    });
                if let Some(n) = &raw.served_by {
                    live.record_served(n);
                }
                interpret(&op, &raw, cookie_id)
            }
            Err(e) => Err(e),
        };
        let now = Instant::now();
        match &outcome {
            Ok(_) => {
                let us = now.duration_since(t0).as_micros() as u64;
                let _ = latency.record(us.clamp(1, 120_000_000));
                live.record_ok(now, now - t0);
            }
            Err(_) => live.record_error(now),
        }
        let deleted = matches!((&op, &outcome), (Op::Delete, Ok(_)));
        let ev = Event {
            at_ms: now.duration_since(live.start()).as_millis() as u64,
            op,
            outcome,
        };
        let v = slot.model.observe(&ev);
        if deleted {
            slot.jar.clear();
        }
        if v.lost_updates > 0 {
            live.lost_updates.fetch_add(v.lost_updates, Relaxed);
        }
        if v.reset {
            live.session_resets.fetch_add(1, Relaxed);
        }
        if v.stale_version || v.stale_flag {
            live.stale_reads.fetch_add(1, Relaxed);
        }
        tally.add(&v);
    }
    UserResult {
        tally,
        latency,
        models: slots.into_iter().map(|s| s.model).collect(),
    }
}

fn pick_op(spec: &LoadSpec, rng: &mut SmallRng, seq: &AtomicU64) -> Op {
    match spec.mix.pick(rng.gen::<f64>()) {
        OpKind::Get => Op::Get,
        OpKind::Incr => Op::Incr {
            key: COUNTERS[rng.gen_range(0..COUNTERS.len())].to_string(),
        },
        OpKind::Patch => Op::Patch {
            key: FIELDS[rng.gen_range(0..FIELDS.len())].to_string(),
            value: value(seq, spec.value_bytes),
        },
        OpKind::Delete => Op::Delete,
    }
}

/// A patch value unique within the run (so a lost patch can never be mistaken for a present one), padded to `len`.
fn value(seq: &AtomicU64, len: usize) -> String {
    let mut s = format!("v{:x}-", seq.fetch_add(1, Relaxed));
    while s.len() < len {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_values_are_unique_and_sized() {
        let seq = AtomicU64::new(0);
        let (a, b) = (value(&seq, 32), value(&seq, 32));
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(value(&seq, 0).starts_with("v2-"));
    }
}
