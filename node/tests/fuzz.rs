//! Property tests (issue 12): the three parsers that read bytes from outside the process — the replication
//! frame codec (`wire`), the routing cookie codec (`cookie`) and the cluster file parser (`config`) — given
//! arbitrary input, each gives a value or an error, never a panic; and what the codecs encode, they decode.
//!
//! Every property runs [`CASES`] cases by default, so the whole file takes a few seconds in a debug build;
//! `PROPTEST_CASES=100000 cargo test -p node --test fuzz` runs longer. For open-ended coverage-guided runs, the
//! `cargo fuzz` targets in `node/fuzz/` feed the same three parsers (see the README).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::{BufMut, BytesMut};
use node::config::{ClusterConfig, ConfigError, CookieConfig, CookieKey, Secret};
use node::cookie::{CookieCodec, CookieError, RoutingCookie, MAX_VALUE_LEN};
use node::ids::{NodeId, SessionId, MAX_NODE_ID, MIN_NODE_ID};
use node::session::{Delta, Outcome, RecordedReply, Session};
use node::wire::{
    check, encode, parse, Body, Envelope, FrameError, Item, ItemResult, PullResult, MAX_FRAME,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;

/// [`CASES`] cases, or `PROPTEST_CASES` when it is set. (`ProptestConfig::with_cases` alone would override the
/// environment variable, not the other way round.)
fn cases(default: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default;
    }
    config
}

// ---------------------------------------------------------------------------------------------------------------
// The largest single allocation a closure makes on this thread, to show that a parser does not allocate what a
// header merely announces.

struct TrackingAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while a thread's locals are torn down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

/// `f`'s result and the largest allocation, in bytes, it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------------------------
// Strategies for valid replication messages.

fn node_id() -> impl Strategy<Value = NodeId> {
    (MIN_NODE_ID..=MAX_NODE_ID).prop_map(|v| NodeId::new(v).expect("in range"))
}

fn session_id() -> impl Strategy<Value = SessionId> {
    any::<u128>().prop_map(SessionId)
}

/// JSON without floats: a float's text does not always parse back to the same bits, and session data is
/// carried as JSON text.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((".{0,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (any::<i64>(), any::<u64>())
            .prop_map(|(value, version)| Outcome::Incremented { value, version }),
        Just(Outcome::Patched),
        (
            any::<u16>(),
            vec(("[a-z-]{0,12}", vec(any::<u8>(), 0..16)), 0..4),
            option::of(vec(any::<u8>(), 0..64)),
        )
            .prop_map(|(status, headers, body)| Outcome::Replied(Box::new(
                RecordedReply {
                    status,
                    headers,
                    body,
                }
            ))),
    ]
}

fn session() -> impl Strategy<Value = Session> {
    (
        (session_id(), any::<u64>(), any::<u64>()),
        vec((".{0,6}", json_value()), 0..4),
        (node_id(), option::of(node_id()), option::of(node_id())),
        vec((any::<u64>(), outcome()), 0..3),
    )
        .prop_map(
            |((id, version, epoch), data, (primary, secondary, also), outcomes)| {
                let mut s = Session::new(id, primary, secondary);
                s.version = version;
                s.epoch = epoch;
                s.data = data.into_iter().collect();
                s.also = also;
                s.outcomes = outcomes.into();
                s
            },
        )
}

fn delta() -> impl Strategy<Value = Delta> {
    (
        any::<u64>(),
        json_value(),
        option::of((any::<u64>(), outcome())),
    )
        .prop_map(|(version, patch, outcome)| Delta {
            version,
            patch: patch.to_string(),
            outcome,
        })
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        (session_id(), any::<u64>(), any::<u64>(), vec(delta(), 0..3)).prop_map(
            |(sid, epoch, base, deltas)| Item::Deltas {
                sid,
                epoch,
                base,
                deltas
            }
        ),
        session().prop_map(|session| Item::Full { session }),
        (session_id(), any::<u64>(), any::<u64>()).prop_map(|(sid, epoch, version)| {
            Item::Validate {
                sid,
                epoch,
                version,
            }
        }),
        (session_id(), any::<u64>()).prop_map(|(sid, epoch)| Item::Remove { sid, epoch }),
        (session_id(), any::<u64>(), any::<u64>()).prop_map(|(sid, epoch, version)| Item::Drop {
            sid,
            epoch,
            version
        }),
    ]
}

fn item_result() -> impl Strategy<Value = ItemResult> {
    prop_oneof![
        Just(ItemResult::Applied),
        Just(ItemResult::NeedFull),
        (node_id(), any::<u64>()).prop_map(|(owner, epoch)| ItemResult::Fenced { owner, epoch }),
        any::<u64>().prop_map(|epoch| ItemResult::Ended { epoch }),
    ]
}

