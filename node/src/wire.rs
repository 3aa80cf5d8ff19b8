//! Replication frames. Pure: [`check`] says whether a whole frame is buffered, [`parse`] decodes it; the
//! connection that reads bytes lives in `connection`.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a postcard-encoded [`Envelope`].

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, SessionId};
use crate::session::{Delta, Session};

/// Largest frame accepted; a peer announcing more is cut off.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Bytes of a frame's length prefix.
pub const HEADER: usize = 4;

/// Why bytes on a replication connection were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The header announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {len} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge {
        /// The announced length, in bytes.
        len: usize,
    },
    /// A sealed frame's tag does not check out (`seal`): forged, altered, replayed or out of order.
    #[error("frame failed authentication")]
    Forged,
    /// The frame's bytes are not a postcard [`Envelope`].
    #[error("frame does not decode: {reason}")]
    Malformed {
        /// The decoder's message.
        reason: String,
    },
}

/// Every frame: a correlation id (replies carry the id of their request) and a body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Chosen by the caller, unique per connection; 0 during the handshake.
    pub id: u64,
    /// The message.
    pub body: Body,
}

/// Every message on a replication connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    // Connection start: mutual challenge-response with the cluster secret.
    /// Client's first frame.
    Hello {
        /// The client's node name, for logs.
        node: String,
        /// Fresh random challenge for the server.
        nonce: [u8; 32],
    },
    /// Server's answer to `Hello`: its proofs, and a challenge back.
    Challenge {
        /// Fresh random challenge for the client.
        nonce: [u8; 32],
        /// HMAC of both nonces under each replication key the server holds (the current secret's, then during
        /// a rotation the previous one's), proving it knows the cluster secret.
        proofs: Vec<[u8; 32]>,
    },
    /// Client's answer to `Challenge`.
    Proof {
        /// HMAC of both nonces (in the other order, with the client's role) under the replication key.
        proof: [u8; 32],
    },
    /// The client's proof is good: requests may follow.
    Welcome,
    /// The client's proof is wrong; the server closes the connection.
    Refused {
        /// Why, for the client's log.
        reason: String,
    },

    // Requests and their replies.
    /// Heartbeat.
    Ping {
        /// Sessions the sender holds: its load, for secondary choice.
        sessions: u64,
    },
    /// Heartbeat answer.
    Pong {
        /// Sessions the answerer holds.
        sessions: u64,
        /// Drawn at random when the answerer's process started: a new one means it restarted (and, with it,
        /// lost every copy it held), however quickly.
        incarnation: u64,
    },
    /// Copies from a primary to its secondary, one item per session.
    Batch {
        /// The sending primary.
        from: NodeId,
        /// One item per session, in queue order.
        items: Vec<Item>,
    },
    /// Answer to a `Batch`.
    BatchReply {
        /// One result per item, in the batch's order.
        results: Vec<ItemResult>,
    },
    /// A node that must serve a session it does not host asks for it (takeover).
    Pull {
        /// The session wanted.
        sid: SessionId,
        /// The node that will own it.
        requester: NodeId,
        /// The requester tried the session's owner and could not reach it.
        owner_unreachable: bool,
        /// Grant only a copy at least this new (the client's signed version; 0 for the best copy there is): a
        /// copy left behind on a bank member when its session moved on must not be handed out while a current
        /// one exists elsewhere.
        min_version: u64,
    },
    /// Answer to a `Pull`.
    PullReply {
        /// Granted, or why not.
        result: PullResult,
    },
    /// A draining node asks a peer to take one of its sessions over now (migrate-then-drain): the peer pulls
    /// it from the sender, as in a takeover.
    Adopt {
        /// The session to take.
        sid: SessionId,
        /// The draining node that owns it.
        from: NodeId,
    },
    /// Answer to `Adopt`.
    Adopted {
        /// The session is the answerer's now.
        taken: bool,
    },
    /// The request was not one the server answers.
    Error {
        /// What was wrong, for logs.
        message: String,
    },
}

