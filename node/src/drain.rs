//! Migrate-then-drain (DESIGN §7, issue 12): a node whose `[[nodes]]` entry says `drain = true` (by reload)
//! hands every session it owns to another web node, a few at a time, so that it can then be stopped with
//! nothing lost and no session waiting for a takeover.
//!
//! The draining node only asks ([`Body::Adopt`](crate::wire::Body::Adopt)); the heir pulls the session
//! exactly as a takeover from a live owner (`Takeover::adopt`), so the handover has the pull's guarantees:
//! the epoch rises, writes still waiting for their copy hold it back (`Busy`), and a lost answer is asked
//! for again. The old owner keeps a copy naming the heir, so requests that still reach it (cookies minted
//! before) are forwarded there, and the heir's answer re-mints the cookie. Sessions the heir could not take
//! are asked for again in the next round.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::ids::{NodeId, SessionId};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::store::{Entry, Role, Store};

/// Sessions asked for at once: enough to hide a round trip, few enough that each heir's lock waits stay short.
const AT_ONCE: usize = 8;
/// How long a round that found nothing to do (or no heir) waits before looking again.
const IDLE: Duration = Duration::from_millis(250);

/// The drain of this node: whether it is on, and the task that carries it out.
pub struct Drain {
    /// This node.
    pub me: NodeId,
    /// Sessions owned here.
    pub store: Arc<Store>,
    /// Heirs and their links.
    pub members: Arc<Membership>,
    /// `node_drain_sessions_left`, adoption counts.
    pub metrics: Arc<Metrics>,
    /// Sessions handed over per second at most (`[node] drain_rate`).
    pub rate: u32,
    /// How long one adoption may take: the heir's pull (peer timeout plus lease) and the ask itself.
    pub timeout: Duration,
    on: AtomicBool,
    wake: Notify,
    /// Sessions granted to an heir whose `Adopted` never came back (its pull's answer may have been lost):
    /// asked again until the heir confirms, and counted as not yet handed over.
    unconfirmed: Mutex<HashSet<SessionId>>,
}

impl Drain {
    /// A drain of node `me`, off; [`Drain::set`] turns it on.
    pub fn new(
        me: NodeId,
        store: Arc<Store>,
        members: Arc<Membership>,
        metrics: Arc<Metrics>,
        rate: u32,
        timeout: Duration,
    ) -> Drain {
        Drain {
            me,
            store,
            members,
            metrics,
            rate: rate.max(1),
            timeout,
            on: AtomicBool::new(false),
            wake: Notify::new(),
            unconfirmed: Mutex::default(),
        }
    }

    /// Turns the drain on or off (the node's `drain` flag after a reload).
    pub fn set(&self, on: bool) {
        if on {
            // Counted at once: until the first round, `/_node/health` must not read 0 as drained.
            self.metrics.drain_left.set(self.owned().len() as i64);
        }
        if self.on.swap(on, Ordering::AcqRel) != on {
            info!(
                on,
                "drain {}",
                if on {
                    "started: handing every session over"
                } else {
                    "stopped"
                }
            );
            self.wake.notify_one();
        }
    }

    /// Whether this node is draining.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Sessions owned here now (a session busy at this instant counts as owned), and those granted to an
    /// heir that has not confirmed yet.
    pub fn owned(&self) -> Vec<Arc<Entry>> {
        let unconfirmed = self
            .unconfirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut owned = self.store.entries();
        owned.retain(|e| unconfirmed.contains(&e.id) || e.owned_now());
        owned
    }

    fn confirmed(&self, sid: SessionId, done: bool) {
        let mut u = self.unconfirmed.lock().unwrap_or_else(|p| p.into_inner());
        if done {
            u.remove(&sid);
        } else {
            u.insert(sid);
        }
    }

    /// Runs until the task is dropped: while on, rounds of handing sessions over at `rate`.
    pub async fn run(self: Arc<Self>) {
        let mut announced = false;
        loop {
            if !self.is_on() {
                self.metrics.drain_left.set(0);
                announced = false;
                let woken = self.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if !self.is_on() {
                    woken.await;
                }
                continue;
            }
            let owned = self.owned();
            self.metrics.drain_left.set(owned.len() as i64);
            if owned.is_empty() {
                if !announced {
                    info!("drained: this node owns no session; it can be stopped");
                    announced = true;
                }
                tokio::time::sleep(IDLE).await;
                continue;
            }
            announced = false;
            if !self.round(owned).await {
                tokio::time::sleep(IDLE).await;
            }
        }
    }

    /// One pass over `owned`, `AT_ONCE` at a time, paced to `rate`. Returns `false` when no heir was found.
    async fn round(&self, owned: Vec<Arc<Entry>>) -> bool {
        for chunk in owned.chunks(AT_ONCE) {
            if !self.is_on() {
                return true;
            }
            let started = tokio::time::Instant::now();
            let mut asks = Vec::new();
            for entry in chunk {
                let heir = match held(entry).await {
                    Some(Held::Owned { sid, secondary }) => match self.members.heir(sid, secondary)
                    {
                        Some(heir) => (sid, heir),
                        None => {
                            warn!("draining, but no live web node that is not draining can take sessions");
                            return false;
                        }
                    },
                    // Granted already: the heir it names is asked to confirm (it pulls again if it lacks it).
                    Some(Held::Granted { sid, heir }) => (sid, heir),
                    None => {
                        self.confirmed(entry.id, true);
                        continue;
                    }
                };
                asks.push(self.hand_over(entry, heir.0, heir.1));
            }
            futures_util::future::join_all(asks).await;
            let pace = Duration::from_secs_f64(chunk.len() as f64 / f64::from(self.rate));
            tokio::time::sleep_until(started + pace).await;
        }
        true
    }

    /// Asks `heir` to take `sid`; a refusal or failure leaves it for the next round, and a session granted
    /// without the heir's confirmation is remembered as unconfirmed.
    async fn hand_over(&self, entry: &Entry, sid: SessionId, heir: NodeId) {
        let Some(peer) = self.members.peer(heir) else {
            return;
        };
        let answer = peer.adopt(sid, self.me, self.timeout).await;
        let granted = matches!(held(entry).await, Some(Held::Granted { .. }));
        self.confirmed(sid, answer.as_ref().is_ok_and(|t| *t) || !granted);
        match answer {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(session = %sid.log_hash(), heir = %peer.cfg.name, "not taken yet")
            }
            // Heartbeats judge the heir's liveness; a slow adoption (a pull waiting out a lease) is no verdict.
            Err(e) => {
                tracing::debug!(session = %sid.log_hash(), heir = %peer.cfg.name, error = %e, "adoption failed")
            }
        }
    }
}

/// What this node holds of a session it drains.
enum Held {
    /// Owned here, copied to `secondary`.
    Owned {
        sid: SessionId,
        secondary: Option<NodeId>,
    },
    /// A copy naming `heir` as the owner: granted away.
    Granted { sid: SessionId, heir: NodeId },
}

async fn held(entry: &Entry) -> Option<Held> {
    let slot = entry.slot.lock().await;
    let s = slot.session.as_ref()?;
    Some(match slot.role {
        Role::Primary => Held::Owned {
            sid: s.id,
            secondary: s.secondary,
        },
        Role::Replica => Held::Granted {
            sid: s.id,
            heir: s.primary,
        },
    })
}