fn pull_result() -> impl Strategy<Value = PullResult> {
    prop_oneof![
        session().prop_map(|session| PullResult::Granted { session }),
        node_id().prop_map(|owner| PullResult::Redirect { owner }),
        Just(PullResult::NotFound),
        Just(PullResult::Ended),
        Just(PullResult::Busy),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (".{0,16}", any::<[u8; 32]>()).prop_map(|(node, nonce)| Body::Hello { node, nonce }),
        (any::<[u8; 32]>(), vec(any::<[u8; 32]>(), 0..3))
            .prop_map(|(nonce, proofs)| Body::Challenge { nonce, proofs }),
        any::<[u8; 32]>().prop_map(|proof| Body::Proof { proof }),
        Just(Body::Welcome),
        ".{0,32}".prop_map(|reason| Body::Refused { reason }),
        any::<u64>().prop_map(|sessions| Body::Ping { sessions }),
        (any::<u64>(), any::<u64>()).prop_map(|(sessions, incarnation)| Body::Pong {
            sessions,
            incarnation
        }),
        (node_id(), vec(item(), 0..4)).prop_map(|(from, items)| Body::Batch { from, items }),
        vec(item_result(), 0..8).prop_map(|results| Body::BatchReply { results }),
        (session_id(), node_id(), any::<bool>(), any::<u64>()).prop_map(
            |(sid, requester, owner_unreachable, min_version)| Body::Pull {
                sid,
                requester,
                owner_unreachable,
                min_version,
            }
        ),
        pull_result().prop_map(|result| Body::PullReply { result }),
        (session_id(), node_id()).prop_map(|(sid, from)| Body::Adopt { sid, from }),
        any::<bool>().prop_map(|taken| Body::Adopted { taken }),
        ".{0,32}".prop_map(|message| Body::Error { message }),
    ]
}

/// Fails to compile when `Body` gains a variant: add it to [`body`] above, then here.
fn has_a_strategy(b: &Body) -> bool {
    match b {
        Body::Hello { .. }
        | Body::Challenge { .. }
        | Body::Proof { .. }
        | Body::Welcome
        | Body::Refused { .. }
        | Body::Ping { .. }
        | Body::Pong { .. }
        | Body::Batch { .. }
        | Body::BatchReply { .. }
        | Body::Pull { .. }
        | Body::PullReply { .. }
        | Body::Adopt { .. }
        | Body::Adopted { .. }
        | Body::Error { .. } => true,
    }
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (any::<u64>(), body()).prop_map(|(id, body)| Envelope { id, body })
}

fn framed(payload: &[u8], announced: u32) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(announced);
    buf.put_slice(payload);
    buf
}

