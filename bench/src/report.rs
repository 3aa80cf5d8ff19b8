//! What a run tells its user: the live progress line, the final summary table, and the `--json` report.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::faults::Applied;
use crate::live::{Live, Second};
use crate::load::RunResult;

/// A finished run, ready to print.
pub struct Summary {
    /// What was loaded, as the report names it (e.g. `lb http://127.0.0.1:8080`).
    pub target: String,
    /// What the load measured.
    pub result: RunResult,
    /// The faults carried out, in order.
    pub faults: Vec<Applied>,
    /// Per-second counts and latency, from the start of the run.
    pub timeline: Vec<Second>,
    /// CPU the generator itself used during the run.
    pub bench_cpu: Duration,
    /// Resident memory of each cluster process after the warm-up and at the end (`bench cluster` only).
    pub memory: Vec<Memory>,
}

/// One process's resident memory over a run.
#[derive(Clone, Debug)]
pub struct Memory {
    /// Its key: a node's name, `lb`, or the Redis bank.
    pub process: String,
    /// KiB after the warm-up.
    pub start_kib: u64,
    /// KiB at the end; `None` when it was not running then, or was restarted (a new process).
    pub end_kib: Option<u64>,
}

impl Memory {
    /// Growth from start to end, in percent.
    pub fn growth(&self) -> Option<f64> {
        self.end_kib
            .map(|e| (e as f64 / self.start_kib.max(1) as f64 - 1.0) * 100.0)
    }
}

impl Summary {
    /// Requests per second over the whole run.
    pub fn rps(&self) -> f64 {
        self.result.tally.requests as f64 / self.result.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.result.latency.is_empty() {
            return 0.0;
        }
        self.result.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The failures that make the run fail: anything acknowledged and then lost.
    pub fn failed(&self) -> bool {
        self.result.tally.lost_updates > 0 || self.result.tally.session_resets > 0
    }

    /// The `--json` report.
    pub fn json(&self) -> Value {
        let t = &self.result.tally;
        json!({
            "target": self.target,
            "requests": t.requests,
            "ok": t.ok,
            "rps": round(self.rps()),
            "duration_s": round(self.result.elapsed.as_secs_f64()),
            "errors": t.error_total(),
            "errors_by_kind": t.errors,
            "lost_updates": t.lost_updates,
            "duplicates": t.duplicates,
            "stale_reads": t.stale_reads(),
            "stale_versions": t.stale_versions,
            "stale_flagged": t.stale_flagged,
            "session_resets": t.session_resets,
            "failovers": t.failovers,
            "sessions_failed_over": self.result.sessions_failed_over,
            "failover_max_gap_ms": self.result.failover_max_gap_ms,
            "max_gap_ms": self.result.max_gap_ms,
            "p50_ms": round(self.ms(0.5)),
            "p90_ms": round(self.ms(0.9)),
            "p99_ms": round(self.ms(0.99)),
            "p999_ms": round(self.ms(0.999)),
            "max_ms": round(self.result.latency.max() as f64 / 1000.0),
            "bench_cpu_s": round(self.bench_cpu.as_secs_f64()),
            "bench_cpu_us_per_request": round(self.bench_cpu.as_micros() as f64 / t.requests.max(1) as f64),
            "faults": self.faults.iter().map(|f| json!({"at_ms": f.at_ms, "what": f.label})).collect::<Vec<_>>(),
            "memory": self.memory.iter().map(|m| json!({"process": m.process, "start_kib": m.start_kib,
                "end_kib": m.end_kib, "growth_pct": m.growth().map(round)})).collect::<Vec<_>>(),
            "timeline": self.timeline.iter().enumerate()
                .map(|(s, x)| json!({"t": s, "ok": x.ok, "errors": x.errors, "p99_ms": round(x.p99_ms)}))
                .collect::<Vec<_>>(),
        })
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let t = &self.result.tally;
        let errors = if t.errors.is_empty() {
            "0".to_string()
        } else {
            let kinds: Vec<String> = t.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!("{} ({})", t.error_total(), kinds.join(", "))
        };
        let mut rows = vec![
            ("target", self.target.clone()),
            (
                "requests",
                format!(
                    "{} in {:.1} s",
                    t.requests,
                    self.result.elapsed.as_secs_f64()
                ),
            ),
            ("throughput", format!("{:.0} req/s", self.rps())),
            (
                "latency",
                format!(
                    "p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                    self.ms(0.5),
                    self.ms(0.9),
                    self.ms(0.99),
                    self.ms(0.999),
                    self.result.latency.max() as f64 / 1000.0
                ),
            ),
            ("errors", errors),
            ("lost updates", t.lost_updates.to_string()),
            ("session resets", t.session_resets.to_string()),
            (
                "stale reads",
                format!(
                    "{} (version backwards {}, flagged {})",
                    t.stale_reads(),
                    t.stale_versions,
                    t.stale_flagged
                ),
            ),
            ("duplicates", t.duplicates.to_string()),
            (
                "failovers",
                format!(
                    "{} sessions moved, longest gap {} ms",
                    self.result.sessions_failed_over, self.result.failover_max_gap_ms
                ),
            ),
            (
                "bench cpu",
                format!(
                    "{:.2} s ({:.1} us/request)",
                    self.bench_cpu.as_secs_f64(),
                    self.bench_cpu.as_micros() as f64 / t.requests.max(1) as f64
                ),
            ),
        ];
        for m in &self.memory {
            let end = match (m.end_kib, m.growth()) {
                (Some(e), Some(g)) => format!("{:.1} MiB ({g:+.1} %)", e as f64 / 1024.0),
                _ => "restarted or stopped".to_string(),
            };
            let line = format!(
                "{:.1} MiB after warm-up -> {end}",
                m.start_kib as f64 / 1024.0
            );
            rows.push(("memory", format!("{}: {line}", m.process)));
        }
        for f in &self.faults {
            rows.push((
                "fault",
                format!("{:>7.2} s  {}", f.at_ms as f64 / 1000.0, f.label),
            ));
        }
        let verdict = if self.failed() {
            "FAIL: acknowledged updates lost or sessions reset"
        } else {
            "PASS: no acknowledged update lost"
        };
        rows.push(("verdict", verdict.to_string()));
        rows.iter()
            .map(|(k, v)| format!("  {k:<15} {v}\n"))
            .collect()
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints progress until `done`: one rewritten line on a terminal, a plain line per second otherwise.
pub async fn progress(live: Arc<Live>, span: Duration, done: Arc<AtomicBool>) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !done.load(Relaxed) {
        tick.tick().await;
        let secs = live.start().elapsed().as_secs() as usize;
        let Some(last) = secs.checked_sub(1).and_then(|i| live.second(i)) else {
            continue;
        };
        let line = format!(
            "{secs:>4}/{}s  {:>7} req/s  p99 {:>7.2} ms  errors {:<4} lost {} resets {} stale {}",
            span.as_secs(),
            last.ok + last.errors,
            last.p99_ms,
            last.errors,
            live.lost_updates.load(Relaxed),
            live.session_resets.load(Relaxed),
            live.stale_reads.load(Relaxed),
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let width = 40usize;
            let filled = (secs * width / span.as_secs().max(1) as usize).min(width);
            let _ = write!(
                err,
                "\r[{}{}] {line}",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }
}
