//! Taking over a session this node does not own (seed 003 Fig. 8, [0049]-[0051]).
//!
//! - A node holding the secondary copy whose primary is dead promotes it: epoch + 1, a new secondary, a full
//!   copy to it ([`Takeover::promote`]).
//! - A node holding nothing pulls the session from the nodes the topology names for the cookie's pair,
//!   secondary first ([`Takeover::recover`]). The member that answers ([`Takeover::serve_pull`]) raises the
//!   epoch, records the requester as owner and keeps a copy as its secondary, so an older owner is fenced from
//!   then on.
//! - A replica never hands over a session while its primary may still hold a read lease: it waits until the
//!   lease it granted has run out.
//!
//! The decisions are pure ([`decide`], and `replicate::{grant, promote, install}`); this module does the
//! asking, probing and waiting around them.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::connection::LinkError;
use crate::cookie::RoutingCookie;
use crate::ids::{NodeId, Pair, SessionId};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::redis_bank::{BankError, Pulled, RedisBank};
use crate::replicate::{self, replicator::Replicator};
use crate::store::{now, Entry, Role, Slot, Store};
use crate::topology::Topology;
use crate::wire::{Body, PullResult};

/// How long a pull waits for a session that is busy here before answering `Busy`.
const PULL_LOCK_WAIT: Duration = Duration::from_millis(300);
/// Peek-and-claim rounds against a Redis bank before answering busy (each waits out at most one lease).
const BANK_CLAIM_TRIES: u32 = 3;
/// Rounds of asking the pair before a session is declared lost.
const PULL_ROUNDS: u32 = 6;

/// Both sides of a takeover, with what they use.
pub struct Takeover {
    /// This node's id.
    pub me: NodeId,
    /// Where to look for a session this node does not host.
    pub topology: Topology,
    /// `[replication] lease_ms`: the read lease, both the one a grant holds back for and the one a pull starts.
    pub lease: Duration,
    /// `[replication] peer_timeout_ms`: how long one ask waits (plus `lease` for a pull).
    pub peer_timeout: Duration,
    /// The sessions held here.
    pub store: Arc<Store>,
    /// Peers and their liveness.
    pub members: Arc<Membership>,
    /// Counts takeovers, pulls granted and lost sessions.
    pub metrics: Arc<Metrics>,
    /// Queues the copies of a taken-over session.
    pub replicator: Arc<Replicator>,
}

/// The result of looking for a session elsewhere.
pub enum Recovered {
    /// Installed here as primary; `stale` when the copy is older than the client's cookie.
    Installed {
        /// The copy is older than the version in the client's cookie.
        stale: bool,
    },
    /// A live owner exists there: forward the request.
    Forward(NodeId),
    /// No member of the pair has it.
    Lost,
    /// A holder was still busy, or did not answer, after the last round: the session may exist, but is not
    /// ours yet. The caller lets go of the session's lock (a copy on its way here may be waiting for it) and
    /// tries again; in the end the client is asked to retry, never given a fresh session.
    Busy,
    /// It ended (deleted or expired): a fresh session, nothing lost.
    Ended,
}

impl Takeover {
    fn load(&self) -> u64 {
        self.store.len() as u64
    }

