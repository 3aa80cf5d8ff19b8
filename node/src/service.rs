//! The session service: every session request goes through [`SessionService::execute`]. It locates the
//! session (here as primary; as a copy to promote; at its live owner to forward to; in the pair named by the
//! cookie to take over), locks it, asks the [`App`] what the request changes, applies and records the change,
//! queues the copies, releases the lock, and in `sync` mode answers only once the copies the topology needs
//! hold the update.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue, SET_COOKIE};
use hyper::StatusCode;
use tracing::warn;

use crate::app::{retry_later, App, Applied, Change, ClientRequest, Reply};
use crate::cookie::{CookieCodec, RoutingCookie};
use crate::forward::{Forwarder, Outbound};
use crate::ids::{NodeId, Pair, PairTable, SessionId};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::replicate::{self, replicator::Replicator};
use crate::session::{Outcome, Session};
use crate::store::{now, Entry, Role, Slot, Store, Waited};
use crate::takeover::{Recovered, Takeover};
use crate::topology::Topology;
use crate::STALE_HEADER;

/// Forwards one request may go through between nodes.
const MAX_HOPS: u8 = 2;
/// Rounds of locating a session before the request is answered 503.
const ATTEMPTS: usize = 5;

/// One session request as the HTTP front received it: the app's call, and what is needed to forward it.
pub struct SessionCall<C> {
    /// What the app parsed the request into.
    pub call: C,
    /// The request as received: for the app, and for a forward.
    pub req: ClientRequest,
    /// The request carried the `[cookie] header` (with a token, or empty to start a session): the answer
    /// carries the new token there, and no cookie.
    pub by_token: bool,
    /// The balancer's request id; for a write without one, this node's own (see [`SessionService::execute`]).
    pub rid: Option<String>,
    /// Node-to-node forwards so far.
    pub hops: u8,
    /// The verified routing cookie and the pair its segment names.
    pub cookie: Option<(RoutingCookie, Pair)>,
}

/// Settings the service reads.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's id.
    pub me: NodeId,
    /// Where copies go.
    pub topology: Topology,
    /// `[session] max_session_bytes`: the largest session data a write may leave, in bytes.
    pub max_session_bytes: usize,
    /// How long a request waits for its copies (or its lease) before giving up.
    pub wait_limit: Duration,
    /// `[session] idle_timeout_s`: a session untouched this long is removed.
    pub idle_timeout: Duration,
    /// `[replication] min_copies = 2`: no session is made, and no write applied, while it has no copy to go to.
    pub strict: bool,
}

/// Request ids this node gives writes that came without one: a random prefix drawn once per process, and a
/// counter. Unique across nodes and restarts (the prefix), with no system call per write.
pub struct OwnIds {
    prefix: u64,
    next: AtomicU64,
}

impl OwnIds {
    /// A fresh prefix from the OS random source.
    pub fn new() -> OwnIds {
        OwnIds {
            prefix: SessionId::random().0 as u64,
            next: AtomicU64::new(0),
        }
    }