/// Whatever `parse` makes of `buf`, checked against `check` and against what it consumed; a decoded envelope
/// must encode again and decode to itself.
fn parse_and_check(mut buf: BytesMut) -> Result<(), TestCaseError> {
    let before = buf.clone();
    let checked = check(&buf);
    let (parsed, largest) = largest_allocation(|| parse(&mut buf));
    match (&checked, parsed) {
        (Ok(None), Ok(None)) => prop_assert_eq!(&buf, &before, "nothing consumed"),
        (Ok(Some(n)), Ok(Some(env))) => {
            prop_assert_eq!(buf.len(), before.len() - n, "exactly one frame consumed");
            let mut again = BytesMut::new();
            encode(&env, &mut again);
            prop_assert_eq!(parse(&mut again), Ok(Some(env)));
            prop_assert!(again.is_empty());
        }
        (Ok(Some(_)), Err(FrameError::Malformed { .. })) => {}
        (Err(FrameError::TooLarge { len }), Err(FrameError::TooLarge { len: parsed_len })) => {
            prop_assert!(*len > MAX_FRAME);
            prop_assert_eq!(*len, parsed_len);
            prop_assert_eq!(
                &buf,
                &before,
                "an oversize frame is refused before it is taken"
            );
        }
        (checked, parsed) => {
            prop_assert!(false, "check said {checked:?} but parse said {parsed:?}");
        }
    }
    // The payloads here are at most a few hundred bytes: a decoder believing a count inside them must not
    // reserve much more (serde caps what it reserves ahead at 1 MiB).
    prop_assert!(
        largest <= 2 << 20,
        "parsing {} bytes allocated {largest} bytes at once",
        before.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(cases(CASES))]

    #[test]
    fn any_bytes_given_to_the_frame_parser_give_a_frame_more_bytes_needed_or_an_error_never_a_panic(
        bytes in vec(any::<u8>(), 0..512),
    ) {
        parse_and_check(BytesMut::from(&bytes[..]))?;
    }

    #[test]
    fn any_payload_behind_a_length_prefix_that_fits_decodes_or_is_refused_never_a_panic(
        payload in vec(any::<u8>(), 0..256),
        slack in -8i64..8,
    ) {
        let announced = (payload.len() as i64 + slack).max(0) as u32;
        parse_and_check(framed(&payload, announced))?;
    }

    #[test]
    fn a_valid_frame_with_bytes_changed_decodes_or_is_refused_never_a_panic(
        env in envelope(),
        changes in vec((any::<Index>(), any::<u8>()), 1..4),
        cut in option::of(any::<Index>()),
    ) {
        let mut buf = BytesMut::new();
        encode(&env, &mut buf);
        // Change payload bytes only, then fix the header to the (possibly shortened) payload: a wrong length is
        // the property above; this one reaches deep into the decoder.
        let mut payload = buf[4..].to_vec();
        for (at, byte) in changes {
            let i = at.index(payload.len());
            payload[i] = byte;
        }
        if let Some(cut) = cut {
            payload.truncate(cut.index(payload.len() + 1));
        }
        parse_and_check(framed(&payload, payload.len() as u32))?;
    }

    #[test]
    fn every_envelope_round_trips_through_encode_and_parse(env in envelope()) {
        prop_assert!(has_a_strategy(&env.body));
        let mut buf = BytesMut::new();
        encode(&env, &mut buf);
        prop_assert_eq!(check(&buf), Ok(Some(buf.len())));
        prop_assert_eq!(parse(&mut buf), Ok(Some(env)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frames_split_at_any_points_parse_only_once_whole_and_then_the_same(
        envs in vec(envelope(), 1..4),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        let mut wire = BytesMut::new();
        let mut ends = Vec::new();
        for e in &envs {
            encode(e, &mut wire);
            ends.push(wire.len());
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        cuts.extend([0, wire.len()]);
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for w in cuts.windows(2) {
            buf.extend_from_slice(&wire[w[0]..w[1]]);
            while let Some(env) = parse(&mut buf).expect("a valid stream never errs") {
                got.push(env);
            }
            let whole = ends.iter().filter(|&&end| end <= w[1]).count();
            prop_assert_eq!(got.len(), whole, "after {} bytes", w[1]);
        }
        prop_assert_eq!(got, envs);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn a_length_prefix_over_the_maximum_is_refused_without_allocating_it(
        len in (MAX_FRAME as u32 + 1)..=u32::MAX,
        rest in vec(any::<u8>(), 0..64),
    ) {
        let mut buf = framed(&rest, len);
        let before = buf.clone();
        let (checked, _) = largest_allocation(|| check(&buf));
        prop_assert_eq!(checked, Err(FrameError::TooLarge { len: len as usize }));
        let (parsed, largest) = largest_allocation(|| parse(&mut buf));
        prop_assert_eq!(parsed, Err(FrameError::TooLarge { len: len as usize }));
        prop_assert_eq!(&buf, &before);
        prop_assert!(largest < 1024, "refusing a {len}-byte header allocated {largest} bytes");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The routing cookie.

const SECRET: &str = "fuzz-secret-fuzz-secret-0123456789";

fn codec(id: u8, secret: &str, previous: Vec<CookieKey>) -> CookieCodec {
    CookieCodec::new(&CookieConfig {
        name: "SRVSESSION".into(),
        current: CookieKey {
            id,
            secret: Secret::new(secret),
        },
        previous,
        header: None,
    })
}

fn routing_cookie() -> impl Strategy<Value = RoutingCookie> {
    (session_id(), any::<u64>(), any::<u64>()).prop_map(|(session, segment, version)| {
        RoutingCookie {
            session,
            segment,
            version,
        }
    })
}

/// A character a cookie value might hold, or any other.
fn cookie_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::ranges(vec!['A'..='Z', 'a'..='z', '0'..='9', '-'..='-', '_'..='_'].into()),
        1 => any::<char>(),
    ]
}

/// One edit of a string: replace, insert or delete one character.
#[derive(Clone, Debug)]
enum Edit {
    Replace(Index, char),
    Insert(Index, char),
    Delete(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), cookie_char()).prop_map(|(at, c)| Edit::Replace(at, c)),
        1 => (any::<Index>(), cookie_char()).prop_map(|(at, c)| Edit::Insert(at, c)),
        1 => any::<Index>().prop_map(Edit::Delete),
    ]
}

fn apply(value: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = value.chars().collect();
    match *edit {
        Edit::Replace(at, c) => {
            let i = at.index(chars.len());
            chars[i] = c;
        }
        Edit::Insert(at, c) => chars.insert(at.index(chars.len() + 1), c),
        Edit::Delete(at) => {
            chars.remove(at.index(chars.len()));
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(cases(CASES))]

    #[test]
    fn any_string_given_to_the_cookie_decoder_is_refused_or_decoded_never_a_panic(
        value in prop_oneof![".*", "[A-Za-z0-9_-]{60,72}", "[A-Za-z0-9_=+/-]{0,140}"],
    ) {
        let codec = codec(1, SECRET, vec![]);
        match codec.decode(&value) {
            Err(CookieError::Oversize { len }) => prop_assert!(len > MAX_VALUE_LEN),
            Err(_) => {}
            // Unforgeable: no text made up here carries a valid MAC.
            Ok(c) => prop_assert!(false, "{value:?} decoded to {c:?}"),
        }
    }

    #[test]
    fn any_bytes_in_cookie_and_token_headers_are_skipped_or_read_never_a_panic(
        headers in vec(vec(any::<u8>(), 0..128), 0..4),
        text in "([A-Za-z0-9_ =;\"-]|SRVSESSION){0,100}",
    ) {
        let codec = codec(1, SECRET, vec![]);
        let mut all: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
        all.push(text.as_bytes());
        prop_assert_eq!(codec.find(all), None);
        for h in &headers {
            prop_assert_eq!(codec.find_token(h), None);
        }
        prop_assert_eq!(codec.find_token(text.as_bytes()), None);
    }

    #[test]
    fn every_routing_cookie_round_trips_through_encode_and_decode(
        c in routing_cookie(),
        key_id in any::<u8>(),
        secret in ".{16,40}",
    ) {
        let codec = codec(key_id, &secret, vec![]);
        let value = codec.encode(&c);
        prop_assert!(value.len() <= MAX_VALUE_LEN);
        prop_assert_eq!(codec.decode(&value), Ok(c));
        prop_assert_eq!(codec.find_token(format!(" {value}\t").as_bytes()), Some(c));
    }

    #[test]
    fn a_cookie_of_a_previous_key_still_decodes_and_one_of_another_secret_never_does(
        c in routing_cookie(),
        old_id in any::<u8>(),
        new_id in any::<u8>(),
        other in "[a-z]{16,24}",
    ) {
        prop_assume!(old_id != new_id && other != SECRET);
        let old = codec(old_id, SECRET, vec![]);
        let value = old.encode(&c);
        let previous = vec![CookieKey { id: old_id, secret: Secret::new(SECRET) }];
        prop_assert_eq!(codec(new_id, "a-new-secret-0123456789", previous).decode(&value), Ok(c));
        prop_assert_eq!(codec(old_id, &other, vec![]).decode(&value), Err(CookieError::BadMac));
        prop_assert_eq!(
            codec(new_id, SECRET, vec![]).decode(&value),
            Err(CookieError::UnknownKey { key_id: old_id })
        );
    }

    #[test]
    fn any_one_character_edit_of_a_valid_cookie_is_refused_or_decodes_to_the_same_cookie(
        c in routing_cookie(),
        edit in edit(),
    ) {
        let codec = codec(1, SECRET, vec![]);
        let value = codec.encode(&c);
        let edited = apply(&value, &edit);
        match codec.decode(&edited) {
            Err(_) => {}
            Ok(got) => {
                prop_assert_eq!(got, c, "{:?} -> {:?} names another session", value, edited);
            }
        }
    }

    #[test]
    fn a_valid_cookie_is_found_among_arbitrary_other_cookie_headers(
        c in routing_cookie(),
        junk in vec(vec(any::<u8>(), 0..96), 0..3),
        before in "([a-z]{1,6}=[A-Za-z0-9]{0,8}; ){0,3}",
    ) {
        let codec = codec(1, SECRET, vec![]);
        let header = format!("{before}SRVSESSION={}", codec.encode(&c));
        let mut all: Vec<&[u8]> = junk.iter().map(Vec::as_slice).collect();
        all.push(header.as_bytes());
        prop_assert_eq!(codec.find(all), Some(c));
    }
}

#[test]
fn the_one_character_edit_property_also_holds_for_base64_decoding_itself() {
    // Sanity of the property above: the value is 67 characters of unpadded base64url carrying 50 bytes, and
    // its last character's 2 spare bits must be zero, so no edit gives the same bytes back.
    let codec = codec(1, SECRET, vec![]);
    let value = codec.encode(&RoutingCookie {
        session: SessionId(7),
        segment: 8,
        version: 9,
    });
    assert_eq!(value.len(), 67);
    assert_eq!(URL_SAFE_NO_PAD.decode(&value).map(|r| r.len()), Ok(50));
    let mut last_changed = value.clone();
    let last = last_changed.pop().expect("non-empty");
    for c in ('A'..='Z')
        .chain('a'..='z')
        .chain('0'..='9')
        .chain(['-', '_'])
    {
        if c != last {
            assert!(codec.decode(&format!("{last_changed}{c}")).is_err(), "{c}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The cluster file.

static SHIPPED: [(&str, &str); 4] = [
    ("config/local.toml", include_str!("../../config/local.toml")),
    (
        "config/sidecar.toml",
        include_str!("../../config/sidecar.toml"),
    ),
    ("config/redis.toml", include_str!("../../config/redis.toml")),
    ("config/rss.toml", include_str!("../../config/rss.toml")),
];

static TABLES: [&str; 14] = [
    "[cluster]",
    "[cookie]",
    "[[cookie.previous_keys]]",
    "[lb]",
    "[lb.health]",
    "[lb.limits]",
    "[node]",
    "[replication]",
    "[replication.batch]",
    "[replication.bank]",
    "[session]",
    "[sidecar]",
    "[[nodes]]",
    "[nodes]",
];

static KEYS: [&str; 52] = [
    "secret",
    "name",
    "host_prefix",
    "key_id",
    "previous_keys",
    "header",
    "id",
    "listen",
    "admin",
    "algorithm",
    "failover",
    "health",
    "limits",
    "threads",
    "grace_period_s",
    "interval_ms",
    "timeout_ms",
    "fall",
    "rise",
    "max_headers",
    "max_header_bytes",
    "header_timeout_ms",
    "max_body_bytes",
    "connect_timeout_ms",
    "read_timeout_ms",
    "expose_node",
    "log_format",
    "upstream",
    "mode",
    "topology",
    "heartbeat_ms",
    "peer_timeout_ms",
    "lease_ms",
    "copies",
    "min_copies",
    "batch",
    "bank",
    "redis",
    "kind",
    "master",
    "wait_replicas",
    "max_updates",
    "max_delay_ms",
    "idle_timeout_s",
    "max_session_bytes",
    "session_header_bytes",
    "replay_body_bytes",
    "buffer_body_bytes",
    "http",
    "repl",
    "machine",
    "zone",
];

static MORE_KEYS: [&str; 8] = [
    "weight",
    "drain",
    "secondary",
    "role",
    "group",
    "lb.health.fall",
    "replication.bank.redis",
    "nodes",
];

/// Values a cluster file's keys take, right or wrong for any one key.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("0"),
            Just("1"),
            Just("2"),
            Just("-1"),
            Just("255"),
            Just("256"),
            Just("1000"),
            Just("4294967295"),
            Just("4294967296"),
            Just("9223372036854775807"),
            Just("-9223372036854775808"),
            Just("18446744073709551615"),
            Just("1.5"),
            Just("nan"),
            Just("-inf"),
            Just("1e400"),
            Just("0x10"),
            Just("1_000"),
            Just("true"),
            Just("false"),
            Just("1979-05-27T07:32:00Z"),
            Just("[]"),
            Just("{}"),
            Just("[1, \"a\"]"),
            Just("{ a = 1 }"),
            Just("{ id = 2, secret = \"another-secret-0123456789\" }"),
            Just("[{ id = 2 }]"),
        ]
        .prop_map(str::to_string),
        prop_oneof![
            Just(""),
            Just("127.0.0.1:0"),
            Just("127.0.0.1:9001"),
            Just("127.0.0.1:65536"),
            Just("[::1]:9001"),
            Just("0.0.0.0:1"),
            Just("http://127.0.0.1:3001"),
            Just("https://127.0.0.1:3001"),
            Just("redis://"),
            Just("redis://127.0.0.1:6379"),
            Just("redis://é"),
            Just("redis:/"),
            Just("__Host-x"),
            Just("SRVSESSION"),
            Just("x-session-token"),
            Just("X-Session-Token"),
            Just("host"),
            Just("n1"),
            Just("n2"),
            Just("local-dev-secret-change-me-0123456789"),
            Just("short"),
            Just("sync"),
            Just("async"),
            Just("pair"),
            Just("rss"),
            Just("broadcast"),
            Just("sentinel"),
            Just("cluster"),
            Just("standby"),
            Just("web"),
            Just("json"),
            Just("round_robin"),
            Just("secondary"),
        ]
        .prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        "[^'\n\r]{0,24}".prop_map(|s| format!("'{s}'")),
        vec("\"redis://[a-z0-9.:@/]{0,16}\"", 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
}

fn toml_key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(&KEYS[..]).prop_map(str::to_string),
        2 => proptest::sample::select(&MORE_KEYS[..]).prop_map(str::to_string),
        1 => "[a-z_.]{1,12}",
    ]
}

/// A line of a cluster file: a table header, `key = value`, a comment, or noise.
fn toml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(&TABLES[..]).prop_map(str::to_string),
        8 => (toml_key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "#[^\n\r]{0,10}",
        1 => "[\\[\\]{}=\"', .a-z0-9]{0,12}",
    ]
}

/// What a cluster file key holds, so that a generated file gets past the TOML types to the checks of values.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// An integer from 0 to this (more often small), now and then any other.
    Int(i64),
    Bool,
    /// One of these words, now and then any other.
    Word(&'static [&'static str]),
    Str,
    Strs,
    /// An `ip:port`, from a few ports so that some collide.
    Addr,
    /// A node name, from a few so that some collide.
    Name,
}

use Kind::{Addr as A, Bool as B, Name as N, Str as S, Strs as L, Word as W};

const U8: Kind = Kind::Int(u8::MAX as i64);
const U32: Kind = Kind::Int(u32::MAX as i64);
const U64: Kind = Kind::Int(i64::MAX);
const ALGORITHM: Kind = W(&["least_connections", "round_robin", "random"]);
const FAILOVER: Kind = W(&["rebalance", "secondary"]);
const LOG_FORMAT: Kind = W(&["text", "json"]);
const MODE: Kind = W(&["sync", "async"]);
const TOPOLOGY: Kind = W(&["pair", "rss", "broadcast"]);
const BANK_KIND: Kind = W(&["server", "cluster", "sentinel"]);
const ROLE: Kind = W(&["web", "rss", "standby"]);

/// Every table of the cluster file: its header, the keys a valid file must have (each left out now and then),
/// and the other keys.
type Shape = (
    &'static str,
    &'static [(&'static str, Kind)],
    &'static [(&'static str, Kind)],
);