    /// Answers another node's request for a session (the granting side of a takeover).
    pub async fn serve_pull(
        &self,
        sid: SessionId,
        requester: NodeId,
        owner_unreachable: bool,
        min_version: u64,
    ) -> PullResult {
        let Some(entry) = self.store.get(sid) else {
            return if self.store.has_ended(sid) {
                PullResult::Ended
            } else {
                PullResult::NotFound
            };
        };
        let Ok(mut slot) = tokio::time::timeout(PULL_LOCK_WAIT, entry.slot.lock()).await else {
            return PullResult::Busy;
        };
        let Some(s) = slot.session.as_ref() else {
            return PullResult::NotFound;
        };
        if s.version < min_version {
            // Older than what the client already saw: a copy left behind; a current one is elsewhere.
            return PullResult::NotFound;
        }
        let owner = s.primary;
        let view = PullView {
            role: slot.role,
            owner,
            requester,
            me: self.me,
            waiting_writes: self.replicator.sync()
                && !slot.copies.is_empty()
                && !entry.mark().covers(s.version),
            owner_alive: self.members.is_alive(owner),
            owner_unreachable,
            owner_gone: self.members.is_gone(owner),
        };
        match self.settle(view).await {
            Grant::Busy => return PullResult::Busy,
            Grant::Redirect => return PullResult::Redirect { owner },
            Grant::AfterLease => tokio::time::sleep_until(slot.granted_until.into()).await,
            Grant::Now | Grant::CheckOwner => {}
        }
        let Some((granted, old_copies)) =
            replicate::grant(&mut slot, requester, self.me, now(), self.lease)
        else {
            return PullResult::NotFound;
        };
        drop(slot);
        // Whatever waits here (writes of an owner that just handed over) must not be acknowledged here now.
        entry.update_mark(|m| m.fenced = true);
        // An owner's old copies are left behind now: each is told to drop it through its queue (retried until
        // it answers). A drop, not a removal: the session goes on, and a tombstone would make the holder answer
        // the session's next request there with a fresh one.
        for old in old_copies {
            self.store
                .mark_left_behind(old, sid, granted.epoch, granted.version);
            self.replicator.enqueue(old, &entry);
        }
        self.metrics.pulls_granted.inc();
        info!(session = %sid.log_hash(), to = %self.members.name_of(requester).unwrap_or_default(), epoch = granted.epoch, "session handed over");
        PullResult::Granted { session: granted }
    }

