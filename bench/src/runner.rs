//! One measured run: the load, the progress printer and (with a cluster) the fault schedule, side by side until
//! the load ends; Ctrl-C ends the load early and still reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Procs;
use crate::faults::{apply, Fault, Schedule};
use crate::live::Live;
use crate::report::{progress, Summary};
use crate::spec::LoadSpec;
use crate::{cpu, load};

/// How often the fault loop looks at the clock and at who is serving.
const TICK: Duration = Duration::from_millis(250);
/// "Busiest" means over this much recent history.
const BUSY_WINDOW: usize = 4;

/// Runs `spec` against its target, applying `faults` to `procs` on the way.
pub async fn execute(
    spec: &LoadSpec,
    title: &str,
    mut procs: Option<&mut Procs>,
    faults: Vec<Fault>,
    quiet: bool,
) -> Summary {
    let live = Arc::new(Live::new(spec.duration + Duration::from_secs(5)));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu::own();
    let printer =
        (!quiet).then(|| tokio::spawn(progress(live.clone(), spec.duration, done.clone())));
    let mut load = {
        let (spec, live, stop) = (spec.clone(), live.clone(), stop.clone());
        tokio::spawn(async move { load::run(&spec, live, stop).await })
    };
    let mut schedule = Schedule::new(faults);
    let mut applied = Vec::new();
    let mut history: VecDeque<Vec<(String, u64)>> = VecDeque::new();
    let mut tick = tokio::time::interval(TICK);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let result = loop {
        tokio::select! {
            r = &mut load => break r.expect("load task panicked"),
            _ = tick.tick() => {
                let now = live.served();
                let elapsed = live.start().elapsed();
                while let Some(f) = schedule.due(elapsed) {
                    if let Some(p) = procs.as_deref_mut() {
                        let before = history.front().cloned().unwrap_or_default();
                        let a = apply(&f, p, &mut schedule, &before, &now, live.elapsed_ms()).await;
                        eprintln!("\n[{:>6.2}s] {}", a.at_ms as f64 / 1000.0, a.label);
                        applied.push(a);
                    }
                }
                history.push_back(now);
                if history.len() > BUSY_WINDOW {
                    history.pop_front();
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                stop.store(true, Relaxed);
            }
        }
    };
    done.store(true, Relaxed);
    if let Some(p) = printer {
        let _ = p.await;
    }
    let bench_cpu = cpu::own().saturating_sub(cpu0);
    // A last second only partly run would draw as a collapse in throughput.
    let secs = result.elapsed.as_secs_f64().round().max(1.0) as usize;
    Summary {
        target: title.to_string(),
        timeline: live.seconds(secs),
        result,
        faults: applied,
        bench_cpu,
    }
}
