//! The signed routing cookie (DESIGN §3). Pure: no I/O, used by nodes (which mint) and the balancer (which reads).
//!
//! Value: unpadded base64url of 50 bytes
//!
//! | bytes | field |
//! |---|---|
//! | 0 | format, 1 |
//! | 1 | key id |
//! | 2..18 | session id, 128 bits |
//! | 18..26 | segment, u64 big-endian ([`crate::ids::Pair::segment`]) |
//! | 26..34 | session version, u64 big-endian |
//! | 34..50 | HMAC-SHA256 over bytes 0..34, truncated to 128 bits |

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{CookieConfig, CookieKey};
use crate::ids::SessionId;

const FORMAT: u8 = 1;
const BODY: usize = 34;
const MAC_LEN: usize = 16;
const RAW_LEN: usize = BODY + MAC_LEN;
/// Longest encoded value we even try to decode.
pub const MAX_VALUE_LEN: usize = 128;

/// What a routing cookie says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingCookie {
    /// The session this cookie belongs to.
    pub session: SessionId,
    /// The pair (primary, secondary) that hosts it, as [`crate::ids::Pair::segment`].
    pub segment: u64,
    /// The session's version when the cookie was minted: a recovered copy older than this is stale.
    pub version: u64,
}

/// Why a cookie value was not accepted. Every case means "treat as absent".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The encoded value is longer than [`MAX_VALUE_LEN`]; not decoded at all.
    #[error("cookie value of {len} bytes is over the limit")]
    Oversize {
        /// Length of the encoded value, in bytes.
        len: usize,
    },
    /// The value is not unpadded base64url.
    #[error("cookie value is not base64url")]
    Encoding,
    /// The decoded value is not 50 bytes long.
    #[error("cookie has {len} bytes, expected {RAW_LEN}")]
    Length {
        /// Length of the decoded value, in bytes.
        len: usize,
    },
    /// The format byte is not one this version writes.
    #[error("cookie format {format} is unknown")]
    Format {
        /// The format byte found.
        format: u8,
    },
    /// Signed with a key that is neither the current key nor a previous one (e.g. rotated out).
    #[error("cookie key id {key_id} is unknown")]
    UnknownKey {
        /// The key id found.
        key_id: u8,
    },
    /// The MAC does not match: tampered with, or signed with another secret under the same key id.
    #[error("cookie MAC does not verify")]
    BadMac,
}

struct Key {
    id: u8,
    /// The HMAC with its key already absorbed: cloned per cookie, so the hot path skips two SHA-256 blocks.
    keyed: Hmac<Sha256>,
}

impl Key {
    fn new(k: &CookieKey) -> Key {
        // A key of its own, so the cookie MAC never doubles as a replication credential.
        let mut h = Sha256::new();
        h.update(b"srvsession-cookie-v1\0");
        h.update(k.secret.expose().as_bytes());
        let mac_key: [u8; 32] = h.finalize().into();
        Key {
            id: k.id,
            keyed: Hmac::<Sha256>::new_from_slice(&mac_key).expect("any key length"),
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.keyed.clone();
        m.update(body);
        let full = m.finalize().into_bytes();
        full[..MAC_LEN].try_into().expect("16 bytes")
    }
}

/// Signs and verifies routing cookies with the cluster's cookie keys.
pub struct CookieCodec {
    name: String,
    current: Key,
    previous: Vec<Key>,
}

impl CookieCodec {
    /// A codec signing with `cfg.current` and also accepting `cfg.previous`.
    pub fn new(cfg: &CookieConfig) -> CookieCodec {
        CookieCodec {
            name: cfg.name.clone(),
            current: Key::new(&cfg.current),
            previous: cfg.previous.iter().map(Key::new).collect(),
        }
    }

    /// The cookie's name, e.g. `SRVSESSION`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The routing cookie a session token header carries (its whole value is the token); `None` when it is
    /// not a valid token.
    pub fn find_token(&self, value: &[u8]) -> Option<RoutingCookie> {
        let text = std::str::from_utf8(value).ok()?;
        self.decode(text.trim()).ok()
    }