    /// Pulls the session named by `cookie` from the nodes the topology names for `pair` into `slot` (held
    /// locked by the caller: empty, or an orphan copy the granted session replaces).
    pub async fn recover(
        &self,
        entry: &Arc<Entry>,
        slot: &mut Slot,
        cookie: &RoutingCookie,
        pair: Pair,
        owner_unreachable: bool,
    ) -> Recovered {
        let named = self
            .topology
            .takeover_sources(pair, self.me, || self.members.holders());
        let mut candidates = named.clone();
        let mut widened = false;
        // First only a copy as new as the client's cookie; when no holder has one (a lost async update), the
        // best copy left, flagged stale.
        let mut min_version = cookie.version;
        // Holders whose pull failed unanswered once: asked again (first) the next round, then passed over.
        let mut unanswered: Vec<NodeId> = Vec::new();
        // Whether the last round left it open whether a holder has the session (busy, or silent).
        let mut unsure = false;
        for round in 0..PULL_ROUNDS {
            let (mut busy, mut silent) = (false, false);
            // A holder that did not answer goes first: it may hold the session for this node already.
            let order = unanswered
                .iter()
                .chain(candidates.iter().filter(|c| !unanswered.contains(c)));
            for &c in order.collect::<Vec<_>>() {
                let Some(peer) = self.members.peer(c) else {
                    continue;
                };
                if !peer.is_alive() && !self.members.probe(c, self.load()).await {
                    // Silent still, unless its port refuses: then it holds nothing any more.
                    silent |= unanswered.contains(&c) && !self.members.is_gone(c);
                    continue;
                }
                let unreachable = owner_unreachable || !self.members.is_alive(pair.primary);
                let sent_at = now();
                self.metrics.polls.inc();
                let answer = match peer.redis() {
                    Some(bank) => self
                        .pull_from_bank(bank, cookie.session, unreachable, min_version)
                        .await
                        .map_err(LinkError::from),
                    None => {
                        let ask = Body::Pull {
                            sid: cookie.session,
                            requester: self.me,
                            owner_unreachable: unreachable,
                            min_version,
                        };
                        peer.pull(ask, self.peer_timeout + self.lease).await
                    }
                };
                match answer {
                    Ok(PullResult::Granted { session }) => {
                        let (version, epoch) = (session.version, session.epoch);
                        let stale = replicate::install(slot, session, cookie.version, now());
                        // The owner the cookie names, when another than the granter, may still run unaware
                        // (a pause, a short partition) and hold the session as its own: told to drop it once
                        // it answers (a copy that is current by then is kept).
                        if pair.primary != self.me && pair.primary != c {
                            self.store.mark_left_behind(
                                pair.primary,
                                cookie.session,
                                epoch,
                                version,
                            );
                        }
                        entry.reset_mark(version + 1, sent_at + self.lease);
                        if self.topology == Topology::Broadcast {
                            // The granter keeps its copy; every other live member of the group gets one too.
                            self.replicator.rehome(entry, slot, &[]);
                        }
                        self.metrics.takeovers.inc();
                        info!(session = %cookie.session.log_hash(), from = %peer.cfg.name, version, stale, "session taken over");
                        return Recovered::Installed { stale };
                    }
                    Ok(PullResult::Redirect { owner }) if owner != self.me => {
                        return Recovered::Forward(owner)
                    }
                    // A live holder that is busy (waiting out a lease, say) is asked again next round, before
                    // anyone else: another holder could grant the same session a second time.
                    Ok(PullResult::Busy) => {
                        busy = true;
                        break;
                    }
                    Ok(PullResult::Ended) => return Recovered::Ended,
                    Ok(_) => {}
                    Err(e) if e.is_refused() => self.members.mark_gone(c),
                    // No answer is not "not here": the holder may have granted the session and its answer
                    // been lost, so the session is ours in its books. Asked again, it hands it back once the
                    // lease it granted runs out; asking anyone else first could find the session nowhere.
                    Err(_) if !unanswered.contains(&c) => {
                        unanswered.push(c);
                        busy = true;
                        break;
                    }
                    Err(_) => silent = true,
                }
            }
            unsure = busy || silent;
            if !busy {
                // A pair's cookie names two nodes, and a re-homing may have left the only copy on a third
                // (the cookie was minted before). Before settling for an older copy, every other web node is
                // asked once for one as new as the cookie (never an older one there: a copy left behind may
                // not have been dropped yet).
                if !widened && !silent && min_version > 0 && self.topology == Topology::Pair {
                    widened = true;
                    candidates = self.members.web_peers();
                    candidates.retain(|c| !named.contains(c) && *c != self.me);
                    if !candidates.is_empty() {
                        unsure = true; // a round is owed to them, should the rounds run out first
                        continue;
                    }
                }
                // Nobody has a copy as new as the cookie: settle for the best copy left, among the nodes the
                // cookie names.
                if min_version > 0 && !silent {
                    min_version = 0;
                    candidates = named.clone();
                    unsure = true;
                    continue;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10 * u64::from(round + 1))).await;
        }
        // A session is lost only when every holder that runs said it has none.
        if unsure {
            Recovered::Busy
        } else {
            Recovered::Lost
        }
    }

    /// The decision for `view`, with the owner probed when the requester could not reach an owner this node
    /// thinks alive: a live owner gets the requester, a silent one is decided on as dead. Never `CheckOwner`.
    async fn settle(&self, view: PullView) -> Grant {
        match decide(&view) {
            Grant::CheckOwner if self.members.probe(view.owner, self.load()).await => {
                Grant::Redirect
            }
            Grant::CheckOwner => decide(&PullView {
                owner_alive: false,
                owner_gone: self.members.is_gone(view.owner),
                ..view
            }),
            d => d,
        }
    }

