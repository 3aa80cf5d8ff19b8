//! Request caps from `[lb.limits]`, checked before anything is proxied. Pure: the proxy hands in the request
//! head and acts on the verdict. Pingora's own caps (256 headers, 1 MiB of head) are far above ours, and its
//! per-read timeout lets a trickling client hold a connection forever, so the head deadline lives in
//! [`crate::proxy::LbApp`].

use http::HeaderMap;
use node::config::LimitsConfig;

/// Why a request is refused before it reaches a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// More headers than `max_headers` (431).
    #[error("{count} request headers, the limit is {limit}")]
    TooManyHeaders {
        /// Headers in the request.
        count: usize,
        /// `max_headers`.
        limit: usize,
    },
    /// A request head over `max_header_bytes` (431).
    #[error("{bytes} bytes of request head, the limit is {limit}")]
    HeadTooLarge {
        /// Size of the head, in bytes.
        bytes: usize,
        /// `max_header_bytes`.
        limit: usize,
    },
    /// A declared body over `max_body_bytes` (413).
    #[error("request body of {bytes} bytes, the limit is {limit}")]
    BodyTooLarge {
        /// Declared size of the body (`Content-Length`), in bytes.
        bytes: usize,
        /// `max_body_bytes`.
        limit: usize,
    },
}

impl Rejection {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::TooManyHeaders { .. } | Rejection::HeadTooLarge { .. } => 431,
            Rejection::BodyTooLarge { .. } => 413,
        }
    }
}

/// Checks the request head: header count, head size (target plus every `name: value\r\n`), and a declared
/// `Content-Length` against the body cap.
///
/// # Errors
/// The first cap the request breaks.
pub fn check_head(
    target_len: usize,
    headers: &HeaderMap,
    limits: &LimitsConfig,
) -> Result<(), Rejection> {
    let count = headers.len();
    if count > limits.max_headers {
        return Err(Rejection::TooManyHeaders {
            count,
            limit: limits.max_headers,
        });
    }
    // One pass over the head: a lookup of Content-Length by name would hash it again.
    let mut bytes = target_len;
    let mut declared = None;
    for (k, v) in headers {
        bytes += k.as_str().len() + v.len() + 4;
        // An unparsable length is Pingora's to refuse (400); only a parsed one can break our cap.
        if k == http::header::CONTENT_LENGTH {
            if let Some(len) = v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
                declared = declared.max(Some(len));
            }
        }
    }
    if bytes > limits.max_header_bytes {
        return Err(Rejection::HeadTooLarge {
            bytes,
            limit: limits.max_header_bytes,
        });
    }
    match declared {
        Some(len) => check_body(len, limits),
        None => Ok(()),
    }
}

/// Checks a running body size (streamed or chunked bodies are counted as they pass).
///
/// # Errors
/// [`Rejection::BodyTooLarge`] once `bytes` is over the cap.
pub fn check_body(bytes: usize, limits: &LimitsConfig) -> Result<(), Rejection> {
    if bytes > limits.max_body_bytes {
        return Err(Rejection::BodyTooLarge {
            bytes,
            limit: limits.max_body_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            max_headers: 4,
            max_header_bytes: 200,
            header_timeout: Duration::from_secs(1),
            max_body_bytes: 1000,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            tunnel_idle_timeout: Duration::from_secs(1),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_small_request_passes() {
        let h = headers(&[("host", "x"), ("cookie", "a=b"), ("content-length", "1000")]);
        assert_eq!(check_head(8, &h, &limits()), Ok(()));
    }

    #[test]
    fn too_many_headers_is_431() {
        let h = headers(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("a", "2")]);
        let r = check_head(1, &h, &limits()).unwrap_err();
        assert_eq!(r, Rejection::TooManyHeaders { count: 5, limit: 4 });
        assert_eq!(r.status(), 431);
    }

    #[test]
    fn a_large_head_is_431_counting_the_target_too() {
        let h = headers(&[("cookie", &"x".repeat(150))]);
        assert_eq!(check_head(10, &h, &limits()), Ok(()));
        let r = check_head(60, &h, &limits()).unwrap_err();
        assert!(
            matches!(r, Rejection::HeadTooLarge { bytes: 220, .. }),
            "{r:?}"
        );
        assert_eq!(r.status(), 431);
    }

    #[test]
    fn a_declared_or_counted_body_over_the_cap_is_413() {
        let h = headers(&[("content-length", "1001")]);
        assert_eq!(check_head(1, &h, &limits()).unwrap_err().status(), 413);
        assert_eq!(check_body(1000, &limits()), Ok(()));
        assert_eq!(check_body(1001, &limits()).unwrap_err().status(), 413);
        // Not a number: left for the HTTP parser to refuse.
        assert_eq!(
            check_head(1, &headers(&[("content-length", "lots")]), &limits()),
            Ok(())
        );
    }
}
