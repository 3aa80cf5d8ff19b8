//! The seam between the session service and the application that serves requests (Pingora's `ProxyHttp` is
//! the model): the service locates the session, locks it, and asks the [`App`] what a request does to it; the
//! app answers with a [`Change`] and whatever it needs to build the answer later ([`App::Pending`]: nothing
//! for the built-in API, the application's whole answer for the sidecar). Once the change is applied and
//! copied, [`App::answer`] builds the answer; a retried write is answered from the outcome recorded in the
//! session instead, without running again. The built-in session API (`builtin`) is one app; the sidecar proxy
//! to a real application (`sidecar`) is the other.

use std::future::Future;

use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{full, ReplyBody, RequestBody};
use crate::session::{Outcome, Session, SessionError};

/// The answer type every app and the service produce.
pub type Reply = Response<ReplyBody>;

/// A client's request as the front received it: the head, and the body read whole or streaming once.
pub struct ClientRequest {
    /// Method, URI and headers.
    pub parts: Parts,
    /// The body.
    pub body: RequestBody,
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// What [`App::run`] hands on to [`App::answer`] (the application's answer, held while the change is
    /// applied and copied); `()` for an app that builds its answer from the session alone.
    type Pending: Send;
    /// What [`App::prepare`] takes from the locked session for [`App::run`].
    type Prepared: Send;

    /// `Some(n)`: request bodies up to `n` bytes are read before [`App::parse`], larger ones stream to
    /// [`App::run`] once. Default `None`: every body is read whole (up to `[node] max_body_bytes`).
    fn streams_bodies_over(&self) -> Option<usize> {
        None
    }

    /// Whether a request runs to its end when its client goes away (the balancer timed out, say): its change
    /// applied and its answer recorded, so that the balancer's retry of it is answered from the record instead
    /// of running the app again. Default false: the built-in API does nothing a retry cannot redo.
    fn finishes_without_client(&self) -> bool {
        false
    }

    /// Turns a request into a call. `Err` is answered at once, before any session is touched (a client
    /// error: 400, 404, 405, 413; never a 5xx).
    // The refusal is the answer itself, built once per refused request: boxing it would buy nothing.
    #[allow(clippy::result_large_err)]
    fn parse(&self, req: &ClientRequest) -> Result<Self::Call, Reply>;

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

    /// Takes from the session what [`App::run`] needs, while the session is locked. `Err` is answered as is
    /// and changes nothing.
    // The refusal is the answer itself, as for `parse`.
    #[allow(clippy::result_large_err)]
    fn prepare(
        &self,
        call: &Self::Call,
        req: &ClientRequest,
        session: &Session,
    ) -> Result<Self::Prepared, Reply>;

    /// Runs `call` in the session's turn (no other request of the session runs meanwhile) but with the
    /// session unlocked, so a slow application holds up nothing else: what to change, and what to answer with
    /// once it is applied. `Err` is answered as is and changes nothing.
    fn run(
        &self,
        call: &Self::Call,
        req: &ClientRequest,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<(Change, Self::Pending), Reply>> + Send;

    /// The outcome to record under the request id for a write, so that a retry gets the same answer without
    /// running again. Default `None`: the service records what the change did ([`Outcome::Patched`],
    /// [`Outcome::Incremented`]).
    fn outcome(&self, _pending: &Self::Pending) -> Option<Outcome> {
        None
    }

    /// The answer once the change is applied and copied as the mode requires (`pending` is what
    /// [`App::run`] returned), or for a replay (`pending` is `None`) from the outcome recorded under the
    /// request id. `session` is the session as it is now (for a deletion, as it was). Default: 204 for a
    /// deletion, else the session as JSON.
    fn answer(
        &self,
        _call: &Self::Call,
        _pending: Option<Self::Pending>,
        session: Option<&Session>,
        applied: Applied,
    ) -> Reply {
        match (applied, session) {
            (Applied::Deleted, _) | (_, None) => empty(StatusCode::NO_CONTENT),
            (_, Some(s)) => json_reply(
                StatusCode::OK,
                &json!({"id": s.id.to_string(), "version": s.version, "data": Value::Object(s.data.clone())}),
            ),
        }
    }

    /// The session as this app is showing it to a call in flight, for `/_node/sessions/{id}` while the
    /// session's lock is held by that call. Default `None`: the front reads the store.
    fn local_view(&self, _id: crate::ids::SessionId) -> Option<Reply> {
        None
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
        .body(full(body))
        .expect("valid response")
}

/// `{"error": message}` with `status`.
pub fn error_reply(status: StatusCode, message: &str) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

/// `status` with `{"error": message}` and `Retry-After: 1`: nothing was done, and the same request may succeed
/// shortly.
pub fn retry_later(status: StatusCode, message: &str) -> Reply {
    let mut r = error_reply(status, message);
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    r
}

/// An answer without a body.
pub fn empty(status: StatusCode) -> Reply {
    Response::builder()
        .status(status)
        .body(full(""))
        .expect("valid response")
}
