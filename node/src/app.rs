//! The seam between the session service and the application that serves requests (Pingora's `ProxyHttp` is
//! the model): the service locates the session, locks it, and asks the [`App`] what a request does to it; the
//! app answers with a [`Change`] and, once the change is applied and copied, builds the answer. The built-in
//! session API (`builtin`) is one app; a sidecar proxy to a real application is another.

use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::session::{Outcome, Session, SessionError};

/// The answer type every app and the service produce.
pub type Reply = Response<Full<Bytes>>;

/// What a request does to its session: the change the service applies, records and replicates.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Nothing: a read. Answered only while this node certainly owns the session and, in `sync` mode, once
    /// the copies hold what the answer shows.
    Nothing,
    /// A JSON merge patch (RFC 7396) of the session data.
    Patch(Value),
    /// An atomic +1 of the integer at this key.
    Increment(String),
    /// The session ends, on every copy.
    Delete,
}

/// What was done, for building the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A read ([`Change::Nothing`]).
    Read,
    /// A write, applied now or earlier under the same request id (a replay): its recorded outcome.
    Write(Outcome),
    /// The session was deleted (or there was none to delete).
    Deleted,
}

/// An application behind the session service. Every method but [`App::parse`] and [`App::run`] has a default.
pub trait App: Send + Sync + 'static {
    /// A request as this app understands it.
    type Call: Send + Sync;

    /// Turns a request into a call. `Err` is answered at once, before any session is touched (a client
    /// error: 400, 404, 405, 413; never a 5xx).
    // The refusal is the answer itself, built once per refused request: boxing it would buy nothing.
    #[allow(clippy::result_large_err)]
    fn parse(&self, parts: &Parts, body: Bytes) -> Result<Self::Call, Reply>;

    /// The call's name in metrics (`node_requests_total{op=...}`) and logs. Default: `request`.
    fn label(&self, _call: &Self::Call) -> &'static str {
        "request"
    }

    /// Whether `call` may change its session. Writes get a request id when the client sent none, so that
    /// no retry, here or on another node, applies them twice. Default: every call may write.
    fn may_write(&self, _call: &Self::Call) -> bool {
        true
    }

    /// Whether `call` ends the session when there is none to serve (a DELETE): then it is answered with
    /// [`App::answer`] and [`Applied::Deleted`] instead of starting a fresh session. Default: no.
    fn ends_session(&self, _call: &Self::Call) -> bool {
        false
    }

    /// Runs `call` against the session, under its FIFO lock: what to change. `Err` is answered as is and
    /// changes nothing.
    fn run(
        &self,
        call: &Self::Call,
        session: &Session,
    ) -> impl Future<Output = Result<Change, Reply>> + Send;

    /// The answer once the change is applied and copied as the mode requires, or for a replay, from the
    /// outcome recorded under the request id. `session` is the session as it is now (for a deletion, as it
    /// was). Default: 204 for a deletion, else the session as JSON.
    fn answer(&self, _call: &Self::Call, session: Option<&Session>, applied: Applied) -> Reply {
        match (applied, session) {
            (Applied::Deleted, _) | (_, None) => empty(StatusCode::NO_CONTENT),
            (_, Some(s)) => json_reply(
                StatusCode::OK,
                &json!({"id": s.id.to_string(), "version": s.version, "data": Value::Object(s.data.clone())}),
            ),
        }
    }

    /// The answer when the change could not be applied (the session is unchanged). Default: 400 for a patch
    /// that is not an object, 413 over the size cap, 409 for an increment of a non-integer or an overflow.
    fn refused(&self, _call: &Self::Call, e: SessionError) -> Reply {
        let status = match e {
            SessionError::PatchNotObject => StatusCode::BAD_REQUEST,
            SessionError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            SessionError::NotAnInteger { .. } | SessionError::Overflow { .. } => {
                StatusCode::CONFLICT
            }
            SessionError::VersionGap { .. } | SessionError::CorruptPatch => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        error_reply(status, &e.to_string())
    }
}

/// A JSON answer.
pub fn json_reply(status: StatusCode, v: &Value) -> Reply {
    text_reply(status, v.to_string())
}

/// An answer whose body is JSON text already.
pub fn text_reply(status: StatusCode, body: String) -> Reply {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// `{"error": message}` with `status`.
pub fn error_reply(status: StatusCode, message: &str) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

/// An answer without a body.
pub fn empty(status: StatusCode) -> Reply {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}
