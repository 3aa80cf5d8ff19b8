//! The settings that take one word out of a fixed set, as serde enums whose `as_str` and `Display` give the word
//! the file uses, so `/status` and `/_node/health` print `least_connections` where the file says so.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A word that is none of a setting's values, from [`FromStr`] on a setting's enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}`: expected one of {expected}")]
pub struct UnknownChoice {
    /// The word given.
    pub value: String,
    /// The words accepted, comma-separated, in the order the documentation lists them.
    pub expected: String,
}

/// `as_str`, `ALL`, `Display` and `FromStr` for a setting's enum. serde derives the file's spelling from the
/// variant names (`rename_all = "snake_case"`); the words here are written out so `as_str` is a `const fn`
/// that needs no serializer, and a test checks that both spell every variant alike.
macro_rules! choice {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in the order the documentation lists them.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The word the cluster file uses for this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownChoice;

            /// The value the file spells `s`.
            ///
            /// # Errors
            /// [`UnknownChoice`] listing the accepted words.
            fn from_str(s: &str) -> Result<Self, UnknownChoice> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownChoice {
                        value: s.to_string(),
                        expected: Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    })
            }
        }
    };
}

/// How new sessions are spread over nodes by the balancer (`[lb] algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Fewest in-flight requests per unit of weight.
    LeastConnections,
    /// Weighted rotation.
    RoundRobin,
    /// Weighted uniform draw.
    Random,
}

choice!(Algorithm {
    LeastConnections => "least_connections",
    RoundRobin => "round_robin",
    Random => "random",
});

/// Where the balancer sends a pinned request whose primary is dead (`[lb] failover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failover {
    /// Any healthy node chosen by the algorithm (the failed one excluded).
    Rebalance,
    /// The pair's secondary first (seed 003 Fig. 7).
    Secondary,
}

choice!(Failover {
    Rebalance => "rebalance",
    Secondary => "secondary",
});

/// When a write is acknowledged to the client (`[replication] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMode {
    /// After the secondary applied it.
    Sync,
    /// At once; copies go out in batches.
    Async,
}

choice!(ReplicationMode {
    Sync => "sync",
    Async => "async",
});

/// Who holds the copies of a session (`[replication] topology`, DESIGN.md 5.1). Only [`Topology::Pair`] is
/// built; the file may name the others so that their refusal says "not yet supported" rather than "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// A primary and one secondary per session.
    Pair,
    /// Web nodes back sessions up to a bank of session servers.
    Rss,
    /// Every member of a group holds every session of the group.
    Broadcast,
}

choice!(Topology {
    Pair => "pair",
    Rss => "rss",
    Broadcast => "broadcast",
});

/// What kind of Redis deployment `[replication.bank] redis` names (DESIGN §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BankKind {
    /// One Redis or Valkey server (default): one URL.
    #[default]
    Server,
    /// A Redis Cluster: the URLs are seed nodes; the client follows the cluster's slot map.
    Cluster,
    /// A primary found through Sentinel: the URLs are the sentinels, `master` names the service.
    Sentinel,
}

choice!(BankKind {
    Server => "server",
    Cluster => "cluster",
    Sentinel => "sentinel",
});

/// What a node is in the `rss` topology (`[[nodes]] role`, DESIGN §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Hosts sessions in memory and serves them.
    Web,
    /// A session server of the bank: keeps copies only, serves no session requests, never chosen by the lb.
    Rss,
    /// A web node that gets no new sessions while every web node is up, and takes the sessions of a dead one.
    Standby,
}

choice!(NodeRole {
    Web => "web",
    Rss => "rss",
    Standby => "standby",
});

impl NodeRole {
    /// Whether clients' requests may be sent to a node of this role.
    pub const fn serves(self) -> bool {
        !matches!(self, NodeRole::Rss)
    }
}

/// How processes write their logs (`[node] log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

choice!(LogFormat {
    Text => "text",
    Json => "json",
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant of `T` reads back from its `as_str` word through serde, and prints that word.
    fn spelled_alike<T>(all: &[T])
    where
        T: Copy
            + PartialEq
            + fmt::Debug
            + fmt::Display
            + FromStr
            + for<'de> Deserialize<'de>
            + Serialize,
    {
        #[derive(Deserialize)]
        struct Holder<T> {
            v: T,
        }
        for &v in all {
            let word = v.to_string();
            let read: Holder<T> = toml::from_str(&format!("v = \"{word}\"")).unwrap();
            assert_eq!(read.v, v, "serde reads `{word}` as another value");
            assert_eq!(
                toml::Value::try_from(v).unwrap(),
                toml::Value::String(word.clone()),
                "serde writes {v:?} otherwise"
            );
            assert!(
                word.parse::<T>().ok() == Some(v),
                "`{word}` does not parse back"
            );
        }
    }

    #[test]
    fn serde_and_as_str_spell_every_value_alike() {
        spelled_alike(Algorithm::ALL);
        spelled_alike(Failover::ALL);
        spelled_alike(ReplicationMode::ALL);
        spelled_alike(Topology::ALL);
        spelled_alike(NodeRole::ALL);
        spelled_alike(LogFormat::ALL);
    }

    #[test]
    fn a_value_prints_as_the_file_spells_it() {
        assert_eq!(Algorithm::LeastConnections.to_string(), "least_connections");
        assert_eq!(Failover::Secondary.as_str(), "secondary");
        assert_eq!(ReplicationMode::Async.to_string(), "async");
    }

    #[test]
    fn an_unknown_word_lists_the_accepted_ones() {
        let err = "fastest".parse::<Algorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`fastest`: expected one of least_connections, round_robin, random"
        );
    }
}
