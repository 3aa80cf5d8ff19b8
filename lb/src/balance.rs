//! Choosing a node: the pinned primary, the failover target, or a balanced pick for a new session. Pure: the
//! caller passes a snapshot of every node's state and two numbers (a ticket and a random draw), so every choice
//! is reproducible in a unit test.

use node::config::{Algorithm, Failover, NodeRole};

/// What the chooser needs to know about one node at this instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Passed its health checks (and no passive failure since).
    pub healthy: bool,
    /// `drain = true`: takes no new sessions.
    pub drain: bool,
    /// Relative share of new sessions, 1..=1000.
    pub weight: u32,
    /// Requests currently proxied to it by this balancer.
    pub in_flight: usize,
    /// `web` takes new sessions; `standby` only when no web node can, and a dead web node's sessions first;
    /// `rss` (a session server) never gets a request.
    pub role: NodeRole,
}

/// Why a node was chosen; the proxy counts failovers from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The session's primary, as the cookie names it.
    Primary,
    /// The session's secondary, because the primary is down (`failover = "secondary"`).
    Secondary,
    /// Chosen by the algorithm: a new session, or a failover under `failover = "rebalance"`.
    Balanced,
}

/// The session a request belongs to, as far as routing is concerned: node indices into the current node list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// Index of the session's primary.
    pub primary: usize,
    /// Index of its secondary; `None` for a session without one.
    pub secondary: Option<usize>,
}

/// How the balancer picks: `[lb] algorithm` and `failover`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How new sessions (and failovers under `rebalance`) are spread.
    pub algorithm: Algorithm,
    /// Where a request goes when its primary is down.
    pub failover: Failover,
}

/// One attempt of one request: the session it is pinned to, if any, and the nodes that already failed it.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// The session's nodes, from a valid cookie; `None` for a new session.
    pub pinned: Option<Pinned>,
    /// Indices of the nodes this request already failed on: never chosen again.
    pub tried: &'a [usize],
}

/// What a choice depends on besides the nodes' state, so that it can be replayed: `ticket` grows by one per
/// choice (it rotates ties and drives round robin), `random` is a uniform draw for `Algorithm::Random`.
#[derive(Clone, Copy, Debug)]
pub struct Draw {
    /// One more than the previous choice's ticket.
    pub ticket: u64,
    /// A uniform random number.
    pub random: u64,
}

/// Picks the node for `attempt`: the pinned primary, the failover target, or a balanced pick; `None` when no
/// healthy node is left untried.
pub fn choose(
    policy: Policy,
    nodes: &[NodeView],
    attempt: Attempt<'_>,
    draw: Draw,
) -> Option<(usize, Target)> {
    let up = |i: usize| nodes.get(i).is_some_and(|n| n.healthy && n.role.serves());
    let usable = |i: usize| up(i) && !attempt.tried.contains(&i);
    if let Some(hit) = pinned_primary(attempt, up) {
        return Some(hit);
    }
    if let Some(p) = attempt.pinned {
        if policy.failover == Failover::Secondary {
            if let Some(s) = p.secondary.filter(|&s| usable(s)) {
                return Some((s, Target::Secondary));
            }
        }
    }
    let pick = |role: NodeRole, allow_drained: bool| {
        balanced(
            policy.algorithm,
            nodes,
            |i| usable(i) && nodes[i].role == role && (allow_drained || !nodes[i].drain),
            draw,
        )
    };
    // Standby nodes are HAProxy's `backup` servers (seed 000 claims 12, 14, 21): a dead node's sessions go to
    // them first, new sessions only when no web node can take one. Drained nodes are a last resort within a
    // role: better a session on a draining node than a 503.
    let roles = if attempt.pinned.is_some() {
        [NodeRole::Standby, NodeRole::Web]
    } else {
        [NodeRole::Web, NodeRole::Standby]
    };
    roles
        .into_iter()
        .flat_map(|r| [(r, false), (r, true)])
        .find_map(|(r, drained)| pick(r, drained))
        .map(|i| (i, Target::Balanced))
}

/// The pinned primary when it is healthy and not yet tried this request: the common case, which needs no view
/// of the other nodes. A drained primary still serves its own sessions (the node hands them to their
/// secondaries itself).
pub fn pinned_primary(
    attempt: Attempt<'_>,
    healthy: impl Fn(usize) -> bool,
) -> Option<(usize, Target)> {
    let p = attempt.pinned?;
    (healthy(p.primary) && !attempt.tried.contains(&p.primary))
        .then_some((p.primary, Target::Primary))
}