static OTHER_TABLES: [Shape; 10] = [
    (
        "[cookie]",
        &[],
        &[
            ("name", S),
            ("host_prefix", B),
            ("key_id", U8),
            ("header", S),
        ],
    ),
    (
        "[[cookie.previous_keys]]",
        &[("id", U8), ("secret", S)],
        &[],
    ),
    (
        "[lb.health]",
        &[],
        &[
            ("interval_ms", U64),
            ("timeout_ms", U64),
            ("fall", U32),
            ("rise", U32),
        ],
    ),
    (
        "[lb.limits]",
        &[],
        &[
            ("max_headers", U64),
            ("max_header_bytes", U64),
            ("header_timeout_ms", U64),
            ("max_body_bytes", U64),
            ("connect_timeout_ms", U64),
            ("read_timeout_ms", U64),
        ],
    ),
    (
        "[node]",
        &[],
        &[
            ("expose_node", B),
            ("max_body_bytes", U64),
            ("log_format", LOG_FORMAT),
            ("grace_period_s", U64),
            ("upstream", S),
        ],
    ),
    (
        "[replication]",
        &[],
        &[
            ("mode", MODE),
            ("topology", TOPOLOGY),
            ("heartbeat_ms", U64),
            ("peer_timeout_ms", U64),
            ("lease_ms", U64),
            ("copies", U64),
            ("min_copies", U64),
        ],
    ),
    (
        "[replication.batch]",
        &[],
        &[("max_updates", U64), ("max_delay_ms", U64)],
    ),
    (
        "[replication.bank]",
        &[("redis", L)],
        &[
            ("kind", BANK_KIND),
            ("master", S),
            ("timeout_ms", U64),
            ("wait_replicas", U32),
        ],
    ),
    (
        "[session]",
        &[],
        &[("idle_timeout_s", U64), ("max_session_bytes", U64)],
    ),
    (
        "[sidecar]",
        &[],
        &[
            ("session_header_bytes", U64),
            ("replay_body_bytes", U64),
            ("buffer_body_bytes", U64),
            ("connect_timeout_ms", U64),
            ("read_timeout_ms", U64),
        ],
    ),
];

