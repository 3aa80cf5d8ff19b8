//! Frame integrity after the handshake. Every frame then ends in a tag: the first [`TAG`] bytes of an
//! HMAC-SHA256 over the frame's sequence number and payload, under a key of its direction derived from the
//! cluster's replication key and both handshake nonces. A frame forged, altered, replayed, reordered or left
//! out by anyone without the secret fails the check on the next frame, and the connection closes.
//!
//! Sequence numbers are not sent: TCP delivers in order, so each side counts. Keys differ per connection and
//! per direction, so a frame of one connection, or an echo of a side's own frame, never checks out elsewhere.
//! Pure: no I/O; `connection` reads and writes the bytes.

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::{self, Envelope, FrameError, HEADER};

/// Bytes of the tag at the end of every sealed frame.
pub const TAG: usize = 16;

/// Which way frames go on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the side that connected to the one that accepted.
    ToServer,
    /// Back.
    ToClient,
}

/// One direction of one connection: its key and the sequence number of its next frame.
pub struct Seal {
    key: [u8; 32],
    seq: u64,
}

impl Seal {
    /// The seal of `direction` on the connection whose handshake exchanged `client_nonce` and
    /// `server_nonce`, under the replication key `key`.
    pub fn new(
        key: &[u8; 32],
        direction: Direction,
        client_nonce: &[u8; 32],
        server_nonce: &[u8; 32],
    ) -> Seal {
        let label: &[u8] = match direction {
            Direction::ToServer => b"frames to server",
            Direction::ToClient => b"frames to client",
        };
        let mut m = mac(key);
        m.update(label);
        m.update(client_nonce);
        m.update(server_nonce);
        Seal {
            key: m.finalize().into_bytes().into(),
            seq: 0,
        }
    }

    fn tag(&self, payload: &[u8]) -> [u8; TAG] {
        let mut m = mac(&self.key);
        m.update(&self.seq.to_be_bytes());
        m.update(payload);
        let full = m.finalize().into_bytes();
        full[..TAG].try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    /// Appends `env` to `out` as the next sealed frame: length, payload, tag.
    pub fn seal(&mut self, env: &Envelope, out: &mut BytesMut) {
        let payload = postcard::to_allocvec(env).expect("our messages always encode");
        let tag = self.tag(&payload);
        self.seq += 1;
        out.reserve(HEADER + payload.len() + TAG);
        out.put_u32((payload.len() + TAG) as u32);
        out.put_slice(&payload);
        out.put_slice(&tag);
    }

    /// The next sealed frame at the start of `buf`, checked and decoded (and consumed); `Ok(None)` until it
    /// is whole.
    ///
    /// # Errors
    /// [`FrameError::Forged`] when the tag does not check out (the connection must close: every later frame
    /// would fail too); [`FrameError::TooLarge`] or [`FrameError::Malformed`] as for an unsealed frame.
    pub fn open(&mut self, buf: &mut BytesMut) -> Result<Option<Envelope>, FrameError> {
        let Some(total) = wire::check(buf)? else {
            return Ok(None);
        };
        let frame = buf.split_to(total);
        if total < HEADER + TAG {
            return Err(FrameError::Forged);
        }
        let (payload, tag) = frame[HEADER..].split_at(total - HEADER - TAG);
        if !bool::from(self.tag(payload).ct_eq(tag)) {
            return Err(FrameError::Forged);
        }
        self.seq += 1;
        wire::decode(payload).map(Some)
    }
}

fn mac(key: &[u8; 32]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("any key length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Body;

    fn pair() -> (Seal, Seal) {
        let (k, nc, ns) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        (
            Seal::new(&k, Direction::ToServer, &nc, &ns),
            Seal::new(&k, Direction::ToServer, &nc, &ns),
        )
    }

    fn ping(id: u64) -> Envelope {
        Envelope {
            id,
            body: Body::Ping { sessions: 7 },
        }
    }

    #[test]
    fn sealed_frames_open_in_order_on_the_other_side() {
        let (mut tx, mut rx) = pair();
        let mut buf = BytesMut::new();
        for id in 0..3 {
            tx.seal(&ping(id), &mut buf);
        }
        for id in 0..3 {
            assert_eq!(rx.open(&mut buf).unwrap(), Some(ping(id)));
        }
        assert!(buf.is_empty());
        assert_eq!(rx.open(&mut buf).unwrap(), None, "nothing buffered yet");
    }

    #[test]
    fn a_frame_with_any_byte_changed_is_refused() {
        let (mut tx, _) = pair();
        let mut frame = BytesMut::new();
        tx.seal(&ping(1), &mut frame);
        for i in HEADER..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x01;
            let (_, mut rx) = pair();
            assert_eq!(rx.open(&mut bad), Err(FrameError::Forged), "byte {i}");
        }
    }

    #[test]
    fn a_replayed_or_reordered_frame_is_refused() {
        let (mut tx, mut rx) = pair();
        let (mut first, mut second) = (BytesMut::new(), BytesMut::new());
        tx.seal(&ping(1), &mut first);
        tx.seal(&ping(2), &mut second);
        let replay = first.clone();
        assert!(rx.open(&mut first).unwrap().is_some());
        assert_eq!(
            rx.open(&mut replay.clone()),
            Err(FrameError::Forged),
            "replay"
        );
        let (_, mut fresh) = pair();
        assert_eq!(
            fresh.open(&mut second),
            Err(FrameError::Forged),
            "second first"
        );
    }

    #[test]
    fn the_other_direction_or_another_connection_does_not_check_out() {
        let (k, nc, ns) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let mut tx = Seal::new(&k, Direction::ToServer, &nc, &ns);
        let mut frame = BytesMut::new();
        tx.seal(&ping(1), &mut frame);
        let others = [
            Seal::new(&k, Direction::ToClient, &nc, &ns),
            Seal::new(&k, Direction::ToServer, &nc, &[4u8; 32]),
            Seal::new(&[9u8; 32], Direction::ToServer, &nc, &ns),
        ];
        for mut o in others {
            assert_eq!(o.open(&mut frame.clone()), Err(FrameError::Forged));
        }
    }

    #[test]
    fn a_frame_too_short_for_a_tag_is_refused() {
        let (_, mut rx) = pair();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2, 3][..]);
        assert_eq!(rx.open(&mut buf), Err(FrameError::Forged));
    }
}
