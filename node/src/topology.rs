//! Where a session's copies live, as pure functions of the session and the cluster: which peers get a copy,
//! how many of them must confirm a write before it is answered, and where a node looks for a session it
//! does not host, for the three shapes of DESIGN §5.1: the pair, the bank and the broadcast group.

use crate::config::ReplicationMode;
use crate::ids::{NodeId, Pair};
use crate::session::Session;

/// The shape of replication, as built. The file's `[replication] topology` names more shapes than are built
/// yet; config validation refuses those, so [`Topology::built`] is `None` only for a config that skipped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// A primary and one secondary (seed 003).
    Pair,
    /// Web nodes back each session up to `copies` members (1 or 2) of a bank of session servers (seeds 000,
    /// 001, 004); the first is the session's secondary, so cookies, copies and grants work as in the pair.
    Rss {
        /// Bank members holding each session.
        copies: usize,
    },
    /// Every live member of the owner's group holds every session of the group (seed 002). The owner is the
    /// session's sequencer: other members forward its requests there, and one of them is named by the cookie
    /// as its secondary, so takeover works as in the pair.
    Broadcast,
}

impl Topology {
    /// The built topology for the file's choice, `None` for one not built yet.
    pub fn built(choice: crate::config::Topology, copies: usize) -> Option<Topology> {
        match choice {
            crate::config::Topology::Pair => Some(Topology::Pair),
            crate::config::Topology::Rss => Some(Topology::Rss { copies }),
            crate::config::Topology::Broadcast => Some(Topology::Broadcast),
        }
    }

    /// How many copies a session's own fields name: 1 (its secondary), or `copies` in a bank. A broadcast
    /// group's other copies come from the group ([`Topology::copy_targets`]).
    pub fn copies(self) -> usize {
        match self {
            Topology::Pair | Topology::Broadcast => 1,
            Topology::Rss { copies } => copies,
        }
    }

    /// The peers that should hold a copy of `s` (its owner excluded); `group` is the owner's live group peers
    /// (only a broadcast group uses it).
    pub fn copy_targets(self, s: &Session, group: &[NodeId]) -> Vec<NodeId> {
        let mut t: Vec<NodeId> = s.secondary.into_iter().collect();
        match self {
            Topology::Pair => {}
            Topology::Rss { .. } => t.extend(s.also.filter(|a| Some(*a) != s.secondary)),
            Topology::Broadcast => t.extend(group.iter().filter(|g| Some(**g) != s.secondary)),
        }
        t
    }

    /// How many of `targets` copies must confirm a write before it is answered: in `sync` mode one (the
    /// secondary) when there is one; in `async` mode none. Never more than there are copies: a session whose
    /// peers are all gone runs unprotected rather than refusing writes (DESIGN §4.4).
    pub fn acks_needed(self, mode: ReplicationMode, targets: usize) -> usize {
        match (self, mode) {
            (_, ReplicationMode::Async) => 0,
            (Topology::Pair, ReplicationMode::Sync) => targets.min(1),
            // Every copy: a write must outlive any one bank member dying with its web node.
            (Topology::Rss { copies }, ReplicationMode::Sync) => targets.min(copies),
            // Every live member: any of them may then take the session over with every acknowledged write.
            (Topology::Broadcast, ReplicationMode::Sync) => targets,
        }
    }

