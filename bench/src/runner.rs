//! One measured run: the load, the progress printer and (with a cluster) the fault schedule, side by side until
//! the load ends; Ctrl-C (or SIGTERM) ends the load early and still reports.
//!
//! A drain or rolling restart runs beside the load for as long as it takes; faults due meanwhile wait for it to
//! end. When the load ends first it is cut short (its drop puts the cluster file back) and reported as such.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Procs;
use crate::faults::{apply, target_node, Action, Applied, Fault, Schedule};
use crate::live::Live;
use crate::report::{progress, Memory, Summary};
use crate::rolling::{drain, roll, Progress};
use crate::spec::LoadSpec;
use crate::{cpu, load};

/// A drain or rolling restart under way: it holds the processes and hands them back with its result.
type Rolling<'p> = Pin<Box<dyn Future<Output = (Applied, &'p mut Procs)> + 'p>>;

/// How often the fault loop looks at the clock and at who is serving.
const TICK: Duration = Duration::from_millis(250);
/// "Busiest" means over this much recent history.
const BUSY_WINDOW: usize = 4;

/// Runs `spec` against its target, applying `faults` to `procs` on the way.
pub async fn execute<'p>(
    spec: &LoadSpec,
    title: &str,
    mut procs: Option<&'p mut Procs>,
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
    // SIGTERM ends the run like Ctrl-C, so that a rolling restart still puts the cluster file back.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut interrupted = false;
    let mut rolling: Option<(Rolling<'p>, Progress)> = None;
    // Memory is read once the load is warm (a fifth of the run, at most 30 s in) and again at the end.
    let warm = (spec.duration / 5).min(Duration::from_secs(30));
    let mut memory_start: Option<Vec<(String, u32, u64)>> = None;
    let result = loop {
        tokio::select! {
            r = &mut load => break r.expect("load task panicked"),
            (a, p) = async { rolling.as_mut().expect("guarded").0.as_mut().await }, if rolling.is_some() => {
                rolling = None;
                procs = Some(p);
                eprintln!("\n[{:>6.2}s] {}", live.elapsed_ms() as f64 / 1000.0, a.label);
                applied.push(a);
            }
            _ = tick.tick() => {
                let now = live.served();
                let elapsed = live.start().elapsed();
                if memory_start.is_none() && elapsed >= warm {
                    memory_start = procs.as_ref().map(|p| p.memory());
                }
                while rolling.is_none() {
                    let Some(f) = schedule.due(elapsed) else { break };
                    let Some(p) = procs.take() else { continue };
                    let before = history.front().cloned().unwrap_or_default();
                    let target = match f.action {
                        Action::Drain => target_node(&f, p, &before, &now).map(Some),
                        Action::Rolling => Ok(None),
                        _ => {
                            let a = apply(&f, p, &mut schedule, &before, &now, live.elapsed_ms()).await;
                            eprintln!("\n[{:>6.2}s] {}", a.at_ms as f64 / 1000.0, a.label);
                            applied.push(a);
                            procs = Some(p);
                            continue;
                        }
                    };
                    match target {
                        Err(label) => {
                            let a = Applied { at_ms: live.elapsed_ms(), label };
                            eprintln!("\n[{:>6.2}s] {}", a.at_ms as f64 / 1000.0, a.label);
                            applied.push(a);
                            procs = Some(p);
                        }
                        Ok(name) => {
                            let what = if name.is_some() { "drain" } else { "rolling restart" };
                            let progress = Progress::new(live.start(), what);
                            let fut: Rolling<'p> = {
                                let progress = progress.clone();
                                Box::pin(async move {
                                    let a = match name {
                                        Some(n) => drain(&mut *p, &n, &progress).await,
                                        None => roll(&mut *p, &progress).await,
                                    };
                                    (a, p)
                                })
                            };
                            rolling = Some((fut, progress));
                        }
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
            Some(()) = async { term.as_mut()?.recv().await }, if !interrupted && term.is_some() => {
                interrupted = true;
                stop.store(true, Relaxed);
            }
        }
    };
    if let Some((fut, progress)) = rolling.take() {
        // Dropping it puts the cluster file back; the processes are stopped by the caller.
        drop(fut);
        let a = Applied {
            at_ms: live.elapsed_ms(),
            label: format!(
                "{} interrupted: {}, at \"{}\"",
                progress.what(),
                if interrupted {
                    "the run was stopped (Ctrl-C or SIGTERM)"
                } else {
                    "the load ended first"
                },
                progress.step()
            ),
        };
        eprintln!("\n[{:>6.2}s] {}", a.at_ms as f64 / 1000.0, a.label);
        applied.push(a);
    }
    done.store(true, Relaxed);
    if let Some(p) = printer {
        let _ = p.await;
    }
    let bench_cpu = cpu::own().saturating_sub(cpu0);
    let end = procs.as_ref().map(|p| p.memory()).unwrap_or_default();
    let memory = memory_start
        .unwrap_or_default()
        .into_iter()
        .map(|(process, pid, start_kib)| {
            // A restarted process is a new one: its memory says nothing of the first one's growth.
            let end_kib = end
                .iter()
                .find(|e| e.0 == process && e.1 == pid)
                .map(|e| e.2);
            Memory {
                process,
                start_kib,
                end_kib,
            }
        })
        .collect();
    // A last second only partly run would draw as a collapse in throughput.
    let secs = result.elapsed.as_secs_f64().round().max(1.0) as usize;
    Summary {
        target: title.to_string(),
        timeline: live.seconds(secs),
        result,
        faults: applied,
        bench_cpu,
        memory,
    }
}