/// A balanced pick among the nodes `eligible` accepts.
pub fn balanced(
    algorithm: Algorithm,
    nodes: &[NodeView],
    eligible: impl Fn(usize) -> bool,
    draw: Draw,
) -> Option<usize> {
    let Draw { ticket, random } = draw;
    let n = nodes.len();
    if n == 0 {
        return None;
    }
    match algorithm {
        Algorithm::LeastConnections => {
            // Start the scan at a rotating offset so that equal loads (an idle cluster) still spread.
            let start = (ticket % n as u64) as usize;
            let mut best: Option<usize> = None;
            for k in 0..n {
                let i = (start + k) % n;
                if !eligible(i) {
                    continue;
                }
                best = match best {
                    // Fewer in-flight per unit of weight wins: a/wa < b/wb  <=>  a*wb < b*wa.
                    Some(b)
                        if (nodes[i].in_flight as u128) * u128::from(nodes[b].weight)
                            >= (nodes[b].in_flight as u128) * u128::from(nodes[i].weight) =>
                    {
                        Some(b)
                    }
                    _ => Some(i),
                };
            }
            best
        }
        Algorithm::RoundRobin => weighted_slot(nodes, &eligible, ticket),
        Algorithm::Random => weighted_slot(nodes, &eligible, random),
    }
}