static LB: Shape = (
    "[lb]",
    &[("listen", A), ("admin", A)],
    &[
        ("algorithm", ALGORITHM),
        ("failover", FAILOVER),
        ("threads", U64),
        ("grace_period_s", U64),
    ],
);

static NODES: Shape = (
    "[[nodes]]",
    &[("name", N), ("http", A), ("repl", A)],
    &[
        ("machine", S),
        ("zone", S),
        ("id", U64),
        ("weight", U32),
        ("drain", B),
        ("secondary", N),
        ("upstream", S),
        ("role", ROLE),
        ("group", S),
    ],
);

static WORDS: [&str; 28] = [
    "",
    "z1",
    "g1",
    "http://127.0.0.1:3001",
    "redis://127.0.0.1:6379",
    "redis://",
    "SRVSESSION",
    "__Host-s",
    "x-session-token",
    "x-lb-request-id",
    "local-dev-secret-change-me-0123456789",
    "least_connections",
    "round_robin",
    "random",
    "rebalance",
    "secondary",
    "sync",
    "async",
    "pair",
    "rss",
    "broadcast",
    "server",
    "cluster",
    "sentinel",
    "web",
    "standby",
    "text",
    "json",
];

fn typed_value(kind: Kind) -> BoxedStrategy<String> {
    let word = prop_oneof![
        4 => proptest::sample::select(&WORDS[..]).prop_map(str::to_string),
        1 => "[a-zA-Z0-9_.:/@-]{0,20}",
    ];
    match kind {
        Kind::Int(max) => prop_oneof![
            10 => 0..=max.min(3),
            10 => 0..=max.min(100_000),
            3 => Just(max),
            3 => (MIN_NODE_ID as i64)..=(MAX_NODE_ID as i64),
            1 => any::<i64>(),
        ]
        .prop_map(|n| n.to_string())
        .boxed(),
        Kind::Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        Kind::Word(words) => prop_oneof![
            9 => proptest::sample::select(words).prop_map(|w| format!("{w:?}")),
            1 => word.prop_map(|w| format!("{w:?}")),
        ]
        .boxed(),
        Kind::Str => word.prop_map(|w| format!("{w:?}")).boxed(),
        Kind::Strs => vec(word, 0..3).prop_map(|ws| format!("{ws:?}")).boxed(),
        Kind::Addr => prop_oneof![
            8 => (9000u16..9012).prop_map(|p| format!("\"127.0.0.1:{p}\"")),
            1 => Just("\"[::1]:0\"".to_string()),
            1 => word.prop_map(|w| format!("{w:?}")),
        ]
        .boxed(),
        Kind::Name => prop_oneof![
            8 => (1u8..6).prop_map(|n| format!("\"n{n}\"")),
            1 => word.prop_map(|w| format!("{w:?}")),
        ]
        .boxed(),
    }
}