    /// The next id, e.g. `node-5f3a...-17`.
    fn next(&self) -> String {
        format!(
            "node-{:016x}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for OwnIds {
    fn default() -> Self {
        OwnIds::new()
    }
}

/// How one attempt at running a request on a session held here ended.
enum Ran {
    Answered(Reply),
    /// A newer owner exists: locate the session again.
    Fenced,
}

/// Runs session requests through an [`App`].
pub struct SessionService<A: App> {
    /// The application that parses, runs and answers requests.
    pub app: A,
    /// Limits and timeouts.
    pub settings: Settings,
    /// Reads and mints routing cookies; a reload swaps the inner `Arc` (read it with [`Self::codec`]), so a
    /// rotated `[cookie]` key applies without a restart.
    pub codec: Arc<RwLock<Arc<CookieCodec>>>,
    /// `[cookie] header` as a header name, parsed once at start.
    pub token_header: Option<HeaderName>,
    /// The pair table of the current cluster file; a reload swaps the inner `Arc` (read it with [`Self::pairs`]).
    pub pairs: Arc<RwLock<Arc<PairTable>>>,
    /// The sessions held here.
    pub store: Arc<Store>,
    /// Peers and their liveness.
    pub members: Arc<Membership>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Queues copies of applied writes to secondaries.
    pub replicator: Arc<Replicator>,
    /// Recovers sessions this node does not host.
    pub takeover: Arc<Takeover>,
    /// Relays requests to a session's live owner.
    pub forwarder: Forwarder,
    /// Ids for writes that came without one.
    pub own_ids: OwnIds,
}

impl<A: App> SessionService<A> {
    /// The pair table of the current cluster file.
    pub fn pairs(&self) -> Arc<PairTable> {
        self.pairs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cookie codec of the current cluster file.
    pub fn codec(&self) -> Arc<CookieCodec> {
        self.codec.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Finds the session and runs the request; see the module docs.
    ///
    /// A write that came without a request id gets one of this node's own first: the attempt loop below
    /// may run a request again after its first attempt lost ownership while waiting for its copy, and a
    /// forward may be retried elsewhere; under one id the session's recorded outcome answers the second run
    /// instead of applying the write twice.
    pub async fn execute(&self, mut call: SessionCall<A::Call>) -> Reply {
        if call.rid.is_none() && self.app.may_write(&call.call) {
            call.rid = Some(self.own_ids.next());
        }
        let mut unreachable: Vec<NodeId> = Vec::new();
        for _ in 0..ATTEMPTS {
            let Some((cookie, pair)) = call.cookie else {
                return self.fresh(&call).await;
            };
            let (entry, _) = self.store.get_or_insert(cookie.session);
            let turn = entry.turn.lock().await;
            let mut slot = entry.slot.lock().await;
            let mut stale = false;
            // Where to send the request when a live owner elsewhere should serve it.
            let mut owner_elsewhere = None;
            // A copy whose node the client's cookie does not name is an orphan: its owner moved the session's
            // copies elsewhere (a re-homing after a failed send) and may have acknowledged writes since that
            // this copy never got. Promoting it would overwrite them; the pair the cookie names is asked first.
            let me = self.settings.me;
            let named = pair.primary == me || pair.secondary == Some(me);
            let orphan = slot.role == Role::Replica && slot.session.is_some() && !named;
            match (slot.session.as_ref(), slot.role) {
                (Some(_), Role::Primary) => {}
                (Some(s), Role::Replica) if named => {
                    // The copy's owner, else the cookie's primary: a cookie can name a newer owner than a
                    // copy not yet told of a takeover (async mode), and promoting beside it gives two owners.
                    let mut live = None;
                    for o in [s.primary, pair.primary] {
                        if o != me
                            && may_forward(&call, &unreachable, o)
                            && self.responsive(o).await
                        {
                            live = Some(o);
                            break;
                        }
                    }
                    if live.is_some() {
                        owner_elsewhere = live;
                    } else {
                        stale = self
                            .takeover
                            .promote(&entry, &mut slot, cookie.version)
                            .await;
                    }
                }
                _ => {
                    let owner = pair.primary;
                    let found = if self.store.has_ended(cookie.session) && !orphan {
                        Recovered::Ended
                    } else if may_forward(&call, &unreachable, owner)
                        && self.responsive(owner).await
                    {
                        Recovered::Forward(owner)
                    } else {
                        let owner_unreachable = !unreachable.is_empty();
                        self.takeover
                            .recover(&entry, &mut slot, &cookie, pair, owner_unreachable)
                            .await
                    };
                    match found {
                        Recovered::Installed { stale: s } => stale = s,
                        Recovered::Busy => {
                            drop(slot);
                            drop(turn);
                            self.store.remove_if_vacant(&entry);
                            continue;
                        }
                        Recovered::Forward(owner) => owner_elsewhere = Some(owner),
                        // Nobody the cookie names has it: the orphan is the best copy left.
                        Recovered::Lost if orphan => {
                            stale = self
                                .takeover
                                .promote(&entry, &mut slot, cookie.version)
                                .await;
                        }
                        Recovered::Ended | Recovered::Lost => {
                            drop(slot);
                            drop(turn);
                            self.store.remove_if_vacant(&entry);
                            if matches!(found, Recovered::Lost)
                                && !self.app.ends_session(&call.call)
                            {
                                self.metrics.lost.inc();
                                warn!(session = %cookie.session.log_hash(), version = cookie.version, "session lost: every copy is gone; starting a fresh one");
                            }
                            return self.fresh(&call).await;
                        }
                    }
                }
            }
            if let Some(owner) = owner_elsewhere {
                drop(slot);
                drop(turn);
                self.store.remove_if_vacant(&entry);
                if may_forward(&call, &unreachable, owner) {
                    match self.forward(&call, owner).await {
                        Ok(r) => return r,
                        Err(()) => unreachable.push(owner),
                    }
                }
                continue;
            }
            if stale {
                self.metrics.stale.inc();
            }
            let ran = self.run(&entry, slot, &call, Some(cookie), stale).await;
            drop(turn);
            match ran {
                Ran::Answered(r) => return r,
                Ran::Fenced => continue,
            }
        }
        unavailable("the session could not be located; retry")
    }

    /// No session to serve (no valid cookie, or it ended or was lost): a call that ends the session has
    /// nothing to do, anything else starts a fresh session.
    async fn fresh(&self, call: &SessionCall<A::Call>) -> Reply {
        if self.app.ends_session(&call.call) {
            self.deleted(call, None, None)
        } else {
            self.create(call).await
        }
    }

    /// Whether `owner` is worth forwarding to: alive and answering heartbeats, or answering a probe now.
    async fn responsive(&self, owner: NodeId) -> bool {
        if owner == self.settings.me || !self.members.is_alive(owner) {
            return false;
        }
        self.members.answered_lately(owner)
            || self.members.probe(owner, self.store.len() as u64).await
    }

    /// `min_copies = 2` and no live peer holds a copy of the session in `slot` (a holder known dead counts for
    /// nothing: the write would be applied, then answered 503 after its wait).
    fn no_copy_holder(&self, slot: &Slot) -> bool {
        self.settings.strict && slot.copies.iter().all(|c| !self.members.is_alive(c.peer))
    }

    /// Starts a new session here and runs the request on it.
    async fn create(&self, call: &SessionCall<A::Call>) -> Reply {
        let sid = SessionId::random();
        let copies = self.settings.topology.copies();
        let mut chosen = self.members.choose_copies(sid, &[], copies);
        let found = |c: &(Option<NodeId>, Option<NodeId>)| {
            usize::from(c.0.is_some()) + usize::from(c.1.is_some())
        };
        if found(&chosen) < copies {
            // Heartbeat on request: peers may have come up since the last beat.
            self.members.probe_all(self.store.len() as u64).await;
            chosen = self.members.choose_copies(sid, &[], copies);
        }
        if self.settings.strict && found(&chosen) == 0 {
            return no_copy();
        }
        let (secondary, also) = chosen;
        let (entry, _) = self.store.get_or_insert(sid);
        let mut slot = entry.slot.lock().await;
        let mut session = Session::new(sid, self.settings.me, secondary);
        session.also = also;
        let targets = self.members.copy_targets(self.settings.topology, &session);
        slot.session = Some(session);
        slot.role = Role::Primary;
        replicate::retarget(&mut slot, &targets);
        self.metrics.created.inc();
        // With no copy there is nothing to wait for; reads never need a lease without one.
        entry.reset_mark(u64::from(targets.is_empty()), now());
        self.replicator.enqueue_all(&targets, &entry);
        match self.run(&entry, slot, call, None, false).await {
            Ran::Answered(r) => r,
            Ran::Fenced => unavailable("new session lost its ownership; retry"),
        }
    }

    /// Runs the request on the primary session in `slot`.
    async fn run(
        &self,
        entry: &Arc<Entry>,
        mut slot: tokio::sync::MutexGuard<'_, Slot>,
        call: &SessionCall<A::Call>,
        cookie: Option<RoutingCookie>,
        stale: bool,
    ) -> Ran {
        slot.last_access = now();
        let s = slot.session.as_ref().expect("primary slot holds a session");
        if let Some(o) = call.rid.as_deref().and_then(|r| s.outcome_of(r)) {
            self.metrics.dedup_hits.inc();
            let reply = self
                .app
                .answer(&call.call, None, Some(s), Applied::Write(o));
            let (sid, version, pair) = (s.id, s.version, pair_of(s));
            let wait = self.replicator.sync() && !slot.copies.is_empty();
            if self.settings.strict && !wait && !entry.mark().covers(version) {
                return Ran::Answered(no_copy());
            }
            drop(slot);
            if wait {
                if let Some(ran) = self.wait_written(entry, version).await {
                    return ran;
                }
            }
            return Ran::Answered(self.finish(reply, call, sid, cookie, pair, version, stale));
        }
        if self.no_copy_holder(&slot) && self.app.may_write(&call.call) {
            return Ran::Answered(no_copy());
        }
        let prepared = match self.app.prepare(&call.call, &call.req, s) {
            Ok(p) => p,
            Err(reply) => return Ran::Answered(reply),
        };
        // The app runs with the slot unlocked (the caller holds the session's turn): copies, pulls and
        // housekeeping go on meanwhile. A pull may hand the session to another node in that time; then the
        // app's change is not applied here and the request is located again.
        let (epoch, version) = (s.epoch, s.version);
        drop(slot);
        let ran = self.app.run(&call.call, &call.req, prepared).await;
        let mut slot = entry.slot.lock().await;
        let still_ours = slot.role == Role::Primary
            && slot
                .session
                .as_ref()
                .is_some_and(|s| s.epoch == epoch && s.version == version);
        if !still_ours {
            return Ran::Fenced;
        }
        let (change, pending) = match ran {
            Ok(c) => c,
            Err(reply) => {
                // A session started for this request whose app failed: no client ever gets its cookie, so it
                // would only wait for the idle timeout (an app outage would fill the node with them).
                if cookie.is_none() {
                    self.end_session(entry, &mut slot);
                }
                return Ran::Answered(reply);
            }
        };
        // The copies may have gone while the app ran.
        let changes = matches!(change, Change::Patch(_) | Change::Increment(_));
        if changes && self.no_copy_holder(&slot) {
            return Ran::Answered(no_copy());
        }
        let limit = self.settings.max_session_bytes;
        let s = slot.session.as_mut().expect("primary slot holds a session");
        let (outcome, mut delta) = match change {
            Change::Nothing => return self.read(entry, slot, call, pending, cookie, stale).await,
            Change::Delete => return Ran::Answered(self.delete(entry, slot, call, pending).await),
            Change::Patch(p) => match s.patch(&p, limit) {
                Ok(d) => (self.app.outcome(&pending).unwrap_or(Outcome::Patched), d),
                Err(e) => return Ran::Answered(self.app.refused(&call.call, e)),
            },
            Change::Increment(key) => match s.incr(&key) {
                Ok((value, d)) => (
                    Outcome::Incremented {
                        value,
                        version: s.version,
                    },
                    d,
                ),
                Err(e) => return Ran::Answered(self.app.refused(&call.call, e)),
            },
        };
        if let Some(rid) = &call.rid {
            s.record(&mut delta, rid, outcome.clone());
        }
        let reply = self
            .app
            .answer(&call.call, Some(pending), Some(s), Applied::Write(outcome));
        let (sid, version, pair) = (s.id, s.version, pair_of(s));
        replicate::record(&mut slot, delta);
        let copied_elsewhere = !slot.copies.is_empty();
        if !copied_elsewhere {
            entry.update_mark(|m| m.copied = m.copied.max(version + 1));
        }
        for c in &slot.copies {
            self.replicator.enqueue(c.peer, entry);
        }
        drop(slot);
        if self.replicator.sync() && copied_elsewhere {
            if let Some(ran) = self.wait_written(entry, version).await {
                return ran;
            }
        }
        Ran::Answered(self.finish(reply, call, sid, cookie, pair, version, stale))
    }

    /// Waits until the copies hold `version`. `None` when they do; else how the request ends: fenced (locate
    /// the session again: the retry finds its outcome if the write survived), or 503 when the copies did not
    /// confirm in time (the write stays applied here; a retry under the same request id returns its outcome).
    async fn wait_written(&self, entry: &Entry, version: u64) -> Option<Ran> {
        match entry
            .wait_mark(self.settings.wait_limit, |m| m.covers(version))
            .await
        {
            Waited::Done => None,
            Waited::Fenced => Some(Ran::Fenced),
            Waited::TimedOut => {
                self.metrics.unconfirmed.inc();
                warn!(session = %entry.id.log_hash(), version, "copy not confirmed in time: answered 503");
                Some(Ran::Answered(unavailable(
                    "the update is applied but its copy is not confirmed yet; retry with the same request id",
                )))
            }
        }
    }

    /// A read: served only while this node certainly still owns the session (lease), and in sync mode only
    /// once the copies hold what is shown.
    async fn read(
        &self,
        entry: &Arc<Entry>,
        mut slot: tokio::sync::MutexGuard<'_, Slot>,
        call: &SessionCall<A::Call>,
        pending: A::Pending,
        cookie: Option<RoutingCookie>,
        stale: bool,
    ) -> Ran {
        let s = slot.session.as_ref().expect("primary slot holds a session");
        let reply = self
            .app
            .answer(&call.call, Some(pending), Some(s), Applied::Read);
        let (sid, version, pair) = (s.id, s.version, pair_of(s));
        let m = entry.mark();
        // With no copy left (`min_copies = 2` keeps `copied` back then), there is nothing to wait for.
        let need_copy = self.replicator.sync() && !slot.copies.is_empty() && !m.covers(version);
        let need_lease = !slot.copies.is_empty() && m.lease_until <= now();
        if need_copy || need_lease {
            if need_lease {
                for peer in replicate::want_validate(&mut slot) {
                    self.replicator.enqueue_urgent(peer, entry);
                }
            }
            drop(slot);
            let waited = entry
                .wait_mark(self.settings.wait_limit, |x| {
                    (!need_copy || x.covers(version)) && (!need_lease || x.lease_seq > m.lease_seq)
                })
                .await;
            match waited {
                Waited::Done => {}
                // Another node owns the session now: it serves the request.
                Waited::Fenced => return Ran::Fenced,
                // Locating again would run the app again; the client retries instead (by then the silent
                // copy is declared dead, and this node serves without it).
                Waited::TimedOut => {
                    return Ran::Answered(unavailable(
                        "this node could not confirm it still owns the session; retry",
                    ))
                }
            }
        }
        Ran::Answered(self.finish(reply, call, sid, cookie, pair, version, stale))
    }

    /// Ends the session on every copy and answers the deletion.
    async fn delete(
        &self,
        entry: &Arc<Entry>,
        mut slot: tokio::sync::MutexGuard<'_, Slot>,
        call: &SessionCall<A::Call>,
        pending: A::Pending,
    ) -> Reply {
        let seq = entry.mark().lease_seq;
        let copied_elsewhere = !slot.copies.is_empty();
        let ended = self.end_session(entry, &mut slot);
        drop(slot);
        if self.replicator.sync() && copied_elsewhere {
            entry
                .wait_mark(self.settings.wait_limit, |m| m.lease_seq > seq)
                .await;
        }
        self.deleted(call, Some(pending), ended.as_ref())
    }

    /// Ends the primary session in `slot` here and queues the removal of its copies; returns it.
    pub fn end_session(&self, entry: &Arc<Entry>, slot: &mut Slot) -> Option<Session> {
        let (s, peers) = replicate::end(slot)?;
        self.store.mark_ended(s.id, s.epoch, true);
        if peers.is_empty() {
            // A copy may still be on a peer that was unreachable when the copies were re-homed to none.
            self.store.mark_untold(s.id);
            self.store.remove(entry);
        }
        self.replicator.enqueue_all(&peers, entry);
        Some(s)
    }

    /// The app's answer to a deletion, with the routing cookie cleared.
    fn deleted(
        &self,
        call: &SessionCall<A::Call>,
        pending: Option<A::Pending>,
        session: Option<&Session>,
    ) -> Reply {
        let mut r = self
            .app
            .answer(&call.call, pending, session, Applied::Deleted);
        if call.by_token {
            if let Some(h) = &self.token_header {
                r.headers_mut()
                    .insert(h.clone(), HeaderValue::from_static(""));
            }
        } else {
            set_header(
                &mut r,
                SET_COOKIE,
                &self.codec().clear_cookie(behind_https(&call.req)),
            );
        }
        r
    }

    /// The app's answer, with a fresh cookie when the client's is missing or out of date: in the token header
    /// when the client sent that header, else as `Set-Cookie`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut r: Reply,
        call: &SessionCall<A::Call>,
        sid: SessionId,
        cookie: Option<RoutingCookie>,
        pair: Pair,
        version: u64,
        stale: bool,
    ) -> Reply {
        let current = RoutingCookie {
            session: sid,
            segment: pair.segment(),
            version,
        };
        if cookie != Some(current) {
            match self.token_header.as_ref().filter(|_| call.by_token) {
                Some(h) => set_header(&mut r, h.clone(), &self.codec().encode(&current)),
                None => set_header(
                    &mut r,
                    SET_COOKIE,
                    &self.codec().set_cookie(&current, behind_https(&call.req)),
                ),
            }
        }
        if stale {
            r.headers_mut()
                .insert(STALE_HEADER, HeaderValue::from_static("1"));
        }
        r
    }

    /// Forwards the request to `owner`. `Err` when the owner could not answer.
    async fn forward(&self, call: &SessionCall<A::Call>, owner: NodeId) -> Result<Reply, ()> {
        // Writes carry their id (the client's or ours, from `execute`); reads need none.
        if call.req.body.spent() {
            // A large upload already streamed to an app once cannot be sent again.
            return Ok(unavailable(
                "the request body was already sent once; retry the request",
            ));
        }
        let out = Outbound {
            parts: &call.req.parts,
            body: &call.req.body,
            rid: call.rid.as_deref(),
            hops: call.hops,
        };
        self.forwarder.send(owner, out).await
    }

    /// Removes sessions idle for longer than the idle timeout: a primary's on every copy; a copy on its own
    /// only when its primary is gone (otherwise the primary says when). Returns what is held.
    pub fn expire_idle(&self, now: Instant) -> Held {
        let idle = self.settings.idle_timeout;
        let mut held = Held::default();
        self.store.prune_ended(now);
        for entry in self.store.entries() {
            let Ok(mut slot) = entry.slot.try_lock() else {
                continue;
            };
            let Some(s) = slot.session.as_ref() else {
                continue;
            };
            let idle_for = now.saturating_duration_since(slot.last_access);
            match slot.role {
                Role::Primary => {
                    held.primaries += 1;
                    held.unprotected += i64::from(slot.copies.is_empty());
                    for c in &slot.copies {
                        *held.copies.entry(c.peer).or_default() += 1;
                    }
                    if idle_for > idle {
                        self.end_session(&entry, &mut slot);
                        self.metrics.expired.inc();
                    }
                }
                Role::Replica => {
                    held.replicas += 1;
                    if idle_for > idle && !self.members.is_alive(s.primary) {
                        let epoch = s.epoch;
                        slot.session = None;
                        self.store.mark_ended(entry.id, epoch, false);
                        self.store.remove(&entry);
                        self.metrics.expired.inc();
                    }
                }
            }
        }
        held
    }
}

/// Sessions held here, for the `node_sessions` gauges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// Owned here.
    pub primaries: i64,
    /// Copies of other nodes' sessions.
    pub replicas: i64,
    /// Owned here with no copy anywhere (no live peer to hold one): lost if this node dies.
    pub unprotected: i64,
    /// Sessions owned here with a copy on each peer (a bank member, a Redis bank, a secondary).
    pub copies: std::collections::HashMap<NodeId, i64>,
}

/// Whether `call` may still be forwarded to `owner`: hops left, and `owner` not found unreachable already.
fn may_forward<C>(call: &SessionCall<C>, unreachable: &[NodeId], owner: NodeId) -> bool {
    call.hops < MAX_HOPS && !unreachable.contains(&owner)
}

fn pair_of(s: &Session) -> Pair {
    Pair {
        primary: s.primary,
        secondary: s.secondary,
    }
}

/// Whether the client reached the balancer over https (`X-Forwarded-Proto: https`, which the balancer sets on
/// every request of its TLS listener): the cookie then gets `Secure`. A client that reaches the node directly
/// and claims https only gets a stricter cookie for itself.
fn behind_https(req: &crate::app::ClientRequest) -> bool {
    req.parts
        .headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn set_header(r: &mut Reply, name: hyper::header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(name, v);
    }
}

/// `min_copies = 2` and no peer to hold a copy: refused, nothing changed.
fn no_copy() -> Reply {
    unavailable("no other node can hold a copy of this session now (`min_copies = 2`); nothing was changed, retry")
}

/// 503 with `Retry-After: 1`.
fn unavailable(message: &str) -> Reply {
    retry_later(StatusCode::SERVICE_UNAVAILABLE, message)
}