/// The node owning slot `draw mod total weight` when eligible nodes line up their weights end to end.
fn weighted_slot(
    nodes: &[NodeView],
    eligible: &impl Fn(usize) -> bool,
    draw: u64,
) -> Option<usize> {
    let total: u64 = (0..nodes.len())
        .filter(|&i| eligible(i))
        .map(|i| u64::from(nodes[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut slot = draw % total;
    for (i, n) in nodes.iter().enumerate() {
        if !eligible(i) {
            continue;
        }
        let w = u64::from(n.weight);
        if slot < w {
            return Some(i);
        }
        slot -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(algorithm: Algorithm, failover: Failover) -> Policy {
        Policy {
            algorithm,
            failover,
        }
    }

    fn attempt(pinned: Option<Pinned>, tried: &[usize]) -> Attempt<'_> {
        Attempt { pinned, tried }
    }

    fn draw(ticket: u64, random: u64) -> Draw {
        Draw { ticket, random }
    }

    fn up(weight: u32, in_flight: usize) -> NodeView {
        NodeView {
            healthy: true,
            drain: false,
            weight,
            in_flight,
            role: NodeRole::Web,
        }
    }

    fn counts(alg: Algorithm, nodes: &[NodeView], rounds: u64) -> Vec<usize> {
        let mut c = vec![0; nodes.len()];
        for t in 0..rounds {
            let r = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7;
            let (i, _) = choose(
                policy(alg, Failover::Rebalance),
                nodes,
                attempt(None, &[]),
                draw(t, r),
            )
            .unwrap();
            c[i] += 1;
        }
        c
    }

    #[test]
    fn a_healthy_primary_is_always_chosen_even_when_drained() {
        let mut nodes = vec![up(1, 50), up(1, 0), up(1, 0)];
        nodes[0].drain = true;
        let p = Pinned {
            primary: 0,
            secondary: Some(1),
        };
        for t in 0..10 {
            assert_eq!(
                choose(
                    policy(Algorithm::LeastConnections, Failover::Rebalance),
                    &nodes,
                    attempt(Some(p), &[]),
                    draw(t, t)
                ),
                Some((0, Target::Primary))
            );
        }
    }

    #[test]
    fn a_dead_primary_fails_over_to_the_secondary_only_when_asked() {
        let mut nodes = vec![up(1, 0), up(1, 5), up(1, 0)];
        nodes[0].healthy = false;
        let p = Some(Pinned {
            primary: 0,
            secondary: Some(1),
        });
        let alg = Algorithm::LeastConnections;
        assert_eq!(
            choose(
                policy(alg, Failover::Secondary),
                &nodes,
                attempt(p, &[]),
                draw(0, 0)
            ),
            Some((1, Target::Secondary))
        );
        assert_eq!(
            choose(
                policy(alg, Failover::Rebalance),
                &nodes,
                attempt(p, &[]),
                draw(0, 0)
            ),
            Some((2, Target::Balanced))
        );
        // The secondary failed too: the algorithm takes over.
        assert_eq!(
            choose(
                policy(alg, Failover::Secondary),
                &nodes,
                attempt(p, &[1]),
                draw(0, 0)
            ),
            Some((2, Target::Balanced))
        );
    }

    #[test]
    fn a_tried_node_is_never_chosen_again_for_the_same_request() {
        let nodes = vec![up(1, 0), up(1, 0), up(1, 0)];
        let p = Some(Pinned {
            primary: 0,
            secondary: None,
        });
        for t in 0..20 {
            let (i, target) = choose(
                policy(Algorithm::RoundRobin, Failover::Rebalance),
                &nodes,
                attempt(p, &[0, 2]),
                draw(t, t),
            )
            .unwrap();
            assert_eq!((i, target), (1, Target::Balanced));
        }
        assert_eq!(
            choose(
                policy(Algorithm::RoundRobin, Failover::Rebalance),
                &nodes,
                attempt(p, &[0, 1, 2]),
                draw(0, 0)
            ),
            None
        );
    }

    #[test]
    fn no_healthy_node_means_no_choice() {
        let nodes = vec![
            NodeView {
                healthy: false,
                ..up(1, 0)
            };
            3
        ];
        assert_eq!(
            choose(
                policy(Algorithm::Random, Failover::Rebalance),
                &nodes,
                attempt(None, &[]),
                draw(1, 1)
            ),
            None
        );
        assert_eq!(
            choose(
                policy(Algorithm::Random, Failover::Rebalance),
                &[],
                attempt(None, &[]),
                draw(1, 1)
            ),
            None
        );
    }

    #[test]
    fn drained_nodes_get_no_new_sessions_unless_nothing_else_is_up() {
        let mut nodes = vec![up(1, 0), up(1, 0), up(1, 0)];
        nodes[1].drain = true;
        for alg in [
            Algorithm::LeastConnections,
            Algorithm::RoundRobin,
            Algorithm::Random,
        ] {
            assert_eq!(counts(alg, &nodes, 300)[1], 0, "{alg:?}");
        }
        nodes[0].healthy = false;
        nodes[2].healthy = false;
        assert_eq!(counts(Algorithm::RoundRobin, &nodes, 10), vec![0, 10, 0]);
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_per_weight() {
        let nodes = vec![up(1, 4), up(1, 1), up(1, 3)];
        assert_eq!(
            counts(Algorithm::LeastConnections, &nodes, 30),
            vec![0, 30, 0]
        );
        // 4 in flight at weight 4 is as loaded as 1 at weight 1; 1 at weight 1 beats 3 at weight 1.
        let nodes = vec![up(4, 3), up(1, 1), up(1, 3)];
        assert_eq!(
            counts(Algorithm::LeastConnections, &nodes, 30),
            vec![30, 0, 0]
        );
    }

    #[test]
    fn least_connections_spreads_an_idle_cluster_evenly() {
        let nodes = vec![up(1, 0); 3];
        assert_eq!(
            counts(Algorithm::LeastConnections, &nodes, 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn round_robin_and_random_follow_the_weights() {
        let nodes = vec![up(1, 0), up(2, 0), up(1, 0)];
        assert_eq!(
            counts(Algorithm::RoundRobin, &nodes, 400),
            vec![100, 200, 100]
        );
        let c = counts(Algorithm::Random, &nodes, 4000);
        assert!(
            c[1] > 1700 && c[1] < 2300 && c[0] > 800 && c[2] > 800,
            "{c:?}"
        );
    }

    #[test]
    fn a_session_server_is_never_chosen_and_a_standby_is_the_backup() {
        let role = |r: NodeRole| NodeView {
            role: r,
            ..up(1, 0)
        };
        // web, rss, standby
        let mut nodes = vec![
            role(NodeRole::Web),
            role(NodeRole::Rss),
            role(NodeRole::Standby),
        ];
        for t in 0..30 {
            let new = choose(
                policy(Algorithm::RoundRobin, Failover::Rebalance),
                &nodes,
                attempt(None, &[]),
                draw(t, t),
            );
            assert_eq!(
                new,
                Some((0, Target::Balanced)),
                "new sessions go to the web node while it is up"
            );
        }
        // The web primary is down: its session goes to the standby, never to its bank member (the secondary).
        nodes[0].healthy = false;
        let pinned = Some(Pinned {
            primary: 0,
            secondary: Some(1),
        });
        for failover in [Failover::Rebalance, Failover::Secondary] {
            let got = choose(
                policy(Algorithm::RoundRobin, failover),
                &nodes,
                attempt(pinned, &[]),
                draw(1, 1),
            );
            assert_eq!(got, Some((2, Target::Balanced)), "{failover:?}");
        }
        // With no web node up, new sessions go to the standby; with neither, to nobody.
        let new = choose(
            policy(Algorithm::RoundRobin, Failover::Rebalance),
            &nodes,
            attempt(None, &[]),
            draw(2, 2),
        );
        assert_eq!(new, Some((2, Target::Balanced)));
        nodes[2].healthy = false;
        let none = choose(
            policy(Algorithm::RoundRobin, Failover::Rebalance),
            &nodes,
            attempt(None, &[]),
            draw(3, 3),
        );
        assert_eq!(
            none, None,
            "a session server takes no request even as the last node up"
        );
    }
}
