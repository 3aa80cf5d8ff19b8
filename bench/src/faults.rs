//! The fault schedule: `kill:n1@10s`, `stop:n2@5s+3s`, `restart:n1@20s`, `kill:primary@10s`, `drain:n2@10s`,
//! `rolling@10s`. Parsing is pure; [`Schedule`] hands out due actions and [`apply`] carries them out on a
//! [`Procs`] (a drain or rolling restart: [`crate::rolling`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cluster::{http_status, Procs};
use crate::live::busiest;
use crate::spec::parse_duration;

/// Why a `--fault` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultError {
    /// Not ACTION:TARGET@TIME[+DURATION] (or rolling@TIME) with a known action and valid durations (the text
    /// given).
    #[error("bad fault {0:?}: expected ACTION:TARGET@TIME[+DURATION] or rolling@TIME, e.g. kill:n1@10s, stop:primary@5s+3s, rolling@10s")]
    Syntax(String),
    /// A `+DURATION` on `kill`, `restart`, `drain` or `rolling` (the text given).
    #[error("fault {0:?}: only stop takes a +DURATION")]
    StrayDuration(String),
}

/// What a fault does to its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL.
    Kill,
    /// SIGSTOP, then SIGCONT after the duration.
    Stop(Duration),
    /// SIGCONT (scheduled by a stop).
    Cont,
    /// Kill if running, start again.
    Restart,
    /// `drain = true` in the cluster file until the node owns nothing, then SIGTERM; the file is put back and the
    /// node stays down ([`crate::rolling`]).
    Drain,
    /// Every node in file order: drain, stop gracefully, start again, wait until it is back
    /// ([`crate::rolling`]).
    Rolling,
}

/// Which process a fault hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The node of this name.
    Node(String),
    /// The node that served the most in the last second.
    Primary,
    /// Every node (a rolling restart).
    All,
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// When, from the start of the load.
    pub at: Duration,
    /// What.
    pub action: Action,
    /// To whom.
    pub target: Target,
}

impl Fault {
    /// Parses `ACTION:TARGET@TIME[+DURATION]` or `rolling@TIME`; a `stop` without a duration lasts 3 s. Actions:
    /// `kill`, `stop`, `restart`, `drain`.
    ///
    /// # Errors
    /// [`FaultError`] naming the text.
    pub fn parse(s: &str) -> Result<Fault, FaultError> {
        let err = || FaultError::Syntax(s.to_string());
        if let Some(when) = s.strip_prefix("rolling@") {
            if when.contains('+') {
                return Err(FaultError::StrayDuration(s.to_string()));
            }
            return Ok(Fault {
                at: parse_duration(when).map_err(|_| err())?,
                action: Action::Rolling,
                target: Target::All,
            });
        }
        let (action, rest) = s.split_once(':').ok_or_else(err)?;
        let (target, when) = rest.split_once('@').ok_or_else(err)?;
        let (at, dur) = match when.split_once('+') {
            Some((a, d)) => (a, Some(parse_duration(d).map_err(|_| err())?)),
            None => (when, None),
        };
        let at = parse_duration(at).map_err(|_| err())?;
        let action = match (action, dur) {
            ("kill", None) => Action::Kill,
            ("restart", None) => Action::Restart,
            ("drain", None) => Action::Drain,
            ("stop", Some(d)) => Action::Stop(d),
            ("stop", None) => Action::Stop(Duration::from_secs(3)),
            ("kill" | "restart" | "drain", Some(_)) => {
                return Err(FaultError::StrayDuration(s.to_string()))
            }
            _ => return Err(err()),
        };
        let target = match target {
            "" => return Err(err()),
            "primary" => Target::Primary,
            n => Target::Node(n.to_string()),
        };
        Ok(Fault { at, action, target })
    }
}

/// What happened, for the report and the plot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// When it was carried out, in ms from the start of the load.
    pub at_ms: u64,
    /// What was done, e.g. `kill n1`, or why nothing was.
    pub label: String,
}

/// Faults in time order; a stop schedules its own continue.
#[derive(Debug, Default)]
pub struct Schedule {
    pending: Vec<Fault>,
}

impl Schedule {
    /// The schedule of `faults`, in any order.
    pub fn new(mut faults: Vec<Fault>) -> Schedule {
        faults.sort_by_key(|f| std::cmp::Reverse(f.at));
        Schedule { pending: faults }
    }

    /// When the next fault is due.
    pub fn next_at(&self) -> Option<Duration> {
        self.pending.last().map(|f| f.at)
    }

    /// Removes and returns the next fault if it is due at `now`.
    pub fn due(&mut self, now: Duration) -> Option<Fault> {
        if self.pending.last()?.at <= now {
            self.pending.pop()
        } else {
            None
        }
    }

    /// Adds a fault (a stop's continue).
    pub fn push(&mut self, f: Fault) {
        self.pending.push(f);
        self.pending.sort_by_key(|f| std::cmp::Reverse(f.at));
    }
}

/// The node `f` hits; `before`/`now` are served-count snapshots for resolving `primary`. `Err`: why none (the
/// label of a skipped fault).
pub fn target_node(
    f: &Fault,
    procs: &mut Procs,
    before: &[(String, u64)],
    now: &[(String, u64)],
) -> Result<String, String> {
    match &f.target {
        Target::Node(n) => Ok(n.clone()),
        Target::All => Err("only a rolling restart targets every node; fault skipped".into()),
        Target::Primary => {
            let names: Vec<String> = procs.config.nodes.iter().map(|n| n.name.clone()).collect();
            let dead: Vec<String> = names.into_iter().filter(|n| !procs.is_running(n)).collect();
            busiest(before, now, &dead)
                .ok_or_else(|| "primary: no node has served yet; fault skipped".into())
        }
    }
}