    /// A pull from the Redis bank: the same decision a session server makes for its copy ([`decide`]), taken
    /// here with this node's view of the owner, then an atomic claim in the store (epoch + 1, this node the
    /// owner) that fails if anything changed since the peek, or while the owner's read lease runs.
    async fn pull_from_bank(
        &self,
        bank: &RedisBank,
        sid: SessionId,
        owner_unreachable: bool,
        min_version: u64,
    ) -> Result<PullResult, BankError> {
        for _ in 0..BANK_CLAIM_TRIES {
            let peeked = match bank.peek(sid, min_version).await? {
                Pulled::Nothing => return Ok(PullResult::NotFound),
                Pulled::Ended => return Ok(PullResult::Ended),
                Pulled::Owned(p) => p,
            };
            let owner = peeked.owner;
            let view = PullView {
                role: Role::Replica,
                owner,
                requester: self.me,
                me: bank.id(),
                waiting_writes: false,
                owner_alive: self.members.is_alive(owner),
                owner_unreachable,
                owner_gone: self.members.is_gone(owner),
            };
            let respect_lease = match self.settle(view).await {
                Grant::Redirect => return Ok(PullResult::Redirect { owner }),
                Grant::Busy => return Ok(PullResult::Busy),
                Grant::AfterLease => {
                    // A whole lease by this node's clock, not the store's: the store's may be another host's
                    // after a failover, or stepped. The claim then checks the owner did not renew meanwhile.
                    tokio::time::sleep(self.lease).await;
                    true
                }
                Grant::Now | Grant::CheckOwner => false,
            };
            match bank.claim(sid, self.me, &peeked, respect_lease).await? {
                Ok(session) => return Ok(PullResult::Granted { session }),
                // The owner renewed its lease meanwhile (so it is alive after all), or another node claimed
                // it: look again.
                Err(Some(_)) | Err(None) => continue,
            }
        }
        Ok(PullResult::Busy)
    }

    /// Takes session `sid` over from `from`, a draining node that asked (migrate-then-drain): pulls it like a
    /// takeover from a live owner, then moves its copies off `from`. Returns whether it is owned here now
    /// (already, or just now); `false` when `from` did not grant it (busy, or no longer its owner).
    pub async fn adopt(&self, sid: SessionId, from: NodeId) -> bool {
        let (entry, _) = self.store.get_or_insert(sid);
        // The session's turn: no request of it runs here while it changes hands.
        let _turn = entry.turn.lock().await;
        let mut slot = entry.slot.lock().await;
        if slot.role == Role::Primary && slot.session.is_some() {
            return true;
        }
        let Some(peer) = self.members.peer(from) else {
            return false;
        };
        let ask = Body::Pull {
            sid,
            requester: self.me,
            owner_unreachable: false,
            min_version: 0,
        };
        let mut sent_at = now();
        let mut answer = peer.pull(ask.clone(), self.peer_timeout + self.lease).await;
        if answer.as_ref().is_err_and(|e| !e.is_refused()) {
            // The grant may have happened and only its answer been lost: asked again, the drainer hands it
            // over again once the lease of the first grant has run out.
            sent_at = now();
            answer = peer.pull(ask, self.peer_timeout + self.lease).await;
        }
        let Ok(PullResult::Granted { session }) = answer else {
            drop(slot);
            self.store.remove_if_vacant(&entry);
            return false;
        };
        let version = session.version;
        replicate::install(&mut slot, session, 0, now());
        entry.reset_mark(version + 1, sent_at + self.lease);
        // The granter stays the secondary, kept current, until it stops (then this node re-homes as after
        // any stop). Moving the copy away now would leave the granter an old copy nobody updates, which a
        // request with a cookie minted before could still promote.
        let targets = self
            .members
            .copy_targets(self.topology, slot.session.as_ref().expect("installed"));
        replicate::retarget(&mut slot, &targets);
        self.replicator.enqueue_all(&targets, &entry);
        self.metrics.adopted.inc();
        info!(session = %sid.log_hash(), from = %peer.cfg.name, version, "session adopted from a draining node");
        true
    }

    /// Promotes the local copy (held in `slot`, role replica, its primary dead or unreachable) to primary:
    /// waits out the old primary's lease, raises the epoch, picks new copies and queues full copies.
    /// Returns whether the copy is older than the client's cookie.
    pub async fn promote(&self, entry: &Arc<Entry>, slot: &mut Slot, cookie_version: u64) -> bool {
        let owner = slot.session.as_ref().map(|s| s.primary);
        if !owner.is_some_and(|o| self.members.is_gone(o)) {
            tokio::time::sleep_until(slot.granted_until.into()).await;
        }
        let Some(p) = replicate::promote(slot, self.me, cookie_version, now()) else {
            return false;
        };
        entry.reset_mark(0, now());
        self.replicator.rehome(entry, slot, &[p.old_owner]);
        self.metrics.promotions.inc();
        let s = slot.session.as_ref().expect("promoted above");
        // The old owner, if it runs again unaware (a pause, a short partition), still holds the session as its
        // own: it is told to drop it once it answers (at the new epoch, so that its copy gives way).
        self.store
            .mark_left_behind(p.old_owner, s.id, s.epoch, s.version);
        if p.stale {
            warn!(session = %s.id.log_hash(), version = s.version, cookie_version, "promoted copy is older than the client's cookie");
        }
        info!(session = %s.id.log_hash(), epoch = s.epoch, "copy promoted to primary");
        p.stale
    }
}

