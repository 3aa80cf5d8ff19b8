//! Node ids, session ids and the summed-id routing segment (seed 003 [0066]).
//!
//! A node id is a large random number in `[2^48, 2^62)`. A pair (primary, secondary) is named by ONE number,
//! the segment: `((id(primary) + id(secondary)) << 1) | order`, where `order` is 1 when the primary has the
//! larger id. A lone node (no live secondary) is named by `id << 1`. Any balancer holding the same node list
//! decodes a segment with one hash lookup and no learned state.

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Smallest accepted node id: ids are large so that sums of distinct pairs practically never collide.
pub const MIN_NODE_ID: u64 = 1 << 48;
/// Ids stay below 2^62 so that a sum of two shifted by the order bit fits in 64 bits.
pub const MAX_NODE_ID: u64 = (1 << 62) - 1;

/// A node's large random id.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(u64);

impl NodeId {
    /// An id from the config.
    ///
    /// # Errors
    /// A message when the value is outside `[2^48, 2^62)`.
    pub fn new(v: u64) -> Result<NodeId, String> {
        if (MIN_NODE_ID..=MAX_NODE_ID).contains(&v) {
            Ok(NodeId(v))
        } else {
            Err(format!("{v} is outside [2^48, 2^62)"))
        }
    }

    /// The id of a node whose config gives none: HMAC(secret, name), kept in `[2^61, 2^62)`, so every process
    /// that reads the same file derives the same id.
    pub fn derive(name: &str, secret: &str) -> NodeId {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
        mac.update(b"node-id\0");
        mac.update(name.as_bytes());
        let out = mac.finalize().into_bytes();
        let raw = u64::from_be_bytes(out[..8].try_into().expect("8 bytes"));
        NodeId((raw & MAX_NODE_ID) | (1 << 61))
    }

    /// The raw id, as written in the cluster file.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:#x})", self.0)
    }
}

/// A primary and, when one is alive, its secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    /// The node that hosts the session and serves its requests.
    pub primary: NodeId,
    /// The node holding the copy; `None` for a lone node with no live peer.
    pub secondary: Option<NodeId>,
}

impl Pair {
    /// The routing segment that names this pair.
    pub fn segment(&self) -> u64 {
        match self.secondary {
            None => self.primary.0 << 1,
            Some(s) => ((self.primary.0 + s.0) << 1) | u64::from(self.primary.0 > s.0),
        }
    }
}

/// Segment sum -> the (smaller, larger) ids that add up to it; `None` as the larger for a lone node.
#[derive(Clone, Debug, Default)]
pub struct PairTable {
    by_sum: HashMap<u64, (NodeId, Option<NodeId>), ahash::RandomState>,
}

impl PairTable {
    /// Every pair and lone node of `ids`.
    ///
    /// # Errors
    /// The two colliding pairs, described, when two different pairs (or a pair and a lone node) share a sum.
    pub fn build(ids: impl IntoIterator<Item = NodeId>) -> Result<PairTable, (String, String)> {
        let mut ids: Vec<NodeId> = ids.into_iter().collect();
        ids.sort();
        let mut by_sum: HashMap<u64, (NodeId, Option<NodeId>), ahash::RandomState> =
            HashMap::default();
        let describe = |e: &(NodeId, Option<NodeId>)| match e.1 {
            Some(h) => format!("{}+{}", e.0, h),
            None => format!("{}", e.0),
        };
        let mut insert = |sum: u64, entry: (NodeId, Option<NodeId>)| {
            if let Some(prev) = by_sum.insert(sum, entry) {
                return Err((describe(&prev), describe(&entry)));
            }
            Ok(())
        };
        for (i, a) in ids.iter().enumerate() {
            insert(a.0, (*a, None))?;
            for b in &ids[i + 1..] {
                insert(a.0 + b.0, (*a, Some(*b)))?;
            }
        }
        Ok(PairTable { by_sum })
    }

    /// The pair a segment names, primary first; `None` when it names no pair of this cluster.
    pub fn decode(&self, segment: u64) -> Option<Pair> {
        let order = segment & 1 == 1;
        let &(lo, hi) = self.by_sum.get(&(segment >> 1))?;
        match hi {
            None if order => None,
            None => Some(Pair {
                primary: lo,
                secondary: None,
            }),
            Some(hi) if order => Some(Pair {
                primary: hi,
                secondary: Some(lo),
            }),
            Some(hi) => Some(Pair {
                primary: lo,
                secondary: Some(hi),
            }),
        }
    }
}

/// A session id: 128 random bits.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SessionId(pub u128);

impl SessionId {
    /// A fresh id from the OS's random source.
    pub fn random() -> SessionId {
        let mut b = [0u8; 16];
        getrandom::getrandom(&mut b).expect("the OS random source works");
        SessionId(u128::from_be_bytes(b))
    }

    /// A short, non-reversible tag for logs: never log the id itself (it is a bearer credential).
    pub fn log_hash(&self) -> String {
        let h = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(self.0);
        format!("{:08x}", h as u32)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.log_hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<NodeId> {
        ["n1", "n2", "n3", "n4"]
            .iter()
            .map(|n| NodeId::derive(n, "secret-secret-secret"))
            .collect()
    }

    #[test]
    fn derived_ids_are_large_and_stable() {
        let a = NodeId::derive("n1", "s");
        assert_eq!(a, NodeId::derive("n1", "s"));
        assert!(a.get() >= MIN_NODE_ID && a.get() <= MAX_NODE_ID);
        assert_ne!(a, NodeId::derive("n2", "s"));
    }

    #[test]
    fn every_pair_decodes_to_itself_in_both_orders() {
        let ids = ids();
        let table = PairTable::build(ids.clone()).unwrap();
        for &p in &ids {
            let lone = Pair {
                primary: p,
                secondary: None,
            };
            assert_eq!(table.decode(lone.segment()), Some(lone));
            for &s in &ids {
                if p != s {
                    let pair = Pair {
                        primary: p,
                        secondary: Some(s),
                    };
                    assert_eq!(table.decode(pair.segment()), Some(pair));
                }
            }
        }
    }

    #[test]
    fn unknown_segments_decode_to_nothing() {
        let table = PairTable::build(ids()).unwrap();
        assert_eq!(table.decode(12345), None);
        let lone = Pair {
            primary: ids()[0],
            secondary: None,
        };
        assert_eq!(table.decode(lone.segment() | 1), None);
    }
}
