//! From `Cookie` headers to the nodes a request is pinned to. Pure and stateless: two balancers holding the same
//! cluster file route every cookie identically, because the segment alone names the pair (DESIGN §3).

use node::cookie::{CookieCodec, RoutingCookie};
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
    resolve(pairs, index_of, codec.find(cookie_headers))
}

/// The route of a verified cookie (from the `Cookie` header or the `[cookie] header` token); `None` routes
/// as a new session.
pub fn resolve(
    pairs: &PairTable,
    index_of: impl Fn(NodeId) -> Option<usize>,
    cookie: Option<RoutingCookie>,
) -> Route {
    let Some(cookie) = cookie else {
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

/// Remembered routes of whole `Cookie` header values, per thread: verifying a routing cookie (parse, base64, an
/// HMAC-SHA-256) is most of what the balancer adds to a request, and a client sends the same header until its
/// session changes version. Exact: an entry is the result [`route`] gave for exactly these bytes under exactly
/// this config generation, so a hit returns what a fresh verification would, and a forged cookie can only ever
/// be cached as the invalid cookie it is.
///
/// Direct-mapped, [`RouteCache::SLOTS`] entries of at most [`RouteCache::MAX_HEADER`] bytes each (under 1.5 MB
/// per proxy thread when full); a miss costs one allocation more than no cache (the copy of the header kept).
pub struct RouteCache {
    hasher: ahash::RandomState,
    slots: Vec<Option<Entry>>,
}

struct Entry {
    generation: u64,
    hash: u64,
    header: Box<[u8]>,
    route: Route,
}

impl RouteCache {
    /// Entries per thread.
    pub const SLOTS: usize = 4096;
    /// Longer headers are routed without the cache.
    pub const MAX_HEADER: usize = 256;

    /// An empty cache; its slots are allocated on first use.
    pub fn new() -> RouteCache {
        RouteCache {
            hasher: ahash::RandomState::new(),
            slots: Vec::new(),
        }
    }

    /// The route of the single `Cookie` header `header` under config `generation` (unique per process, see
    /// [`next_generation`]), computed by `compute` when it is not remembered.
    pub fn get_or_route(
        &mut self,
        generation: u64,
        header: &[u8],
        compute: impl FnOnce() -> Route,
    ) -> Route {
        if header.len() > Self::MAX_HEADER {
            return compute();
        }
        if self.slots.is_empty() {
            self.slots.resize_with(Self::SLOTS, || None);
        }
        let hash = self.hasher.hash_one(header);
        let slot = &mut self.slots[hash as usize % Self::SLOTS];
        if let Some(e) = slot {
            if e.hash == hash && e.generation == generation && *e.header == *header {
                return e.route;
            }
        }
        let route = compute();
        *slot = Some(Entry {
            generation,
            hash,
            header: header.into(),
            route,
        });
        route
    }
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache::new()
    }
}

/// A number no other config generation of this process has had, to key [`RouteCache`] entries with.
pub fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
            header: None,
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

    /// The cookie header of pair (`ids[p]`, `ids[s]`).
    fn pair_header(codec: &CookieCodec, ids: &[NodeId], p: usize, s: Option<usize>) -> String {
        let pair = Pair {
            primary: ids[p],
            secondary: s.map(|s| ids[s]),
        };
        header(codec, pair.segment())
    }

    fn pinned(primary: usize, secondary: Option<usize>) -> Option<Pinned> {
        Some(Pinned { primary, secondary })
    }

    /// `h` with byte `i` changed.
    fn flip(h: &str, i: usize) -> String {
        let mut b = h.as_bytes().to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
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
                let secondary = (p != s).then_some(s);
                let h = pair_header(&codec, &ids, p, secondary);
                let r = run(&codec, &pairs, &ids, &[&h]);
                assert_eq!(r.pinned, pinned(p, secondary));
                assert_eq!(r.session, Some(SessionId(7)));
            }
        }
    }

    #[test]
    fn missing_forged_and_garbage_cookies_route_as_new_sessions() {
        let (codec, pairs, ids) = setup();
        let good = pair_header(&codec, &ids, 0, Some(1));
        let forged = flip(&good, good.len() - 10);
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
        let h = pair_header(&codec, &ids, 2, Some(0));
        let only_n3 = |id: NodeId| (id == ids[2]).then_some(0);
        let r = route(&codec, &pairs, only_n3, [h.as_bytes()]);
        assert_eq!(r.pinned, pinned(0, None));
    }

    #[test]
    fn the_route_cache_answers_as_verification_does_and_never_across_generations() {
        let (codec, pairs, ids) = setup();
        let good = pair_header(&codec, &ids, 1, Some(2));
        let mut cache = RouteCache::new();
        let computed = std::cell::Cell::new(0);
        let mut routed = |generation: u64, h: &str| {
            cache.get_or_route(generation, h.as_bytes(), || {
                computed.set(computed.get() + 1);
                run(&codec, &pairs, &ids, &[h])
            })
        };
        let first = routed(1, &good);
        assert_eq!(first, run(&codec, &pairs, &ids, &[&good]));
        assert_eq!(routed(1, &good), first);
        assert_eq!(computed.get(), 1, "the second lookup is a hit");
        // The same bytes under another generation are verified again.
        assert_eq!(routed(2, &good), first);
        assert_eq!(computed.get(), 2);
        // A one-byte change is a different header: verified, and found invalid.
        let forged = flip(&good, good.len() - 1);
        assert_eq!(routed(2, &forged), Route::FRESH);
        assert_eq!(routed(2, &forged), Route::FRESH);
        assert_eq!(computed.get(), 3);
        // Too long to keep: always computed.
        let long = format!("{good}; pad={}", "x".repeat(RouteCache::MAX_HEADER));
        assert_eq!(routed(2, &long), first);
        assert_eq!(routed(2, &long), first);
        assert_eq!(computed.get(), 5);
    }

    #[test]
    fn the_cookie_may_come_in_any_of_several_headers() {
        let (codec, pairs, ids) = setup();
        let h = pair_header(&codec, &ids, 1, None);
        let r = run(&codec, &pairs, &ids, &["a=1", "SRVSESSION=forged", &h]);
        assert_eq!(r.pinned, pinned(1, None));
    }
}