/// What the holder of a session knows when another node asks for it.
#[derive(Clone, Copy, Debug)]
pub struct PullView {
    /// Whether this node owns the session or holds a copy.
    pub role: Role,
    /// The owner its copy names.
    pub owner: NodeId,
    /// The node asking for the session.
    pub requester: NodeId,
    /// This node.
    pub me: NodeId,
    /// Primary in sync mode: writes applied here still wait for their copy.
    pub waiting_writes: bool,
    /// Our heartbeats say the owner is alive.
    pub owner_alive: bool,
    /// The requester could not reach the owner.
    pub owner_unreachable: bool,
    /// The owner's port refuses connections: it is not running.
    pub owner_gone: bool,
}

/// The answer to a pull, before any I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Ask again shortly.
    Busy,
    /// Send the requester to the live owner.
    Redirect,
    /// The requester says the owner does not answer while we think it alive: probe it, then decide again.
    CheckOwner,
    /// Hand the session over now.
    Now,
    /// Hand it over once the read lease this copy granted the owner has run out.
    AfterLease,
}

/// Pure decision of [`serve_pull`]: an owner hands over at once unless sync writes still wait for their copy;
/// a copy redirects to a live owner, and hands over only after the owner's lease unless the owner is gone.
pub fn decide(v: &PullView) -> Grant {
    match v.role {
        Role::Primary if v.waiting_writes => Grant::Busy,
        Role::Primary => Grant::Now,
        Role::Replica => {
            let other_owner = v.owner != v.requester && v.owner != v.me;
            if other_owner && v.owner_alive {
                return if v.owner_unreachable {
                    Grant::CheckOwner
                } else {
                    Grant::Redirect
                };
            }
            if v.owner_gone {
                Grant::Now
            } else {
                Grant::AfterLease
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> NodeId {
        NodeId::new((1 << 50) + n).unwrap()
    }

    /// A copy on node 2 of a session owned by node 1, asked for by node 3, owner alive and answering.
    fn copy() -> PullView {
        PullView {
            role: Role::Replica,
            owner: id(1),
            requester: id(3),
            me: id(2),
            waiting_writes: false,
            owner_alive: true,
            owner_unreachable: false,
            owner_gone: false,
        }
    }

    #[test]
    fn pull_decisions_follow_ownership_liveness_and_leases() {
        let owner = PullView {
            role: Role::Primary,
            owner: id(2),
            ..copy()
        };
        let table: Vec<(&str, PullView, Grant)> = vec![
            ("an owner hands over", owner, Grant::Now),
            (
                "an owner with writes awaiting their copy says busy",
                PullView {
                    waiting_writes: true,
                    ..owner
                },
                Grant::Busy,
            ),
            (
                "a copy sends the requester to a live owner",
                copy(),
                Grant::Redirect,
            ),
            (
                "a copy checks an owner the requester cannot reach",
                PullView {
                    owner_unreachable: true,
                    ..copy()
                },
                Grant::CheckOwner,
            ),
            (
                "a copy waits out a dead owner's lease",
                PullView {
                    owner_alive: false,
                    ..copy()
                },
                Grant::AfterLease,
            ),
            (
                "a copy hands over at once when the owner is not running",
                PullView {
                    owner_alive: false,
                    owner_gone: true,
                    ..copy()
                },
                Grant::Now,
            ),
            (
                "a copy gives the session back to its owner",
                PullView {
                    requester: id(1),
                    ..copy()
                },
                Grant::AfterLease,
            ),
        ];
        for (what, view, want) in table {
            assert_eq!(decide(&view), want, "{what}");
        }
    }
}
