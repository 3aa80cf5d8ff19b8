//! What load to generate: the request mix, its bounds, and the parsing of their command-line forms.

use std::net::SocketAddr;
use std::time::Duration;

/// Why a load flag was refused; each case holds the text given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Not a number with an optional unit `ms`, `s`, `m` or `h`, or negative.
    #[error("bad duration {0:?}: expected e.g. 500ms, 10s, 2m")]
    Duration(String),
    /// Not `op=weight` pairs of known operations with at least one positive weight.
    #[error(
        "bad mix {0:?}: expected e.g. incr=0.6,get=0.3,patch=0.1 (ops: get, incr, patch, delete)"
    )]
    Mix(String),
    /// Not an `http://` URL of an IPv4 loopback address with a port.
    #[error("bad target {0:?}: expected http://127.x.y.z:PORT (loopback only)")]
    Target(String),
}

/// `500ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, SpecError> {
    let err = || SpecError::Duration(s.to_string());
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(err()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(err());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// Relative weights of the operations a virtual user sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    /// Weight of `GET /session`; default 0.3.
    pub get: f64,
    /// Weight of `POST /session/incr/{key}`; default 0.6.
    pub incr: f64,
    /// Weight of `PATCH /session`; default 0.1.
    pub patch: f64,
    /// Weight of `DELETE /session`; default 0.
    pub delete: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            get: 0.3,
            incr: 0.6,
            patch: 0.1,
            delete: 0.0,
        }
    }
}

/// The operation kinds, for picking by weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `GET /session`.
    Get,
    /// `POST /session/incr/{key}`.
    Incr,
    /// `PATCH /session`.
    Patch,
    /// `DELETE /session`.
    Delete,
}

impl Mix {
    /// Parses `op=weight,...`; operations left out weigh 0.
    ///
    /// # Errors
    /// [`SpecError::Mix`] for an unknown operation, a negative or non-number weight, or all weights 0.
    pub fn parse(s: &str) -> Result<Mix, SpecError> {
        let err = || SpecError::Mix(s.to_string());
        let mut m = Mix {
            get: 0.0,
            incr: 0.0,
            patch: 0.0,
            delete: 0.0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(err)?;
            let w: f64 = v.trim().parse().map_err(|_| err())?;
            if !w.is_finite() || w < 0.0 {
                return Err(err());
            }
            match k.trim() {
                "get" => m.get = w,
                "incr" => m.incr = w,
                "patch" => m.patch = w,
                "delete" => m.delete = w,
                _ => return Err(err()),
            }
        }
        if m.total() <= 0.0 {
            return Err(err());
        }
        Ok(m)
    }

    fn total(&self) -> f64 {
        self.get + self.incr + self.patch + self.delete
    }

    /// The operation a uniform `u` in [0, 1) falls on.
    pub fn pick(&self, u: f64) -> OpKind {
        let mut x = u * self.total();
        for (w, k) in [
            (self.incr, OpKind::Incr),
            (self.get, OpKind::Get),
            (self.patch, OpKind::Patch),
        ] {
            if x < w {
                return k;
            }
            x -= w;
        }
        if self.delete > 0.0 {
            OpKind::Delete
        } else {
            OpKind::Get
        }
    }
}

/// A loopback-only `http://host:port` target.
pub fn parse_target(url: &str) -> Result<SocketAddr, SpecError> {
    let err = || SpecError::Target(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(err)?;
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.replacen("localhost", "127.0.0.1", 1);
    let addr: SocketAddr = authority.parse().map_err(|_| err())?;
    if !addr.ip().is_loopback() || !addr.is_ipv4() {
        return Err(err());
    }
    Ok(addr)
}

/// Everything one load run needs.
#[derive(Clone)]
pub struct LoadSpec {
    /// Where requests go (loopback).
    pub target: SocketAddr,
    /// Where a session's requests go once it exists, when not `target` (`bench node` sends them to a
    /// broadcast member that does not own the session, so each is forwarded). Default: none.
    pub then: Option<SocketAddr>,
    /// Sessions in total, spread over the virtual users; at least 1, default 100.
    pub sessions: usize,
    /// Virtual users, each with one keep-alive connection; at least 1, default 16.
    pub concurrency: usize,
    /// The run stops at whichever bound comes first.
    pub duration: Duration,
    /// Requests in total; `u64::MAX` when only the duration bounds the run.
    pub max_requests: u64,
    /// Share of each operation.
    pub mix: Mix,
    /// Size of each patched value, in bytes; default 32.
    pub value_bytes: usize,
    /// Per-request timeout; default 5 s.
    pub timeout: Duration,
    /// Name of the routing cookie, for the cluster's own cookie among others (HAProxy adds its own).
    pub cookie_name: String,
    /// Decodes routing cookies so increment answers reveal their session id too.
    pub cookie_codec: Option<std::sync::Arc<node::cookie::CookieCodec>>,
}

/// Wall-clock ceiling of a run bounded by request count only.
pub const MAX_RUN: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(
            parse_duration("99999999999999999999h").is_err(),
            "overflow is an error, not a panic"
        );
    }

    #[test]
    fn mixes() {
        let m = Mix::parse("incr=0.6,get=0.3,patch=0.1").unwrap();
        assert_eq!(m, Mix::default());
        assert_eq!(m.pick(0.0), OpKind::Incr);
        assert_eq!(m.pick(0.7), OpKind::Get);
        assert_eq!(m.pick(0.95), OpKind::Patch);
        assert_eq!(Mix::parse("get=1").unwrap().pick(0.99), OpKind::Get);
        assert_eq!(Mix::parse("delete=1").unwrap().pick(0.5), OpKind::Delete);
        assert!(Mix::parse("put=1").is_err());
        assert!(Mix::parse("get=0").is_err());
    }

    #[test]
    fn targets_are_loopback_only() {
        assert_eq!(parse_target("http://127.0.0.1:8080").unwrap().port(), 8080);
        assert_eq!(parse_target("http://localhost:80/").unwrap().port(), 80);
        assert!(parse_target("http://10.0.0.1:80").is_err());
        assert!(parse_target("https://127.0.0.1:80").is_err());
    }
}
