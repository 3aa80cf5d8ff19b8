//! The Layer-4 local director's choice (seed 004): the order in which the nodes are offered a new TCP
//! connection from one client address. Pure: the caller passes a snapshot of the nodes.
//!
//! Weighted rendezvous hashing over the client's address and each node's id: every node gets a score for the
//! client and the highest usable score wins. A node that goes down, drains or leaves takes only its own clients
//! with it (theirs move to their second-highest node, the same one for every connection of that client); no
//! other client moves, and a node that comes back gets exactly its old clients back. Nothing is learned or
//! stored, so any number of balancers agree without talking.
//!
//! Tiers as for new sessions at Layer 7: healthy `web` nodes that do not drain first, then standby nodes, then
//! draining ones (better a draining node than a refused connection); `rss` nodes never get a connection.

use std::net::IpAddr;

use node::config::NodeRole;

use crate::balance::NodeView;

/// The nodes to offer a connection from `client`, best first: indices into `nodes` (each with its id),
/// leaving out unhealthy and `rss` nodes. Empty when no node can take it.
pub fn order(client: IpAddr, nodes: &[(NodeView, u64)]) -> Vec<usize> {
    let key = client_key(client);
    let mut ranked: Vec<(u8, f64, usize)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, (v, id))| tier(v).map(|t| (t, score(key, *id, v.weight), i)))
        .collect();
    // Lower tier first, then higher score; equal scores (never in practice) by index, to stay deterministic.
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, i)| i).collect()
}

/// 0: web, 1: standby, 2: draining web, 3: draining standby; `None`: not offered at all.
fn tier(v: &NodeView) -> Option<u8> {
    if !v.healthy || !v.role.serves() || v.weight == 0 {
        return None;
    }
    let role = u8::from(v.role == NodeRole::Standby);
    Some(role + if v.drain { 2 } else { 0 })
}

/// One number per client address: an IPv4 client and its IPv4-mapped IPv6 form are the same client.
fn client_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)),
            None => {
                let b = u128::from(v6);
                mix((b >> 64) as u64, b as u64)
            }
        },
    }
}

/// Weighted rendezvous score: `weight / -ln(u)` for `u` uniform in (0, 1] drawn from the hash, which gives each
/// node a share of clients proportional to its weight.
fn score(client: u64, node: u64, weight: u32) -> f64 {
    // 53 bits make an exact f64; +1 keeps u away from 0, where ln diverges.
    let u = ((mix(client, node) >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let ln = -u.ln();
    if ln == 0.0 {
        return f64::INFINITY;
    }
    f64::from(weight) / ln
}

/// A 64-bit mix of two numbers (splitmix64's finaliser over their combination): fixed, so every balancer and
/// every release computes the same scores.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn web(weight: u32) -> NodeView {
        NodeView {
            healthy: true,
            drain: false,
            weight,
            in_flight: 0,
            role: NodeRole::Web,
        }
    }

    fn cluster(n: usize) -> Vec<(NodeView, u64)> {
        (0..n)
            .map(|i| (web(100), (1u64 << 50) + 7919 * i as u64))
            .collect()
    }

    fn clients(n: u32) -> impl Iterator<Item = IpAddr> {
        (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i * 7 + 1)))
    }

    fn first(client: IpAddr, nodes: &[(NodeView, u64)]) -> Option<usize> {
        order(client, nodes).first().copied()
    }

    #[test]
    fn a_client_always_gets_the_same_node_and_every_node_is_ranked() {
        let nodes = cluster(3);
        for c in clients(100) {
            let o = order(c, &nodes);
            assert_eq!(o.len(), 3);
            assert_eq!(order(c, &nodes), o);
        }
    }

    #[test]
    fn a_node_that_goes_down_moves_only_its_own_clients_and_each_to_its_second_choice() {
        let mut nodes = cluster(4);
        let before: Vec<Vec<usize>> = clients(5000).map(|c| order(c, &nodes)).collect();
        nodes[2].0.healthy = false;
        for (c, was) in clients(5000).zip(&before) {
            let now = first(c, &nodes).unwrap();
            if was[0] == 2 {
                assert_eq!(now, was[1], "a moved client goes to its runner-up");
            } else {
                assert_eq!(now, was[0], "{c} did not belong to the dead node and moved");
            }
        }
        nodes[2].0.healthy = true;
        for (c, was) in clients(5000).zip(&before) {
            assert_eq!(first(c, &nodes).unwrap(), was[0], "{c} is back home");
        }
    }

    #[test]
    fn clients_spread_in_proportion_to_weight() {
        let mut nodes = cluster(3);
        nodes[0].0.weight = 200;
        let mut count = [0u32; 3];
        for c in clients(20_000) {
            count[first(c, &nodes).unwrap()] += 1;
        }
        // Expected 10 000, 5 000, 5 000; a fixed hash, so a fixed outcome, with room for its deviation.
        assert!((9_400..=10_600).contains(&count[0]), "{count:?}");
        assert!((4_500..=5_500).contains(&count[1]), "{count:?}");
        assert!((4_500..=5_500).contains(&count[2]), "{count:?}");
    }

    #[test]
    fn draining_and_standby_nodes_come_after_web_nodes_and_session_servers_never() {
        let mut nodes = cluster(4);
        nodes[0].0.drain = true;
        nodes[1].0.role = NodeRole::Standby;
        nodes[2].0.role = NodeRole::Rss;
        for c in clients(200) {
            assert_eq!(order(c, &nodes), [3, 1, 0]);
        }
        nodes[3].0.healthy = false;
        for c in clients(200) {
            assert_eq!(order(c, &nodes), [1, 0], "standby before draining");
        }
        nodes[1].0.healthy = false;
        for c in clients(200) {
            assert_eq!(order(c, &nodes), [0], "a draining node rather than none");
        }
        nodes[0].0.healthy = false;
        assert!(order(IpAddr::V4(Ipv4Addr::LOCALHOST), &nodes).is_empty());
    }

    #[test]
    fn an_ipv4_client_and_its_mapped_ipv6_form_are_one_client() {
        let nodes = cluster(5);
        for c in clients(300) {
            let IpAddr::V4(v4) = c else { unreachable!() };
            assert_eq!(
                order(c, &nodes),
                order(IpAddr::V6(v4.to_ipv6_mapped()), &nodes)
            );
        }
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(order(v6, &nodes).len(), 5);
    }
}
