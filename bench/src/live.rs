//! Counters every virtual user updates while the run is going: the per-second timeline (for progress and the
//! plot) and who served how much (for `kill:primary`). Lock-free on the hot path except for the rare first
//! sighting of a node name.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Log-linear latency buckets: 8 per power of two of microseconds, so a bucket is at most 12.5% wide.
const SUB: u32 = 8;
const BUCKETS: usize = 40 * SUB as usize;

/// Bucket index of a latency in microseconds.
pub fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros();
    let sub = (us >> (e - 3)) as u32 & (SUB - 1);
    (((e - 2) * SUB + sub) as usize).min(BUCKETS - 1)
}

/// Upper bound (microseconds) of a bucket.
pub fn bucket_top(i: usize) -> u64 {
    let i = i as u32;
    if i < SUB {
        return i as u64;
    }
    let e = i / SUB + 2;
    let sub = (i % SUB) as u64;
    ((SUB as u64 + sub + 1) << (e - 3)) - 1
}

struct Slot {
    ok: AtomicU64,
    errors: AtomicU64,
    lat: Box<[AtomicU32]>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lat: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

/// One second of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Second {
    /// Requests answered successfully in this second.
    pub ok: u64,
    /// Requests that failed in this second.
    pub errors: u64,
    /// 99th percentile latency of the successful ones, in milliseconds (bucketed).
    pub p99_ms: f64,
}

/// Shared live state of one run.
pub struct Live {
    start: Instant,
    slots: Vec<Slot>,
    served: RwLock<Vec<(String, AtomicU64)>>,
    /// Acknowledged changes found missing so far.
    pub lost_updates: AtomicU64,
    /// Sessions silently replaced so far.
    pub session_resets: AtomicU64,
    /// Answers that went back in version or were flagged stale so far.
    pub stale_reads: AtomicU64,
}

impl Live {
    /// Room for `span` of timeline; later seconds fold into the last slot.
    pub fn new(span: Duration) -> Live {
        let n = (span.as_secs() as usize + 2).min(7200);
        Live {
            start: Instant::now(),
            slots: (0..n).map(|_| Slot::new()).collect(),
            served: RwLock::new(Vec::new()),
            lost_updates: AtomicU64::new(0),
            session_resets: AtomicU64::new(0),
            stale_reads: AtomicU64::new(0),
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Milliseconds since the run started.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn slot(&self, at: Instant) -> &Slot {
        let i = at.saturating_duration_since(self.start).as_secs() as usize;
        &self.slots[i.min(self.slots.len() - 1)]
    }

    /// Counts a successful request answered at `at` after `latency`.
    pub fn record_ok(&self, at: Instant, latency: Duration) {
        let s = self.slot(at);
        s.ok.fetch_add(1, Relaxed);
        s.lat[bucket_of(latency.as_micros() as u64)].fetch_add(1, Relaxed);
    }

    /// Counts a failed request at `at`.
    pub fn record_error(&self, at: Instant) {
        self.slot(at).errors.fetch_add(1, Relaxed);
    }

    /// Counts one answer `X-Served-By` node `node`.
    pub fn record_served(&self, node: &str) {
        {
            let r = self
                .served
                .read()
                .expect("never poisoned: no panics under the lock");
            if let Some((_, n)) = r.iter().find(|(k, _)| k == node) {
                n.fetch_add(1, Relaxed);
                return;
            }
        }
        let mut w = self.served.write().expect("never poisoned");
        match w.iter().find(|(k, _)| k == node) {
            Some((_, n)) => {
                n.fetch_add(1, Relaxed);
            }
            None => w.push((node.to_string(), AtomicU64::new(1))),
        }
    }

    /// Requests served so far, by node.
    pub fn served(&self) -> Vec<(String, u64)> {
        let r = self.served.read().expect("never poisoned");
        r.iter()
            .map(|(k, n)| (k.clone(), n.load(Relaxed)))
            .collect()
    }

    /// Seconds `0..upto` of the timeline.
    pub fn seconds(&self, upto: usize) -> Vec<Second> {
        (0..upto.min(self.slots.len()))
            .filter_map(|i| self.second(i))
            .collect()
    }

    /// Second `i` of the run alone (the progress line needs only the last one).
    pub fn second(&self, i: usize) -> Option<Second> {
        let s = self.slots.get(i)?;
        let counts: Vec<u64> = s.lat.iter().map(|c| c.load(Relaxed) as u64).collect();
        Some(Second {
            ok: s.ok.load(Relaxed),
            errors: s.errors.load(Relaxed),
            p99_ms: quantile(&counts, 0.99) as f64 / 1000.0,
        })
    }
}

/// The `q` quantile (microseconds, bucket upper bound) of bucket counts.
fn quantile(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return bucket_top(i);
        }
    }
    bucket_top(counts.len() - 1)
}

/// The node that served the most between two `served()` snapshots (the latest total when there is no earlier one).
pub fn busiest(
    before: &[(String, u64)],
    now: &[(String, u64)],
    exclude: &[String],
) -> Option<String> {
    now.iter()
        .filter(|(k, _)| !exclude.contains(k))
        .map(|(k, n)| {
            (
                k,
                n - before
                    .iter()
                    .find(|(b, _)| b == k)
                    .map_or(0, |(_, m)| *m)
                    .min(*n),
            )
        })
        .max_by_key(|(k, d)| (*d, std::cmp::Reverse((*k).clone())))
        .map(|(k, _)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for us in [
            0u64, 1, 7, 8, 9, 15, 16, 100, 999, 1000, 12_345, 1_000_000, 60_000_000,
        ] {
            let b = bucket_of(us);
            assert!(
                bucket_top(b) >= us,
                "{us} in bucket {b} topped at {}",
                bucket_top(b)
            );
            if b > 0 {
                assert!(
                    bucket_top(b - 1) < us,
                    "{us}: previous bucket {} reaches it",
                    b - 1
                );
            }
            assert!(bucket_top(b) as f64 <= us as f64 * 1.13 + 1.0);
        }
    }

    #[test]
    fn p99_of_a_second() {
        let live = Live::new(Duration::from_secs(2));
        let t = live.start();
        for _ in 0..99 {
            live.record_ok(t, Duration::from_micros(1000));
        }
        live.record_ok(t, Duration::from_micros(50_000));
        let s = &live.seconds(1)[0];
        assert_eq!(s.ok, 100);
        assert!((1.0..1.2).contains(&s.p99_ms), "{}", s.p99_ms);
    }

    #[test]
    fn busiest_node_by_recent_traffic() {
        let before = vec![("n1".to_string(), 1000), ("n2".to_string(), 10)];
        let now = vec![
            ("n1".to_string(), 1010),
            ("n2".to_string(), 200),
            ("n3".to_string(), 50),
        ];
        assert_eq!(busiest(&before, &now, &[]).as_deref(), Some("n2"));
        assert_eq!(busiest(&[], &now, &[]).as_deref(), Some("n1"));
        assert_eq!(
            busiest(&before, &now, &["n2".to_string()]).as_deref(),
            Some("n3")
        );
    }
}
