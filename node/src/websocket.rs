//! WebSocket frames (RFC 6455 §5), as far as a relay needs them: where frames end in a byte stream (so a close
//! frame is only ever put between two frames), and the close frame itself. Pure: whole-frame checks, then
//! parses, apart from any connection. The relay is `tunnel`.

use hyper::header::{CONNECTION, UPGRADE};
use hyper::HeaderMap;

/// Close code 1001, "going away": the server is leaving; the client should reconnect.
pub const GOING_AWAY: u16 = 1001;
/// The close opcode.
pub const OP_CLOSE: u8 = 0x8;
/// The text opcode.
pub const OP_TEXT: u8 = 0x1;
/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Whether a request asks to become a WebSocket (`Connection: upgrade` and `Upgrade: websocket`, any case).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(CONNECTION, "upgrade") && has(UPGRADE, "websocket")
}

/// When `from` is a WebSocket handshake (a request, or the 101 that answers it), copies `Connection: upgrade`
/// and the `Upgrade` protocol to `to`: hop-by-hop headers, dropped when headers are relayed, kept on the
/// handshake (to the app or the owner node, and on their 101).
pub fn keep_upgrade(from: &HeaderMap, to: &mut HeaderMap) {
    if !is_upgrade(from) {
        return;
    }
    if let Some(proto) = from.get(UPGRADE) {
        to.insert(UPGRADE, proto.clone());
        to.insert(
            CONNECTION,
            hyper::header::HeaderValue::from_static("upgrade"),
        );
    }
}

/// The far side's connection of an answer that switched protocols (a 101 with an upgrade hyper can hand
/// over), its upgrade headers copied to `to`, the answer relayed; `None` for any other answer.
pub fn switched(
    answer: &mut hyper::http::response::Parts,
    to: &mut HeaderMap,
) -> Option<hyper::upgrade::OnUpgrade> {
    if answer.status != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    let far = answer.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
    keep_upgrade(&answer.headers, to);
    Some(far)
}

/// A frame's header: how long it is and how much payload follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The FIN bit.
    pub fin: bool,
    /// The opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// The masking key, for a client's frame.
    pub mask: Option<[u8; 4]>,
    /// Bytes of the header itself.
    pub len: usize,
    /// Bytes of payload after it.
    pub payload: u64,
}

/// Reads a frame header from the start of `buf`: `None` while `buf` is too short to hold it whole.
pub fn header(buf: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (payload, at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let (mask, len) = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        (Some(m), at + 4)
    } else {
        (None, at)
    };
    Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask,
        len,
        payload,
    })
}

/// One whole frame at the start of `buf`, its payload unmasked, and the bytes it took; `None` while it is not
/// all there.
pub fn frame(buf: &[u8]) -> Option<(Header, Vec<u8>, usize)> {
    let h = header(buf)?;
    let end = h.len.checked_add(usize::try_from(h.payload).ok()?)?;
    let mut payload = buf.get(h.len..end)?.to_vec();
    if let Some(m) = h.mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((h, payload, end))
}

/// A frame of `opcode` carrying `payload`, masked with `mask` (a client's frame) or not (a server's).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len());
    out.push(0x80 | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A close frame with `code` (and no reason).
pub fn close(code: u16, mask: Option<[u8; 4]>) -> Vec<u8> {
    encode(OP_CLOSE, &code.to_be_bytes(), mask)
}

/// Follows the frames of one direction of a WebSocket as its bytes go by, to tell when the stream is between
/// two frames. It looks at headers only; payload bytes are counted, never copied.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    /// Header bytes of the frame begun, while it is incomplete.
    partial: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    left: u64,
}

impl Frames {
    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = (self.left.min(bytes.len() as u64)) as usize;
                self.left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            // A header, possibly split over several reads: gather at most its longest form.
            let take = (MAX_HEADER - self.partial.len()).min(bytes.len());
            let before = self.partial.len();
            self.partial.extend_from_slice(&bytes[..take]);
            match header(&self.partial) {
                Some(h) => {
                    let used = h.len - before;
                    self.partial.clear();
                    self.left = h.payload;
                    bytes = &bytes[used..];
                }
                None => {
                    bytes = &bytes[take..];
                }
            }
        }
    }

    /// Whether the bytes so far end exactly at the end of a frame.
    pub fn between(&self) -> bool {
        self.left == 0 && self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_request_names_both_headers_in_any_case_and_list() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(!is_upgrade(&h));
        h.insert(UPGRADE, "WebSocket".parse().unwrap());
        assert!(is_upgrade(&h));
        h.insert(UPGRADE, "h2c".parse().unwrap());
        assert!(!is_upgrade(&h));
    }

    #[test]
    fn frames_of_every_length_form_read_back_masked_or_not() {
        for n in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let bytes = encode(OP_TEXT, &payload, mask);
                let (h, p, used) = frame(&bytes).unwrap();
                assert_eq!(
                    (h.opcode, h.fin, h.mask, used),
                    (OP_TEXT, true, mask, bytes.len())
                );
                assert_eq!(p, payload, "{n} bytes, mask {mask:?}");
                assert!(frame(&bytes[..bytes.len() - 1]).is_none());
            }
        }
    }

    #[test]
    fn a_close_frame_carries_its_code() {
        let (h, p, _) = frame(&close(GOING_AWAY, Some([9, 8, 7, 6]))).unwrap();
        assert_eq!(h.opcode, OP_CLOSE);
        assert_eq!(p, 1001u16.to_be_bytes());
        assert_eq!(close(GOING_AWAY, None), [0x88, 0x02, 0x03, 0xe9]);
    }

    #[test]
    fn the_frame_follower_knows_the_boundaries_however_the_bytes_are_cut() {
        let mut stream = Vec::new();
        let mut ends = vec![0];
        for n in [3usize, 0, 200, 70_000, 1] {
            stream.extend(encode(OP_TEXT, &vec![7u8; n], None));
            ends.push(stream.len());
        }
        for cut in [1usize, 2, 3, 5, 13, 64, 4096] {
            let mut f = Frames::default();
            let mut at = 0;
            while at < stream.len() {
                let next = (at + cut).min(stream.len());
                f.feed(&stream[at..next]);
                at = next;
                assert_eq!(f.between(), ends.contains(&at), "cut {cut}, at {at}");
            }
        }
    }
}