    /// The signed value, signed with the current key.
    pub fn encode(&self, c: &RoutingCookie) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = FORMAT;
        raw[1] = self.current.id;
        raw[2..18].copy_from_slice(&c.session.0.to_be_bytes());
        raw[18..26].copy_from_slice(&c.segment.to_be_bytes());
        raw[26..34].copy_from_slice(&c.version.to_be_bytes());
        let mac = self.current.mac(&raw[..BODY]);
        raw[BODY..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Verifies and decodes one cookie value.
    ///
    /// # Errors
    /// [`CookieError`] for anything but a well-formed value with a MAC from a known key.
    pub fn decode(&self, value: &str) -> Result<RoutingCookie, CookieError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(CookieError::Oversize { len: value.len() });
        }
        let raw = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| CookieError::Encoding)?;
        if raw.len() != RAW_LEN {
            return Err(CookieError::Length { len: raw.len() });
        }
        if raw[0] != FORMAT {
            return Err(CookieError::Format { format: raw[0] });
        }
        let key_id = raw[1];
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or(CookieError::UnknownKey { key_id })?;
        let expect = key.mac(&raw[..BODY]);
        if !bool::from(expect.ct_eq(&raw[BODY..])) {
            return Err(CookieError::BadMac);
        }
        let u64_at = |i: usize| u64::from_be_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        Ok(RoutingCookie {
            session: SessionId(u128::from_be_bytes(
                raw[2..18].try_into().expect("16 bytes"),
            )),
            segment: u64_at(18),
            version: u64_at(26),
        })
    }

    /// The first valid routing cookie among `Cookie` header values (every header is read: HTTP/2 may split them).
    /// Invalid ones are skipped, as if absent.
    pub fn find<'a>(
        &self,
        cookie_headers: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<RoutingCookie> {
        for header in cookie_headers {
            let Ok(text) = std::str::from_utf8(header) else {
                continue;
            };
            for part in cookie::Cookie::split_parse(text).flatten() {
                if part.name() == self.name {
                    if let Ok(c) = self.decode(part.value()) {
                        return Some(c);
                    }
                }
            }
        }
        None
    }

    /// A `Set-Cookie` header value carrying `c`.
    pub fn set_cookie(&self, c: &RoutingCookie, secure: bool) -> String {
        let secure = secure || self.name.starts_with("__Host-");
        cookie::Cookie::build((self.name.as_str(), self.encode(c)))
            .path("/")
            .http_only(true)
            .same_site(cookie::SameSite::Lax)
            .secure(secure)
            .build()
            .to_string()
    }

    /// A `Set-Cookie` header value that removes the cookie.
    pub fn clear_cookie(&self, secure: bool) -> String {
        let secure = secure || self.name.starts_with("__Host-");
        let mut c = cookie::Cookie::build((self.name.as_str(), ""))
            .path("/")
            .http_only(true)
            .same_site(cookie::SameSite::Lax)
            .secure(secure)
            .build();
        c.make_removal();
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: u8, secret: &str, previous: Vec<CookieKey>) -> CookieConfig {
        CookieConfig {
            name: "SRVSESSION".into(),
            current: CookieKey {
                id,
                secret: secret.into(),
            },
            previous,
            header: None,
        }
    }

    fn sample() -> RoutingCookie {
        RoutingCookie {
            session: SessionId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            segment: 0xdead_beef,
            version: 42,
        }
    }

    #[test]
    fn a_cookie_round_trips() {
        let codec = CookieCodec::new(&cfg(1, "secret-one-secret-one", vec![]));
        let v = codec.encode(&sample());
        assert_eq!(v.len(), 67);
        assert_eq!(codec.decode(&v), Ok(sample()));
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let codec = CookieCodec::new(&cfg(1, "secret-one-secret-one", vec![]));
        let raw = URL_SAFE_NO_PAD.decode(codec.encode(&sample())).unwrap();
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut t = raw.clone();
                t[byte] ^= 1 << bit;
                assert!(
                    codec.decode(&URL_SAFE_NO_PAD.encode(&t)).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn garbage_truncated_and_oversize_values_are_refused() {
        let codec = CookieCodec::new(&cfg(1, "secret-one-secret-one", vec![]));
        let good = codec.encode(&sample());
        assert_eq!(codec.decode("!!!"), Err(CookieError::Encoding));
        assert!(matches!(
            codec.decode(&good[..40]),
            Err(CookieError::Length { .. }) | Err(CookieError::Encoding)
        ));
        assert!(matches!(
            codec.decode(&"A".repeat(500)),
            Err(CookieError::Oversize { .. })
        ));
        assert_eq!(codec.decode(""), Err(CookieError::Length { len: 0 }));
    }

    #[test]
    fn a_rotated_key_is_accepted_only_while_listed() {
        let old = CookieCodec::new(&cfg(1, "secret-one-secret-one", vec![]));
        let v = old.encode(&sample());
        let rotated = CookieCodec::new(&cfg(
            2,
            "secret-two-secret-two",
            vec![CookieKey {
                id: 1,
                secret: "secret-one-secret-one".into(),
            }],
        ));
        assert_eq!(rotated.decode(&v), Ok(sample()));
        assert!(
            rotated.encode(&sample()) != v,
            "new cookies use the new key"
        );
        let done = CookieCodec::new(&cfg(2, "secret-two-secret-two", vec![]));
        assert_eq!(done.decode(&v), Err(CookieError::UnknownKey { key_id: 1 }));
    }

    #[test]
    fn a_wrong_secret_with_the_same_key_id_fails_the_mac() {
        let a = CookieCodec::new(&cfg(1, "secret-one-secret-one", vec![]));
        let b = CookieCodec::new(&cfg(1, "another-secret-entirely", vec![]));
        assert_eq!(b.decode(&a.encode(&sample())), Err(CookieError::BadMac));
    }

    #[test]
    fn find_skips_other_and_invalid_cookies_across_headers() {
        let codec = CookieCodec::new(&cfg(1, "secret-one-secret-one", vec![]));
        let v = codec.encode(&sample());
        let h1 = b"a=1; SRVSESSION=forged".as_slice();
        let h2 = format!("b=2; SRVSESSION={v}");
        assert_eq!(codec.find([h1, h2.as_bytes()]), Some(sample()));
        assert_eq!(codec.find([h1]), None);
    }

    #[test]
    fn set_cookie_has_the_contract_attributes() {
        let codec = CookieCodec::new(&cfg(1, "secret-one-secret-one", vec![]));
        let h = codec.set_cookie(&sample(), false);
        assert!(h.starts_with("SRVSESSION="));
        for attr in ["HttpOnly", "Path=/", "SameSite=Lax"] {
            assert!(h.contains(attr), "{h}");
        }
        assert!(!h.contains("Secure"));
        assert!(codec.set_cookie(&sample(), true).contains("Secure"));
    }
}