    /// The nodes to ask, in order, for a session whose cookie names `pair`, when `me` does not host it: the
    /// secondary first, the copy the design names for recovery (seed 003 [0050]); then `holders`, the other
    /// peers that may hold a copy (a bank's other members, seed 004 polls them; a broadcast group's members,
    /// seed 002's requests for session state), asked for only when the topology has them; then the primary.
    pub fn takeover_sources(
        self,
        pair: Pair,
        me: NodeId,
        holders: impl FnOnce() -> Vec<NodeId>,
    ) -> Vec<NodeId> {
        let others = match self {
            Topology::Pair => Vec::new(),
            Topology::Rss { .. } | Topology::Broadcast => holders(),
        };
        let mut out: Vec<NodeId> = Vec::with_capacity(2 + others.len());
        let candidates = pair
            .secondary
            .into_iter()
            .chain(others)
            .chain(Some(pair.primary));
        for n in candidates {
            if n != me && !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }
}

/// The version every needed copy holds, from the versions the copies confirmed: the `needed`-th highest of
/// `acked`. `None` when fewer than `needed` copies confirmed anything; with `needed == 0`, `current` (nothing
/// to wait for).
pub fn durable(
    acked: impl IntoIterator<Item = Option<u64>>,
    needed: usize,
    current: u64,
) -> Option<u64> {
    if needed == 0 {
        return Some(current);
    }
    if needed == 1 {
        // The pair's case, on every acknowledgement: no allocation.
        return acked.into_iter().flatten().max();
    }
    let mut held: Vec<u64> = acked.into_iter().flatten().collect();
    if held.len() < needed {
        return None;
    }
    held.sort_unstable_by(|a, b| b.cmp(a));
    Some(held[needed - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;

    fn id(n: u64) -> NodeId {
        NodeId::new((1 << 50) + n).unwrap()
    }

    #[test]
    fn a_pair_copies_to_its_secondary_and_waits_for_it_only_in_sync_mode() {
        let s = Session::new(SessionId(1), id(1), Some(id(2)));
        assert_eq!(Topology::Pair.copy_targets(&s, &[]), vec![id(2)]);
        assert_eq!(Topology::Pair.acks_needed(ReplicationMode::Sync, 1), 1);
        assert_eq!(Topology::Pair.acks_needed(ReplicationMode::Async, 1), 0);
        let alone = Session::new(SessionId(1), id(1), None);
        assert!(Topology::Pair.copy_targets(&alone, &[]).is_empty());
        assert_eq!(Topology::Pair.acks_needed(ReplicationMode::Sync, 0), 0);
    }

    #[test]
    fn takeover_asks_the_secondary_first_and_never_itself() {
        let pair = Pair {
            primary: id(1),
            secondary: Some(id(2)),
        };
        assert_eq!(
            Topology::Pair.takeover_sources(pair, id(3), || vec![id(5)]),
            vec![id(2), id(1)]
        );
        assert_eq!(
            Topology::Pair.takeover_sources(pair, id(2), Vec::new),
            vec![id(1)]
        );
    }

    #[test]
    fn in_a_bank_takeover_asks_the_named_member_then_polls_the_others_then_the_old_web_node() {
        let pair = Pair {
            primary: id(1),
            secondary: Some(id(5)),
        };
        let bank = [id(4), id(5), id(6)];
        assert_eq!(
            Topology::Rss { copies: 1 }.takeover_sources(pair, id(3), || bank.to_vec()),
            vec![id(5), id(4), id(6), id(1)]
        );
    }

    #[test]
    fn with_two_copies_a_bank_session_goes_to_both_members_and_waits_for_both() {
        let mut s = Session::new(SessionId(1), id(1), Some(id(4)));
        s.also = Some(id(5));
        let two = Topology::Rss { copies: 2 };
        assert_eq!(two.copy_targets(&s, &[]), vec![id(4), id(5)]);
        assert_eq!(two.acks_needed(ReplicationMode::Sync, 2), 2);
        assert_eq!(
            two.acks_needed(ReplicationMode::Sync, 1),
            1,
            "one member left: it alone"
        );
        assert_eq!(
            Topology::Rss { copies: 1 }.copy_targets(&s, &[]),
            vec![id(4), id(5)]
        );
    }

    #[test]
    fn a_broadcast_session_goes_to_every_live_group_member_and_waits_for_all_of_them() {
        let s = Session::new(SessionId(1), id(1), Some(id(3)));
        let group = [id(2), id(3), id(4)];
        let b = Topology::Broadcast;
        assert_eq!(
            b.copy_targets(&s, &group),
            vec![id(3), id(2), id(4)],
            "the cookie's secondary first"
        );
        assert_eq!(b.acks_needed(ReplicationMode::Sync, 3), 3);
        assert_eq!(b.acks_needed(ReplicationMode::Async, 3), 0);
        let pair = Pair {
            primary: id(1),
            secondary: Some(id(3)),
        };
        assert_eq!(
            b.takeover_sources(pair, id(2), || group.to_vec()),
            vec![id(3), id(4), id(1)],
            "the named copy, the rest of the group, the old owner; never itself"
        );
    }

    #[test]
    fn a_version_is_durable_once_enough_copies_confirmed_it() {
        assert_eq!(durable([Some(4)], 1, 9), Some(4));
        assert_eq!(durable([None], 1, 9), None);
        assert_eq!(durable([Some(4), Some(7), None], 2, 9), Some(4));
        assert_eq!(durable([Some(4), None], 2, 9), None);
        assert_eq!(durable([], 0, 9), Some(9), "nothing to wait for");
    }
}
