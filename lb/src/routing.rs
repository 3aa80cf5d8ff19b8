//! From `Cookie` headers to the nodes a request is pinned to. Pure and stateless: two balancers holding the same
//! cluster file route every cookie identically, because the segment alone names the pair (DESIGN §3).

use node::cookie::CookieCodec;
use node::ids::{NodeId, PairTable, SessionId};

use crate::balance::Pinned;

/// Where the routing cookie sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The pair, as indices into the node list; `None` for a new session (no cookie, an invalid cookie, or a
    /// segment that names no pair of the current cluster).
    pub pinned: Option<Pinned>,
    /// The session a verified cookie names, pinned or not; only ever logged as its hash.
    pub session: Option<SessionId>,
}

impl Route {
    /// A request that belongs to no known session.
    pub const FRESH: Route = Route {
        pinned: None,
        session: None,
    };
}

/// Decodes the first valid routing cookie among `cookie_headers` (every `Cookie` header counts) and resolves
/// its segment with one hash lookup; `index_of` maps a node id to its index in the node list.
pub fn route<'a>(
    codec: &CookieCodec,
    pairs: &PairTable,
    index_of: impl Fn(NodeId) -> Option<usize>,
    cookie_headers: impl IntoIterator<Item = &'a [u8]>,
) -> Route {
    let Some(cookie) = codec.find(cookie_headers) else {
        return Route::FRESH;
    };
    let pinned = pairs.decode(cookie.segment).and_then(|pair| {
        Some(Pinned {
            primary: index_of(pair.primary)?,
            secondary: pair.secondary.and_then(&index_of),
        })
    });
    Route {
        pinned,
        session: Some(cookie.session),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::config::{CookieConfig, CookieKey};
    use node::cookie::RoutingCookie;
    use node::ids::Pair;

    fn setup() -> (CookieCodec, PairTable, Vec<NodeId>) {
        let ids: Vec<NodeId> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| NodeId::derive(n, "routing-test-secret"))
            .collect();
        let codec = CookieCodec::new(&CookieConfig {
            name: "SRVSESSION".into(),
            current: CookieKey {
                id: 1,
                secret: "routing-test-secret".into(),
            },
            previous: vec![],
        });
        (codec, PairTable::build(ids.clone()).unwrap(), ids)
    }

    fn header(codec: &CookieCodec, segment: u64) -> String {
        let c = RoutingCookie {
            session: SessionId(7),
            segment,
            version: 3,
        };
        format!("theme=dark; SRVSESSION={}", codec.encode(&c))
    }

    fn run(codec: &CookieCodec, pairs: &PairTable, ids: &[NodeId], headers: &[&str]) -> Route {
        let index_of = |id: NodeId| ids.iter().position(|&x| x == id);
        route(codec, pairs, index_of, headers.iter().map(|h| h.as_bytes()))
    }

    #[test]
    fn every_pair_routes_to_its_primary_with_its_secondary() {
        let (codec, pairs, ids) = setup();
        for p in 0..3 {
            for s in 0..3 {
                let pair = Pair {
                    primary: ids[p],
                    secondary: (p != s).then_some(ids[s]),
                };
                let h = header(&codec, pair.segment());
                let r = run(&codec, &pairs, &ids, &[&h]);
                assert_eq!(
                    r.pinned,
                    Some(Pinned {
                        primary: p,
                        secondary: (p != s).then_some(s)
                    })
                );
                assert_eq!(r.session, Some(SessionId(7)));
            }
        }
    }

    #[test]
    fn missing_forged_and_garbage_cookies_route_as_new_sessions() {
        let (codec, pairs, ids) = setup();
        let good = header(
            &codec,
            Pair {
                primary: ids[0],
                secondary: Some(ids[1]),
            }
            .segment(),
        );
        let mut forged = good.clone().into_bytes();
        let i = forged.len() - 10;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let truncated = &good[..good.len() - 5];
        let oversize = format!("SRVSESSION={}", "x".repeat(10_000));
        for h in [
            "",
            "SRVSESSION=",
            "SRVSESSION=%%%",
            "a=b",
            truncated,
            &oversize,
            &forged,
        ] {
            assert_eq!(run(&codec, &pairs, &ids, &[h]), Route::FRESH, "{h}");
        }
        assert_eq!(run(&codec, &pairs, &ids, &[]), Route::FRESH);
    }

    #[test]
    fn a_valid_cookie_for_an_unknown_pair_is_a_new_session_but_keeps_its_id_for_logs() {
        let (codec, pairs, ids) = setup();
        let h = header(&codec, 12345 << 1);
        let r = run(&codec, &pairs, &ids, &[&h]);
        assert_eq!(r.pinned, None);
        assert_eq!(r.session, Some(SessionId(7)));
    }

    #[test]
    fn a_removed_secondary_leaves_the_primary_pinned() {
        let (codec, pairs, ids) = setup();
        let h = header(
            &codec,
            Pair {
                primary: ids[2],
                secondary: Some(ids[0]),
            }
            .segment(),
        );
        let only_n3 = |id: NodeId| (id == ids[2]).then_some(0);
        let r = route(&codec, &pairs, only_n3, [h.as_bytes()]);
        assert_eq!(
            r.pinned,
            Some(Pinned {
                primary: 0,
                secondary: None
            })
        );
    }

    #[test]
    fn the_cookie_may_come_in_any_of_several_headers() {
        let (codec, pairs, ids) = setup();
        let h = header(
            &codec,
            Pair {
                primary: ids[1],
                secondary: None,
            }
            .segment(),
        );
        let r = run(&codec, &pairs, &ids, &["a=1", "SRVSESSION=forged", &h]);
        assert_eq!(
            r.pinned,
            Some(Pinned {
                primary: 1,
                secondary: None
            })
        );
    }
}
