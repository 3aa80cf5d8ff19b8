//! [`Secret`]: a key that signs cookies or authenticates peers, kept in a type whose `Debug` never prints it, so
//! a `{:?}` of a whole config (a log line, a panic, a test failure) leaks nothing.

use std::fmt;

use serde::Deserialize;

/// A secret string. `Debug` prints `Secret(<redacted>)` and there is no `Display`; [`Secret::expose`] is the one
/// way to the text, so every use is easy to find.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself, for code that keys a MAC with it or writes it into a cluster file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (validation asks for a minimum without looking at the text).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `candidate` is the secret, in time that does not depend on where they differ (a bearer token
    /// checked byte by byte would be guessed byte by byte). Only the length may show.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Secret {
        Secret::new(text)
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Secret {
        Secret(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_part_of_the_secret() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(<redacted>))");
    }

    #[test]
    fn a_secret_matches_itself_only() {
        let s = Secret::new("0123456789abcdef");
        assert!(s.matches(b"0123456789abcdef"));
        assert!(!s.matches(b"0123456789abcdeF"));
        assert!(!s.matches(b"0123456789abcde"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn a_secret_reads_from_a_plain_toml_string() {
        #[derive(Deserialize)]
        struct Holder {
            secret: Secret,
        }
        let h: Holder = toml::from_str("secret = \"0123456789abcdef\"").unwrap();
        assert_eq!(h.secret.expose(), "0123456789abcdef");
        assert_eq!(h.secret.len(), 16);
    }
}