/// One session's part of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// Updates since `base`, from the owner at `epoch`.
    Deltas {
        /// The session.
        sid: SessionId,
        /// The sender's ownership epoch.
        epoch: u64,
        /// The version the copy must be at for the first delta to apply.
        base: u64,
        /// Consecutive deltas from `base + 1` on.
        deltas: Vec<Delta>,
    },
    /// The whole session (new copy, or resync after a gap).
    Full {
        /// The session as the primary holds it.
        session: Session,
    },
    /// "I still own it at this version": renews the owner's read lease without data.
    Validate {
        /// The session.
        sid: SessionId,
        /// The sender's ownership epoch.
        epoch: u64,
        /// The version the owner holds.
        version: u64,
    },
    /// The session ended (deleted or expired).
    Remove {
        /// The session.
        sid: SessionId,
        /// The sender's ownership epoch; a copy at a higher epoch is kept.
        epoch: u64,
    },
    /// Drop your copy: the sender's copies of this session went elsewhere (a re-homing while this node was
    /// unreachable, or excluded), so this one is no longer updated. Not an end: no tombstone is kept.
    Drop {
        /// The session.
        sid: SessionId,
        /// The sender's ownership epoch when the copy was left behind; a copy at a higher epoch is kept.
        epoch: u64,
        /// The session's version then: a copy newer than it was sent since (the peer is a copy holder
        /// again) and is kept.
        version: u64,
    },
}

impl Item {
    /// Roughly its encoded size, in bytes, to keep a batch under [`MAX_FRAME`]: exact for a full copy, an
    /// upper estimate for the rest.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Item::Deltas { deltas, .. } => {
                let each = |d: &Delta| {
                    24 + d.patch.len() + d.outcome.as_ref().map_or(0, |(_, o)| o.bytes())
                };
                32 + deltas.iter().map(each).sum::<usize>()
            }
            Item::Full { session, .. } => {
                postcard::experimental::serialized_size(session).map_or(MAX_FRAME, |n| n + 32)
            }
            _ => 64,
        }
    }

    /// The session the item is about.
    pub fn sid(&self) -> SessionId {
        match self {
            Item::Deltas { sid, .. }
            | Item::Validate { sid, .. }
            | Item::Remove { sid, .. }
            | Item::Drop { sid, .. } => *sid,
            Item::Full { session } => session.id,
        }
    }

    /// The ownership epoch the sender claims.
    pub fn epoch(&self) -> u64 {
        match self {
            Item::Deltas { epoch, .. }
            | Item::Validate { epoch, .. }
            | Item::Remove { epoch, .. }
            | Item::Drop { epoch, .. } => *epoch,
            Item::Full { session } => session.epoch,
        }
    }
}

/// What a secondary did with an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemResult {
    /// The copy is now at the item's version.
    Applied,
    /// The copy is missing or at another version: send the full state.
    NeedFull,
    /// A newer owner exists: the sender must stop acknowledging writes for this session.
    Fenced {
        /// The newer owner.
        owner: NodeId,
        /// Its epoch, higher than the sender's.
        epoch: u64,
    },
    /// The session ended here at `epoch`, later than the sender's tenure: the sender's copy is stale and must
    /// not bring the session back.
    Ended {
        /// The ownership epoch at which the session ended.
        epoch: u64,
    },
}

/// Answer to a [`Body::Pull`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PullResult {
    /// The session, now owned by the requester (epoch already raised); the granter keeps a copy as secondary.
    Granted {
        /// The session, its `primary` now the requester.
        session: Session,
    },
    /// Ask this node instead: it owns the session and is alive.
    Redirect {
        /// The live owner.
        owner: NodeId,
    },
    /// No copy of the session here (or only one older than the pull's `min_version`).
    NotFound,
    /// The session ended here (deleted or expired): not lost, start a fresh one.
    Ended,
    /// The session is mid-update here; ask again shortly.
    Busy,
}

/// Whether `buf` starts with a whole frame; `Ok(Some(n))` gives its total length.
///
/// # Errors
/// [`FrameError::TooLarge`] as soon as the header announces an oversize frame.
pub fn check(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..HEADER].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
}