/// Carries out `f` on `procs`. `before`/`now` are served-count snapshots for resolving `primary`. A drain or
/// rolling restart is carried out to its end here; [`crate::runner`] runs those beside the load instead.
pub async fn apply(
    f: &Fault,
    procs: &mut Procs,
    schedule: &mut Schedule,
    before: &[(String, u64)],
    now: &[(String, u64)],
    at_ms: u64,
) -> Applied {
    let start = || {
        Instant::now()
            .checked_sub(Duration::from_millis(at_ms))
            .unwrap_or_else(Instant::now)
    };
    if f.action == Action::Rolling {
        let progress = crate::rolling::Progress::new(start(), "rolling restart");
        return crate::rolling::roll(procs, &progress).await;
    }
    let name = match target_node(f, procs, before, now) {
        Ok(n) => n,
        Err(label) => return Applied { at_ms, label },
    };
    let label = match f.action {
        Action::Kill => {
            procs.kill(&name);
            format!("kill {name}")
        }
        Action::Stop(d) => {
            procs.signal(&name, libc::SIGSTOP);
            schedule.push(Fault {
                at: f.at + d,
                action: Action::Cont,
                target: Target::Node(name.clone()),
            });
            format!("stop {name} for {d:?}")
        }
        Action::Cont => {
            procs.signal(&name, libc::SIGCONT);
            format!("cont {name}")
        }
        Action::Restart => {
            procs.kill(&name);
            match procs.restart(&name).await {
                Ok(_) => {
                    // Watched on the side: waiting here would hold back every fault due meanwhile.
                    if let Some(n) = procs.config.node(&name) {
                        tokio::spawn(report_when_healthy(name.clone(), n.http));
                    }
                    format!("restart {name}")
                }
                Err(e) => format!("restart {name} failed: {e:#}"),
            }
        }
        Action::Drain => {
            let progress = crate::rolling::Progress::new(start(), "drain");
            return crate::rolling::drain(procs, &name, &progress).await;
        }
        Action::Rolling => unreachable!("handled above"),
    };
    Applied { at_ms, label }
}

/// Says when a restarted node answers its health check again (or that it has not within 30 s).
async fn report_when_healthy(name: String, addr: SocketAddr) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if http_status(addr, node::HEALTH_PATH).await == Some(200) {
            eprintln!(
                "\n{name} is healthy again, {} ms after its restart",
                started.elapsed().as_millis()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("\n{name} is still not healthy 30 s after its restart");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_faults() {
        assert_eq!(
            Fault::parse("kill:n1@10s"),
            Ok(Fault {
                at: Duration::from_secs(10),
                action: Action::Kill,
                target: Target::Node("n1".into())
            })
        );
        assert_eq!(
            Fault::parse("stop:n2@5s+3s"),
            Ok(Fault {
                at: Duration::from_secs(5),
                action: Action::Stop(Duration::from_secs(3)),
                target: Target::Node("n2".into())
            })
        );
        assert_eq!(
            Fault::parse("kill:primary@1500ms").unwrap().target,
            Target::Primary
        );
        assert_eq!(
            Fault::parse("restart:n1@20s").unwrap().action,
            Action::Restart
        );
        assert_eq!(
            Fault::parse("rolling@10s"),
            Ok(Fault {
                at: Duration::from_secs(10),
                action: Action::Rolling,
                target: Target::All
            })
        );
        assert!(matches!(
            Fault::parse("rolling@1s+2s"),
            Err(FaultError::StrayDuration(_))
        ));
        assert_eq!(
            Fault::parse("drain:n2@400s"),
            Ok(Fault {
                at: Duration::from_secs(400),
                action: Action::Drain,
                target: Target::Node("n2".into())
            })
        );
        assert!(Fault::parse("drain:n2@4s+1s").is_err());
        assert!(Fault::parse("rolling").is_err());
        assert!(Fault::parse("rolling@soon").is_err());
        assert!(Fault::parse("kill:n1").is_err());
        assert!(Fault::parse("explode:n1@1s").is_err());
        assert!(matches!(
            Fault::parse("kill:n1@1s+2s"),
            Err(FaultError::StrayDuration(_))
        ));
    }

    #[test]
    fn schedule_orders_and_accepts_follow_ups() {
        let mut s = Schedule::new(vec![
            Fault::parse("kill:n1@10s").unwrap(),
            Fault::parse("stop:n2@5s+1s").unwrap(),
        ]);
        assert_eq!(s.next_at(), Some(Duration::from_secs(5)));
        assert!(s.due(Duration::from_secs(4)).is_none());
        assert!(matches!(
            s.due(Duration::from_secs(5)).unwrap().action,
            Action::Stop(_)
        ));
        s.push(Fault {
            at: Duration::from_secs(6),
            action: Action::Cont,
            target: Target::Node("n2".into()),
        });
        assert_eq!(s.due(Duration::from_secs(7)).unwrap().action, Action::Cont);
        assert_eq!(s.due(Duration::from_secs(11)).unwrap().action, Action::Kill);
        assert!(s.next_at().is_none());
    }
}
