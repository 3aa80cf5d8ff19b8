//! The simulated state: clients, nodes and their entries, and the messages on the wire.

use super::*;

/// The routing cookie a client got with an answer: its session, the pair, the version it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cookie {
    pub(crate) sid: SessionId,
    pub(crate) primary: usize,
    pub(crate) secondary: Option<usize>,
    pub(crate) version: u64,
}

/// A client: its current cookie (none before its first answer, or after its session ended) and older ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct Client {
    pub(crate) cookie: Option<Cookie>,
    pub(crate) older: Vec<Cookie>,
}

impl Client {
    /// The client keeps cookie `k` from now on; its last one joins the older ones (the last four are kept).
    pub(crate) fn take(&mut self, k: Cookie) {
        if self.cookie != Some(k) {
            if let Some(old) = self.cookie.replace(k) {
                self.older.push(old);
                if self.older.len() > 4 {
                    self.older.remove(0);
                }
            }
        }
    }
}

/// A request on its way through the session service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub(crate) client: usize,
    pub(crate) op: Op,
    pub(crate) cookie: Option<Cookie>,
    /// Node-to-node forwards so far.
    pub(crate) hops: u8,
}

/// How node `i` sees a peer (`membership`): alive as of its last heartbeat or call, and whether its port
/// refused a connection (not running, so no lease of its needs waiting out).
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub(crate) alive: bool,
    pub(crate) gone: bool,
    /// The incarnation the peer's last answer carried (0: none yet): a new one means it restarted.
    pub(crate) incarnation: u64,
}

/// A write applied on a primary and waiting for its copies before it is answered (`wait_written`).
#[derive(Clone, Debug)]
pub(crate) struct Waiter {
    pub(crate) client: usize,
    pub(crate) sid: SessionId,
    pub(crate) version: u64,
    pub(crate) epoch: u64,
    pub(crate) trace: u64,
    /// The cookie its answer will carry.
    pub(crate) cookie: Cookie,
    /// The entry it was applied to.
    pub(crate) gen: u64,
    pub(crate) since: usize,
}

/// A takeover in progress on the requester (`Takeover::recover`), holding the session's lock.
#[derive(Clone, Debug)]
pub(crate) struct Pulling {
    pub(crate) req: Request,
    pub(crate) candidates: Vec<usize>,
    pub(crate) next: usize,
    pub(crate) round: u32,
    pub(crate) busy: bool,
    /// Candidates whose pull failed unanswered once (asked again first the next round, then passed over).
    pub(crate) unanswered: Vec<usize>,
    /// A candidate asked this round did not answer (a second time).
    pub(crate) silent: bool,
    pub(crate) owner_unreachable: bool,
    /// Only a copy this new is taken: the cookie's version, then 0 once every holder said it has none.
    pub(crate) min_version: u64,
    /// The pull message now awaiting an answer.
    pub(crate) asked: Option<u64>,
    pub(crate) sent_at: Instant,
}

/// One session hosted on a node (`store::Entry`). `gen` names this very entry: work begun on an entry that
/// was since removed (a queued copy, a batch in flight, a waiting write) never touches a newer one for the
/// same session, as the shell's `Arc<Entry>` handles do not.
#[derive(Clone, Debug)]
pub(crate) struct SimEntry {
    pub(crate) gen: u64,
    pub(crate) slot: Slot,
    pub(crate) mark: Mark,
    /// A takeover holds the session's lock.
    pub(crate) pulling: Option<Pulling>,
}

/// One node: its store, replication progress, queues and view of the others.
#[derive(Clone, Debug)]
pub(crate) struct SimNode {
    pub(crate) alive: bool,
    /// How many times it started: the incarnation its heartbeat answers carry.
    pub(crate) incarnation: u64,
    pub(crate) entries: BTreeMap<SessionId, SimEntry>,
    /// Sessions that ended here (tombstones).
    pub(crate) ended: BTreeMap<SessionId, u64>,
    pub(crate) view: Vec<View>,
    /// The replicator's queues: (peer, session, entry) waiting for the peer's next batch.
    pub(crate) queue: BTreeSet<(usize, SessionId, u64)>,
    /// Per peer, the batch in flight (one at a time).
    pub(crate) inflight: Vec<Option<u64>>,
    /// Per batch in flight: what each item was (session, entry, version sent).
    pub(crate) sent: BTreeMap<u64, Vec<(SessionId, u64, u64)>>,
    pub(crate) waiting: Vec<Waiter>,
}

impl SimNode {
    /// A node that just started (its `incarnation`-th start): nothing held; peers alive (`alive_view`: the
    /// cluster's first start) as its first heartbeats found them, or not yet seen.
    pub(super) fn new(nodes: usize, alive_view: bool, incarnation: u64) -> SimNode {
        SimNode {
            alive: true,
            incarnation,
            entries: BTreeMap::new(),
            ended: BTreeMap::new(),
            view: vec![
                View {
                    alive: alive_view,
                    gone: false,
                    // The whole cluster starts at once, each node in its first incarnation.
                    incarnation: u64::from(alive_view),
                };
                nodes
            ],
            queue: BTreeSet::new(),
            inflight: vec![None; nodes],
            sent: BTreeMap::new(),
            waiting: Vec::new(),
        }
    }
}

/// What travels between nodes.
#[derive(Clone, Debug)]
pub(crate) enum Body {
    /// Items and the version each brings its copy to. `answered`: the sender waits for the reply (the
    /// replicator); a takeover's removals to old copies are sent without waiting.
    Batch {
        items: Vec<(Item, u64)>,
        answered: bool,
    },
    /// The copy's answer to each item of batch `batch`, in order.
    BatchReply {
        batch: u64,
        results: Vec<ItemResult>,
    },
    /// A takeover's ask; a holder whose copy is older than `min_version` has nothing to give.
    Pull {
        sid: SessionId,
        owner_unreachable: bool,
        min_version: u64,
    },
    PullReply {
        pull: u64,
        sid: SessionId,
        result: PullResult,
    },
}

/// One message on the wire.
#[derive(Clone, Debug)]
pub(crate) struct Msg {
    pub(crate) id: u64,
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) body: Body,
    /// Its sender stopped waiting for it: it may still arrive, but any answer is dropped.
    pub(crate) orphan: bool,
}

/// Counts of what happened, to see that a run exercised something.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) acked: u64,
    pub(crate) unanswered: u64,
    pub(crate) fenced: u64,
    pub(crate) promotions: u64,
    pub(crate) grants: u64,
    pub(crate) installs: u64,
    pub(crate) lost_declared: u64,
    pub(crate) lost_with_last_holder: u64,
    pub(crate) deletes: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Stats) {
        self.acked += o.acked;
        self.unanswered += o.unanswered;
        self.fenced += o.fenced;
        self.promotions += o.promotions;
        self.grants += o.grants;
        self.installs += o.installs;
        self.lost_declared += o.lost_declared;
        self.lost_with_last_holder += o.lost_with_last_holder;
        self.deletes += o.deletes;
    }
}