/// A table with its required keys (each now and then left out) and some of its other keys, every value of its
/// key's type.
fn typed_table(shape: &'static Shape) -> impl Strategy<Value = String> {
    let (header, required, other) = *shape;
    let line = |&(key, kind): &(&'static str, Kind)| {
        typed_value(kind).prop_map(move |v| format!("{key} = {v}"))
    };
    let required: Vec<_> = required
        .iter()
        .map(|k| option::weighted(0.9, line(k)))
        .collect();
    let other = proptest::sample::subsequence(other.to_vec(), 0..=other.len())
        .prop_flat_map(move |keys| keys.iter().map(line).collect::<Vec<_>>());
    (required, other).prop_map(move |(required, other)| {
        let lines: Vec<String> = required.into_iter().flatten().chain(other).collect();
        format!("{header}\n{}\n", lines.join("\n"))
    })
}

/// A whole file: a secret (usually good), `[lb]` (usually), some of the other tables, and some nodes.
fn typed_file() -> impl Strategy<Value = String> {
    let secret = option::weighted(
        0.95,
        prop_oneof![
            4 => Just("\"local-dev-secret-change-me-0123456789\"".to_string()),
            1 => typed_value(Kind::Str),
        ],
    );
    let tables = proptest::sample::subsequence(
        (0..OTHER_TABLES.len()).collect::<Vec<_>>(),
        0..=OTHER_TABLES.len(),
    )
    .prop_flat_map(|picked| {
        picked
            .into_iter()
            .map(|i| typed_table(&OTHER_TABLES[i]))
            .collect::<Vec<_>>()
    });
    let lb = option::weighted(0.95, typed_table(&LB));
    (secret, lb, tables, vec(typed_table(&NODES), 0..5)).prop_map(|(secret, lb, tables, nodes)| {
        let cluster = secret.map_or(String::new(), |s| format!("[cluster]\nsecret = {s}\n"));
        cluster + &lb.unwrap_or_default() + &tables.concat() + &nodes.concat()
    })
}