/// Decodes the whole frame at the start of `buf` (call [`check`] first) and consumes it.
///
/// # Errors
/// [`FrameError`] when the payload does not decode; the connection should then be closed.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Envelope>, FrameError> {
    let Some(total) = check(buf)? else {
        return Ok(None);
    };
    let frame = buf.split_to(total);
    decode(&frame[HEADER..]).map(Some)
}

/// Decodes one frame's payload (the bytes after its length).
///
/// # Errors
/// [`FrameError::Malformed`] when they are not an [`Envelope`].
pub fn decode(payload: &[u8]) -> Result<Envelope, FrameError> {
    postcard::from_bytes(payload).map_err(|e| FrameError::Malformed {
        reason: e.to_string(),
    })
}

/// Appends `env` as one frame.
pub fn encode(env: &Envelope, out: &mut BytesMut) {
    let payload = postcard::to_allocvec(env).expect("our messages always encode");
    out.reserve(HEADER + payload.len());
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
}

/// The payload length a frame header announces, once its 4 bytes are buffered.
pub fn payload_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= HEADER).then(|| (&buf[..HEADER]).get_u32() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        let id = NodeId::new(1 << 50).unwrap();
        let mut s = Session::new(SessionId(9), id, None);
        s.incr("n").unwrap();
        Envelope {
            id: 3,
            body: Body::Batch {
                from: id,
                items: vec![Item::Full { session: s }],
            },
        }
    }

    #[test]
    fn a_frame_round_trips_only_once_whole() {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf);
        let whole = buf.len();
        for cut in 0..whole {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(check(&part).unwrap(), None, "cut {cut}");
            assert_eq!(parse(&mut part).unwrap(), None);
        }
        assert_eq!(parse(&mut buf).unwrap(), Some(sample()));
        assert!(buf.is_empty());
    }

    #[test]
    fn two_frames_in_one_buffer_parse_one_at_a_time() {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf);
        encode(
            &Envelope {
                id: 4,
                body: Body::Welcome,
            },
            &mut buf,
        );
        assert_eq!(parse(&mut buf).unwrap(), Some(sample()));
        assert_eq!(parse(&mut buf).unwrap().unwrap().body, Body::Welcome);
    }

    #[test]
    fn oversize_and_garbage_frames_are_errors_not_panics() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(check(&buf), Err(FrameError::TooLarge { .. })));
        assert!(parse(&mut buf).is_err());
        let mut garbage = BytesMut::new();
        garbage.put_u32(5);
        garbage.put_slice(&[0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            parse(&mut garbage),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn every_message_keeps_its_place_on_the_wire() {
        // postcard writes a variant's index first: moving or inserting a variant changes the protocol, so
        // only add variants at the end, and bump `connection::PROTOCOL_VERSION` for any other change.
        let id = NodeId::new(1 << 50).unwrap();
        let sid = SessionId(1);
        let bodies = [
            Body::Hello {
                node: String::new(),
                nonce: [0; 32],
            },
            Body::Challenge {
                nonce: [0; 32],
                proofs: vec![],
            },
            Body::Proof { proof: [0; 32] },
            Body::Welcome,
            Body::Refused {
                reason: String::new(),
            },
            Body::Ping { sessions: 0 },
            Body::Pong {
                sessions: 0,
                incarnation: 0,
            },
            Body::Batch {
                from: id,
                items: vec![],
            },
            Body::BatchReply { results: vec![] },
            Body::Pull {
                sid,
                requester: id,
                owner_unreachable: false,
                min_version: 0,
            },
            Body::PullReply {
                result: PullResult::Busy,
            },
            Body::Adopt { sid, from: id },
            Body::Adopted { taken: true },
            Body::Error {
                message: String::new(),
            },
        ];
        for (place, body) in bodies.iter().enumerate() {
            let bytes = postcard::to_allocvec(body).unwrap();
            assert_eq!(usize::from(bytes[0]), place, "{body:?}");
        }
    }
}
