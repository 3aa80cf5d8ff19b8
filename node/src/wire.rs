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
const HEADER: usize = 4;

/// Why bytes on a replication connection were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge { len: usize },
    #[error("frame does not decode: {reason}")]
    Malformed { reason: String },
}

/// Every frame: a correlation id (replies carry the id of their request) and a body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    // Connection start: mutual challenge-response with the cluster secret.
    Hello {
        node: String,
        nonce: [u8; 32],
    },
    Challenge {
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    Proof {
        proof: [u8; 32],
    },
    Welcome,
    Refused {
        reason: String,
    },

    // Requests and their replies.
    Ping {
        sessions: u64,
    },
    Pong {
        sessions: u64,
    },
    /// Copies from a primary to its secondary, one item per session.
    Batch {
        from: NodeId,
        items: Vec<Item>,
    },
    BatchReply {
        results: Vec<ItemResult>,
    },
    /// A node that must serve a session it does not host asks for it (takeover).
    Pull {
        sid: SessionId,
        requester: NodeId,
        owner_unreachable: bool,
    },
    PullReply {
        result: PullResult,
    },
    Error {
        message: String,
    },
}

/// One session's part of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// Updates since `base`, from the owner at `epoch`.
    Deltas {
        sid: SessionId,
        epoch: u64,
        base: u64,
        deltas: Vec<Delta>,
    },
    /// The whole session (new copy, or resync after a gap).
    Full { session: Session },
    /// "I still own it at this version": renews the owner's read lease without data.
    Validate {
        sid: SessionId,
        epoch: u64,
        version: u64,
    },
    /// The session ended (deleted or expired).
    Remove { sid: SessionId, epoch: u64 },
}

impl Item {
    pub fn sid(&self) -> SessionId {
        match self {
            Item::Deltas { sid, .. } | Item::Validate { sid, .. } | Item::Remove { sid, .. } => {
                *sid
            }
            Item::Full { session } => session.id,
        }
    }
}

/// What a secondary did with an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemResult {
    Applied,
    /// The copy is missing or at another version: send the full state.
    NeedFull,
    /// A newer owner exists: the sender must stop acknowledging writes for this session.
    Fenced {
        owner: NodeId,
        epoch: u64,
    },
}

/// Answer to a [`Body::Pull`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PullResult {
    /// The session, now owned by the requester (epoch already raised); the granter keeps a copy as secondary.
    Granted {
        session: Session,
    },
    /// Ask this node instead: it owns the session and is alive.
    Redirect {
        owner: NodeId,
    },
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
    postcard::from_bytes(&frame[HEADER..])
        .map(Some)
        .map_err(|e| FrameError::Malformed {
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

/// Skips a frame header's length, for tests of partial buffers.
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
}