/// One change to a file's lines.
#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index, Index),
    SwapLines(Index, Index),
    InsertLine(Index, String),
    /// Replace the n-th run of digits in the file with another number (or not-quite-number).
    ChangeNumber(Index, String),
    /// Replace what follows the `=` of a `key = value` line.
    ChangeValue(Index, String),
    /// Cut the file at a character.
    Truncate(Index),
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..70_000).prop_map(|n| n.to_string()),
        prop_oneof![
            Just("0"),
            Just("-0"),
            Just("00"),
            Just("1.0"),
            Just("1e3"),
            Just("9223372036854775808"),
            Just("99999999999999999999999"),
            Just("1_0"),
            Just(""),
        ]
        .prop_map(str::to_string),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::DuplicateLine(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        2 => (any::<Index>(), toml_line()).prop_map(|(a, l)| Mutation::InsertLine(a, l)),
        3 => (any::<Index>(), number_text()).prop_map(|(a, n)| Mutation::ChangeNumber(a, n)),
        3 => (any::<Index>(), toml_value()).prop_map(|(a, v)| Mutation::ChangeValue(a, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match m {
        Mutation::DeleteLine(at) if !lines.is_empty() => {
            lines.remove(at.index(lines.len()));
        }
        Mutation::DuplicateLine(from, to) if !lines.is_empty() => {
            let line = lines[from.index(lines.len())].clone();
            lines.insert(to.index(lines.len() + 1), line);
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Mutation::InsertLine(at, line) => lines.insert(at.index(lines.len() + 1), line.clone()),
        Mutation::ChangeNumber(at, number) => {
            let mut runs = Vec::new();
            let bytes = text.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i].is_ascii_digit() {
                    let start = i;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                    runs.push(start..i);
                } else {
                    i += 1;
                }
            }
            if runs.is_empty() {
                return text.to_string();
            }
            let run = runs[at.index(runs.len())].clone();
            return format!("{}{number}{}", &text[..run.start], &text[run.end..]);
        }
        Mutation::ChangeValue(at, value) => {
            let with_value: Vec<usize> = (0..lines.len())
                .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains('='))
                .collect();
            if !with_value.is_empty() {
                let i = with_value[at.index(with_value.len())];
                let key = lines[i].split('=').next().unwrap_or_default().to_string();
                lines[i] = format!("{key}= {value}");
            }
        }
        Mutation::Truncate(at) => {
            let chars: Vec<char> = text.chars().collect();
            return chars[..at.index(chars.len() + 1)].iter().collect();
        }
        _ => {}
    }
    lines.join("\n")
}

/// Parses `text`; an error must name a line inside the file (or 0/1 when there is none to name) and print.
fn load(text: &str) -> Result<(), TestCaseError> {
    match ClusterConfig::from_toml("fuzz.toml", text) {
        Ok(_) => {}
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(shown.starts_with("fuzz.toml:"), "{shown}");
            let line = match &e {
                ConfigError::Parse { line, .. } | ConfigError::Invalid { line, .. } => *line,
                ConfigError::Read { .. } => 0,
            };
            prop_assert!(
                line <= text.lines().count().max(1) + 1,
                "line {line} of a {}-line file: {shown}",
                text.lines().count()
            );
        }
    }
    Ok(())
}

#[test]
fn every_shipped_config_loads_so_its_mutations_start_from_a_valid_file() {
    for (name, text) in SHIPPED {
        if let Err(e) = ClusterConfig::from_toml(name, text) {
            panic!("{e}");
        }
    }
}

proptest! {
    #![proptest_config(cases(CASES))]

    #[test]
    fn any_string_given_to_the_config_parser_gives_a_config_or_an_error_never_a_panic(
        text in prop_oneof![".*", "[\\[\\]{}=\"'\n .,a-z0-9_#-]{0,200}"],
    ) {
        load(&text)?;
    }

    #[test]
    fn any_file_made_of_config_tables_keys_and_values_gives_a_config_or_an_error_never_a_panic(
        lines in vec(toml_line(), 0..40),
    ) {
        load(&lines.join("\n"))?;
    }

    #[test]
    fn any_file_of_config_tables_with_values_of_the_right_types_gives_a_config_or_an_error_never_a_panic(
        text in typed_file(),
    ) {
        load(&text)?;
    }

    #[test]
    fn any_mutation_of_a_shipped_config_gives_a_config_or_an_error_never_a_panic(
        base in proptest::sample::select(&SHIPPED[..]),
        mutations in vec(mutation(), 1..5),
    ) {
        let mut text = base.1.to_string();
        for m in &mutations {
            text = mutate(&text, m);
        }
        load(&text)?;
    }

    #[test]
    fn a_deeply_nested_value_in_the_config_is_an_error_not_a_stack_overflow(
        depth in 1usize..20_000,
        open in prop_oneof![Just("["), Just("{ a = ")],
    ) {
        let close = if open == "[" { "]" } else { " }" };
        let text = format!(
            "[cluster]\nsecret = {}1{}\n",
            open.repeat(depth),
            close.repeat(depth)
        );
        load(&text)?;
    }
}
